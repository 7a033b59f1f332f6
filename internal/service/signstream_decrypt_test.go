package service_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
)

// TestSignStreamDecrypt: a SignStream also decrypts, authorized (use on
// the key) and audited with its mode as a unary Decrypt; a request naming
// both a signature and a decryption is the caller's mistake, answered in
// its response while the stream goes on.
func TestSignStreamDecrypt(t *testing.T) {
	s := startSecure(t, secureOptions{})
	ctx := context.Background()
	s.adminImport(t, "key-rsa", "rsa2048-pkcs1.pem", nil)
	s.adminImport(t, "key-other", "rsa2048-pkcs1.pem", nil)
	pub := vaultPublicKey(t, s, "key-rsa").(*rsa.PublicKey)
	pm := make([]byte, 48)
	rand.Read(pm)
	ct, err := rsa.EncryptPKCS1v15(rand.Reader, pub, pm)
	require.NoError(t, err)
	decrypt := &pb.DecryptRequest{Key: "key-rsa", Mode: pb.DecryptMode_DECRYPT_MODE_RSA_PKCS1_TLS_PREMASTER, Ciphertext: ct}

	var rid requestID
	st, err := s.kv(t, "edge").SignStream(ctx, rid.opt())
	require.NoError(t, err)
	require.NoError(t, st.Send(&pb.SignStreamRequest{Decrypt: decrypt}))
	resp, err := st.Recv()
	require.NoError(t, err)
	assert.Equal(t, pm, resp.GetDecrypt().GetPlaintext())
	assert.Equal(t, uint32(1), resp.GetDecrypt().GetVersion())

	require.NoError(t, st.Send(&pb.SignStreamRequest{Decrypt: decrypt, Request: signReq("key-rsa", pb.SignatureScheme_SIGNATURE_SCHEME_RSA_PSS_RSAE_SHA256)}))
	resp, err = st.Recv()
	require.NoError(t, err)
	assert.Equal(t, int32(codes.InvalidArgument), resp.GetError().GetCode(), "both set")

	require.NoError(t, st.Send(&pb.SignStreamRequest{Decrypt: &pb.DecryptRequest{Key: "key-other", Mode: decrypt.Mode, Ciphertext: ct}}))
	_, err = st.Recv()
	assert.Equal(t, codes.PermissionDenied, status.Code(err), "edge has no use on key-other")

	var modes []string
	for _, e := range s.auditFor(t, rid.String()) {
		modes = append(modes, e.Operation+" "+e.Key+" "+e.Mode+" "+e.Outcome)
	}
	assert.Contains(t, modes, "KeyVault.SignStream key-rsa DECRYPT_MODE_RSA_PKCS1_TLS_PREMASTER OK")
	assert.Contains(t, modes, "KeyVault.SignStream key-other DECRYPT_MODE_RSA_PKCS1_TLS_PREMASTER PERMISSION_DENIED")
}
