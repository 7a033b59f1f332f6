package service

import (
	"context"
	"crypto/tls"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/engine"
)

// tracerName names the spans this package makes.
const tracerName = "github.com/handshaked/handshaked/internal/service"

// A handshake is one trace: a "handshake" span from the start to the end of
// the session, a "handshake.step" child per step, and a "vault.*" child of
// a step per private-key operation it makes. Over the unary API the steps
// arrive in separate calls: each step span is a child of the session's
// handshake span and links to the call that carried it. Attributes are
// what the engine's readable trace shows (message types, versions, suites,
// SNI, ALPN, key ids) and sizes, never key material.

// noTracer records nothing: tracing off.
var noTracer = noop.NewTracerProvider().Tracer(tracerName)

// startHandshakeSpan starts the span of a whole handshake.
func (h *Handshake) startHandshakeSpan(ctx context.Context, transport string, req *pb.StartHandshakeRequest) (context.Context, trace.Span) {
	if h.tracer == noTracer {
		// Tracing off (the default): the attributes would cost every
		// handshake allocations for nothing (issue 12: ~2% of the
		// service's CPU per handshake).
		return h.tracer.Start(ctx, "handshake")
	}
	var keys []string
	for _, k := range req.GetConfig().GetKeys() {
		if k.GetVersion() == 0 { // the primary version, resolved by the engine
			keys = append(keys, k.GetKey())
		} else {
			keys = append(keys, keyRef(k.GetKey(), k.GetVersion()))
		}
	}
	return h.tracer.Start(ctx, "handshake", trace.WithAttributes(
		attribute.String("handshake.transport", transport),
		attribute.StringSlice("handshake.keys", keys),
	))
}

// endHandshakeSpan ends a handshake's span with its outcome: COMPLETE,
// FAILED, or UNSPECIFIED for a handshake that ended before either (expired,
// aborted, refused, or its stream closed).
func endHandshakeSpan(span trace.Span, state pb.HandshakeState) {
	span.SetAttributes(attribute.String("handshake.state", state.String()))
	switch state {
	case pb.HandshakeState_HANDSHAKE_STATE_COMPLETE:
	case pb.HandshakeState_HANDSHAKE_STATE_FAILED:
		span.SetStatus(codes.Error, "handshake failed")
	default:
		span.SetStatus(codes.Error, "handshake ended before an outcome: expired, aborted, refused or its stream closed")
	}
	span.End()
}

// traceStep records one engine step on its span, and on the handshake's
// span what a completed handshake negotiated.
func traceStep(span, handshake trace.Span, res *engine.StepResult, input []byte, sess *engine.Session) {
	// With tracing off (the default) or this trace not sampled, building
	// the attributes would cost every handshake allocations for nothing.
	if !span.IsRecording() && !handshake.IsRecording() {
		return
	}
	span.SetAttributes(
		attribute.Int("handshake.input_bytes", len(input)),
		attribute.Int("handshake.output_bytes", len(res.Output)),
		attribute.String("handshake.state", res.State.String()),
	)
	for _, ev := range res.Trace {
		attrs := make([]attribute.KeyValue, 0, len(ev.Fields))
		for _, f := range ev.Fields {
			attrs = append(attrs, attribute.String("tls."+f.Key, f.Value))
		}
		span.AddEvent(ev.Direction.String()+" "+ev.Message, trace.WithAttributes(attrs...))
	}
	switch res.State {
	case engine.Failed:
		span.SetAttributes(attribute.String("tls.alert", res.AlertDescription.String()))
		span.SetStatus(codes.Error, res.Reason)
		handshake.SetAttributes(attribute.String("tls.alert", res.AlertDescription.String()))
	case engine.Complete:
		handshake.SetAttributes(
			attribute.String("tls.version", tls.VersionName(sess.Version)),
			attribute.String("tls.cipher_suite", tls.CipherSuiteName(sess.CipherSuite)),
			attribute.String("tls.group", groupName(sess.Group)),
			attribute.String("tls.signature_scheme", schemeName(sess.SignatureScheme)),
			attribute.String("tls.server_name", sess.ServerName),
			attribute.String("tls.alpn", sess.ALPN),
			attribute.String("handshake.key", sess.KeyRef),
			attribute.Bool("tls.hello_retry_request", sess.DidHelloRetryRequest),
			attribute.Int("tls.peer_certificates", len(sess.PeerCertificates)),
		)
	}
}

// groupName and schemeName say "none" for what TLS 1.2 RSA key exchange
// does not have (RFC 5246, Section 7.4.7.1).
func groupName(g tls.CurveID) string {
	if g == 0 {
		return "none"
	}
	return g.String()
}

func schemeName(s tls.SignatureScheme) string {
	if s == 0 {
		return "none"
	}
	return s.String()
}

// startVaultSpan starts the span of a private-key operation of a step.
func startVaultSpan(ctx context.Context, tracer trace.Tracer, op, ref string, attrs ...attribute.KeyValue) (context.Context, trace.Span) {
	return tracer.Start(ctx, "vault."+op, trace.WithAttributes(append(attrs, attribute.String("handshake.key", ref))...))
}

// endVaultSpan ends it; an error's text names no secret (the vault's
// errors never do).
func endVaultSpan(span trace.Span, err error) {
	if err != nil {
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}
