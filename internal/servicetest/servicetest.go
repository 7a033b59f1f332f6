// Package servicetest runs a real handshaked service on loopback sockets for
// tests in any package: a bbolt vault in a temporary directory under a fresh
// KEK, gRPC and REST listeners, and a client connection.
package servicetest

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/keyvault"
	"github.com/handshaked/handshaked/internal/service"
	"github.com/handshaked/handshaked/internal/testpki"
)

// Server is a running service. Everything is torn down by t.Cleanup.
type Server struct {
	Service  *service.Server
	Vault    *keyvault.Vault
	GRPCAddr string
	RESTURL  string
	// Conn is a plain-text gRPC connection to GRPCAddr, for servers started
	// without Options.TLS.
	Conn *grpc.ClientConn
}

// Start starts a service with opts.
func Start(t testing.TB, opts service.Options) *Server {
	t.Helper()
	return StartWithVault(t, opts)
}

// StartWithVault starts a service with opts on a vault with vaultOpts (key
// backends).
func StartWithVault(t testing.TB, opts service.Options, vaultOpts ...keyvault.Option) *Server {
	t.Helper()
	ctx := context.Background()
	store, err := keyvault.OpenBolt(filepath.Join(t.TempDir(), "keys.db"))
	if err != nil {
		t.Fatal(err)
	}
	kek := make([]byte, 32)
	rand.Read(kek)
	vault, err := keyvault.New(ctx, store, kek, vaultOpts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vault.Close() }) // after the service stopped
	return StartOnVault(t, vault, opts)
}

// StartOnVault starts a service with opts on vault, which the caller
// closes: several services on vaults of one shared store are replicas.
func StartOnVault(t testing.TB, vault *keyvault.Vault, opts service.Options) *Server {
	t.Helper()
	grpcLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s, stop := serve(t, vault, opts, grpcLis)
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		stop(sctx)
	})
	return s
}

// serve serves a service of vault with opts, gRPC on grpcLis and REST on a
// new loopback port; stop shuts it down, waiting for calls in flight until
// its context ends, and reports what went wrong to t.
func serve(t testing.TB, vault *keyvault.Vault, opts service.Options, grpcLis net.Listener) (s *Server, stop func(context.Context)) {
	t.Helper()
	srv, err := service.New(vault, opts)
	if err != nil {
		t.Fatal(err)
	}
	httpLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(grpcLis, httpLis) }()
	conn, err := grpc.NewClient(grpcLis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	stop = func(ctx context.Context) {
		conn.Close()
		if err := srv.Shutdown(ctx); err != nil && ctx.Err() == nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	}
	return &Server{Service: srv, Vault: vault, GRPCAddr: grpcLis.Addr().String(), RESTURL: "http://" + httpLis.Addr().String(), Conn: conn}, stop
}

// Fixture reads a test key from testdata/keys (made by testdata/keys/gen.sh).
func Fixture(t testing.TB, name string) []byte {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	b, err := os.ReadFile(filepath.Join(filepath.Dir(file), "..", "..", "testdata", "keys", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// ServerKey is a vault key with a self-signed certificate attached.
type ServerKey struct {
	ID      string
	Name    string // the certificate's DNS name
	Chain   [][]byte
	CertPEM string
	Pool    *x509.CertPool // trusts the certificate
}

// ServerKey imports fixture as key id and attaches a self-signed certificate
// for dnsName, issued inside the vault.
func (s *Server) ServerKey(t testing.TB, id, fixture, dnsName string) ServerKey {
	t.Helper()
	ctx := context.Background()
	kv := pb.NewKeyVaultClient(s.Conn)
	if _, err := kv.ImportKey(ctx, &pb.ImportKeyRequest{Id: id, PrivateKeyPem: Fixture(t, fixture)}); err != nil {
		t.Fatalf("import %s: %v", fixture, err)
	}
	return s.selfSigned(t, id, dnsName)
}

// CreateServerKey creates key id of alg in backend and attaches a
// self-signed certificate for dnsName, issued inside the vault.
func (s *Server) CreateServerKey(t testing.TB, id string, backend pb.KeyBackend, alg pb.Algorithm, dnsName string) ServerKey {
	t.Helper()
	kv := pb.NewKeyVaultClient(s.Conn)
	if _, err := kv.CreateKey(context.Background(), &pb.CreateKeyRequest{Id: id, Algorithm: alg, Backend: backend}); err != nil {
		t.Fatalf("create %v key in %v: %v", alg, backend, err)
	}
	return s.selfSigned(t, id, dnsName)
}

// selfSigned attaches to key id a self-signed certificate for dnsName.
func (s *Server) selfSigned(t testing.TB, id, dnsName string) ServerKey {
	t.Helper()
	ctx := context.Background()
	kv := pb.NewKeyVaultClient(s.Conn)
	tmpl := testpki.SelfSignedServerTemplate(dnsName)
	der, err := s.Vault.CreateSelfSignedCertificate(ctx, id, 1, tmpl)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.AttachCertificateChain(ctx, &pb.AttachCertificateChainRequest{Key: id, Version: 1, CertificateChain: [][]byte{der}}); err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return ServerKey{ID: id, Name: dnsName, Chain: [][]byte{der}, Pool: pool,
		CertPEM: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))}
}

// Metric reads one sample ("name" or `name{label="v",...}`, labels in the
// order Prometheus writes them) from the /metrics page under restURL,
// fetched with client; 0 when the page has no such sample.
func Metric(t testing.TB, client *http.Client, restURL, sample string) float64 {
	t.Helper()
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(sample) + ` (\S+)$`).FindSubmatch(scrape(t, client, restURL))
	if m == nil {
		return 0
	}
	return parseSample(t, m[1])
}

// MetricSum is the sum of the samples of name whose labels include every
// one of labels (each as `key="value"`), 0 when there is none: for
// counting across the labels a test does not care about.
func MetricSum(t testing.TB, client *http.Client, restURL, name string, labels ...string) float64 {
	t.Helper()
	var sum float64
	for _, m := range regexp.MustCompile(`(?m)^`+regexp.QuoteMeta(name)+`\{([^}]*)\} (\S+)$`).FindAllSubmatch(scrape(t, client, restURL), -1) {
		set := strings.Split(string(m[1]), ",")
		if !allIn(labels, set) {
			continue
		}
		sum += parseSample(t, m[2])
	}
	return sum
}

func allIn(want, set []string) bool {
	for _, l := range want {
		if !slices.Contains(set, l) {
			return false
		}
	}
	return true
}

func scrape(t testing.TB, client *http.Client, restURL string) []byte {
	t.Helper()
	resp, err := client.Get(restURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return body
}

func parseSample(t testing.TB, b []byte) float64 {
	t.Helper()
	v, err := strconv.ParseFloat(string(b), 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}
