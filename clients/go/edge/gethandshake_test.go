package edge

import (
	"crypto/tls"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
)

// TestGetHandshake: a Listener runs each new connection's handshake with
// the configuration GetHandshake gives at that moment (Handshake while it
// gives nil), so a configuration changed while the Listener runs applies
// from the next connection on; the trace is asked for as Config.Trace
// says, without modifying the configuration given.
func TestGetHandshake(t *testing.T) {
	s := newTestService(t)
	ecOnly := &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: s.ecds.ID}}}
	rsaOnly := &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: s.rsa.ID}}}
	var current atomic.Pointer[pb.HandshakeConfig]
	for _, traced := range []bool{false, true} {
		t.Run(map[bool]string{false: "default", true: "traced"}[traced], func(t *testing.T) {
			current.Store(nil)
			l, conns := listen(t, &Config{Client: s.client, Handshake: ecOnly, Trace: traced,
				GetHandshake: func() *pb.HandshakeConfig { return current.Load() }})
			handshake := func(key string) {
				t.Helper()
				client := map[string]*tls.Config{s.ecds.ID: {ServerName: s.ecds.Name, RootCAs: s.ecds.Pool},
					s.rsa.ID: {ServerName: s.rsa.Name, RootCAs: s.rsa.Pool}}[key]
				dial(t, l, client)
				st := accept(t, conns).ConnectionState()
				require.Equal(t, key, st.KeyID)
				require.Len(t, st.Steps, 2)
				if traced {
					assert.NotEmpty(t, st.Steps[0].Trace)
				} else {
					assert.Empty(t, st.Steps[0].Trace)
				}
			}
			handshake(s.ecds.ID) // nil: Handshake
			current.Store(rsaOnly)
			handshake(s.rsa.ID)
			handshake(s.rsa.ID) // the same configuration again: the trace's copy kept
			current.Store(ecOnly)
			handshake(s.ecds.ID)
			assert.False(t, rsaOnly.GetOmitTrace(), "the configuration given was modified")
			assert.False(t, ecOnly.GetOmitTrace(), "the configuration given was modified")
		})
	}
}
