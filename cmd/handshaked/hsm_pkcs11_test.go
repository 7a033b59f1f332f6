//go:build pkcs11

package main

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/keyvault/pkcs11/softhsmtest"
)

// TestPKCS11Instance starts handshaked on a SoftHSM token with the KEK
// wrapped by the token: no plaintext KEK is written, a key created with
// backend PKCS11 signs and decrypts a premaster, and after a restart
// (PIN from the environment this time) it still does; a changed wrapped
// KEK, a wrong PIN or a missing PIN stop the start with a clear message
// that does not hold the PIN.
func TestPKCS11Instance(t *testing.T) {
	conf, token := softhsmtest.NewToken(t)
	dataDir := t.TempDir()
	secrets := t.TempDir()
	pinFile := filepath.Join(secrets, "pin")
	require.NoError(t, os.WriteFile(pinFile, []byte(token.PIN+"\n"), 0o600))
	wrapped := filepath.Join(secrets, "kek.wrapped")
	env := []string{"SOFTHSM2_CONF=" + conf}
	hsmArgs := []string{"-pkcs11-module", token.Module, "-pkcs11-token", token.TokenLabel, "-kek-pkcs11-file", wrapped}

	p := startProcessEnv(t, dataDir, env, append(hsmArgs, "-pkcs11-pin-file", pinFile)...)
	require.NotEmpty(t, p.grpcAddr, "did not start:\n%s", p.out())
	assert.NoFileExists(t, filepath.Join(dataDir, "kek"), "no plaintext KEK")
	assert.Contains(t, p.out(), "key-encryption key wrapped by the PKCS#11 token in "+wrapped+";", "the development-mode warning")
	require.FileExists(t, wrapped)
	kv := p.client(t)
	k, err := kv.CreateKey(t.Context(), &pb.CreateKeyRequest{Id: "in-token", Algorithm: pb.Algorithm_ALGORITHM_RSA_2048, Backend: pb.KeyBackend_KEY_BACKEND_PKCS11})
	require.NoError(t, err)
	assert.Equal(t, pb.KeyBackend_KEY_BACKEND_PKCS11, k.GetVersions()[0].GetBackend())
	pubPEM, err := kv.GetPublicKey(t.Context(), &pb.GetPublicKeyRequest{Key: "in-token"})
	require.NoError(t, err)
	pub := parsePublicKeyPEM(t, pubPEM.GetPem()).(*rsa.PublicKey)
	check := func(kv pb.KeyVaultClient) {
		t.Helper()
		digest := sha256.Sum256([]byte("through the token"))
		sig, err := kv.Sign(t.Context(), &pb.SignRequest{Key: "in-token", Scheme: pb.SignatureScheme_SIGNATURE_SCHEME_RSA_PSS_RSAE_SHA256, Input: &pb.SignRequest_Digest{Digest: digest[:]}})
		require.NoError(t, err)
		assert.NoError(t, rsa.VerifyPSS(pub, 5, digest[:], sig.GetSignature(), &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash}))
		premaster := make([]byte, 48)
		rand.Read(premaster)
		premaster[0], premaster[1] = 3, 3
		ct, err := rsa.EncryptPKCS1v15(rand.Reader, pub, premaster)
		require.NoError(t, err)
		got, err := kv.Decrypt(t.Context(), &pb.DecryptRequest{Key: "in-token", Mode: pb.DecryptMode_DECRYPT_MODE_RSA_PKCS1_TLS_PREMASTER, Ciphertext: ct, ExpectedClientVersion: 0x0303})
		require.NoError(t, err)
		assert.Equal(t, premaster, got.GetPlaintext())
	}
	check(kv)
	require.NoError(t, p.cmd.Process.Kill())
	<-p.exited

	p = startProcessEnv(t, dataDir, append(env, pkcs11PINEnv+"="+token.PIN), hsmArgs...)
	require.NotEmpty(t, p.grpcAddr, "did not restart:\n%s", p.out())
	check(p.client(t))
	require.NoError(t, p.cmd.Process.Kill())
	<-p.exited

	out := waitExit(t, startProcessEnv(t, dataDir, append(env, pkcs11PINEnv+"=0000"), hsmArgs...))
	assert.Contains(t, out, "CKR_PIN_INCORRECT")
	assert.NotContains(t, out, token.PIN)
	out = waitExit(t, startProcessEnv(t, dataDir, env, hsmArgs...))
	assert.Contains(t, out, "needs its user PIN")
	require.NoError(t, os.Chmod(pinFile, 0o644))
	out = waitExit(t, startProcessEnv(t, dataDir, env, append(hsmArgs, "-pkcs11-pin-file", pinFile)...))
	assert.Contains(t, out, "PKCS#11 PIN "+pinFile+" is world-readable")
	assert.NotContains(t, out, token.PIN)
	out = waitExit(t, startProcessEnv(t, dataDir, append(env, pkcs11PINEnv+"="+token.PIN), append(hsmArgs, "-pkcs11-slot", "0")...))
	assert.Contains(t, out, "one of them")

	data, err := os.ReadFile(wrapped)
	require.NoError(t, err)
	tampered := filepath.Join(secrets, "tampered")
	data[len(data)/2] ^= 1
	require.NoError(t, os.WriteFile(tampered, data, 0o600))
	out = waitExit(t, startProcessEnv(t, dataDir, append(env, pkcs11PINEnv+"="+token.PIN), "-pkcs11-module", token.Module, "-pkcs11-token", token.TokenLabel, "-kek-pkcs11-file", tampered))
	assert.Contains(t, out, "key-encryption key")
}

