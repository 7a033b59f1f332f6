package service_test

import (
	"crypto/tls"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/engine/record"
	"github.com/handshaked/handshaked/internal/servicetest"
)

// clientHello returns the first flight of a crypto/tls client with cfg.
func clientHello(t testing.TB, cfg *tls.Config) []byte {
	t.Helper()
	server, client := net.Pipe()
	defer server.Close()
	defer client.Close()
	go tls.Client(client, cfg).Handshake()
	server.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 64<<10)
	n, err := server.Read(buf)
	require.NoError(t, err)
	return buf[:n]
}

// TestCallerVerifiesFinishedREST: over REST, config.callerVerifiesFinished
// completes a TLS 1.3 handshake on its first step, whose keys carry the
// client Finished to verify; GetHandshake shows neither; with a
// CertificateRequest the first step needs input as without it.
func TestCallerVerifiesFinishedREST(t *testing.T) {
	s := startServer(t)
	key := newServerKey(t, s, "p256-sec1.pem", "ec.test")
	hello := clientHello(t, &tls.Config{ServerName: key.name, RootCAs: key.pool, MinVersion: tls.VersionTLS13,
		CipherSuites: []uint16{tls.TLS_AES_128_GCM_SHA256}})
	type step struct {
		ID      string
		State   string
		Output  []byte
		Session struct {
			Keys *struct {
				ServerApplicationTrafficSecret []byte
				ClientFinished                 *struct {
					Message, ClientHandshakeKey, ClientHandshakeIv, Output []byte
					SkipEarlyData                                          bool
				}
			}
		}
	}
	var out step
	status, raw := s.restCall(t, "POST", "/v1/handshakes", map[string]any{"config": map[string]any{
		"keys": []map[string]any{{"key": key.id}}, "cipherSuites": []uint16{tls.TLS_AES_128_GCM_SHA256}, "callerVerifiesFinished": true,
	}, "input": hello}, &out)
	require.Equal(t, 200, status, "%s", raw)
	require.Equal(t, "HANDSHAKE_STATE_COMPLETE", out.State, "%s", raw)
	require.NotNil(t, out.Session.Keys)
	cf := out.Session.Keys.ClientFinished
	require.NotNil(t, cf, "%s", raw)
	assert.Len(t, cf.Message, 4+32, "a SHA-256 Finished")
	assert.Equal(t, byte(20), cf.Message[0])
	assert.Len(t, cf.ClientHandshakeKey, 16)
	assert.Len(t, cf.ClientHandshakeIv, 12)
	assert.Len(t, out.Session.Keys.ServerApplicationTrafficSecret, 32)
	_, err := record.NewTLS13KeyCipher(tls.TLS_AES_128_GCM_SHA256, cf.ClientHandshakeKey, cf.ClientHandshakeIv, 0)
	require.NoError(t, err)
	assert.Equal(t, 1.0, servicetest.Metric(t, http.DefaultClient, s.rest, "handshaked_handshakes_caller_finished_total"))

	var got step
	status, raw = s.restCall(t, "GET", "/v1/handshakes/"+out.ID, nil, &got)
	require.Equal(t, 200, status, "%s", raw)
	assert.Equal(t, "HANDSHAKE_STATE_COMPLETE", got.State)
	assert.Nil(t, got.Session.Keys, "GetHandshake returns no keys: %s", raw)
	assert.NotContains(t, string(raw), "clientFinished")

	status, raw = s.restCall(t, "POST", "/v1/handshakes", map[string]any{"config": map[string]any{
		"keys": []map[string]any{{"key": key.id}}, "callerVerifiesFinished": true,
		"clientAuth": "CLIENT_AUTH_OPTIONAL", "clientCaPem": key.certPEM,
	}, "input": hello}, &out)
	require.Equal(t, 200, status, "%s", raw)
	assert.Equal(t, "HANDSHAKE_STATE_NEED_INPUT", out.State, "client authentication: the client's Finished goes to the service")
	assert.Equal(t, 1.0, servicetest.Metric(t, http.DefaultClient, s.rest, "handshaked_handshakes_caller_finished_total"))
}
