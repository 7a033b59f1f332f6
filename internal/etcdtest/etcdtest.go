// Package etcdtest starts a real etcd cluster inside a test: N members of
// the embedded etcd server (go.etcd.io/etcd/server/v3/embed) on loopback,
// forming one Raft cluster, with everything they write in t.TempDir(). A
// test can stop and restart single members (to take quorum away and give it
// back) and the cluster stops with the test.
package etcdtest

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/handshaked/handshaked/internal/testenv"
)

// readyTimeout bounds the wait for a member to join its cluster: generous,
// since eight test runs may share two cores.
const readyTimeout = 60 * time.Second

// Cluster is an etcd cluster of embedded members.
type Cluster struct {
	t       testing.TB
	members []*member
	scheme  string
	tls     *ServerTLS
	// log collects what the members log at error level, shown only when
	// the test fails: stopping a member logs closed listeners as errors.
	log    testenv.Buffer
	logger *zap.Logger
}

type member struct {
	name      string
	dir       string
	clientURL url.URL
	peerURL   url.URL

	mu   sync.Mutex
	etcd *embed.Etcd // nil while stopped
}

// ServerTLS makes the members serve their clients over TLS (PEM): the
// server certificate with its key and, when ClientCA is set, a CA whose
// certificates the members require of every client (mutual TLS, as an
// operator's etcd would).
type ServerTLS struct {
	CertPEM, KeyPEM, ClientCAPEM []byte
}

// Option changes how Start configures the cluster.
type Option func(*Cluster)

// WithServerTLS makes the members' client URLs https with s.
func WithServerTLS(s ServerTLS) Option {
	return func(c *Cluster) { c.tls = &s; c.scheme = "https" }
}

// Start starts an n-member cluster, waits until every member serves, and
// stops it when the test ends.
func Start(t testing.TB, n int, opts ...Option) *Cluster {
	t.Helper()
	c := &Cluster{t: t, scheme: "http"}
	for _, o := range opts {
		o(c)
	}
	c.logger = zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(&c.log), zapcore.ErrorLevel))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("etcd members logged:\n%s", c.log.String())
		}
	})
	root := t.TempDir()
	ports := freePorts(t, 2*n)
	for i := range n {
		m := &member{
			name:      fmt.Sprintf("m%d", i),
			dir:       filepath.Join(root, fmt.Sprintf("m%d", i)),
			clientURL: url.URL{Scheme: c.scheme, Host: fmt.Sprintf("127.0.0.1:%d", ports[2*i])},
			peerURL:   url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", ports[2*i+1])},
		}
		c.members = append(c.members, m)
	}
	t.Cleanup(c.stopAll)
	cluster := c.initialCluster()
	for _, m := range c.members {
		require.NoError(t, os.MkdirAll(m.dir, 0o700))
		if c.tls != nil {
			require.NoError(t, os.WriteFile(filepath.Join(m.dir, "server.pem"), c.tls.CertPEM, 0o600))
			require.NoError(t, os.WriteFile(filepath.Join(m.dir, "server-key.pem"), c.tls.KeyPEM, 0o600))
			if c.tls.ClientCAPEM != nil {
				require.NoError(t, os.WriteFile(filepath.Join(m.dir, "client-ca.pem"), c.tls.ClientCAPEM, 0o600))
			}
		}
		// A member of a new cluster does not wait for its peers in
		// StartEtcd, only in ReadyNotify: start all, then wait.
		require.NoError(t, c.start(m, cluster))
	}
	for i := range c.members {
		c.waitReady(i)
	}
	return c
}

func (c *Cluster) config(m *member, cluster string) *embed.Config {
	cfg := embed.NewConfig()
	cfg.Name = m.name
	cfg.Dir = filepath.Join(m.dir, "data")
	cfg.LogLevel = "error"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(c.logger)
	cfg.ListenClientUrls = []url.URL{m.clientURL}
	cfg.AdvertiseClientUrls = []url.URL{m.clientURL}
	cfg.ListenPeerUrls = []url.URL{m.peerURL}
	cfg.AdvertisePeerUrls = []url.URL{m.peerURL}
	cfg.InitialCluster = cluster
	cfg.InitialClusterToken = "etcdtest"
	if c.tls != nil {
		cfg.ClientTLSInfo.CertFile = filepath.Join(m.dir, "server.pem")
		cfg.ClientTLSInfo.KeyFile = filepath.Join(m.dir, "server-key.pem")
		if c.tls.ClientCAPEM != nil {
			cfg.ClientTLSInfo.TrustedCAFile = filepath.Join(m.dir, "client-ca.pem")
			cfg.ClientTLSInfo.ClientCertAuth = true
		}
	}
	return cfg
}

