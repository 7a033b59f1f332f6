// Package tracing sets up OpenTelemetry tracing exported over OTLP/gRPC.
// It is off unless an endpoint is given: then every gRPC call is a span, and
// a TLS handshake run by the service is one trace with its steps and the
// vault operations they make as child spans (internal/service names them).
// No span carries key material: only names, versions, suites, key ids and
// sizes.
package tracing

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/grpc/credentials"
)

// Options say where spans go.
type Options struct {
	// Endpoint is the host:port of an OTLP/gRPC collector; "" turns
	// tracing off.
	Endpoint string
	// Insecure sends spans in plain text (a collector on loopback or a
	// sidecar); otherwise TLS, verified against CAFile or the system roots.
	Insecure bool
	CAFile   string
	// SampleRatio is the share of new traces recorded (0 to 1); a call
	// that arrives inside a sampled trace is always recorded.
	SampleRatio float64
}

// AddFlags defines the tracing flags on fs and returns the options they
// fill.
func AddFlags(fs *flag.FlagSet) *Options {
	o := &Options{}
	fs.StringVar(&o.Endpoint, "otlp-endpoint", "", "`host:port` of an OpenTelemetry collector (OTLP over gRPC) to send traces to; empty: tracing off")
	fs.BoolVar(&o.Insecure, "otlp-insecure", false, "send traces to -otlp-endpoint in plain text (a collector on loopback), not TLS")
	fs.StringVar(&o.CAFile, "otlp-ca", "", "roots (`PEM`) for the collector's certificate (default: the system's)")
	fs.Float64Var(&o.SampleRatio, "trace-sample-ratio", 1, "share of new traces recorded, 0 to 1 (calls inside a sampled trace are always recorded)")
	return o
}

// Provider is a running tracer provider.
type Provider struct {
	trace.TracerProvider
	// ForceFlush sends the spans buffered so far; Shutdown sends them and
	// stops the exporter.
	ForceFlush, Shutdown func(context.Context) error
}

// Start returns the tracer provider o asks for, naming this process
// service (service.name) at version; log receives export failures. Tracing
// off: a provider that records nothing and costs nothing, so callers need
// no special case.
func Start(ctx context.Context, o Options, service, version string, log *slog.Logger) (*Provider, error) {
	if o.Endpoint == "" {
		none := func(context.Context) error { return nil }
		return &Provider{TracerProvider: noop.NewTracerProvider(), ForceFlush: none, Shutdown: none}, nil
	}
	if o.SampleRatio < 0 || o.SampleRatio > 1 {
		return nil, fmt.Errorf("trace sample ratio %v: want 0 to 1", o.SampleRatio)
	}
	exporterOpts := []otlptracegrpc.Option{otlptracegrpc.WithEndpoint(o.Endpoint)}
	switch {
	case o.Insecure && o.CAFile != "":
		return nil, errors.New("-otlp-insecure and -otlp-ca: choose one")
	case o.Insecure:
		exporterOpts = append(exporterOpts, otlptracegrpc.WithInsecure())
	default:
		cfg := &tls.Config{MinVersion: tls.VersionTLS12}
		if o.CAFile != "" {
			pem, err := os.ReadFile(o.CAFile)
			if err != nil {
				return nil, fmt.Errorf("OTLP collector roots: %w", err)
			}
			cfg.RootCAs = x509.NewCertPool()
			if !cfg.RootCAs.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("OTLP collector roots %s: no PEM certificate", o.CAFile)
			}
		}
		exporterOpts = append(exporterOpts, otlptracegrpc.WithTLSCredentials(credentials.NewTLS(cfg)))
	}
	// Exporting is asynchronous: the exporter dials lazily and a collector
	// that is down costs dropped spans, never a failed start or call.
	exp, err := otlptracegrpc.New(ctx, exporterOpts...)
	if err != nil {
		return nil, fmt.Errorf("OTLP exporter: %w", err)
	}
	// The SDK reports export failures through otel's global handler, by
	// default in its own format on stderr: into the process's log instead.
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) { log.Warn("tracing: spans not exported", "err", err) }))
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exp),
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(o.SampleRatio))),
		sdktrace.WithResource(resource.NewSchemaless(
			attribute.String("service.name", service),
			attribute.String("service.version", version),
		)),
	)
	log.Info("tracing: sending spans over OTLP", "endpoint", o.Endpoint, "insecure", o.Insecure, "sample_ratio", o.SampleRatio)
	return &Provider{TracerProvider: tp, ForceFlush: tp.ForceFlush, Shutdown: tp.Shutdown}, nil
}
