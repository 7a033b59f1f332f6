package main

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	handshaked "github.com/handshaked/handshaked/clients/go"
	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/metricsdoc"
	"github.com/handshaked/handshaked/internal/service"
	"github.com/handshaked/handshaked/internal/servicetest"
	"github.com/handshaked/handshaked/internal/testenv"
)

// TestUnaryOverReplicas: handshake-edge -unary with -handshaked naming
// three replicas keeps serving TLS 1.2 and 1.3 clients while replicas are
// killed and restarted in turn: the steps a killed replica dropped are
// retried on another, and /metrics (-metrics-listen) counts them. curl
// fetches the echo page through it.
func TestUnaryOverReplicas(t *testing.T) {
	var key servicetest.ServerKey
	replicas := servicetest.StartReplicas(t, 3, service.Options{}, func(s *servicetest.Server) {
		key = s.ServerKey(t, "edge-ec", "p256-pkcs8.pem", "ec.test")
		// The step-token key is made on first use: here, so that every
		// copy of the store holds it.
		_, err := handshaked.New(s.Conn).StartStatelessHandshake(context.Background(), &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: key.ID}}}, nil)
		require.NoError(t, err)
	})
	addr, log := startEdge(t, "-handshaked", servicetest.ListTarget(replicas), "-unary", "-key", key.ID, "-metrics-listen", "127.0.0.1:0")
	m := regexp.MustCompile(`msg="serving metrics" addr=(\S+)`).FindStringSubmatch(log.String())
	require.NotNil(t, m, "no metrics address in the log:\n%s", log)
	metrics := "http://" + m[1]
	edgeMetric := func(name string) float64 { return servicetest.MetricSum(t, http.DefaultClient, metrics, name) }

	get := func(version uint16) error {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", addr,
			&tls.Config{RootCAs: key.Pool, ServerName: key.Name, MinVersion: version, MaxVersion: version})
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(c, "GET /?close HTTP/1.0\r\n\r\n"); err != nil {
			return err
		}
		_, err = io.ReadAll(c)
		return err
	}
	load := servicetest.StartLoad(t, 6, func(_ context.Context, g int) error {
		if g%2 == 0 {
			return get(tls.VersionTLS13)
		}
		return get(tls.VersionTLS12)
	})
	back := func(r *servicetest.Replica) bool {
		return servicetest.Metric(t, http.DefaultClient, r.Server().RESTURL, "handshaked_handshakes_started_total") > 0
	}
	servicetest.KillInTurn(t, replicas, load, back, func(int) bool { return edgeMetric("handshake_edge_step_retries_total") > 0 })
	done, failed := load.Stop()
	retries, failures := edgeMetric("handshake_edge_step_retries_total"), edgeMetric("handshake_edge_step_failures_total")
	t.Logf("%d handshakes, %d failed; %v steps failed, %v retried", done, failed, failures, retries)
	assert.Positive(t, retries, "no kill caught a step in flight")
	assert.Equal(t, failures, retries, "every failed step was retried")
	assert.Zero(t, failed, "a handshake whose step a killed replica dropped goes on on another")

	t.Run("documented", func(t *testing.T) {
		doc, err := os.ReadFile(metricsdoc.Path())
		require.NoError(t, err)
		_, section, ok := strings.Cut(string(doc), "\n## handshake-edge\n")
		require.True(t, ok, "docs/metrics.md has no handshake-edge section")
		rows, err := metricsdoc.Parse(section)
		require.NoError(t, err)
		resp, err := http.Get(metrics + "/metrics")
		require.NoError(t, err)
		defer resp.Body.Close()
		parser := expfmt.NewTextParser(model.UTF8Validation)
		families, err := parser.TextToMetricFamilies(resp.Body)
		require.NoError(t, err)
		assert.Empty(t, metricsdoc.Mismatches(rows, families, "handshake_edge_"), "docs/metrics.md's handshake-edge section against the edge's /metrics")
	})

	t.Run("curl", func(t *testing.T) {
		curl := testenv.LookPath(t, "curl")
		ca := filepath.Join(t.TempDir(), "ca.pem")
		require.NoError(t, os.WriteFile(ca, []byte(key.CertPEM), 0o600))
		_, port, _ := net.SplitHostPort(addr)
		for range 3 { // one start on each replica, round-robin
			out, err := exec.Command(curl, "-fsS", "--max-time", "30", "--cacert", ca, "--resolve", "ec.test:"+port+":127.0.0.1", "https://ec.test:"+port+"/").CombinedOutput()
			require.NoError(t, err, "curl:\n%s", out)
			assert.Contains(t, string(out), "Server name: ec.test")
		}
	})
}
