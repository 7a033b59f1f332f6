package service_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/testenv"
)

var allSchemes = []pb.SignatureScheme{
	pb.SignatureScheme_SIGNATURE_SCHEME_RSA_PKCS1_SHA256,
	pb.SignatureScheme_SIGNATURE_SCHEME_RSA_PKCS1_SHA384,
	pb.SignatureScheme_SIGNATURE_SCHEME_RSA_PKCS1_SHA512,
	pb.SignatureScheme_SIGNATURE_SCHEME_RSA_PSS_RSAE_SHA256,
	pb.SignatureScheme_SIGNATURE_SCHEME_RSA_PSS_RSAE_SHA384,
	pb.SignatureScheme_SIGNATURE_SCHEME_RSA_PSS_RSAE_SHA512,
	pb.SignatureScheme_SIGNATURE_SCHEME_ECDSA_SECP256R1_SHA256,
	pb.SignatureScheme_SIGNATURE_SCHEME_ECDSA_SECP384R1_SHA384,
	pb.SignatureScheme_SIGNATURE_SCHEME_ECDSA_SECP521R1_SHA512,
	pb.SignatureScheme_SIGNATURE_SCHEME_ED25519,
}

// schemeHash is the hash a scheme signs with; 0 for Ed25519 (no prehash).
func schemeHash(s pb.SignatureScheme) crypto.Hash {
	switch s {
	case pb.SignatureScheme_SIGNATURE_SCHEME_RSA_PKCS1_SHA256, pb.SignatureScheme_SIGNATURE_SCHEME_RSA_PSS_RSAE_SHA256, pb.SignatureScheme_SIGNATURE_SCHEME_ECDSA_SECP256R1_SHA256:
		return crypto.SHA256
	case pb.SignatureScheme_SIGNATURE_SCHEME_RSA_PKCS1_SHA384, pb.SignatureScheme_SIGNATURE_SCHEME_RSA_PSS_RSAE_SHA384, pb.SignatureScheme_SIGNATURE_SCHEME_ECDSA_SECP384R1_SHA384:
		return crypto.SHA384
	case pb.SignatureScheme_SIGNATURE_SCHEME_RSA_PKCS1_SHA512, pb.SignatureScheme_SIGNATURE_SCHEME_RSA_PSS_RSAE_SHA512, pb.SignatureScheme_SIGNATURE_SCHEME_ECDSA_SECP521R1_SHA512:
		return crypto.SHA512
	}
	return 0
}

// verify checks a signature with the standard library only.
func verify(pub crypto.PublicKey, s pb.SignatureScheme, msg, sig []byte) error {
	h := schemeHash(s)
	var digest []byte
	if h != 0 {
		hh := h.New()
		hh.Write(msg)
		digest = hh.Sum(nil)
	}
	switch s {
	case pb.SignatureScheme_SIGNATURE_SCHEME_RSA_PKCS1_SHA256, pb.SignatureScheme_SIGNATURE_SCHEME_RSA_PKCS1_SHA384, pb.SignatureScheme_SIGNATURE_SCHEME_RSA_PKCS1_SHA512:
		return rsa.VerifyPKCS1v15(pub.(*rsa.PublicKey), h, digest, sig)
	case pb.SignatureScheme_SIGNATURE_SCHEME_RSA_PSS_RSAE_SHA256, pb.SignatureScheme_SIGNATURE_SCHEME_RSA_PSS_RSAE_SHA384, pb.SignatureScheme_SIGNATURE_SCHEME_RSA_PSS_RSAE_SHA512:
		// TLS requires the salt length to equal the hash length (RFC 8446 §4.2.3).
		return rsa.VerifyPSS(pub.(*rsa.PublicKey), h, digest, sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash})
	case pb.SignatureScheme_SIGNATURE_SCHEME_ECDSA_SECP256R1_SHA256, pb.SignatureScheme_SIGNATURE_SCHEME_ECDSA_SECP384R1_SHA384, pb.SignatureScheme_SIGNATURE_SCHEME_ECDSA_SECP521R1_SHA512:
		if !ecdsa.VerifyASN1(pub.(*ecdsa.PublicKey), digest, sig) {
			return fmt.Errorf("ecdsa signature does not verify")
		}
		return nil
	case pb.SignatureScheme_SIGNATURE_SCHEME_ED25519:
		if !ed25519.Verify(pub.(ed25519.PublicKey), msg, sig) {
			return fmt.Errorf("ed25519 signature does not verify")
		}
		return nil
	}
	return fmt.Errorf("unknown scheme %v", s)
}

