# Isekai: `make run` starts a node (managing a local Postgres when no
# DATABASE_URL is set); `make test` runs the whole suite.
GO      ?= go
BIN     := bin/isekai
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)

.PHONY: run test build bench bench-propagation bench-peers lint postgres clean

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/isekai

run: postgres build
	./$(BIN) serve

# The suite needs PostgreSQL server binaries (initdb, pg_ctl); the tests
# start their own servers, one per test package.
test: postgres
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 20m ./...

bench: postgres
	$(GO) test -run '^$$' -bench . -benchmem -count=1 ./projections/ ./gateway/ ./events/
	./scripts/bench-propagation.sh

bench-propagation: postgres build
	./scripts/bench-propagation.sh

bench-peers: build
	./scripts/bench-peers.sh

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...

postgres:
	@./scripts/ensure-postgres.sh

clean:
	rm -rf bin
