package edge

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// writeCountingConn counts the writes of no bytes made on it: each is a
// write(2), a system call for nothing.
type writeCountingConn struct {
	net.Conn
	empty atomic.Int32
}

func (c *writeCountingConn) Write(b []byte) (int, error) {
	if len(b) == 0 {
		c.empty.Add(1)
	}
	return c.Conn.Write(b)
}

// TestNoEmptyWrites: the edge writes nothing to the client for a step with
// no output, as the last of a TLS 1.2 resumption in two service round
// trips (after the client's Finished) and the client Finished it verifies
// itself in one (TLS 1.2 holds nothing back), and for full handshakes. A
// connection with nothing read from the client yet holds no read buffer
// until its first Read.
func TestNoEmptyWrites(t *testing.T) {
	s := ticketService(t)
	const suite = tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
	for _, oneTrip := range []bool{false, true} {
		t.Run(fmt.Sprintf("one-round-trip=%v", oneTrip), func(t *testing.T) {
			hcfg := s.config(suite)
			hcfg.CallerVerifiesFinished = oneTrip
			inner, err := net.Listen("tcp", "127.0.0.1:0")
			require.NoError(t, err)
			defer inner.Close()
			cfg := s.clientConfig(suite, tls.VersionTLS12, true)
			cfg.ClientSessionCache = tls.NewLRUClientSessionCache(1)
			for i, resumed := range []bool{false, true, true} {
				client, err := net.Dial("tcp", inner.Addr().String())
				require.NoError(t, err)
				raw, err := inner.Accept()
				require.NoError(t, err)
				counted := &writeCountingConn{Conn: raw}
				served := make(chan *Conn, 1)
				go func() {
					c, err := Server(context.Background(), counted, &Config{Client: s.client, Handshake: hcfg})
					assert.NoError(t, err, "edge handshake %d", i)
					served <- c
				}()
				tc := tls.Client(client, cfg)
				require.NoError(t, tc.Handshake(), "handshake %d", i)
				server := <-served
				require.NotNil(t, server)
				require.Equal(t, resumed, server.ConnectionState().DidResume, "handshake %d", i)
				server.in.Lock()
				assert.Nil(t, server.in.buf, "read buffer before the first Read of handshake %d", i)
				server.in.Unlock()
				exchange(t, tc, server, []byte("ping"))
				assert.Zero(t, counted.empty.Load(), "writes of no bytes in handshake %d", i)
				tc.Close()
				server.Close()
			}
		})
	}
}
