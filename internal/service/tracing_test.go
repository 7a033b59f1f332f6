package service_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/hex"
	"log/slog"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/service"
	"github.com/handshaked/handshaked/internal/servicetest"
	"github.com/handshaked/handshaked/internal/testenv"
	"github.com/handshaked/handshaked/internal/tracing"
	"github.com/handshaked/handshaked/internal/tracing/tracingtest"
)

// addKeyLog registers every secret of an NSS key log (what crypto/tls's
// KeyLogWriter writes: label, client random, secret, in hex).
func addKeyLog(t *testing.T, keylog []byte) {
	t.Helper()
	sc := bufio.NewScanner(strings.NewReader(string(keylog)))
	var n int
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 3 {
			continue
		}
		b, err := hex.DecodeString(f[2])
		require.NoError(t, err)
		secrets.add("key log "+f[0], b)
		n++
	}
	require.Positive(t, n, "empty key log")
}

// TestTracingHandshake: with tracing on, handshakes through the service,
// exported over OTLP to an in-process receiver, come out as one trace
// each: a "handshake" span (with what was negotiated), its steps as
// children (with the engine's decoded messages as events; over the unary
// API each linked to the call that carried it), and the vault operations
// (a signature for TLS 1.3 with ECDSA, a premaster decryption for TLS 1.2
// RSA key exchange) as children of a step. No attribute holds a secret:
// neither the session keys nor any secret of the client's key log nor the
// private keys.
func TestTracingHandshake(t *testing.T) {
	ctx := context.Background()
	rcv := tracingtest.Start(t)
	tp, err := tracing.Start(ctx, tracing.Options{Endpoint: rcv.Addr, Insecure: true, SampleRatio: 1}, "handshaked-test", "test", slog.Default())
	require.NoError(t, err)
	srv := servicetest.Start(t, service.Options{TracerProvider: tp})
	s := &testServer{Server: srv, vault: srv.Vault, grpcAddr: srv.GRPCAddr, kv: pb.NewKeyVaultClient(srv.Conn), rest: srv.RESTURL}
	ec := newServerKey(t, s, "p256-pkcs8.pem", "ec.trace.test")
	rsa := newServerKey(t, s, "rsa2048-pkcs1.pem", "rsa.trace.test")
	// Each case has its own server name, which finds its handshake's span.
	muxEC := newServerKey(t, s, "p256-pkcs8.pem", "ec.multiplex.trace.test")
	omitted := newServerKey(t, s, "p256-pkcs8.pem", "omitted.trace.test")
	muxOmitted := newServerKey(t, s, "p256-pkcs8.pem", "omitted.multiplex.trace.test")
	hc := s.handshakeClient(t)

	for _, tc := range []struct {
		name, transport, vaultOp, version string
		key                               serverKey
		cfg                               *tls.Config
		// omitTrace: the caller omits the steps' trace (as the edge does by
		// default); the spans show the messages all the same.
		omitTrace bool
	}{
		{"TLS 1.3 ECDSA stream", "stream", "vault.sign", "TLS 1.3", ec, &tls.Config{MinVersion: tls.VersionTLS13}, false},
		{"TLS 1.3 ECDSA multiplex", "multiplex", "vault.sign", "TLS 1.3", muxEC, &tls.Config{MinVersion: tls.VersionTLS13}, false},
		{"TLS 1.2 RSA key exchange unary", "unary", "vault.decrypt_premaster", "TLS 1.2", rsa,
			&tls.Config{MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{tls.TLS_RSA_WITH_AES_128_GCM_SHA256}}, false},
		{"TLS 1.3 ECDSA stream, trace omitted", "stream", "vault.sign", "TLS 1.3", omitted, &tls.Config{MinVersion: tls.VersionTLS13}, true},
		{"TLS 1.3 ECDSA multiplex, trace omitted", "multiplex", "vault.sign", "TLS 1.3", muxOmitted, &tls.Config{MinVersion: tls.VersionTLS13}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var keylog testenv.Buffer
			cfg := tc.cfg.Clone()
			cfg.ServerName, cfg.RootCAs, cfg.KeyLogWriter = tc.key.name, tc.key.pool, &keylog
			start := &pb.StartHandshakeRequest{Config: &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: tc.key.id}},
				CipherSuites: toUint32(tc.cfg.CipherSuites), OmitTrace: tc.omitTrace}}
			var mux *muxClient
			_, relayed := runClient(t, cfg, func() stepper {
				switch tc.transport {
				case "stream":
					stream, err := hc.Stream(ctx)
					require.NoError(t, err)
					return &streamStepper{stream: stream, start: start}
				case "multiplex":
					mux = openMux(t, hc)
					return &muxStepper{m: mux, n: 1, cfg: start.GetConfig()}
				}
				return &unaryStepper{hc: hc, start: start}
			})
			if mux != nil {
				// The stream's span, which the steps link to, ends with it.
				require.NoError(t, mux.stream.CloseSend())
			}
			addKeyLog(t, keylog.Bytes())
			keys := relayed.session.GetKeys()
			for name, b := range map[string][]byte{
				"client traffic secret": keys.GetClientApplicationTrafficSecret(), "server traffic secret": keys.GetServerApplicationTrafficSecret(),
				"exporter secret": keys.GetExporterMasterSecret(), "client write key": keys.GetClientWriteKey(), "server write key": keys.GetServerWriteKey(),
			} {
				secrets.add(name, b)
			}

			// The server span of a call ends after its response is sent:
			// wait for the spans the steps link to as well.
			spans := rcv.WaitFor(t, "the handshake's span and the calls its steps link to", func(spans []tracingtest.Span) bool {
				require.NoError(t, tp.ForceFlush(ctx))
				ids := map[string]bool{}
				var found bool
				for _, sp := range spans {
					ids[sp.SpanID] = true
					found = found || sp.Name == "handshake" && sp.Attrs["tls.server_name"] == tc.key.name
				}
				for _, sp := range spans {
					for _, l := range sp.Links {
						found = found && ids[l]
					}
				}
				return found
			})
			var hs tracingtest.Span
			for _, sp := range spans {
				if sp.Name == "handshake" && sp.Attrs["tls.server_name"] == tc.key.name {
					hs = sp
				}
			}
			assert.Equal(t, "handshaked-test", hs.Service)
			assert.Equal(t, tc.transport, hs.Attrs["handshake.transport"])
			if tc.transport == "multiplex" {
				assert.Empty(t, hs.ParentID, "a handshake of a shared stream is a trace of its own, not part of the stream's")
			}
			assert.Equal(t, "HANDSHAKE_STATE_COMPLETE", hs.Attrs["handshake.state"])
			assert.Equal(t, tc.version, hs.Attrs["tls.version"])
			assert.Equal(t, tls.CipherSuiteName(uint16(relayed.session.GetCipherSuite())), hs.Attrs["tls.cipher_suite"])
			assert.False(t, hs.Error)

			// The whole handshake, and nothing else, in hs's trace: the
			// RPC server spans, the handshake, its steps, the vault ops.
			byID := map[string]tracingtest.Span{}
			rpcSpans := map[string]bool{}
			for _, sp := range spans {
				byID[sp.SpanID] = sp
				if strings.HasPrefix(sp.Name, "handshake.v1.Handshake/") {
					rpcSpans[sp.SpanID] = true
				}
			}
			var steps, vaultOps int
			var clientHello bool
			for _, sp := range spans {
				switch {
				case sp.Name == "handshake.step" && sp.ParentID == hs.SpanID:
					steps++
					assert.Equal(t, hs.TraceID, sp.TraceID)
					for _, ev := range sp.Events {
						clientHello = clientHello || ev.Name == "received ClientHello" && ev.Attrs["tls.server_name"] == tc.key.name
					}
					if tc.transport != "stream" {
						require.Len(t, sp.Links, 1, "a unary or multiplexed step links to its call")
						assert.True(t, rpcSpans[sp.Links[0]], "step linked to %s, not an RPC span", sp.Links[0])
					}
				case strings.HasPrefix(sp.Name, "vault.") && byID[sp.ParentID].ParentID == hs.SpanID:
					assert.Equal(t, hs.TraceID, sp.TraceID)
					assert.Equal(t, "handshake.step", byID[sp.ParentID].Name)
					assert.True(t, strings.HasPrefix(sp.Attrs["handshake.key"], tc.key.id+"/"), "vault span key %q", sp.Attrs["handshake.key"])
					if sp.Name == tc.vaultOp {
						vaultOps++
					}
				}
			}
			assert.GreaterOrEqual(t, steps, 2, "steps of the handshake")
			assert.Equal(t, 1, vaultOps, "%s spans in the handshake", tc.vaultOp)
			assert.True(t, clientHello, "no ClientHello event with the SNI")
		})
	}
	require.NoError(t, tp.Shutdown(ctx))
	secrets.addFixtures(t)
	raw := rcv.Raw()
	require.NotEmpty(t, raw)
	assert.Empty(t, secrets.find(raw), "exported spans show secrets")
}