func publicKey(t testing.TB, s *testServer, id string) (crypto.PublicKey, string) {
	t.Helper()
	resp, err := s.kv.GetPublicKey(context.Background(), &pb.GetPublicKeyRequest{Key: id})
	require.NoError(t, err)
	block, _ := pem.Decode([]byte(resp.GetPem()))
	require.NotNil(t, block, "public key PEM: %q", resp.GetPem())
	require.Equal(t, "PUBLIC KEY", block.Type)
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	require.NoError(t, err)
	return pub, resp.GetPem()
}

type keyFixture struct {
	file    string
	schemes map[pb.SignatureScheme]bool // those that fit the key
}

var rsaSchemes = map[pb.SignatureScheme]bool{
	pb.SignatureScheme_SIGNATURE_SCHEME_RSA_PKCS1_SHA256: true, pb.SignatureScheme_SIGNATURE_SCHEME_RSA_PKCS1_SHA384: true, pb.SignatureScheme_SIGNATURE_SCHEME_RSA_PKCS1_SHA512: true,
	pb.SignatureScheme_SIGNATURE_SCHEME_RSA_PSS_RSAE_SHA256: true, pb.SignatureScheme_SIGNATURE_SCHEME_RSA_PSS_RSAE_SHA384: true, pb.SignatureScheme_SIGNATURE_SCHEME_RSA_PSS_RSAE_SHA512: true,
}

// ecdsaSchemes fit every ECDSA key: a scheme fits if the key can produce it
// in some TLS version, and in TLS 1.2 an ECDSA scheme names only the hash
// (RFC 8446 §4.2.3), so a P-384 key signs ECDSA_SECP256R1_SHA256 as ECDSA
// over SHA-256.
var ecdsaSchemes = map[pb.SignatureScheme]bool{
	pb.SignatureScheme_SIGNATURE_SCHEME_ECDSA_SECP256R1_SHA256: true, pb.SignatureScheme_SIGNATURE_SCHEME_ECDSA_SECP384R1_SHA384: true,
	pb.SignatureScheme_SIGNATURE_SCHEME_ECDSA_SECP521R1_SHA512: true,
}

var keyFixtures = []keyFixture{
	{"rsa2048-pkcs1.pem", rsaSchemes},
	{"rsa3072-pkcs8.pem", rsaSchemes},
	{"rsa4096-pkcs1.pem", rsaSchemes},
	{"p256-sec1.pem", ecdsaSchemes},
	{"p256-pkcs8.pem", ecdsaSchemes},
	{"p384-sec1.pem", ecdsaSchemes},
	{"p521-pkcs8.pem", ecdsaSchemes},
	{"ed25519-pkcs8.pem", map[pb.SignatureScheme]bool{pb.SignatureScheme_SIGNATURE_SCHEME_ED25519: true}},
}

// TestSignEveryKeyTypeAndScheme signs over gRPC with every key type and every
// scheme, as a message and as a digest, and verifies with the standard
// library; schemes that do not fit the key are INVALID_ARGUMENT, saying
// what the key is ("an ECDSA_P256 key": every algorithm's name begins
// with a vowel sound).
func TestSignEveryKeyTypeAndScheme(t *testing.T) {
	s := startServer(t)
	ctx := context.Background()
	msg := []byte("handshaked signs this message")
	for _, f := range keyFixtures {
		id := uniqueID("sign")
		alg := strings.TrimPrefix(importFixture(t, s, id, f.file).GetVersions()[0].GetAlgorithm().String(), "ALGORITHM_")
		pub, _ := publicKey(t, s, id)
		for _, scheme := range allSchemes {
			t.Run(f.file+"/"+scheme.String(), func(t *testing.T) {
				resp, err := s.kv.Sign(ctx, &pb.SignRequest{Key: id, Scheme: scheme, Input: &pb.SignRequest_Message{Message: msg}})
				if !f.schemes[scheme] {
					require.Equal(t, codes.InvalidArgument, status.Code(err), "scheme unfit for key: %v", err)
					assert.Contains(t, status.Convert(err).Message(), "does not fit an "+alg+" key")
					return
				}
				require.NoError(t, err)
				assert.Equal(t, uint32(1), resp.GetVersion())
				require.NoError(t, verify(pub, scheme, msg, resp.GetSignature()), "message signature")
				h := schemeHash(scheme)
				if h == 0 {
					_, err := s.kv.Sign(ctx, &pb.SignRequest{Key: id, Scheme: scheme, Input: &pb.SignRequest_Digest{Digest: make([]byte, 32)}})
					require.Equal(t, codes.InvalidArgument, status.Code(err), "digest with Ed25519: %v", err)
					return
				}
				hh := h.New()
				hh.Write(msg)
				resp, err = s.kv.Sign(ctx, &pb.SignRequest{Key: id, Scheme: scheme, Input: &pb.SignRequest_Digest{Digest: hh.Sum(nil)}})
				require.NoError(t, err)
				require.NoError(t, verify(pub, scheme, msg, resp.GetSignature()), "digest signature")
			})
		}
	}
}

