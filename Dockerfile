# Isekai gateway image. Build: docker build -t isekai .
# The image expects DATABASE_URL (see docker-compose.yml); it has no
# Postgres server of its own.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/isekai ./cmd/isekai

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/isekai /usr/local/bin/isekai
ENV ISEKAI_DATA_DIR=/var/lib/isekai \
    SERVER_PORT=8080 \
    ADMIN_PORT=8081
VOLUME /var/lib/isekai
EXPOSE 8080
USER nonroot:nonroot
ENTRYPOINT ["/usr/local/bin/isekai"]
CMD ["serve"]
