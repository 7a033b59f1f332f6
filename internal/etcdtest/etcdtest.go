// Package etcdtest starts a real etcd cluster inside a test: N members of
// the embedded etcd server (go.etcd.io/etcd/server/v3/embed) on loopback,
// forming one Raft cluster, with everything they write in t.TempDir(). A
// test can stop and restart single members (to take quorum away and give it
// back) and the cluster stops with the test. Each member's client URL is a
// TCP forwarder in front of the member, so that stopping it cuts its
// clients off at once, as a crash or a partition would.
package etcdtest

import (
	"crypto/tls"
	"fmt"
	"io"
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
	t         testing.TB
	members   []*member
	scheme    string
	tls       *ServerTLS
	maxTxnOps uint
	maxBytes  uint
	quota     int64
	// log collects what the members log at error level, shown only when
	// the test fails: stopping a member logs closed listeners as errors.
	log    testenv.Buffer
	logger *zap.Logger
}

type member struct {
	name      string
	dir       string
	clientURL url.URL // the front's: what clients dial
	serveURL  url.URL // the member's own client URL, behind the front
	peerURL   url.URL

	mu    sync.Mutex
	etcd  *embed.Etcd // nil while stopped
	front *front
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

// WithMaxTxnOps sets the members' --max-txn-ops (etcd's default: 128).
func WithMaxTxnOps(n uint) Option {
	return func(c *Cluster) { c.maxTxnOps = n }
}

// WithMaxRequestBytes sets the members' --max-request-bytes (etcd's
// default: 1.5 MiB).
func WithMaxRequestBytes(n uint) Option {
	return func(c *Cluster) { c.maxBytes = n }
}

// WithQuotaBackendBytes sets the members' --quota-backend-bytes (etcd's
// default: 2 GiB), past which etcd raises its NOSPACE alarm.
func WithQuotaBackendBytes(n int64) Option {
	return func(c *Cluster) { c.quota = n }
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
	ports := testenv.FreePorts(t, 3*n)
	for i := range n {
		m := &member{
			name:      fmt.Sprintf("m%d", i),
			dir:       filepath.Join(root, fmt.Sprintf("m%d", i)),
			clientURL: url.URL{Scheme: c.scheme, Host: fmt.Sprintf("127.0.0.1:%d", ports[3*i])},
			serveURL:  url.URL{Scheme: c.scheme, Host: fmt.Sprintf("127.0.0.1:%d", ports[3*i+1])},
			peerURL:   url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", ports[3*i+2])},
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
	cfg.ListenClientUrls = []url.URL{m.serveURL}
	cfg.AdvertiseClientUrls = []url.URL{m.clientURL}
	cfg.ListenPeerUrls = []url.URL{m.peerURL}
	cfg.AdvertisePeerUrls = []url.URL{m.peerURL}
	cfg.InitialCluster = cluster
	cfg.InitialClusterToken = "etcdtest"
	if c.maxTxnOps > 0 {
		cfg.MaxTxnOps = c.maxTxnOps
	}
	if c.maxBytes > 0 {
		cfg.MaxRequestBytes = c.maxBytes
	}
	if c.quota > 0 {
		cfg.QuotaBackendBytes = c.quota
	}
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
	f, err := listenFront(m.clientURL.Host, m.serveURL.Host)
	if err != nil {
		return fmt.Errorf("etcdtest: start member %s: %w", m.name, err)
	}
	e, err := embed.StartEtcd(c.config(m, cluster))
	if err != nil {
		f.close()
		return fmt.Errorf("etcdtest: start member %s: %w", m.name, err)
	}
	m.mu.Lock()
	m.etcd, m.front = e, f
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

// Stop stops member i (its data stays for Restart). Its clients are cut
// off at once, as by a crash.
func (c *Cluster) Stop(i int) {
	m := c.members[i]
	m.mu.Lock()
	e, f := m.etcd, m.front
	m.etcd, m.front = nil, nil
	m.mu.Unlock()
	if f != nil {
		f.close()
	}
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

// front forwards a member's client port to the port the member serves on,
// so that stopping the member cuts its clients off at once: etcd's own
// shutdown waits up to seven seconds for open watch streams to end.
type front struct {
	l  net.Listener
	wg sync.WaitGroup

	mu     sync.Mutex
	conns  map[net.Conn]bool
	closed bool
}

func listenFront(addr, target string) (*front, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	f := &front{l: l, conns: make(map[net.Conn]bool)}
	f.wg.Go(func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			f.wg.Go(func() { f.forward(conn, target) })
		}
	})
	return f, nil
}

func (f *front) forward(conn net.Conn, target string) {
	up, err := net.Dial("tcp", target)
	if err != nil {
		conn.Close()
		return
	}
	if !f.track(conn, up) {
		return
	}
	var wg sync.WaitGroup
	for _, p := range [][2]net.Conn{{conn, up}, {up, conn}} {
		wg.Go(func() {
			_, _ = io.Copy(p[0], p[1])
			// One direction ended: end the other.
			p[0].Close()
			p[1].Close()
		})
	}
	wg.Wait()
	f.mu.Lock()
	delete(f.conns, conn)
	delete(f.conns, up)
	f.mu.Unlock()
}

// track registers conns for close; false (and closed) once it was called.
func (f *front) track(conns ...net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		for _, c := range conns {
			c.Close()
		}
		return false
	}
	for _, c := range conns {
		f.conns[c] = true
	}
	return true
}

func (f *front) close() {
	f.l.Close()
	f.mu.Lock()
	f.closed = true
	for c := range f.conns {
		c.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
}
