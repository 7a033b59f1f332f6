package service_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net/http"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/metricsdoc"
	"github.com/handshaked/handshaked/internal/service"
	"github.com/handshaked/handshaked/internal/servicetest"
)

// scrape reads the live /metrics of s.
func scrape(t *testing.T, s *testServer) map[string]*dto.MetricFamily {
	t.Helper()
	resp, body := get(t, s.rest+"/metrics")
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	require.NoError(t, err)
	return families
}

// observations is the _count of the histogram series of family name whose
// labels are exactly want; 0 when there is none.
func observations(families map[string]*dto.MetricFamily, name string, want map[string]string) uint64 {
	f, ok := families[name]
	if !ok {
		return 0
	}
	for _, m := range f.GetMetric() {
		got := map[string]string{}
		for _, l := range m.GetLabel() {
			got[l.GetName()] = l.GetValue()
		}
		if len(got) == len(want) && func() bool {
			for k, v := range want {
				if got[k] != v {
					return false
				}
			}
			return true
		}() {
			return m.GetHistogram().GetSampleCount()
		}
	}
	return 0
}

// TestMetrics: the per-operation metrics count each Sign, Decrypt and key
// change with its algorithm, source and outcome, and the metrics table in
// docs/metrics.md is what a live /metrics serves.
func TestMetrics(t *testing.T) {
	// One stream at a time, so that a second one is refused and counted;
	// session tickets, so that a handshake resumes.
	srv := servicetest.Start(t, service.Options{Limits: service.Limits{MaxStreams: 1, MaxStreamsPerCaller: 1},
		Tickets: &service.TicketOptions{Deployment: "metrics"}})
	s := &testServer{Server: srv, vault: srv.Vault, grpcAddr: srv.GRPCAddr, kv: pb.NewKeyVaultClient(srv.Conn), rest: srv.RESTURL}
	ctx := context.Background()

	// import + attach_chain, each once, on an RSA-2048 key.
	rsaKey := newServerKey(t, s, "rsa2048-pkcs1.pem", "rsa.test")
	ec := uniqueID("ec")
	_, err := s.kv.CreateKey(ctx, &pb.CreateKeyRequest{Id: ec, Algorithm: pb.Algorithm_ALGORITHM_ECDSA_P256})
	require.NoError(t, err)
	_, err = s.kv.CreateKey(ctx, &pb.CreateKeyRequest{Id: ec, Algorithm: pb.Algorithm_ALGORITHM_ED25519})
	require.Equal(t, codes.AlreadyExists, status.Code(err), "%v", err)
	_, err = s.kv.ImportKey(ctx, &pb.ImportKeyRequest{Id: uniqueID("junk"), PrivateKeyPem: []byte("not a key")})
	require.Equal(t, codes.InvalidArgument, status.Code(err), "%v", err)

	sign := func(key string, version uint32, scheme pb.SignatureScheme) error {
		_, err := s.kv.Sign(ctx, &pb.SignRequest{Key: key, Version: version, Scheme: scheme, Input: &pb.SignRequest_Message{Message: []byte("m")}})
		return err
	}
	p256 := pb.SignatureScheme_SIGNATURE_SCHEME_ECDSA_SECP256R1_SHA256
	require.NoError(t, sign(ec, 0, p256))
	require.NoError(t, sign(ec, 0, p256))
	require.Equal(t, codes.InvalidArgument, status.Code(sign(ec, 0, pb.SignatureScheme_SIGNATURE_SCHEME_ED25519)))
	require.Equal(t, codes.NotFound, status.Code(sign("no-such-key", 0, p256)))

	// A good premaster and a corrupted one: both decrypt, both OK.
	pubResp, err := s.kv.GetPublicKey(ctx, &pb.GetPublicKeyRequest{Key: rsaKey.id})
	require.NoError(t, err)
	block, _ := pem.Decode([]byte(pubResp.GetPem()))
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	require.NoError(t, err)
	premaster := make([]byte, 48)
	rand.Read(premaster)
	premaster[0], premaster[1] = 3, 3
	ct, err := rsa.EncryptPKCS1v15(rand.Reader, pub.(*rsa.PublicKey), premaster)
	require.NoError(t, err)
	decrypt := func(ct []byte) {
		t.Helper()
		_, err := s.kv.Decrypt(ctx, &pb.DecryptRequest{Key: rsaKey.id, Mode: pb.DecryptMode_DECRYPT_MODE_RSA_PKCS1_TLS_PREMASTER, Ciphertext: ct})
		require.NoError(t, err)
	}
	decrypt(ct)
	ct[100] ^= 0xff
	decrypt(ct)

	// rotate, disable version 1, a signature by it refused, destroy it,
	// enable it again refused.
	_, err = s.kv.RotateKey(ctx, &pb.RotateKeyRequest{Key: ec})
	require.NoError(t, err)
	_, err = s.kv.DisableKeyVersion(ctx, &pb.DisableKeyVersionRequest{Key: ec, Version: 1})
	require.NoError(t, err)
	require.Equal(t, codes.FailedPrecondition, status.Code(sign(ec, 1, p256)))
	_, err = s.kv.DestroyKeyVersion(ctx, &pb.DestroyKeyVersionRequest{Key: ec, Version: 1})
	require.NoError(t, err)
	_, err = s.kv.EnableKeyVersion(ctx, &pb.EnableKeyVersionRequest{Key: ec, Version: 1})
	require.Equal(t, codes.FailedPrecondition, status.Code(err), "%v", err)

	// Handshakes through the service: TLS 1.2 RSA key exchange decrypts,
	// TLS 1.3 signs, both with the RSA key, and a second TLS 1.3 one
	// resumes with no private-key operation; a malformed ClientHello fails.
	hc := s.handshakeClient(t)
	start := &pb.StartHandshakeRequest{Config: &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: rsaKey.id}}}}
	unary := func() stepper { return &unaryStepper{hc: hc, start: start} }
	runClient(t, &tls.Config{ServerName: rsaKey.name, RootCAs: rsaKey.pool, MaxVersion: tls.VersionTLS12,
		CipherSuites: []uint16{tls.TLS_RSA_WITH_AES_128_GCM_SHA256}}, unary)
	tls13 := &tls.Config{ServerName: rsaKey.name, RootCAs: rsaKey.pool, MinVersion: tls.VersionTLS13, ClientSessionCache: tls.NewLRUClientSessionCache(1)}
	runClient(t, tls13, unary)
	resumed, _ := runClient(t, tls13, unary)
	require.True(t, resumed.DidResume, "the second TLS 1.3 handshake did not resume")

	// A ticket sealed and opened over the API.
	sealed, err := s.kv.SealTicket(ctx, &pb.SealTicketRequest{Key: ec, Plaintext: []byte("session")})
	require.NoError(t, err)
	opened, err := s.kv.OpenTicket(ctx, &pb.OpenTicketRequest{Key: ec, Ticket: sealed.GetTicket()})
	require.NoError(t, err)
	require.True(t, opened.GetAccepted())
	failed, err := hc.StartHandshake(ctx, &pb.StartHandshakeRequest{Config: start.GetConfig(),
		Input: []byte{22, 3, 1, 0, 5, 1, 0, 0, 1, 0}})
	require.NoError(t, err)
	require.Equal(t, pb.HandshakeState_HANDSHAKE_STATE_FAILED, failed.GetState())

	// A second stream past the cap of one is refused.
	open, err := s.kv.SignStream(ctx)
	require.NoError(t, err)
	require.NoError(t, open.Send(&pb.SignStreamRequest{Request: &pb.SignRequest{Key: ec, Scheme: p256, Input: &pb.SignRequest_Message{Message: []byte("m")}}}))
	_, err = open.Recv()
	require.NoError(t, err)
	refused, err := s.kv.SignStream(ctx)
	require.NoError(t, err)
	_, err = refused.Recv()
	require.Equal(t, codes.ResourceExhausted, status.Code(err), "%v", err)
	require.NoError(t, open.CloseSend())

	families := scrape(t, s)

	t.Run("key operations", func(t *testing.T) {
		op := func(operation, alg, source, outcome string) uint64 {
			return observations(families, "handshaked_key_operation_seconds",
				map[string]string{"operation": operation, "algorithm": alg, "source": source, "outcome": outcome})
		}
		assert.EqualValues(t, 3, op("sign", "ECDSA_P256", "api", "OK"), "two Sign calls and one SignStream message")
		assert.EqualValues(t, 1, op("sign", "ECDSA_P256", "api", "InvalidArgument"))
		assert.EqualValues(t, 1, op("sign", "ECDSA_P256", "api", "FailedPrecondition"))
		assert.EqualValues(t, 1, op("sign", "unknown", "api", "NotFound"))
		assert.EqualValues(t, 2, op("decrypt", "RSA_2048", "api", "OK"), "a bad padding is an OK decryption (implicit rejection)")
		assert.EqualValues(t, 1, op("decrypt", "RSA_2048", "handshake", "OK"), "the TLS 1.2 RSA key exchange")
		assert.EqualValues(t, 1, op("sign", "RSA_2048", "handshake", "OK"), "the full TLS 1.3 handshake's CertificateVerify; the resumed one signs nothing")
		assert.Len(t, families["handshaked_key_operation_seconds"].GetMetric(), 7, "no other series")
	})

	t.Run("key changes", func(t *testing.T) {
		change := func(operation, alg, outcome string) uint64 {
			return observations(families, "handshaked_key_change_seconds",
				map[string]string{"operation": operation, "algorithm": alg, "outcome": outcome})
		}
		assert.EqualValues(t, 1, change("import", "RSA_2048", "OK"))
		assert.EqualValues(t, 1, change("import", "unknown", "InvalidArgument"))
		assert.EqualValues(t, 1, change("attach_chain", "RSA_2048", "OK"))
		assert.EqualValues(t, 1, change("create", "ECDSA_P256", "OK"))
		assert.EqualValues(t, 1, change("create", "ED25519", "AlreadyExists"), "the algorithm asked for")
		assert.EqualValues(t, 1, change("rotate", "ECDSA_P256", "OK"))
		assert.EqualValues(t, 1, change("disable", "ECDSA_P256", "OK"))
		assert.EqualValues(t, 1, change("destroy", "ECDSA_P256", "OK"))
		assert.EqualValues(t, 1, change("enable", "ECDSA_P256", "FailedPrecondition"))
		assert.Len(t, families["handshaked_key_change_seconds"].GetMetric(), 9, "no other series")
	})

	t.Run("documented", func(t *testing.T) {
		rows, err := metricsdoc.Read(metricsdoc.Path())
		require.NoError(t, err)
		assert.Empty(t, metricsdoc.Mismatches(rows, families, "handshaked_"),
			"docs/metrics.md against /metrics (a listed metric not served may be one this test does not exercise)")
	})
}