func toUint32(ids []uint16) []uint32 {
	var out []uint32
	for _, id := range ids {
		out = append(out, uint32(id))
	}
	return out
}

// TestTracingREST: a REST caller's W3C traceparent continues its trace in
// the span of its call, which says it came over REST.
func TestTracingREST(t *testing.T) {
	ctx := context.Background()
	rcv := tracingtest.Start(t)
	tp, err := tracing.Start(ctx, tracing.Options{Endpoint: rcv.Addr, Insecure: true, SampleRatio: 1}, "handshaked-test", "test", slog.Default())
	require.NoError(t, err)
	srv := servicetest.Start(t, service.Options{TracerProvider: tp})
	const traceID, parentID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	req, err := http.NewRequest(http.MethodGet, srv.RESTURL+"/v1/keys", nil)
	require.NoError(t, err)
	req.Header.Set("traceparent", "00-"+traceID+"-"+parentID+"-01")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	rcv.WaitFor(t, "the ListKeys span in the caller's trace", func(spans []tracingtest.Span) bool {
		require.NoError(t, tp.ForceFlush(ctx))
		for _, sp := range spans {
			if sp.Name == "handshake.v1.KeyVault/ListKeys" && sp.TraceID == traceID && sp.ParentID == parentID && sp.Attrs["handshaked.transport"] == "rest" {
				return true
			}
		}
		return false
	})
}