func (c *Cluster) initialCluster() string {
	var initial []string
	for _, m := range c.members {
		initial = append(initial, m.name+"="+m.peerURL.String())
	}
	return strings.Join(initial, ",")
}

func (c *Cluster) start(m *member, cluster string) error {
	e, err := embed.StartEtcd(c.config(m, cluster))
	if err != nil {
		return fmt.Errorf("etcdtest: start member %s: %w", m.name, err)
	}
	m.mu.Lock()
	m.etcd = e
	m.mu.Unlock()
	return nil
}

func (c *Cluster) waitReady(i int) {
	c.t.Helper()
	m := c.members[i]
	m.mu.Lock()
	e := m.etcd
	m.mu.Unlock()
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		c.t.Fatalf("etcdtest: member %s failed: %v", m.name, err)
	case <-time.After(readyTimeout):
		c.t.Fatalf("etcdtest: member %s not ready after %v (has its cluster quorum?)", m.name, readyTimeout)
	}
}

// Size is the number of members, stopped or not.
func (c *Cluster) Size() int { return len(c.members) }

// Endpoints are the client URLs of all members, stopped or not, as an
// operator would list them.
func (c *Cluster) Endpoints() []string {
	eps := make([]string, len(c.members))
	for i := range c.members {
		eps[i] = c.Endpoint(i)
	}
	return eps
}

// Endpoint is member i's client URL.
func (c *Cluster) Endpoint(i int) string { return c.members[i].clientURL.String() }

// Stop stops member i (its data stays for Restart).
func (c *Cluster) Stop(i int) {
	m := c.members[i]
	m.mu.Lock()
	e := m.etcd
	m.etcd = nil
	m.mu.Unlock()
	if e != nil {
		e.Close()
	}
}

// Restart starts stopped member i again on its data and client URL, and
// waits until it serves, which needs a quorum of the cluster running.
func (c *Cluster) Restart(i int) {
	c.t.Helper()
	m := c.members[i]
	m.mu.Lock()
	running := m.etcd != nil
	m.mu.Unlock()
	if running {
		c.t.Fatalf("etcdtest: Restart(%d): member %s is running", i, m.name)
	}
	require.NoError(c.t, c.start(m, c.initialCluster()))
	c.waitReady(i)
}

// Client returns a client of all members, closed with the test. With
// WithServerTLS, tlsConfig must be given (trusting the server certificate
// and, for mutual TLS, holding a client certificate); else pass nil.
func (c *Cluster) Client(t testing.TB, tlsConfig *tls.Config) *clientv3.Client {
	t.Helper()
	return ClientOf(t, tlsConfig, c.Endpoints()...)
}

// ClientOf returns a client of the given endpoints (one member, to read
// what that member serves), closed with the test.
func ClientOf(t testing.TB, tlsConfig *tls.Config, endpoints ...string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: 5 * time.Second,
		TLS:         tlsConfig,
		Logger:      zap.NewNop(),
	})
	require.NoError(t, err)
	t.Cleanup(func() { cli.Close() })
	return cli
}

// stopAll stops the running members at once: one by one, the last ones
// would lose quorum and each Close would wait out a leadership transfer.
func (c *Cluster) stopAll() {
	var wg sync.WaitGroup
	for i := range c.members {
		wg.Go(func() { c.Stop(i) })
	}
	wg.Wait()
}

// freePorts reserves n loopback ports by listening on port 0 at once (so
// they differ) and releasing them for the members to take.
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	ports := make([]int, n)
	var ls []net.Listener
	for i := range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		ls = append(ls, l)
		ports[i] = l.Addr().(*net.TCPAddr).Port
	}
	for _, l := range ls {
		l.Close()
	}
	return ports
}
