package main

import (
	"context"
	"crypto/tls"
	"log/slog"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/service"
	"github.com/handshaked/handshaked/internal/servicetest"
	"github.com/handshaked/handshaked/internal/tracing"
	"github.com/handshaked/handshaked/internal/tracing/tracingtest"
)

// TestTracing: with -otlp-endpoint on the edge and tracing on in the
// service, a handshake is one trace from the edge to the vault: the edge's
// "edge.handshake" span, its calls, and the service's handshake, steps and
// vault spans, over the stream and over unary (stateless) calls.
func TestTracing(t *testing.T) {
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "50") // the edge's batches, in ms: no 5 s wait
	ctx := context.Background()
	rcv := tracingtest.Start(t)
	tp, err := tracing.Start(ctx, tracing.Options{Endpoint: rcv.Addr, Insecure: true, SampleRatio: 1}, "handshaked", "test", slog.Default())
	require.NoError(t, err)
	srv := servicetest.Start(t, service.Options{TracerProvider: tp})
	f := &fixture{srv: srv,
		rsa:   srv.ServerKey(t, "edge-rsa", "rsa2048-pkcs1.pem", "rsa.test"),
		ecdsa: srv.ServerKey(t, "edge-ec", "p256-pkcs8.pem", "ec.test")}

	for _, mode := range []string{"stream", "unary"} {
		t.Run(mode, func(t *testing.T) {
			args := []string{"-otlp-endpoint", rcv.Addr, "-otlp-insecure"}
			if mode == "unary" {
				args = append(args, "-unary")
			}
			addr, log := f.start(t, args...)
			conn, err := tls.Dial("tcp", addr, &tls.Config{ServerName: f.ecdsa.Name, RootCAs: f.ecdsa.Pool})
			require.NoError(t, err, "edge log:\n%s", log.String())
			client := conn.LocalAddr().String()
			conn.Close()

			var edgeSpan tracingtest.Span
			// The service's spans that end last: over the stream, the
			// handshake's own span (it says how the handshake ended) and
			// the Stream call's, which ends after it, when the edge closes
			// the stream; unary steps are stateless (the service keeps
			// nothing between them, no span either), so the step that
			// completed it says it.
			last := []func(tracingtest.Span) bool{
				func(sp tracingtest.Span) bool { return sp.Name == "handshake" && sp.Attrs["handshake.state"] != "" },
				func(sp tracingtest.Span) bool { return sp.Name == "handshake.v1.Handshake/Stream" },
			}
			if mode == "unary" {
				last = []func(tracingtest.Span) bool{func(sp tracingtest.Span) bool {
					return sp.Name == "handshake.v1.Handshake/StepHandshake" && sp.Attrs["tls.version"] == "TLS 1.3"
				}}
			}
			spans := rcv.WaitFor(t, "the edge's span and the service's last spans in its trace", func(spans []tracingtest.Span) bool {
				require.NoError(t, tp.ForceFlush(ctx))
				for _, sp := range spans {
					if sp.Name == "edge.handshake" && sp.Attrs["client.address"] == client {
						edgeSpan = sp
					}
				}
				for _, ended := range last {
					if !slices.ContainsFunc(spans, func(sp tracingtest.Span) bool {
						return sp.Service == "handshaked" && sp.TraceID == edgeSpan.TraceID && ended(sp)
					}) {
						return false
					}
				}
				return true
			})
			assert.Equal(t, "handshake-edge", edgeSpan.Service)
			assert.Equal(t, "ec.test", edgeSpan.Attrs["tls.server_name"])
			names := map[string]int{}
			for _, sp := range spans {
				if sp.TraceID == edgeSpan.TraceID {
					names[sp.Service+" "+sp.Name]++
				}
			}
			assert.Equal(t, 1, names["handshaked vault.sign"], "spans of the trace: %v", names)
			assert.GreaterOrEqual(t, names["handshaked handshake.step"], 2, "spans of the trace: %v", names)
			if mode == "unary" {
				assert.Equal(t, 1, names["handshaked handshake.v1.Handshake/StartHandshake"], "spans of the trace: %v", names)
				assert.GreaterOrEqual(t, names["handshaked handshake.v1.Handshake/StepHandshake"], 1, "spans of the trace: %v", names)
				assert.Zero(t, names["handshaked handshake"], "a stateless handshake has no span of its own: spans of the trace: %v", names)
			} else {
				assert.Equal(t, 1, names["handshaked handshake"], "spans of the trace: %v", names)
				assert.Equal(t, 1, names["handshaked handshake.v1.Handshake/Stream"], "spans of the trace: %v", names)
			}
		})
	}
}
