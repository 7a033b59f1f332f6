package service

import (
	"context"
	"crypto/tls"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/handshaked/handshaked/internal/buildinfo"
	"github.com/handshaked/handshaked/internal/engine"
	"github.com/handshaked/handshaked/internal/engine/record"
	"github.com/handshaked/handshaked/internal/keyvault"
)

// buildInfoGauge is handshaked_build_info{version,revision,goversion} 1, the
// usual way to put a build on dashboards and to join it to other series.
func buildInfoGauge(info buildinfo.Info) prometheus.Collector {
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "handshaked_build_info", Help: "The running build: module version, VCS revision and Go version; always 1.",
		ConstLabels: prometheus.Labels{"version": info.Version, "revision": info.Revision, "goversion": info.GoVersion},
	}, func() float64 { return 1 })
}

// backendDestroysStuckGauge is handshaked_backend_destroys_stuck: the keys
// this replica was left to destroy in their key backends and could not
// (keyvault.Vault.StuckBackendDestroys). The log says each one once, at
// ERROR; the gauge is what an alert watches.
func backendDestroysStuckGauge(vault *keyvault.Vault) prometheus.Collector {
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "handshaked_backend_destroys_stuck",
		Help: "Keys this replica was left to destroy in their key backends (destroyed versions, creations whose version never reached the store) and could not: the backend is not configured here, or fails. The log names each at ERROR.",
	}, func() float64 { return float64(vault.StuckBackendDestroys()) })
}

// handshakeMetrics are the Handshake API's Prometheus metrics.
type handshakeMetrics struct {
	startedTotal   prometheus.Counter
	completedTotal *prometheus.CounterVec
	failedTotal    *prometheus.CounterVec
	stepSeconds    prometheus.Histogram
	sessions       prometheus.Gauge
	resumedTotal   *prometheus.CounterVec
	// callerFinishedTotal counts the handshakes completed before
	// the client's Finished, which the caller verifies
	// (caller_verifies_finished): a refusal there is the caller's to count.
	callerFinishedTotal prometheus.Counter
	// completedBy and resumedBy keep the counters of completedTotal and
	// resumedTotal by version<<16|suite and by version: a CounterVec
	// hashes its label values and takes a lock to find one, about a
	// microsecond per completed handshake (issue 12).
	completedBy, resumedBy counterCache
}

// counterCache holds counters of a CounterVec by a number standing for
// their labels: a map replaced whole when one is added (there are a few
// versions and suites), read without a lock.
type counterCache struct {
	mu sync.Mutex // orders the writers
	m  atomic.Pointer[map[uint32]prometheus.Counter]
}

// get is the counter key stands for, labels' the first time.
func (c *counterCache) get(key uint32, vec *prometheus.CounterVec, labels func() []string) prometheus.Counter {
	if m := c.m.Load(); m != nil {
		if ctr, ok := (*m)[key]; ok {
			return ctr
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var next map[uint32]prometheus.Counter
	if m := c.m.Load(); m != nil {
		if ctr, ok := (*m)[key]; ok {
			return ctr
		}
		next = maps.Clone(*m)
	} else {
		next = map[uint32]prometheus.Counter{}
	}
	ctr := vec.WithLabelValues(labels()...)
	next[key] = ctr
	c.m.Store(&next)
	return ctr
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
	m.callerFinishedTotal = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "handshaked_handshakes_caller_finished_total", Help: "Handshakes (TLS 1.3, TLS 1.2 resumed) completed before the client's Finished, left to the caller to verify (also counted in handshaked_handshakes_completed_total).",
	})
	reg.MustRegister(m.startedTotal, m.completedTotal, m.failedTotal, m.stepSeconds, m.sessions, m.resumedTotal, m.callerFinishedTotal)
	return m
}

func (m *handshakeMetrics) completed(s *engine.Session) {
	m.completedBy.get(uint32(s.Version)<<16|uint32(s.CipherSuite), m.completedTotal, func() []string {
		return []string{versionLabel(s.Version), record.SuiteName(s.CipherSuite)}
	}).Inc()
	if s.Resumed {
		m.resumedBy.get(uint32(s.Version), m.resumedTotal, func() []string { return []string{versionLabel(s.Version)} }).Inc()
	}
	if s.PendingFinished != nil {
		m.callerFinishedTotal.Inc()
	}
}

// versionLabel is the version label of the handshake metrics.
func versionLabel(v uint16) string {
	if v == tls.VersionTLS13 {
		return "TLS 1.3"
	}
	return "TLS 1.2"
}

func (m *handshakeMetrics) failed(a engine.Alert) {
	m.failedTotal.WithLabelValues(a.String()).Inc()
}