// TestCreatedKeysSign creates keys inside the vault over gRPC and checks that
// they sign. (RSA-3072/4096 generation is covered by the vault's own tests.)
func TestCreatedKeysSign(t *testing.T) {
	s := startServer(t)
	ctx := context.Background()
	for _, tc := range []struct {
		alg    pb.Algorithm
		scheme pb.SignatureScheme
	}{
		{pb.Algorithm_ALGORITHM_RSA_2048, pb.SignatureScheme_SIGNATURE_SCHEME_RSA_PSS_RSAE_SHA256},
		{pb.Algorithm_ALGORITHM_ECDSA_P256, pb.SignatureScheme_SIGNATURE_SCHEME_ECDSA_SECP256R1_SHA256},
		{pb.Algorithm_ALGORITHM_ECDSA_P384, pb.SignatureScheme_SIGNATURE_SCHEME_ECDSA_SECP384R1_SHA384},
		{pb.Algorithm_ALGORITHM_ECDSA_P521, pb.SignatureScheme_SIGNATURE_SCHEME_ECDSA_SECP521R1_SHA512},
		{pb.Algorithm_ALGORITHM_ED25519, pb.SignatureScheme_SIGNATURE_SCHEME_ED25519},
	} {
		t.Run(tc.alg.String(), func(t *testing.T) {
			id := uniqueID("created")
			k, err := s.kv.CreateKey(ctx, &pb.CreateKeyRequest{Id: id, Algorithm: tc.alg, Labels: map[string]string{"team": "edge"}})
			require.NoError(t, err)
			assert.Equal(t, id, k.GetId())
			assert.Equal(t, uint32(1), k.GetPrimaryVersion())
			require.Len(t, k.GetVersions(), 1)
			assert.Equal(t, tc.alg, k.GetVersions()[0].GetAlgorithm())
			assert.False(t, k.GetVersions()[0].GetImported())
			pub, _ := publicKey(t, s, id)
			msg := []byte("created in the vault")
			resp, err := s.kv.Sign(ctx, &pb.SignRequest{Key: id, Scheme: tc.scheme, Input: &pb.SignRequest_Message{Message: msg}})
			require.NoError(t, err)
			assert.NoError(t, verify(pub, tc.scheme, msg, resp.GetSignature()))
		})
	}
}

