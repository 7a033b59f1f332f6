package service_test

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// TestNoBandwidthPings: the service's flow-control windows are static, so
// it sends no PING to measure the bandwidth-delay product when data comes
// (grpc-go's dynamic windows send one per round trip of data received,
// which a keyless caller's small messages pay for in syscalls and
// wake-ups on both sides). A raw HTTP/2 client makes gRPC health checks
// and sees every frame the service sends; it acknowledges what it gets,
// as a gRPC client does, so a second measurement would show too.
func TestNoBandwidthPings(t *testing.T) {
	s := startServer(t)
	conn, err := net.Dial("tcp", s.grpcAddr)
	require.NoError(t, err)
	defer conn.Close()
	// Guards against a hang only: every read below is answered at once.
	require.NoError(t, conn.SetDeadline(time.Now().Add(30*time.Second)))
	_, err = io.WriteString(conn, http2.ClientPreface)
	require.NoError(t, err)
	fr := http2.NewFramer(conn, conn)
	require.NoError(t, fr.WriteSettings())
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for _, f := range []hpack.HeaderField{
		{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "http"}, {Name: ":path", Value: "/grpc.health.v1.Health/Check"},
		{Name: ":authority", Value: "localhost"}, {Name: "content-type", Value: "application/grpc"}, {Name: "te", Value: "trailers"},
	} {
		require.NoError(t, enc.WriteField(f))
	}
	pings := 0
	for id := uint32(1); id <= 9; id += 2 {
		require.NoError(t, fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block.Bytes(), EndHeaders: true}))
		// An empty HealthCheckRequest: not compressed, 0 bytes long.
		require.NoError(t, fr.WriteData(id, true, []byte{0, 0, 0, 0, 0}))
		for answered := false; !answered; {
			f, err := fr.ReadFrame()
			require.NoError(t, err, "call %d", id)
			switch f := f.(type) {
			case *http2.SettingsFrame:
				if !f.IsAck() {
					require.NoError(t, fr.WriteSettingsAck())
				}
			case *http2.PingFrame:
				if !f.IsAck() {
					pings++
					require.NoError(t, fr.WritePing(true, f.Data))
				}
			case *http2.HeadersFrame:
				// The trailers end the call.
				answered = f.StreamID == id && f.StreamEnded()
			case *http2.GoAwayFrame, *http2.RSTStreamFrame:
				require.FailNow(t, "the call failed", "%v", f)
			}
		}
	}
	assert.Zero(t, pings, "PINGs the service sent for 5 calls")
}
