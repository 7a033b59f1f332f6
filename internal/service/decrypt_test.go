package service_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/testenv"
)

// opensslEncrypt encrypts plaintext to the key's public key with openssl
// pkeyutl and the given extra options.
func opensslEncrypt(t *testing.T, openssl, pubPEM string, plaintext []byte, opts ...string) []byte {
	t.Helper()
	dir := t.TempDir()
	pub, in, out := filepath.Join(dir, "pub.pem"), filepath.Join(dir, "in"), filepath.Join(dir, "out")
	os.WriteFile(pub, []byte(pubPEM), 0o600)
	os.WriteFile(in, plaintext, 0o600)
	args := append([]string{"pkeyutl", "-encrypt", "-pubin", "-inkey", pub, "-in", in, "-out", out}, opts...)
	msg, err := exec.Command(openssl, args...).CombinedOutput()
	require.NoError(t, err, "openssl pkeyutl: %s", msg)
	ct, err := os.ReadFile(out)
	require.NoError(t, err)
	return ct
}

// TestPremasterFromOpenSSL: a TLS premaster encrypted by openssl decrypts over
// REST to the same 48 bytes; a corrupted ciphertext, or a premaster with the
// wrong client version, returns 48 other bytes with status OK (RFC 5246
// §7.4.7.1 implicit rejection), the same ones however often it is asked, so
// that repeating a query does not tell a rejected ciphertext from a good one.
func TestPremasterFromOpenSSL(t *testing.T) {
	openssl := testenv.LookPath(t, "openssl")
	s := startServer(t)
	id := uniqueID("premaster")
	importFixture(t, s, id, "rsa2048-pkcs1.pem")
	_, pubPEM := publicKey(t, s, id)

	premaster := make([]byte, 48)
	rand.Read(premaster)
	premaster[0], premaster[1] = 3, 3 // client_version TLS 1.2
	ct := opensslEncrypt(t, openssl, pubPEM, premaster)

	decrypt := func(ct []byte, clientVersion int) []byte {
		t.Helper()
		var resp struct {
			Plaintext []byte
			Version   int
		}
		mustRest(t, s, "POST", "/v1/keys/"+id+":decrypt", map[string]any{
			"mode": "DECRYPT_MODE_RSA_PKCS1_TLS_PREMASTER", "ciphertext": ct, "expectedClientVersion": clientVersion,
		}, &resp)
		require.Len(t, resp.Plaintext, 48)
		require.Equal(t, 1, resp.Version)
		return resp.Plaintext
	}
	assert.Equal(t, premaster, decrypt(ct, 0), "premaster differs from what openssl encrypted")
	assert.Equal(t, premaster, decrypt(ct, 0x0303), "premaster with matching client version differs")
	mismatch := decrypt(ct, 0x0302)
	assert.NotEqual(t, premaster, mismatch, "version mismatch must not yield the premaster")
	assert.Equal(t, mismatch, decrypt(ct, 0x0302), "version mismatch asked twice")
	corrupt := bytes.Clone(ct)
	corrupt[10] ^= 0x40
	first, second := decrypt(corrupt, 0), decrypt(corrupt, 0)
	assert.NotEqual(t, premaster, first, "corrupted ciphertext decrypted to the premaster")
	assert.Equal(t, first, second, "implicit rejection gave other bytes on a second query: asking twice tells validity")
	corrupt[11] ^= 0x40
	assert.NotEqual(t, first, decrypt(corrupt, 0), "two corrupted ciphertexts gave the same bytes")

	// gRPC gives the same answer.
	resp, err := s.kv.Decrypt(context.Background(), &pb.DecryptRequest{Key: id, Mode: pb.DecryptMode_DECRYPT_MODE_RSA_PKCS1_TLS_PREMASTER, Ciphertext: ct})
	require.NoError(t, err, "gRPC decrypt")
	assert.Equal(t, premaster, resp.GetPlaintext(), "gRPC decrypt")
}

func TestOAEPFromOpenSSL(t *testing.T) {
	openssl := testenv.LookPath(t, "openssl")
	s := startServer(t)
	id := uniqueID("oaep")
	importFixture(t, s, id, "rsa3072-pkcs8.pem")
	_, pubPEM := publicKey(t, s, id)
	secret := []byte("a wrapped data key")
	ct := opensslEncrypt(t, openssl, pubPEM, secret, "-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", "rsa_oaep_md:sha256", "-pkeyopt", "rsa_mgf1_md:sha256")
	resp, err := s.kv.Decrypt(context.Background(), &pb.DecryptRequest{Key: id, Mode: pb.DecryptMode_DECRYPT_MODE_RSA_OAEP_SHA256, Ciphertext: ct})
	require.NoError(t, err)
	assert.Equal(t, secret, resp.GetPlaintext(), "OAEP plaintext")
}
