package service_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

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
	if msg, err := exec.Command(openssl, args...).CombinedOutput(); err != nil {
		t.Fatalf("openssl pkeyutl: %v\n%s", err, msg)
	}
	ct, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return ct
}

// TestPremasterFromOpenSSL: a TLS premaster encrypted by openssl decrypts over
// REST to the same 48 bytes; a corrupted ciphertext, or a premaster with the
// wrong client version, returns 48 other bytes with status OK (RFC 5246
// §7.4.7.1 implicit rejection).
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
		if len(resp.Plaintext) != 48 || resp.Version != 1 {
			t.Fatalf("decrypt answer: %d bytes, version %d", len(resp.Plaintext), resp.Version)
		}
		return resp.Plaintext
	}
	if got := decrypt(ct, 0); !bytes.Equal(got, premaster) {
		t.Fatal("premaster differs from what openssl encrypted")
	}
	if got := decrypt(ct, 0x0303); !bytes.Equal(got, premaster) {
		t.Fatal("premaster with matching client version differs")
	}
	if got := decrypt(ct, 0x0302); bytes.Equal(got, premaster) {
		t.Fatal("version mismatch must yield random bytes, got the premaster")
	}
	corrupt := bytes.Clone(ct)
	corrupt[10] ^= 0x40
	first, second := decrypt(corrupt, 0), decrypt(corrupt, 0)
	if bytes.Equal(first, premaster) {
		t.Fatal("corrupted ciphertext decrypted to the premaster")
	}
	if bytes.Equal(first, second) {
		t.Fatal("implicit rejection must give fresh random bytes each time")
	}

	// gRPC gives the same answer.
	resp, err := s.kv.Decrypt(context.Background(), &pb.DecryptRequest{Key: id, Mode: pb.DecryptMode_DECRYPT_MODE_RSA_PKCS1_TLS_PREMASTER, Ciphertext: ct})
	if err != nil || !bytes.Equal(resp.GetPlaintext(), premaster) {
		t.Fatalf("gRPC decrypt: %v", err)
	}
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
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(resp.GetPlaintext(), secret) {
		t.Fatalf("OAEP plaintext = %q", resp.GetPlaintext())
	}
}