// keyMetrics time the vault's private-key operations and key changes. Each
// histogram's _count is the count of operations by outcome, so there is no
// separate counter to drift from it. The outcome is the gRPC code the
// operation ends with; a TLS-premaster decryption whose padding is wrong
// succeeds (implicit rejection, RFC 5246 §7.4.7.1), so neither its outcome
// nor its latency tells a good ciphertext from a bad one. Calls refused
// before they reach the vault (malformed, unauthorized, past a limit) are
// not operations; handshaked_calls_refused_total counts the refusals.
type keyMetrics struct {
	operations *prometheus.HistogramVec
	changes    *prometheus.HistogramVec
}

// newKeyMetrics registers the key metrics with reg; nil leaves them
// unregistered (handlers built outside New).
func newKeyMetrics(reg prometheus.Registerer) *keyMetrics {
	m := &keyMetrics{
		operations: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "handshaked_key_operation_seconds",
			Help: "Latency of private-key operations (sign, decrypt), by key algorithm, source (api, handshake) and outcome (gRPC code).",
			// 10 µs (Ed25519) to 1.3 s (RSA-4096 on a loaded host).
			Buckets: prometheus.ExponentialBuckets(0.00001, 2, 18),
		}, []string{"operation", "algorithm", "source", "outcome"}),
		changes: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "handshaked_key_change_seconds",
			Help: "Latency of key changes (create, import, rotate, enable, disable, destroy, attach_chain), durable write included, by key algorithm and outcome (gRPC code).",
			// 0.5 ms to 16 s: RSA-4096 generation, an fsync on a slow disk.
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"operation", "algorithm", "outcome"}),
	}
	if reg != nil {
		reg.MustRegister(m.operations, m.changes)
	}
	return m
}

// Sources of a private-key operation, the source label of
// handshaked_key_operation_seconds.
const (
	sourceAPI       = "api"       // the KeyVault API: Sign, Decrypt, SignStream, Batch, BatchStream
	sourceHandshake = "handshake" // the engine, in a handshake the service runs
)

const algorithmUnknown = "unknown"

// algorithmLabel names the algorithm of version n (0: the primary) of key
// id, "unknown" when the vault has no such version.
func algorithmLabel(ctx context.Context, vault *keyvault.Vault, id string, n uint32) string {
	alg, err := vault.VersionAlgorithm(ctx, id, n)
	if err != nil {
		return algorithmUnknown
	}
	return alg.String()
}

// sign signs with version (0: the primary) of key id, timed; it returns
// the version that signed, for the response to name. The vault names the
// version and its algorithm from the lookup it signs with: a signature
// costs one lookup of the key, not three (issue 12, h4's note).
func (m *keyMetrics) sign(ctx context.Context, vault *keyvault.Vault, source, id string, version uint32, scheme tls.SignatureScheme, input []byte, isDigest bool) ([]byte, uint32, error) {
	start := time.Now()
	sig, used, err := vault.SignVersion(ctx, id, version, scheme, input, isDigest)
	alg := algorithmUnknown
	if used.Number != 0 {
		alg = used.Algorithm.String()
	}
	m.operations.WithLabelValues("sign", alg, source, codeOf(err).String()).Observe(time.Since(start).Seconds())
	return sig, used.Number, err
}

// decrypt is sign's counterpart for vault.Decrypt.
func (m *keyMetrics) decrypt(ctx context.Context, vault *keyvault.Vault, source, id string, version uint32, mode keyvault.DecryptMode, ciphertext []byte, clientVersion uint16) ([]byte, uint32, error) {
	start := time.Now()
	n, err := vault.ResolveVersion(ctx, id, version)
	var plaintext []byte
	if err == nil {
		plaintext, err = vault.Decrypt(ctx, id, n, mode, ciphertext, clientVersion)
	}
	m.operations.WithLabelValues("decrypt", algorithmLabel(ctx, vault, id, n), source, codeOf(err).String()).Observe(time.Since(start).Seconds())
	return plaintext, n, err
}

// changed records a key change of version (0: the primary) of key id that
// started at start and ended with err. alg is the algorithm the change
// names, or AlgorithmUnspecified: then the vault's record of the version
// names it.
func (m *keyMetrics) changed(ctx context.Context, vault *keyvault.Vault, op string, start time.Time, alg keyvault.Algorithm, id string, version uint32, err error) {
	label := alg.String()
	if alg == keyvault.AlgorithmUnspecified {
		label = algorithmLabel(ctx, vault, id, version)
	}
	m.changes.WithLabelValues(op, label, codeOf(err).String()).Observe(time.Since(start).Seconds())
}