// TestRESTSignatureVerifiesWithOpenSSL signs through the REST gateway and has
// openssl, an independent implementation, verify each signature.
func TestRESTSignatureVerifiesWithOpenSSL(t *testing.T) {
	openssl := testenv.LookPath(t, "openssl")
	s := startServer(t)
	dir := t.TempDir()
	msg := []byte("verify me with openssl\n")
	msgFile := filepath.Join(dir, "msg")
	require.NoError(t, os.WriteFile(msgFile, msg, 0o600))
	for _, tc := range []struct {
		file, scheme string
		args         func(pub, sig string) []string
	}{
		{"rsa2048-pkcs1.pem", "SIGNATURE_SCHEME_RSA_PKCS1_SHA256", func(pub, sig string) []string {
			return []string{"dgst", "-sha256", "-verify", pub, "-signature", sig, msgFile}
		}},
		{"rsa3072-pkcs8.pem", "SIGNATURE_SCHEME_RSA_PSS_RSAE_SHA384", func(pub, sig string) []string {
			return []string{"dgst", "-sha384", "-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:digest", "-verify", pub, "-signature", sig, msgFile}
		}},
		{"p256-sec1.pem", "SIGNATURE_SCHEME_ECDSA_SECP256R1_SHA256", func(pub, sig string) []string {
			return []string{"dgst", "-sha256", "-verify", pub, "-signature", sig, msgFile}
		}},
		{"p384-sec1.pem", "SIGNATURE_SCHEME_ECDSA_SECP384R1_SHA384", func(pub, sig string) []string {
			return []string{"dgst", "-sha384", "-verify", pub, "-signature", sig, msgFile}
		}},
		// TLS 1.2's reading: ECDSA over SHA-256 with a P-384 key.
		{"p384-sec1.pem", "SIGNATURE_SCHEME_ECDSA_SECP256R1_SHA256", func(pub, sig string) []string {
			return []string{"dgst", "-sha256", "-verify", pub, "-signature", sig, msgFile}
		}},
		{"p521-pkcs8.pem", "SIGNATURE_SCHEME_ECDSA_SECP521R1_SHA512", func(pub, sig string) []string {
			return []string{"dgst", "-sha512", "-verify", pub, "-signature", sig, msgFile}
		}},
		{"ed25519-pkcs8.pem", "SIGNATURE_SCHEME_ED25519", func(pub, sig string) []string {
			return []string{"pkeyutl", "-verify", "-pubin", "-inkey", pub, "-rawin", "-in", msgFile, "-sigfile", sig}
		}},
	} {
		t.Run(tc.file+"/"+tc.scheme, func(t *testing.T) {
			id := uniqueID("openssl")
			mustRest(t, s, "POST", "/v1/keys:import", map[string]any{"id": id, "privateKeyPem": fixture(t, tc.file)}, nil)
			var pub struct{ Pem string }
			mustRest(t, s, "GET", "/v1/keys/"+id+"/publicKey", nil, &pub)
			var sig struct{ Signature []byte }
			mustRest(t, s, "POST", "/v1/keys/"+id+":sign", map[string]any{"scheme": tc.scheme, "message": msg}, &sig)
			pubFile, sigFile := filepath.Join(dir, id+".pub"), filepath.Join(dir, id+".sig")
			os.WriteFile(pubFile, []byte(pub.Pem), 0o600)
			os.WriteFile(sigFile, sig.Signature, 0o600)
			out, err := exec.Command(openssl, tc.args(pubFile, sigFile)...).CombinedOutput()
			require.NoError(t, err, "openssl rejects the signature:\n%s", out)
			// A signature over another message must not verify: the check above can fail.
			sig.Signature[len(sig.Signature)/2] ^= 1
			os.WriteFile(sigFile, sig.Signature, 0o600)
			out, err = exec.Command(openssl, tc.args(pubFile, sigFile)...).CombinedOutput()
			require.Error(t, err, "openssl accepted a corrupted signature:\n%s", out)
		})
	}
}

// TestSignStream: answers come in request order, each verifies, and a bad
// request gets its error in its response while the stream goes on.
func TestSignStream(t *testing.T) {
	s := startServer(t)
	id := uniqueID("stream")
	importFixture(t, s, id, "p256-sec1.pem")
	pub, _ := publicKey(t, s, id)
	stream, err := s.kv.SignStream(context.Background())
	require.NoError(t, err)
	msgs := []string{"first", "second", "BAD", "third"}
	for _, m := range msgs {
		scheme := pb.SignatureScheme_SIGNATURE_SCHEME_ECDSA_SECP256R1_SHA256
		if m == "BAD" {
			scheme = pb.SignatureScheme_SIGNATURE_SCHEME_ED25519
		}
		require.NoError(t, stream.Send(&pb.SignStreamRequest{Request: &pb.SignRequest{Key: id, Scheme: scheme, Input: &pb.SignRequest_Message{Message: []byte(m)}}}))
	}
	require.NoError(t, stream.CloseSend())
	for _, m := range msgs {
		resp, err := stream.Recv()
		require.NoError(t, err)
		if m == "BAD" {
			require.Equal(t, codes.InvalidArgument, codes.Code(resp.GetError().GetCode()), "bad request answered with %v", resp)
			require.NotEmpty(t, resp.GetError().GetMessage(), "bad request answered with %v", resp)
			continue
		}
		require.NoError(t, verify(pub, pb.SignatureScheme_SIGNATURE_SCHEME_ECDSA_SECP256R1_SHA256, []byte(m), resp.GetResponse().GetSignature()), m)
	}
	_, err = stream.Recv()
	assert.Equal(t, io.EOF, err, "after the last answer")
}
