package service_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/audit"
	"github.com/handshaked/handshaked/internal/authz"
	"github.com/handshaked/handshaked/internal/keyvault"
	"github.com/handshaked/handshaked/internal/service"
	"github.com/handshaked/handshaked/internal/servicetest"
	"github.com/handshaked/handshaked/internal/testpki"
)

// Caller identities of the production-mode tests, one per way a
// certificate can name its holder.
const (
	idEdge    = "spiffe://test.example/edge-a" // URI SAN
	idAdmin   = "admin.test.example"           // DNS SAN
	idManager = "manager"                      // subject CN only
	idNobody  = "spiffe://test.example/nobody" // valid, granted nothing
)

// testPolicy: the edge may use key-a and key-rsa; the manager manages keys
// labelled team=a; the admin does anything.
const testPolicy = `{"grants": [
  {"identities": ["` + idEdge + `"], "rights": ["use"], "keys": ["key-a", "key-rsa"]},
  {"identities": ["` + idManager + `"], "rights": ["manage"], "labels": {"team": "a"}},
  {"identities": ["` + idAdmin + `"], "rights": ["admin"]}
]}`

// pki holds the test CAs and certificates, made once per package.
type pki struct {
	ca, otherCA *testpki.CA
	server      *testpki.Leaf
	clients     map[string]*testpki.Leaf // by name: edge, admin, manager, nobody, expired, foreign
}

var (
	pkiOnce sync.Once
	pkiVal  *pki
	pkiErr  error
)

func testPKI(t testing.TB) *pki {
	t.Helper()
	pkiOnce.Do(func() {
		p := &pki{clients: map[string]*testpki.Leaf{}}
		if p.ca, pkiErr = testpki.NewCA("handshaked test CA"); pkiErr != nil {
			return
		}
		if p.otherCA, pkiErr = testpki.NewCA("some other CA"); pkiErr != nil {
			return
		}
		if p.server, pkiErr = p.ca.Server(); pkiErr != nil {
			return
		}
		valid := time.Now().Add(24 * time.Hour)
		for name, c := range map[string]struct {
			ca       *testpki.CA
			id       string
			dns      bool
			notAfter time.Time
		}{
			"edge":    {p.ca, idEdge, false, valid},
			"admin":   {p.ca, idAdmin, true, valid},
			"manager": {p.ca, idManager, false, valid},
			"nobody":  {p.ca, idNobody, false, valid},
			"expired": {p.ca, idEdge, false, time.Now().Add(-time.Hour)},
			// Another CA's certificate claiming to be the admin.
			"foreign": {p.otherCA, idAdmin, true, valid},
		} {
			if p.clients[name], pkiErr = c.ca.Client(c.id, c.dns, c.notAfter); pkiErr != nil {
				return
			}
		}
		pkiVal = p
	})
	require.NoError(t, pkiErr)
	return pkiVal
}

// secureServer is a production-mode service on loopback: TLS files, a
// policy file and an audit log file in a temporary directory.
type secureServer struct {
	srv      *service.Server
	vault    *keyvault.Vault
	grpcAddr string
	restURL  string
	files    service.TLSFiles
	policy   string // path
	audit    string // path
	pki      *pki
}

type secureOptions struct {
	policy         string
	limits         service.Limits
	handshake      service.HandshakeOptions
	reloadInterval time.Duration // 0: no polling (tests reload explicitly)
	tickets        *service.TicketOptions
}

func writeFile(t testing.TB, path string, data []byte, mode os.FileMode) {
	t.Helper()
	require.NoError(t, os.WriteFile(path, data, mode))
	require.NoError(t, os.Chmod(path, mode))
}

