package handshaked_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	handshaked "github.com/handshaked/handshaked/clients/go"
	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/keyvault"
	"github.com/handshaked/handshaked/internal/service"
	"github.com/handshaked/handshaked/internal/servicetest"
)

// flakyVault fails every call with UNAVAILABLE until fails reaches zero,
// and counts the calls it gets.
type flakyVault struct {
	pb.UnimplementedKeyVaultServer
	fails, calls atomic.Int32
	// sayCall: each failure names its call, so that attempts differ.
	sayCall atomic.Bool
}

func (f *flakyVault) answer() error {
	n := f.calls.Add(1)
	if f.fails.Add(-1) >= 0 {
		if f.sayCall.Load() {
			return status.Errorf(codes.Unavailable, "try again (call %d)", n)
		}
		return status.Error(codes.Unavailable, "try again")
	}
	return nil
}

func (f *flakyVault) GetKey(ctx context.Context, req *pb.GetKeyRequest) (*pb.Key, error) {
	if req.GetKey() == "slow" {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return &pb.Key{Id: req.GetKey()}, f.answer()
}

func (f *flakyVault) RotateKey(_ context.Context, req *pb.RotateKeyRequest) (*pb.Key, error) {
	return &pb.Key{Id: req.GetKey()}, f.answer()
}

func startFlaky(t *testing.T) (*flakyVault, string) {
	t.Helper()
	f := &flakyVault{}
	s := grpc.NewServer()
	pb.RegisterKeyVaultServer(s, f)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go s.Serve(l)
	t.Cleanup(s.Stop)
	return f, l.Addr().String()
}

// dialFlaky is a client of a new flakyVault that retries 3 times, a
// millisecond apart at first.
func dialFlaky(t *testing.T) (*flakyVault, *handshaked.Client) {
	t.Helper()
	f, addr := startFlaky(t)
	c, err := handshaked.Dial(addr, handshaked.WithInsecure(), handshaked.WithRetries(3, time.Millisecond))
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return f, c
}

func TestRetriesOnlyIdempotentCalls(t *testing.T) {
	f, c := dialFlaky(t)
	ctx := context.Background()

	f.fails.Store(2)
	_, err := c.GetKey(ctx, "k")
	require.NoError(t, err, "GetKey after two UNAVAILABLE answers")
	assert.Equal(t, int32(3), f.calls.Load(), "GetKey: calls")

	f.calls.Store(0)
	f.fails.Store(1)
	_, err = c.RotateKey(ctx, "k")
	assert.Equal(t, codes.Unavailable, status.Code(err), "RotateKey: %v", err)
	assert.Equal(t, int32(1), f.calls.Load(), "RotateKey: times sent; a non-idempotent call must not be retried")

	f.calls.Store(0)
	f.fails.Store(10)
	_, err = c.GetKey(ctx, "k")
	assert.Equal(t, codes.Unavailable, status.Code(err), "GetKey with the service down: %v", err)
	assert.Equal(t, int32(4), f.calls.Load(), "GetKey: calls, want 1 + 3 retries")
}

// TestRetriesExhaustedSayFirstError: a call whose retries ran out says
// so, with its last attempt's error and, when it differs, its first's
// (whose connection may have refused a certificate, the later ones cut
// short).
func TestRetriesExhaustedSayFirstError(t *testing.T) {
	f, c := dialFlaky(t)
	ctx := context.Background()

	f.fails.Store(10)
	_, err := c.GetKey(ctx, "k")
	require.Equal(t, codes.Unavailable, status.Code(err))
	assert.ErrorContains(t, err, "max retries exhausted: failed after 4 attempts: rpc error: code = Unavailable desc = try again")
	assert.NotContains(t, err.Error(), "first attempt", "every attempt said the same")

	f.calls.Store(0)
	f.sayCall.Store(true)
	_, err = c.GetKey(ctx, "k")
	require.Equal(t, codes.Unavailable, status.Code(err))
	assert.ErrorContains(t, err, "failed after 4 attempts: rpc error: code = Unavailable desc = try again (call 4) (first attempt: try again (call 1))")
}

// TestRetriesThrottled: when most calls fail, retries stop, until
// successes earn them back (gRFC A6's throttling: 100 tokens, one a failed
// attempt, a tenth a success, no retry below 50).
func TestRetriesThrottled(t *testing.T) {
	f, c := dialFlaky(t)
	ctx := context.Background()

	f.fails.Store(1 << 20)
	for range 20 { // the first 12 are retried 3 times each, then retries stop at 50 tokens
		_, err := c.GetKey(ctx, "k")
		require.Equal(t, codes.Unavailable, status.Code(err), "GetKey with the service down: %v", err)
	}
	f.calls.Store(0)
	_, err := c.GetKey(ctx, "k")
	require.Equal(t, codes.Unavailable, status.Code(err), "GetKey with the service down: %v", err)
	assert.Equal(t, int32(1), f.calls.Load(), "GetKey after a streak of failures: calls, want 1 (retries throttled)")

	// 42 tokens left: 150 successes earn 15.
	f.fails.Store(0)
	for range 150 {
		_, err := c.GetKey(ctx, "k")
		require.NoError(t, err)
	}
	f.calls.Store(0)
	f.fails.Store(1)
	_, err = c.GetKey(ctx, "k")
	assert.NoError(t, err, "GetKey after successes, failing once")
	assert.Equal(t, int32(2), f.calls.Load(), "GetKey after successes, failing once: calls, want 2 (retried again)")
}

func TestDefaultDeadline(t *testing.T) {
	_, addr := startFlaky(t)
	c, err := handshaked.Dial(addr, handshaked.WithInsecure(), handshaked.WithTimeout(50*time.Millisecond),
		handshaked.WithKeepalive(10*time.Second, time.Second))
	require.NoError(t, err)
	defer c.Close()
	_, err = c.GetKey(context.Background(), "slow")
	assert.Equal(t, codes.DeadlineExceeded, status.Code(err), "GetKey on a stuck call: %v", err)
}

func TestDialNeedsTransportChoice(t *testing.T) {
	_, err := handshaked.Dial("127.0.0.1:1")
	assert.Error(t, err, "Dial without WithTLS or WithInsecure succeeded")
}

// TestMutualTLS runs the service behind a TLS listener that requires a
// client certificate, and calls it with and without one.
func TestMutualTLS(t *testing.T) {
	ca, caKey := newCert(t, "test CA", nil, nil)
	serverCert, serverKey := newCert(t, "127.0.0.1", ca, caKey)
	clientCert, clientKey := newCert(t, "edge-1", ca, caKey)
	pool := x509.NewCertPool()
	pool.AddCert(ca)

	store, err := keyvault.OpenBolt(filepath.Join(t.TempDir(), "keys.db"))
	require.NoError(t, err)
	kek := make([]byte, 32)
	rand.Read(kek)
	vault, err := keyvault.New(context.Background(), store, kek)
	require.NoError(t, err)
	defer vault.Close()
	srv, err := service.New(vault, service.Options{})
	require.NoError(t, err)
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	httpLis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	grpcLis := tls.NewListener(raw, &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{serverCert.Raw}, PrivateKey: serverKey}},
		ClientAuth:   tls.RequireAndVerifyClientCert, ClientCAs: pool, NextProtos: []string{"h2"},
	})
	served := make(chan error, 1)
	go func() { served <- srv.Serve(grpcLis, httpLis) }()
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-served
	}()

	withCert, err := handshaked.Dial(raw.Addr().String(), handshaked.WithTLS(&tls.Config{
		RootCAs: pool, Certificates: []tls.Certificate{{Certificate: [][]byte{clientCert.Raw}, PrivateKey: clientKey}},
	}))
	require.NoError(t, err)
	defer withCert.Close()
	_, err = withCert.ListKeys(context.Background())
	assert.NoError(t, err, "with a client certificate")

	without, err := handshaked.Dial(raw.Addr().String(), handshaked.WithTLS(&tls.Config{RootCAs: pool}), handshaked.WithTimeout(5*time.Second))
	require.NoError(t, err)
	defer without.Close()
	_, err = without.ListKeys(context.Background())
	assert.Equal(t, codes.Unavailable, status.Code(err), "without a client certificate: %v", err)
}

