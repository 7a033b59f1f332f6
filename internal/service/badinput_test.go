package service_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
)

// TestBadInput sends each malformed request over gRPC and over REST and wants
// the precise status code (and its HTTP status), never INTERNAL.
func TestBadInput(t *testing.T) {
	s := startServer(t)
	ctx := context.Background()
	rsaID, ecID := uniqueID("bad-rsa"), uniqueID("bad-ec")
	importFixture(t, s, rsaID, "rsa2048-pkcs1.pem")
	importFixture(t, s, ecID, "p256-sec1.pem")
	disabledID := uniqueID("bad-disabled")
	importFixture(t, s, disabledID, "p384-sec1.pem")
	if _, err := s.kv.DisableKeyVersion(ctx, &pb.DisableKeyVersionRequest{Key: disabledID, Version: 1}); err != nil {
		t.Fatal(err)
	}
	otherPEM := string(fixture(t, "p256-pkcs8.pem"))
	selfSigned := foreignCertPEM(t)
	big := strings.Repeat("A", 300<<10)

	type restReq struct {
		method, path string
		body         any
	}
	cases := []struct {
		name string
		want codes.Code
		grpc func() error
		rest restReq
	}{
		{"create: empty id", codes.InvalidArgument,
			func() error {
				_, err := s.kv.CreateKey(ctx, &pb.CreateKeyRequest{Algorithm: pb.Algorithm_ALGORITHM_ED25519})
				return err
			},
			restReq{"POST", "/v1/keys", `{"algorithm":"ALGORITHM_ED25519"}`}},
		{"create: malformed id", codes.InvalidArgument,
			func() error {
				_, err := s.kv.CreateKey(ctx, &pb.CreateKeyRequest{Id: "Bad_ID/..", Algorithm: pb.Algorithm_ALGORITHM_ED25519})
				return err
			},
			restReq{"POST", "/v1/keys", `{"id":"Bad_ID..","algorithm":"ALGORITHM_ED25519"}`}},
		{"create: oversized id", codes.InvalidArgument,
			func() error {
				_, err := s.kv.CreateKey(ctx, &pb.CreateKeyRequest{Id: strings.Repeat("a", 64), Algorithm: pb.Algorithm_ALGORITHM_ED25519})
				return err
			},
			restReq{"POST", "/v1/keys", `{"id":"` + strings.Repeat("a", 64) + `","algorithm":"ALGORITHM_ED25519"}`}},
		{"create: no algorithm", codes.InvalidArgument,
			func() error { _, err := s.kv.CreateKey(ctx, &pb.CreateKeyRequest{Id: "no-alg"}); return err },
			restReq{"POST", "/v1/keys", `{"id":"no-alg"}`}},
		{"create: unknown algorithm number", codes.InvalidArgument,
			func() error {
				_, err := s.kv.CreateKey(ctx, &pb.CreateKeyRequest{Id: "alg-99", Algorithm: 99})
				return err
			},
			restReq{"POST", "/v1/keys", `{"id":"alg-99","algorithm":99}`}},
		{"create: existing id", codes.AlreadyExists,
			func() error {
				_, err := s.kv.CreateKey(ctx, &pb.CreateKeyRequest{Id: rsaID, Algorithm: pb.Algorithm_ALGORITHM_ED25519})
				return err
			},
			restReq{"POST", "/v1/keys", `{"id":"` + rsaID + `","algorithm":"ALGORITHM_ED25519"}`}},
		{"import: garbage PEM", codes.InvalidArgument,
			func() error {
				_, err := s.kv.ImportKey(ctx, &pb.ImportKeyRequest{Id: "garbage", PrivateKeyPem: []byte("-----BEGIN PRIVATE KEY-----\nnot base64!\n-----END PRIVATE KEY-----\n")})
				return err
			},
			restReq{"POST", "/v1/keys:import", map[string]any{"id": "garbage", "privateKeyPem": []byte("not a pem at all")}}},
		{"import: empty PEM", codes.InvalidArgument,
			func() error { _, err := s.kv.ImportKey(ctx, &pb.ImportKeyRequest{Id: "empty"}); return err },
			restReq{"POST", "/v1/keys:import", `{"id":"empty"}`}},
		{"import: oversized PEM", codes.InvalidArgument,
			func() error {
				_, err := s.kv.ImportKey(ctx, &pb.ImportKeyRequest{Id: "huge", PrivateKeyPem: []byte(big)})
				return err
			},
			restReq{"POST", "/v1/keys:import", map[string]any{"id": "huge", "privateKeyPem": []byte(big)}}},
		{"import: RSA-1024", codes.InvalidArgument,
			func() error {
				_, err := s.kv.ImportKey(ctx, &pb.ImportKeyRequest{Id: "weak", PrivateKeyPem: fixture(t, "rsa1024-pkcs1.pem")})
				return err
			},
			restReq{"POST", "/v1/keys:import", map[string]any{"id": "weak", "privateKeyPem": fixture(t, "rsa1024-pkcs1.pem")}}},
		{"import: encrypted PEM", codes.InvalidArgument,
			func() error {
				_, err := s.kv.ImportKey(ctx, &pb.ImportKeyRequest{Id: "locked", PrivateKeyPem: fixture(t, "rsa2048-encrypted.pem")})
				return err
			},
			restReq{"POST", "/v1/keys:import", map[string]any{"id": "locked", "privateKeyPem": fixture(t, "rsa2048-encrypted.pem")}}},
		{"get: unknown key", codes.NotFound,
			func() error { _, err := s.kv.GetKey(ctx, &pb.GetKeyRequest{Key: "no-such-key"}); return err },
			restReq{"GET", "/v1/keys/no-such-key", nil}},
		{"public key: unknown version", codes.NotFound,
			func() error {
				_, err := s.kv.GetPublicKey(ctx, &pb.GetPublicKeyRequest{Key: rsaID, Version: 7})
				return err
			},
			restReq{"GET", "/v1/keys/" + rsaID + "/publicKey?version=7", nil}},
		{"list: negative page size", codes.InvalidArgument,
			func() error { _, err := s.kv.ListKeys(ctx, &pb.ListKeysRequest{PageSize: -1}); return err },
			restReq{"GET", "/v1/keys?pageSize=-1", nil}},
		{"list: forged page token", codes.InvalidArgument,
			func() error { _, err := s.kv.ListKeys(ctx, &pb.ListKeysRequest{PageToken: "%%%forged"}); return err },
			restReq{"GET", "/v1/keys?pageToken=%25%25%25forged", nil}},
		{"sign: unknown key", codes.NotFound,
			func() error {
				_, err := s.kv.Sign(ctx, &pb.SignRequest{Key: "no-such-key", Scheme: pb.SignatureScheme_SIGNATURE_SCHEME_ED25519, Input: &pb.SignRequest_Message{Message: []byte("x")}})
				return err
			},
			restReq{"POST", "/v1/keys/no-such-key:sign", `{"scheme":"SIGNATURE_SCHEME_ED25519","message":"eA=="}`}},
		{"sign: scheme unfit for key", codes.InvalidArgument,
			func() error {
				_, err := s.kv.Sign(ctx, &pb.SignRequest{Key: rsaID, Scheme: pb.SignatureScheme_SIGNATURE_SCHEME_ECDSA_SECP256R1_SHA256, Input: &pb.SignRequest_Message{Message: []byte("x")}})
				return err
			},
			restReq{"POST", "/v1/keys/" + rsaID + ":sign", `{"scheme":"SIGNATURE_SCHEME_ECDSA_SECP256R1_SHA256","message":"eA=="}`}},
		{"sign: no scheme", codes.InvalidArgument,
			func() error {
				_, err := s.kv.Sign(ctx, &pb.SignRequest{Key: rsaID, Input: &pb.SignRequest_Message{Message: []byte("x")}})
				return err
			},
			restReq{"POST", "/v1/keys/" + rsaID + ":sign", `{"message":"eA=="}`}},
		{"sign: unknown scheme number", codes.InvalidArgument,
			func() error {
				_, err := s.kv.Sign(ctx, &pb.SignRequest{Key: rsaID, Scheme: 9999, Input: &pb.SignRequest_Message{Message: []byte("x")}})
				return err
			},
			restReq{"POST", "/v1/keys/" + rsaID + ":sign", `{"scheme":9999,"message":"eA=="}`}},
		{"sign: no input", codes.InvalidArgument,
			func() error {
				_, err := s.kv.Sign(ctx, &pb.SignRequest{Key: rsaID, Scheme: pb.SignatureScheme_SIGNATURE_SCHEME_RSA_PKCS1_SHA256})
				return err
			},
			restReq{"POST", "/v1/keys/" + rsaID + ":sign", `{"scheme":"SIGNATURE_SCHEME_RSA_PKCS1_SHA256"}`}},
		{"sign: digest of wrong length", codes.InvalidArgument,
			func() error {
				_, err := s.kv.Sign(ctx, &pb.SignRequest{Key: rsaID, Scheme: pb.SignatureScheme_SIGNATURE_SCHEME_RSA_PKCS1_SHA256, Input: &pb.SignRequest_Digest{Digest: []byte("short")}})
				return err
			},
			restReq{"POST", "/v1/keys/" + rsaID + ":sign", `{"scheme":"SIGNATURE_SCHEME_RSA_PKCS1_SHA256","digest":"c2hvcnQ="}`}},
		{"sign: oversized message", codes.InvalidArgument,
			func() error {
				_, err := s.kv.Sign(ctx, &pb.SignRequest{Key: ecID, Scheme: pb.SignatureScheme_SIGNATURE_SCHEME_ECDSA_SECP256R1_SHA256, Input: &pb.SignRequest_Message{Message: []byte(big)}})
				return err
			},
			restReq{"POST", "/v1/keys/" + ecID + ":sign", map[string]any{"scheme": "SIGNATURE_SCHEME_ECDSA_SECP256R1_SHA256", "message": []byte(big)}}},
		{"sign: disabled version", codes.FailedPrecondition,
			func() error {
				_, err := s.kv.Sign(ctx, &pb.SignRequest{Key: disabledID, Version: 1, Scheme: pb.SignatureScheme_SIGNATURE_SCHEME_ECDSA_SECP384R1_SHA384, Input: &pb.SignRequest_Message{Message: []byte("x")}})
				return err
			},
			restReq{"POST", "/v1/keys/" + disabledID + ":sign", `{"version":1,"scheme":"SIGNATURE_SCHEME_ECDSA_SECP384R1_SHA384","message":"eA=="}`}},
		{"decrypt: no mode", codes.InvalidArgument,
			func() error {
				_, err := s.kv.Decrypt(ctx, &pb.DecryptRequest{Key: rsaID, Ciphertext: make([]byte, 256)})
				return err
			},
			restReq{"POST", "/v1/keys/" + rsaID + ":decrypt", map[string]any{"ciphertext": make([]byte, 256)}}},
		{"decrypt: empty ciphertext", codes.InvalidArgument,
			func() error {
				_, err := s.kv.Decrypt(ctx, &pb.DecryptRequest{Key: rsaID, Mode: pb.DecryptMode_DECRYPT_MODE_RSA_PKCS1_TLS_PREMASTER})
				return err
			},
			restReq{"POST", "/v1/keys/" + rsaID + ":decrypt", `{"mode":"DECRYPT_MODE_RSA_PKCS1_TLS_PREMASTER"}`}},
		{"decrypt: ciphertext not of modulus size", codes.InvalidArgument,
			func() error {
				_, err := s.kv.Decrypt(ctx, &pb.DecryptRequest{Key: rsaID, Mode: pb.DecryptMode_DECRYPT_MODE_RSA_PKCS1_TLS_PREMASTER, Ciphertext: make([]byte, 100)})
				return err
			},
			restReq{"POST", "/v1/keys/" + rsaID + ":decrypt", map[string]any{"mode": "DECRYPT_MODE_RSA_PKCS1_TLS_PREMASTER", "ciphertext": make([]byte, 100)}}},
		{"decrypt: oversized ciphertext", codes.InvalidArgument,
			func() error {
				_, err := s.kv.Decrypt(ctx, &pb.DecryptRequest{Key: rsaID, Mode: pb.DecryptMode_DECRYPT_MODE_RSA_OAEP_SHA256, Ciphertext: make([]byte, 5000)})
				return err
			},
			restReq{"POST", "/v1/keys/" + rsaID + ":decrypt", map[string]any{"mode": "DECRYPT_MODE_RSA_OAEP_SHA256", "ciphertext": make([]byte, 5000)}}},
		{"decrypt: EC key", codes.InvalidArgument,
			func() error {
				_, err := s.kv.Decrypt(ctx, &pb.DecryptRequest{Key: ecID, Mode: pb.DecryptMode_DECRYPT_MODE_RSA_PKCS1_TLS_PREMASTER, Ciphertext: make([]byte, 256)})
				return err
			},
			restReq{"POST", "/v1/keys/" + ecID + ":decrypt", map[string]any{"mode": "DECRYPT_MODE_RSA_PKCS1_TLS_PREMASTER", "ciphertext": make([]byte, 256)}}},
		{"decrypt: client version out of range", codes.InvalidArgument,
			func() error {
				_, err := s.kv.Decrypt(ctx, &pb.DecryptRequest{Key: rsaID, Mode: pb.DecryptMode_DECRYPT_MODE_RSA_PKCS1_TLS_PREMASTER, Ciphertext: make([]byte, 256), ExpectedClientVersion: 1 << 20})
				return err
			},
			restReq{"POST", "/v1/keys/" + rsaID + ":decrypt", map[string]any{"mode": "DECRYPT_MODE_RSA_PKCS1_TLS_PREMASTER", "ciphertext": make([]byte, 256), "expectedClientVersion": 1 << 20}}},
		{"OAEP: garbage ciphertext", codes.InvalidArgument,
			func() error {
				_, err := s.kv.Decrypt(ctx, &pb.DecryptRequest{Key: rsaID, Mode: pb.DecryptMode_DECRYPT_MODE_RSA_OAEP_SHA256, Ciphertext: make([]byte, 256)})
				return err
			},
			restReq{"POST", "/v1/keys/" + rsaID + ":decrypt", map[string]any{"mode": "DECRYPT_MODE_RSA_OAEP_SHA256", "ciphertext": make([]byte, 256)}}},
		{"destroy: enabled version", codes.FailedPrecondition,
			func() error {
				_, err := s.kv.DestroyKeyVersion(ctx, &pb.DestroyKeyVersionRequest{Key: rsaID, Version: 1})
				return err
			},
			restReq{"POST", "/v1/keys/" + rsaID + "/versions/1:destroy", `{}`}},
		{"disable: version 0", codes.InvalidArgument,
			func() error {
				_, err := s.kv.DisableKeyVersion(ctx, &pb.DisableKeyVersionRequest{Key: rsaID})
				return err
			},
			restReq{"POST", "/v1/keys/" + rsaID + "/versions/0:disable", `{}`}},
		{"attach: leaf of another key", codes.InvalidArgument,
			func() error {
				_, err := s.kv.AttachCertificateChain(ctx, &pb.AttachCertificateChainRequest{Key: rsaID, CertificateChainPem: selfSigned})
				return err
			},
			restReq{"POST", "/v1/keys/" + rsaID + "/versions/1:attachCertificateChain", map[string]any{"certificateChainPem": selfSigned}}},
		{"attach: not a certificate", codes.InvalidArgument,
			func() error {
				_, err := s.kv.AttachCertificateChain(ctx, &pb.AttachCertificateChainRequest{Key: rsaID, CertificateChainPem: otherPEM})
				return err
			},
			restReq{"POST", "/v1/keys/" + rsaID + "/versions/1:attachCertificateChain", map[string]any{"certificateChainPem": otherPEM}}},
		{"attach: garbage DER", codes.InvalidArgument,
			func() error {
				_, err := s.kv.AttachCertificateChain(ctx, &pb.AttachCertificateChainRequest{Key: rsaID, CertificateChain: [][]byte{[]byte("junk")}})
				return err
			},
			restReq{"POST", "/v1/keys/" + rsaID + "/versions/1:attachCertificateChain", map[string]any{"certificateChain": [][]byte{[]byte("junk")}}}},
		{"csr: bad IP", codes.InvalidArgument,
			func() error {
				_, err := s.kv.CreateCertificateSigningRequest(ctx, &pb.CreateCertificateSigningRequestRequest{Key: rsaID, IpAddresses: []string{"300.1.1.1"}})
				return err
			},
			restReq{"POST", "/v1/keys/" + rsaID + ":createCertificateSigningRequest", `{"ipAddresses":["300.1.1.1"]}`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Run("grpc", func(t *testing.T) {
				if got := status.Code(tc.grpc()); got != tc.want {
					t.Fatalf("code = %v, want %v (err: %v)", got, tc.want, tc.grpc())
				}
			})
			t.Run("rest", func(t *testing.T) {
				checkRESTStatus(t, s, tc.rest.method, tc.rest.path, tc.rest.body, tc.want)
			})
		})
	}

	// Malformed requests that only REST can send.
	for _, tc := range []struct {
		name, method, path, body string
	}{
		{"malformed JSON", "POST", "/v1/keys", `{"id": "x",`},
		{"unknown field", "POST", "/v1/keys", `{"id":"typo","algoritm":"ALGORITHM_ED25519"}`},
		{"wrong JSON type", "POST", "/v1/keys", `{"id":42}`},
		{"bad base64", "POST", "/v1/keys/" + rsaID + ":sign", `{"scheme":"SIGNATURE_SCHEME_RSA_PKCS1_SHA256","message":"***"}`},
		{"version not a number", "POST", "/v1/keys/" + rsaID + "/versions/abc:disable", `{}`},
		{"unknown enum name", "POST", "/v1/keys", `{"id":"enum","algorithm":"ALGORITHM_RSA_1024"}`},
	} {
		t.Run("rest-only/"+tc.name, func(t *testing.T) {
			checkRESTStatus(t, s, tc.method, tc.path, tc.body, codes.InvalidArgument)
		})
	}

	// Nothing above may have changed what is stored.
	k, err := s.kv.GetKey(ctx, &pb.GetKeyRequest{Key: rsaID})
	if err != nil || len(k.GetVersions()) != 1 || k.GetVersions()[0].GetState() != pb.KeyVersionState_KEY_VERSION_STATE_ENABLED || len(k.GetVersions()[0].GetCertificateChain()) != 0 {
		t.Fatalf("key changed by rejected requests: %v %v", k, err)
	}
}

func checkRESTStatus(t *testing.T, s *testServer, method, path string, body any, want codes.Code) {
	t.Helper()
	httpStatus, raw := s.restCall(t, method, path, body, nil)
	if wantHTTP := runtime.HTTPStatusFromCode(want); httpStatus != wantHTTP {
		t.Fatalf("HTTP %d, want %d: %s", httpStatus, wantHTTP, raw)
	}
	var st struct {
		Code    int
		Message string
	}
	if err := json.Unmarshal(raw, &st); err != nil {
		t.Fatalf("error body is not a JSON status: %s", raw)
	}
	if codes.Code(st.Code) != want || st.Message == "" {
		t.Fatalf("status body %s, want code %v with a message", raw, want)
	}
}
