package service

import (
	"crypto/tls"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/engine"
)

// TestCompletedCountsEachVersionAndSuite: the counters kept by version and
// suite count each under its own labels, however they interleave.
func TestCompletedCountsEachVersionAndSuite(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := newHandshakeMetrics(reg)
	for _, s := range []engine.Session{
		{Version: tls.VersionTLS12, CipherSuite: tls.TLS_RSA_WITH_AES_128_GCM_SHA256, Resumed: true},
		{Version: tls.VersionTLS13, CipherSuite: tls.TLS_AES_128_GCM_SHA256},
		{Version: tls.VersionTLS12, CipherSuite: tls.TLS_RSA_WITH_AES_128_GCM_SHA256},
		{Version: tls.VersionTLS12, CipherSuite: tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, Resumed: true},
		{Version: tls.VersionTLS13, CipherSuite: tls.TLS_AES_128_GCM_SHA256, Resumed: true},
	} {
		m.completed(&s)
	}
	assert.Equal(t, 2.0, count(t, m.completedTotal.WithLabelValues("TLS 1.2", "TLS_RSA_WITH_AES_128_GCM_SHA256")))
	assert.Equal(t, 1.0, count(t, m.completedTotal.WithLabelValues("TLS 1.2", "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256")))
	assert.Equal(t, 2.0, count(t, m.completedTotal.WithLabelValues("TLS 1.3", "TLS_AES_128_GCM_SHA256")))
	assert.Equal(t, 2.0, count(t, m.resumedTotal.WithLabelValues("TLS 1.2")))
	assert.Equal(t, 1.0, count(t, m.resumedTotal.WithLabelValues("TLS 1.3")))
	families, err := reg.Gather()
	require.NoError(t, err)
	for _, f := range families {
		if f.GetName() == "handshaked_handshakes_completed_total" {
			assert.Len(t, f.GetMetric(), 3, "one series per version and suite")
		}
	}
}

func count(t *testing.T, c prometheus.Counter) float64 {
	var out dto.Metric
	require.NoError(t, c.Write(&out))
	return out.GetCounter().GetValue()
}
