package main

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"path"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc/status"

	handshaked "github.com/handshaked/handshaked/clients/go"
)

// edgeMetrics counts how the edge's unary handshake steps fared against
// the replicas of handshaked: a replica killed in the middle of a handshake
// shows as failed attempts that were retried on another one, a fleet that
// is down as failed attempts that were not.
type edgeMetrics struct {
	reg      *prometheus.Registry
	failures *prometheus.CounterVec
	retries  *prometheus.CounterVec
}

func newEdgeMetrics() *edgeMetrics {
	m := &edgeMetrics{
		reg: prometheus.NewRegistry(),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "handshake_edge_step_failures_total",
			Help: "Failed attempts of unary handshake steps sent to handshaked (StartHandshake, StepHandshake), by gRPC code, retried or not.",
		}, []string{"method", "code"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "handshake_edge_step_retries_total",
			Help: "Unary handshake steps sent again, to another replica when there is one, after an attempt failed with UNAVAILABLE.",
		}, []string{"method"}),
	}
	m.reg.MustRegister(m.failures, m.retries, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// observe is the client's retry observer (handshaked.WithRetryObserver).
func (m *edgeMetrics) observe(method string, err error, retried bool) {
	name := path.Base(method)
	m.failures.WithLabelValues(name, status.Code(err).String()).Inc()
	if retried {
		m.retries.WithLabelValues(name).Inc()
	}
}

// dialOption has the client report to m.
func (m *edgeMetrics) dialOption() handshaked.Option { return handshaked.WithRetryObserver(m.observe) }

// serve serves /metrics on lis until ctx ends.
func (m *edgeMetrics) serve(ctx context.Context, lis net.Listener, log *slog.Logger) {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	if err := serveHTTP(ctx, srv, lis); err != nil {
		log.Error("metrics listener failed", "err", err)
	}
}