func newCert(t *testing.T, name string, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	if ip := net.ParseIP(name); ip != nil {
		tmpl.IPAddresses = []net.IP{ip}
	}
	if parent == nil {
		tmpl.IsCA, tmpl.BasicConstraintsValid, tmpl.KeyUsage = true, true, x509.KeyUsageCertSign
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	return cert, key
}

// TestKeyLifecycle drives the typed KeyVault methods against the real
// service.
func TestKeyLifecycle(t *testing.T) {
	srv := servicetest.Start(t, service.Options{})
	c := handshaked.New(srv.Conn)
	ctx := context.Background()
	_, err := c.CreateKey(ctx, "life", pb.Algorithm_ALGORITHM_ECDSA_P256, map[string]string{"team": "edge"})
	require.NoError(t, err)
	k, err := c.RotateKey(ctx, "life")
	require.NoError(t, err, "rotate")
	require.Equal(t, uint32(2), k.GetPrimaryVersion(), "rotate: primary")
	pub, v, err := c.PublicKey(ctx, "life", 0)
	require.NoError(t, err, "public key")
	require.IsType(t, (*ecdsa.PublicKey)(nil), pub, "public key")
	require.Equal(t, uint32(2), v, "public key: version")
	_, err = c.DisableKeyVersion(ctx, "life", 1)
	require.NoError(t, err)
	_, err = c.DestroyKeyVersion(ctx, "life", 1)
	require.NoError(t, err)
	keys, err := c.ListKeys(ctx)
	require.NoError(t, err, "list")
	require.Len(t, keys, 1, "list")
	require.NotEmpty(t, keys[0].GetVersions(), "list: %v", keys)
	assert.Equal(t, pb.KeyVersionState_KEY_VERSION_STATE_DESTROYED, keys[0].GetVersions()[0].GetState(), "list: %v", keys)
	csr, err := c.CreateCertificateSigningRequest(ctx, &pb.CreateCertificateSigningRequestRequest{Key: "life", CommonName: "life.test", DnsNames: []string{"life.test"}})
	require.NoError(t, err)
	req, err := x509.ParseCertificateRequest(csr.GetDer())
	require.NoError(t, err, "CSR")
	assert.NoError(t, req.CheckSignature(), "CSR")
	assert.Equal(t, "life.test", req.Subject.CommonName, "CSR")
	_, _, err = c.CertificateChain(ctx, "life", 0)
	assert.Error(t, err, "CertificateChain of a key with none attached succeeded")
}

// TestHandshakeSession drives the typed Handshake methods: a session
// started without input waits for it, and is gone once aborted.
func TestHandshakeSession(t *testing.T) {
	srv := servicetest.Start(t, service.Options{})
	key := srv.ServerKey(t, "hs-ec", "p256-pkcs8.pem", "hs.test")
	c := handshaked.New(srv.Conn)
	ctx := context.Background()
	step, err := c.StartHandshake(ctx, &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: key.ID}}}, nil)
	require.NoError(t, err, "start")
	require.Equal(t, pb.HandshakeState_HANDSHAKE_STATE_NEED_INPUT, step.GetState(), "start")
	got, err := c.GetHandshake(ctx, step.GetId())
	require.NoError(t, err, "get")
	require.Equal(t, pb.HandshakeState_HANDSHAKE_STATE_NEED_INPUT, got.GetState(), "get")
	// Not TLS: the engine fails the handshake with an alert to send.
	failed, err := c.StepHandshake(ctx, step.GetId(), []byte("GET / HTTP/1.1\r\n\r\n"))
	require.NoError(t, err, "step")
	assert.Equal(t, pb.HandshakeState_HANDSHAKE_STATE_FAILED, failed.GetState(), "step: %v", failed)
	assert.NotEmpty(t, failed.GetAlert().GetRecord(), "step: %v", failed)
	step, err = c.StartHandshake(ctx, &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: key.ID}}}, nil)
	require.NoError(t, err)
	require.NoError(t, c.AbortHandshake(ctx, step.GetId()))
	_, err = c.GetHandshake(ctx, step.GetId())
	assert.Equal(t, codes.NotFound, status.Code(err), "get after abort: %v", err)
}
