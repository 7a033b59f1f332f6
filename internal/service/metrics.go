package service

import (
	"crypto/tls"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/handshaked/handshaked/internal/buildinfo"
	"github.com/handshaked/handshaked/internal/engine"
	"github.com/handshaked/handshaked/internal/engine/record"
)

// buildInfoGauge is handshaked_build_info{version,revision,goversion} 1, the
// usual way to put a build on dashboards and to join it to other series.
func buildInfoGauge(info buildinfo.Info) prometheus.Collector {
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "handshaked_build_info", Help: "The running build: module version, VCS revision and Go version; always 1.",
		ConstLabels: prometheus.Labels{"version": info.Version, "revision": info.Revision, "goversion": info.GoVersion},
	}, func() float64 { return 1 })
}

// handshakeMetrics are the Handshake API's Prometheus metrics.
type handshakeMetrics struct {
	startedTotal   prometheus.Counter
	completedTotal *prometheus.CounterVec
	failedTotal    *prometheus.CounterVec
	stepSeconds    prometheus.Histogram
	sessions       prometheus.Gauge
	resumedTotal   *prometheus.CounterVec
	keyOperations  *prometheus.CounterVec
}

func newHandshakeMetrics(reg prometheus.Registerer) *handshakeMetrics {
	m := &handshakeMetrics{
		startedTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "handshaked_handshakes_started_total", Help: "Handshakes started.",
		}),
		completedTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "handshaked_handshakes_completed_total", Help: "Handshakes completed, by version and cipher suite.",
		}, []string{"version", "cipher_suite"}),
		failedTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "handshaked_handshakes_failed_total", Help: "Handshakes failed, by the alert sent or received.",
		}, []string{"alert"}),
		stepSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "handshaked_handshake_step_seconds", Help: "Latency of one engine step, private-key operations included.",
			Buckets: prometheus.ExponentialBuckets(0.00005, 2, 16),
		}),
		sessions: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "handshaked_handshake_sessions", Help: "Handshake sessions held (unary and streamed).",
		}),
	}
	m.resumedTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "handshaked_handshakes_resumed_total", Help: "Handshakes completed by resuming a session from a ticket (also counted in handshaked_handshakes_completed_total), by version.",
	}, []string{"version"})
	m.keyOperations = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "handshaked_handshake_key_operations_total", Help: "Private-key operations made by handshakes, by operation (sign, decrypt); a resumed handshake makes none.",
	}, []string{"operation"})
	reg.MustRegister(m.startedTotal, m.completedTotal, m.failedTotal, m.stepSeconds, m.sessions, m.resumedTotal, m.keyOperations)
	return m
}

func (m *handshakeMetrics) completed(s *engine.Session) {
	version := "TLS 1.2"
	if s.Version == tls.VersionTLS13 {
		version = "TLS 1.3"
	}
	m.completedTotal.WithLabelValues(version, record.SuiteName(s.CipherSuite)).Inc()
	if s.Resumed {
		m.resumedTotal.WithLabelValues(version).Inc()
	}
}

func (m *handshakeMetrics) failed(a engine.Alert) {
	m.failedTotal.WithLabelValues(a.String()).Inc()
}
