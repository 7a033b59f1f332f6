package service_test

import (
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
)

// TestAuditHandshakeDetails: a handshake's audit entries name the keys it
// was offered, with the version when the caller pinned one, and a failed
// step says which alert ended it.
func TestAuditHandshakeDetails(t *testing.T) {
	s := startSecure(t, secureOptions{})
	ctx := context.Background()
	s.adminImport(t, "key-a", "p256-pkcs8.pem", nil)
	s.adminImport(t, "key-b", "ed25519-pkcs8.pem", nil)
	der, err := s.vault.CreateSelfSignedCertificate(ctx, "key-a", 1, &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "key-a.test"}, DNSNames: []string{"key-a.test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature,
	})
	require.NoError(t, err)
	_, err = s.kv(t, "admin").AttachCertificateChain(ctx, &pb.AttachCertificateChainRequest{Key: "key-a", Version: 1, CertificateChain: [][]byte{der}})
	require.NoError(t, err)
	hc := pb.NewHandshakeClient(s.dial(t, "edge"))

	var denied requestID
	_, err = hc.StartHandshake(ctx, &pb.StartHandshakeRequest{Config: &pb.HandshakeConfig{
		Keys: []*pb.KeyRef{{Key: "key-a", Version: 1}, {Key: "key-b"}}}}, denied.opt())
	require.Equal(t, codes.PermissionDenied, status.Code(err), "key-b is not the edge's: %v", err)
	e := wantAudit(t, s, denied.String(), idEdge, "Handshake.StartHandshake", "", "PERMISSION_DENIED")
	assert.Equal(t, []string{"key-a/1", "key-b"}, e.Keys, "offered keys, with the pinned version")

	var failed requestID
	step, err := hc.StartHandshake(ctx, &pb.StartHandshakeRequest{Config: &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: "key-a"}}},
		Input: []byte("GET / HTTP/1.1\r\nHost: key-a.test\r\n\r\n")}, failed.opt())
	require.NoError(t, err)
	require.Equal(t, pb.HandshakeState_HANDSHAKE_STATE_FAILED, step.GetState())
	require.NotEmpty(t, step.GetAlert().GetName())
	e = wantAudit(t, s, failed.String(), idEdge, "Handshake.StartHandshake", "", "OK")
	assert.Equal(t, []string{"key-a"}, e.Keys)
	assert.Equal(t, "HANDSHAKE_STATE_FAILED alert="+step.GetAlert().GetName(), e.Detail, "the step's outcome and alert")
}