// TestPKCS11KEKRotation: an instance whose KEK the token wraps rotates it
// with no KEK sent (handshakectl kek-rotate without -new-kek-file): the
// service makes the new KEK and replaces -kek-pkcs11-file with it, wrapped
// by the token, before it rewraps anything. The instance restarts on that
// file and its keys, in the token and in software, still sign; the old
// wrapped KEK, put back, no longer opens the store.
func TestPKCS11KEKRotation(t *testing.T) {
	conf, token := softhsmtest.NewToken(t)
	dataDir := t.TempDir()
	secrets := t.TempDir()
	wrapped := filepath.Join(secrets, "kek.wrapped")
	env := []string{"SOFTHSM2_CONF=" + conf, pkcs11PINEnv + "=" + token.PIN}
	hsmArgs := []string{"-pkcs11-module", token.Module, "-pkcs11-token", token.TokenLabel, "-kek-pkcs11-file", wrapped}

	p := startProcessEnv(t, dataDir, env, hsmArgs...)
	require.NotEmpty(t, p.grpcAddr, "did not start:\n%s", p.out())
	kv := p.client(t)
	_, err := kv.CreateKey(t.Context(), &pb.CreateKeyRequest{Id: "in-token", Algorithm: pb.Algorithm_ALGORITHM_ECDSA_P256, Backend: pb.KeyBackend_KEY_BACKEND_PKCS11})
	require.NoError(t, err)
	signs := func(kv pb.KeyVaultClient) {
		t.Helper()
		for _, id := range []string{"in-token", "dev-rsa"} {
			digest := sha256.Sum256([]byte("after the KEK rotation"))
			scheme := pb.SignatureScheme_SIGNATURE_SCHEME_ECDSA_SECP256R1_SHA256
			if id == "dev-rsa" {
				scheme = pb.SignatureScheme_SIGNATURE_SCHEME_RSA_PSS_RSAE_SHA256
			}
			_, err := kv.Sign(t.Context(), &pb.SignRequest{Key: id, Scheme: scheme, Input: &pb.SignRequest_Digest{Digest: digest[:]}})
			require.NoError(t, err, "%s signs", id)
		}
	}
	signs(kv)
	oldWrapped, err := os.ReadFile(wrapped)
	require.NoError(t, err)

	conn, err := grpc.NewClient(p.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	admin := pb.NewAdminClient(conn)
	before, err := admin.GetKEKStatus(t.Context(), &pb.GetKEKStatusRequest{})
	require.NoError(t, err)
	st, err := admin.RotateKEK(t.Context(), &pb.RotateKEKRequest{})
	require.NoError(t, err, "%s", p.out())
	assert.NotEqual(t, before.GetKekId(), st.GetKekId())
	assert.Empty(t, st.GetRetiringKekId(), "complete")
	newWrapped, err := os.ReadFile(wrapped)
	require.NoError(t, err)
	assert.False(t, bytes.Equal(oldWrapped, newWrapped), "the file holds the new KEK")
	info, err := os.Stat(wrapped)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), info.Mode().Perm())
	entries, err := os.ReadDir(secrets)
	require.NoError(t, err)
	assert.Len(t, entries, 1, "nothing left beside the file")
	signs(kv)
	require.NoError(t, p.cmd.Process.Kill())
	<-p.exited

	p = startProcessEnv(t, dataDir, env, hsmArgs...)
	require.NotEmpty(t, p.grpcAddr, "did not restart on the new wrapped KEK:\n%s", p.out())
	signs(p.client(t))
	require.NoError(t, p.cmd.Process.Kill())
	<-p.exited

	require.NoError(t, os.WriteFile(wrapped, oldWrapped, 0o600))
	out := waitExit(t, startProcessEnv(t, dataDir, env, hsmArgs...))
	assert.Contains(t, out, "only the new KEK opens the store")
}
