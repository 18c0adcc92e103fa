package gateway

import (
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// fasthttp's per-HostClient idle-connection cleaner notices that its
		// pool is empty only on its next tick (UpstreamIdleTimeout later).
		goleak.IgnoreTopFunction("github.com/valyala/fasthttp.(*HostClient).connsCleaner"),
		goleak.IgnoreTopFunction("time.Sleep"),
	)
}