func startSecure(t testing.TB, o secureOptions) *secureServer {
	t.Helper()
	p := testPKI(t)
	dir := t.TempDir()
	s := &secureServer{pki: p,
		files: service.TLSFiles{
			CertFile:     filepath.Join(dir, "server.crt"),
			KeyFile:      filepath.Join(dir, "server.key"),
			ClientCAFile: filepath.Join(dir, "clients-ca.pem"),
		},
		policy: filepath.Join(dir, "policy.json"),
		audit:  filepath.Join(dir, "audit.log"),
	}
	writeFile(t, s.files.CertFile, p.server.CertPEM, 0o644)
	writeFile(t, s.files.KeyFile, p.server.KeyPEM, 0o600)
	writeFile(t, s.files.ClientCAFile, p.ca.PEM, 0o644)
	if o.policy == "" {
		o.policy = testPolicy
	}
	writeFile(t, s.policy, []byte(o.policy), 0o644)
	policy, err := authz.Open(s.policy)
	require.NoError(t, err)
	auditLog, err := audit.Open(s.audit)
	require.NoError(t, err)
	t.Cleanup(func() { auditLog.Close() }) // after the server's shutdown
	interval := o.reloadInterval
	if interval == 0 {
		interval = -1
	}
	srv := servicetest.Start(t, service.Options{TLS: &s.files, Policy: policy, Audit: auditLog, Limits: o.limits, Handshake: o.handshake, ReloadInterval: interval, Tickets: o.tickets})
	s.vault, s.srv, s.grpcAddr = srv.Vault, srv.Service, srv.GRPCAddr
	s.restURL = "https://" + strings.TrimPrefix(srv.RESTURL, "http://")
	return s
}

// clientTLS is the TLS configuration of a caller presenting the named
// client certificate ("" for none).
func (s *secureServer) clientTLS(t testing.TB, who string) *tls.Config {
	t.Helper()
	cfg := &tls.Config{RootCAs: s.pki.ca.Pool(), ServerName: "localhost"}
	if who != "" {
		leaf, ok := s.pki.clients[who]
		require.True(t, ok, "no client certificate %q", who)
		cfg.Certificates = []tls.Certificate{leaf.TLS}
	}
	return cfg
}

// dial connects to gRPC as who.
func (s *secureServer) dial(t testing.TB, who string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(s.grpcAddr, grpc.WithTransportCredentials(credentials.NewTLS(s.clientTLS(t, who))))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	return conn
}

func (s *secureServer) kv(t testing.TB, who string) pb.KeyVaultClient {
	return pb.NewKeyVaultClient(s.dial(t, who))
}

// httpClient calls REST as who.
func (s *secureServer) httpClient(t testing.TB, who string) *http.Client {
	t.Helper()
	tr := &http.Transport{TLSClientConfig: s.clientTLS(t, who), ForceAttemptHTTP2: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 20 * time.Second}
}

// restResult is a REST answer, or the transport error that kept it from
// coming.
type restResult struct {
	status    int
	body      []byte
	requestID string
	err       error
}

func (s *secureServer) rest(t testing.TB, who, method, path string, body any, header http.Header) restResult {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		require.NoError(t, err)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, s.restURL+path, rd)
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := s.httpClient(t, who).Do(req)
	if err != nil {
		return restResult{err: err}
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	return restResult{status: resp.StatusCode, body: raw, requestID: resp.Header.Get("Grpc-Metadata-X-Request-Id"), err: err}
}

// auditEntries reads the audit log written so far.
func (s *secureServer) auditEntries(t testing.TB) []audit.Entry {
	t.Helper()
	f, err := os.Open(s.audit)
	require.NoError(t, err)
	defer f.Close()
	var out []audit.Entry
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var e audit.Entry
		require.NoError(t, json.Unmarshal(sc.Bytes(), &e), "audit line %q", sc.Text())
		out = append(out, e)
	}
	return out
}

// auditFor finds the audit entries of a request id.
func (s *secureServer) auditFor(t testing.TB, requestID string) []audit.Entry {
	t.Helper()
	require.NotEmpty(t, requestID, "no request id to look up")
	var out []audit.Entry
	for _, e := range s.auditEntries(t) {
		if e.RequestID == requestID {
			out = append(out, e)
		}
	}
	return out
}

// requestID is a call option that captures the call's request id.
type requestID struct{ md metadata.MD }

func (r *requestID) opt() grpc.CallOption { return grpc.Header(&r.md) }
func (r *requestID) String() string {
	if v := r.md.Get("x-request-id"); len(v) == 1 {
		return v[0]
	}
	return ""
}

// adminImport imports a fixture key as the admin.
func (s *secureServer) adminImport(t testing.TB, id, file string, labels map[string]string) *pb.Key {
	t.Helper()
	k, err := s.kv(t, "admin").ImportKey(context.Background(), &pb.ImportKeyRequest{Id: id, PrivateKeyPem: fixture(t, file), Labels: labels})
	require.NoError(t, err, "import %s", id)
	return k
}
