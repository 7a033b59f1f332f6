package service

import (
	"context"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	otelcodes "go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// calls is the one interceptor chain every API call passes, whether it came
// over gRPC or over REST (localConn), outermost first:
//
//	recover  a handler's panic fails its call only (INTERNAL)
//	trace    a server span per call, continuing the caller's W3C trace
//	identify the caller (client certificate), its address, a request id
//	log      one line per unary call
//	count    handshaked_call_seconds by method, transport and code
//	guard    limits, authorization, audit (auth.go)
//	errors   a domain error becomes its status (toStatus)
//
// so that what a call may do and what it leaves behind does not depend on
// its transport.
type calls struct {
	unary  grpc.UnaryServerInterceptor
	stream grpc.StreamServerInterceptor
}

func newCalls(g *guard, tp trace.TracerProvider, reg prometheus.Registerer) *calls {
	m := &callMetrics{seconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "handshaked_call_seconds",
		Help: "Latency of API calls (a stream: its whole life), by method (Service.Method), transport (grpc, rest) and outcome (gRPC code), refused calls included.",
		// 20 µs (a refusal) to 10 s.
		Buckets: prometheus.ExponentialBuckets(0.00002, 2, 20),
	}, []string{"method", "transport", "code"})}
	reg.MustRegister(m.seconds)
	unary := []grpc.UnaryServerInterceptor{recoverUnary}
	stream := []grpc.StreamServerInterceptor{recoverStream}
	if tp != nil {
		t := &callTracer{tracer: tp.Tracer(tracerName)}
		unary, stream = append(unary, t.unary), append(stream, t.stream)
	}
	unary = append(unary, identifyUnary, logUnary, m.unary, g.unary, mapErrorsUnary)
	stream = append(stream, identifyStream, m.stream, g.stream, mapErrorsStream)
	return &calls{unary: chainUnary(unary), stream: chainStream(stream)}
}

// chainUnary makes one interceptor of several, the first outermost, as
// grpc.ChainUnaryInterceptor does for a server (which gives no function to
// call from elsewhere).
func chainUnary(is []grpc.UnaryServerInterceptor) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		return is[0](ctx, req, info, unaryNext(is, 0, info, handler))
	}
}

func unaryNext(is []grpc.UnaryServerInterceptor, i int, info *grpc.UnaryServerInfo, final grpc.UnaryHandler) grpc.UnaryHandler {
	if i == len(is)-1 {
		return final
	}
	return func(ctx context.Context, req any) (any, error) {
		return is[i+1](ctx, req, info, unaryNext(is, i+1, info, final))
	}
}

func chainStream(is []grpc.StreamServerInterceptor) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		return is[0](srv, ss, info, streamNext(is, 0, info, handler))
	}
}

func streamNext(is []grpc.StreamServerInterceptor, i int, info *grpc.StreamServerInfo, final grpc.StreamHandler) grpc.StreamHandler {
	if i == len(is)-1 {
		return final
	}
	return func(srv any, ss grpc.ServerStream) error {
		return is[i+1](srv, ss, info, streamNext(is, i+1, info, final))
	}
}

// mapErrorsUnary and mapErrorsStream give every error a handler returns
// its status: what the guard audits, the metrics count and the caller gets.
func mapErrorsUnary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	resp, err := handler(ctx, req)
	if err != nil {
		return nil, toStatus(ctx, err)
	}
	return resp, nil
}

func mapErrorsStream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	return toStatus(ss.Context(), handler(srv, ss))
}

// callMetrics count and time calls.
type callMetrics struct {
	seconds *prometheus.HistogramVec
}

// methodLabel is "Service.Method" for "/handshake.v1.Service/Method", as
// the audit log names operations.
func methodLabel(fullMethod string) string {
	return strings.Replace(strings.TrimPrefix(strings.TrimPrefix(fullMethod, "/"), "handshake.v1."), "/", ".", 1)
}

func (m *callMetrics) observe(ctx context.Context, method string, start time.Time, err error) {
	m.seconds.WithLabelValues(methodLabel(method), transportOf(ctx), status.Code(err).String()).Observe(time.Since(start).Seconds())
}

func (m *callMetrics) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := handler(ctx, req)
	m.observe(ctx, info.FullMethod, start, err)
	return resp, err
}

func (m *callMetrics) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	start := time.Now()
	err := handler(srv, ss)
	m.observe(ss.Context(), info.FullMethod, start, err)
	return err
}

// callTracer gives each call a server span named after its method
// ("handshake.v1.KeyVault/Sign"), a child of the caller's span when the
// call carries W3C trace context (gRPC metadata, or the REST request's
// traceparent header, which the gateway forwards). The handshake spans of
// a unary step link to it (handshake_trace.go).
type callTracer struct {
	tracer trace.Tracer
}

func (t *callTracer) start(ctx context.Context, method string) (context.Context, trace.Span) {
	md, _ := metadata.FromIncomingContext(ctx)
	ctx = propagation.TraceContext{}.Extract(ctx, metadataCarrier(md))
	name := strings.TrimPrefix(method, "/")
	return t.tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindServer), trace.WithAttributes(
		semconv.RPCSystemNameGRPC, semconv.RPCMethod(name), attribute.String("handshaked.transport", transportOf(ctx))))
}

// end ends a call's span with its code; as OpenTelemetry's gRPC
// conventions say, only codes that are the server's fault mark it an error.
func endCallSpan(span trace.Span, err error) {
	st := status.Convert(err)
	span.SetAttributes(semconv.RPCResponseStatusCode(codeName(st.Code())))
	switch st.Code() {
	case codes.Unknown, codes.DeadlineExceeded, codes.Unimplemented, codes.Internal, codes.Unavailable, codes.DataLoss:
		span.SetStatus(otelcodes.Error, st.Message())
	}
	span.End()
}

func (t *callTracer) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	ctx, span := t.start(ctx, info.FullMethod)
	resp, err := handler(ctx, req)
	endCallSpan(span, err)
	return resp, err
}

func (t *callTracer) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx, span := t.start(ss.Context(), info.FullMethod)
	err := handler(srv, &contextStream{ss, ctx})
	endCallSpan(span, err)
	return err
}

// metadataCarrier reads W3C trace context from a call's metadata.
type metadataCarrier metadata.MD

func (c metadataCarrier) Get(key string) string {
	if v := metadata.MD(c).Get(key); len(v) > 0 {
		return v[0]
	}
	return ""
}

func (c metadataCarrier) Set(key, value string) { metadata.MD(c).Set(key, value) }

func (c metadataCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}
