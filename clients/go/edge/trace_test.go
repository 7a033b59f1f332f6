package edge

import (
	"context"
	"crypto/tls"
	"net"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestStepTrace: the steps of a handshake carry the engine's decoded
// messages only with Config.Trace, through a Listener and through Server;
// without it the service is asked to leave them out. The caller's
// HandshakeConfig is left as it was.
func TestStepTrace(t *testing.T) {
	s := newTestService(t)
	client := &tls.Config{ServerName: s.ecds.Name, RootCAs: s.ecds.Pool}
	for _, traced := range []bool{false, true} {
		t.Run(map[bool]string{false: "default", true: "traced"}[traced], func(t *testing.T) {
			hcfg := s.config()
			cfg := &Config{Client: s.client, Handshake: hcfg, Trace: traced}
			check := func(t *testing.T, st ConnectionState) {
				require.Len(t, st.Steps, 2)
				for i, step := range st.Steps {
					if traced {
						assert.NotEmpty(t, step.Trace, "step %d", i+1)
					} else {
						assert.Empty(t, step.Trace, "step %d", i+1)
					}
				}
				if traced {
					assert.Equal(t, "ClientHello", st.Steps[0].Trace[0].GetMessage())
				}
				assert.False(t, hcfg.GetOmitTrace(), "the caller's configuration changed")
			}

			t.Run("Listener", func(t *testing.T) {
				l, conns := listen(t, cfg)
				dial(t, l, client)
				check(t, accept(t, conns).ConnectionState())
			})
			t.Run("Server", func(t *testing.T) {
				inner, err := net.Listen("tcp", "127.0.0.1:0")
				require.NoError(t, err)
				defer inner.Close()
				done := make(chan struct{})
				defer close(done)
				go func() {
					if raw, err := net.Dial("tcp", inner.Addr().String()); err == nil {
						c := tls.Client(raw, client)
						c.Handshake()
						<-done
						c.Close()
					}
				}()
				raw, err := inner.Accept()
				require.NoError(t, err)
				c, err := Server(context.Background(), raw, cfg)
				require.NoError(t, err)
				defer c.Close()
				check(t, c.ConnectionState())
			})
		})
	}
}
