package service_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"math/big"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/audit"
)

func signReq(key string, scheme pb.SignatureScheme) *pb.SignRequest {
	return &pb.SignRequest{Key: key, Scheme: scheme, Input: &pb.SignRequest_Message{Message: []byte("audited message")}}
}

const (
	p256Scheme = pb.SignatureScheme_SIGNATURE_SCHEME_ECDSA_SECP256R1_SHA256
	edScheme   = pb.SignatureScheme_SIGNATURE_SCHEME_ED25519
)

// wantAudit checks that the call with request id rid left exactly one
// audit entry, by caller on key, with outcome.
func wantAudit(t *testing.T, s *secureServer, rid, caller, op, key, outcome string) audit.Entry {
	t.Helper()
	es := s.auditFor(t, rid)
	if len(es) != 1 {
		t.Fatalf("request %s: %d audit entries, want 1: %+v", rid, len(es), es)
	}
	e := es[0]
	if e.Caller != caller || e.Operation != op || e.Key != key || e.Outcome != outcome || e.Time.IsZero() || e.Peer == "" {
		t.Fatalf("request %s: audit entry %+v, want caller %q op %q key %q outcome %q", rid, e, caller, op, key, outcome)
	}
	return e
}

// refusedTLS checks that a handshake with a bad certificate left an audit
// entry naming why.
func refusedTLS(t *testing.T, s *secureServer, before int, why string) {
	t.Helper()
	for _, e := range s.auditEntries(t)[before:] {
		if e.Operation == "tls.client_certificate" && e.Outcome == "UNAUTHENTICATED" && strings.Contains(e.Detail, why) && e.Peer != "" {
			return
		}
	}
	t.Fatalf("no audit entry for a client certificate refused for %q: %+v", why, s.auditEntries(t)[before:])
}

// TestProductionAccessGRPC: over real mutual-TLS sockets, callers without a
// certificate, with another CA's certificate or with an expired one are
// refused; an identity with use on key A signs with A but not with B and
// cannot rotate A; an admin can; and every attempt is in the audit log.
func TestProductionAccessGRPC(t *testing.T) {
	s := startSecure(t, secureOptions{})
	ctx := context.Background()
	s.adminImport(t, "key-a", "p256-pkcs8.pem", map[string]string{"team": "a"})
	s.adminImport(t, "key-b", "ed25519-pkcs8.pem", nil)

	t.Run("no certificate", func(t *testing.T) {
		conn := s.dial(t, "")
		var rid requestID
		_, err := pb.NewKeyVaultClient(conn).Sign(ctx, signReq("key-a", p256Scheme), rid.opt())
		if status.Code(err) != codes.Unauthenticated {
			t.Fatalf("sign without a certificate: %v, want UNAUTHENTICATED", err)
		}
		wantAudit(t, s, rid.String(), "", "KeyVault.Sign", "key-a", "UNAUTHENTICATED")
		// The same connection still answers health checks.
		resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("health without a certificate: %v %v", resp, err)
		}
	})
	for _, tc := range []struct{ who, why string }{
		{"foreign", "unknown authority"},
		{"expired", "expired"},
	} {
		t.Run(tc.who, func(t *testing.T) {
			before := len(s.auditEntries(t))
			_, err := s.kv(t, tc.who).Sign(ctx, signReq("key-a", p256Scheme))
			if status.Code(err) != codes.Unavailable {
				t.Fatalf("sign with a %s certificate: %v, want the connection refused", tc.who, err)
			}
			refusedTLS(t, s, before, tc.why)
		})
	}

	edge, admin := s.kv(t, "edge"), s.kv(t, "admin")
	t.Run("use but not manage", func(t *testing.T) {
		var rid requestID
		resp, err := edge.Sign(ctx, signReq("key-a", p256Scheme), rid.opt())
		if err != nil {
			t.Fatalf("edge signs with key-a: %v", err)
		}
		e := wantAudit(t, s, rid.String(), idEdge, "KeyVault.Sign", "key-a", "OK")
		if e.Version != resp.GetVersion() || e.Scheme != p256Scheme.String() {
			t.Fatalf("audit entry %+v lacks version %d or scheme", e, resp.GetVersion())
		}
		_, err = edge.Sign(ctx, signReq("key-b", edScheme), rid.opt())
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("edge signs with key-b: %v, want PERMISSION_DENIED", err)
		}
		if e := wantAudit(t, s, rid.String(), idEdge, "KeyVault.Sign", "key-b", "PERMISSION_DENIED"); e.Detail == "" {
			t.Fatal("denial without a reason")
		}
		_, err = edge.RotateKey(ctx, &pb.RotateKeyRequest{Key: "key-a"}, rid.opt())
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("edge rotates key-a: %v, want PERMISSION_DENIED", err)
		}
		wantAudit(t, s, rid.String(), idEdge, "KeyVault.RotateKey", "key-a", "PERMISSION_DENIED")
		// A key nobody granted it is PERMISSION_DENIED whether or not it
		// exists: the caller learns nothing about other keys.
		_, err = edge.GetKey(ctx, &pb.GetKeyRequest{Key: "no-such-key"})
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("edge reads a missing key: %v", err)
		}
	})
	t.Run("admin", func(t *testing.T) {
		var rid requestID
		k, err := admin.RotateKey(ctx, &pb.RotateKeyRequest{Key: "key-a"}, rid.opt())
		if err != nil {
			t.Fatalf("admin rotates key-a: %v", err)
		}
		if e := wantAudit(t, s, rid.String(), idAdmin, "KeyVault.RotateKey", "key-a", "OK"); e.Version != k.GetPrimaryVersion() {
			t.Fatalf("rotation audited as version %d, key has %d", e.Version, k.GetPrimaryVersion())
		}
		if _, err := admin.Sign(ctx, signReq("key-b", edScheme), rid.opt()); err != nil {
			t.Fatalf("admin signs with key-b: %v", err)
		}
		wantAudit(t, s, rid.String(), idAdmin, "KeyVault.Sign", "key-b", "OK")
		if _, err := admin.GetKey(ctx, &pb.GetKeyRequest{Key: "no-such-key"}); status.Code(err) != codes.NotFound {
			t.Fatalf("admin reads a missing key: %v, want NOT_FOUND", err)
		}
	})
	t.Run("manage by label", func(t *testing.T) {
		mgr := s.kv(t, "manager") // identified by its subject CN
		var rid requestID
		if _, err := mgr.DisableKeyVersion(ctx, &pb.DisableKeyVersionRequest{Key: "key-a", Version: 1}, rid.opt()); err != nil {
			t.Fatalf("manager disables a team=a key: %v", err)
		}
		if e := wantAudit(t, s, rid.String(), idManager, "KeyVault.DisableKeyVersion", "key-a", "OK"); e.Version != 1 {
			t.Fatalf("audit entry %+v: want version 1", e)
		}
		if _, err := mgr.CreateKey(ctx, &pb.CreateKeyRequest{Id: "key-m", Algorithm: pb.Algorithm_ALGORITHM_ED25519, Labels: map[string]string{"team": "a"}}); err != nil {
			t.Fatalf("manager creates a team=a key: %v", err)
		}
		_, err := mgr.CreateKey(ctx, &pb.CreateKeyRequest{Id: "key-n", Algorithm: pb.Algorithm_ALGORITHM_ED25519, Labels: map[string]string{"team": "b"}})
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("manager creates a team=b key: %v", err)
		}
		if _, err := mgr.RotateKey(ctx, &pb.RotateKeyRequest{Key: "key-b"}); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("manager rotates an unlabelled key: %v", err)
		}
		if _, err := mgr.Sign(ctx, signReq("key-m", edScheme)); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("manage does not include use: %v", err)
		}
	})
	t.Run("listing", func(t *testing.T) {
		for who, want := range map[string][]string{
			"edge":   {"key-a"}, // key-rsa is granted but does not exist here
			"nobody": nil,
			"admin":  {"key-a", "key-b", "key-m"},
		} {
			resp, err := s.kv(t, who).ListKeys(ctx, &pb.ListKeysRequest{})
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, k := range resp.GetKeys() {
				got = append(got, k.GetId())
			}
			if !slices.Equal(got, want) {
				t.Errorf("%s lists %v, want %v", who, got, want)
			}
		}
	})
	t.Run("identity metadata is not believed", func(t *testing.T) {
		// A gRPC caller naming the admin in the gateway's own headers is
		// still itself.
		md := metadata.Pairs("x-handshaked-caller", idAdmin)
		_, err := edge.RotateKey(metadata.NewOutgoingContext(ctx, md), &pb.RotateKeyRequest{Key: "key-a"})
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("edge claiming to be the admin: %v", err)
		}
		_, err = s.kv(t, "").RotateKey(metadata.NewOutgoingContext(ctx, md), &pb.RotateKeyRequest{Key: "key-a"})
		if status.Code(err) != codes.Unauthenticated {
			t.Fatalf("anonymous caller claiming to be the admin: %v", err)
		}
	})
	t.Run("sign stream", func(t *testing.T) {
		stream, err := edge.SignStream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		stream.Send(&pb.SignStreamRequest{Request: signReq("key-a", p256Scheme)})
		if resp, err := stream.Recv(); err != nil || resp.GetResponse() == nil {
			t.Fatalf("stream sign with key-a: %v %v", resp, err)
		}
		stream.Send(&pb.SignStreamRequest{Request: signReq("key-b", edScheme)})
		if _, err := stream.Recv(); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("stream sign with key-b: %v, want PERMISSION_DENIED", err)
		}
		var ok, denied bool
		for _, e := range s.auditEntries(t) {
			if e.Operation == "KeyVault.SignStream" && e.Caller == idEdge {
				ok = ok || e.Key == "key-a" && e.Outcome == "OK"
				denied = denied || e.Key == "key-b" && e.Outcome == "PERMISSION_DENIED"
			}
		}
		if !ok || !denied {
			t.Fatalf("stream messages not audited (ok %v, denied %v)", ok, denied)
		}
	})
	checkNoSecrets(t, readAll(t, s.audit))
}

func readAll(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestProductionAccessREST: the same checks through the gateway, where the
// identity comes from the REST connection's client certificate.
func TestProductionAccessREST(t *testing.T) {
	s := startSecure(t, secureOptions{})
	s.adminImport(t, "key-a", "p256-pkcs8.pem", nil)
	s.adminImport(t, "key-b", "ed25519-pkcs8.pem", nil)
	signBody := map[string]any{"scheme": p256Scheme.String(), "message": base64.StdEncoding.EncodeToString([]byte("hi"))}

	r := s.rest(t, "", "POST", "/v1/keys/key-a:sign", signBody, nil)
	if r.err != nil || r.status != http.StatusUnauthorized {
		t.Fatalf("no certificate: %d %s %v, want 401", r.status, r.body, r.err)
	}
	wantAudit(t, s, r.requestID, "", "KeyVault.Sign", "key-a", "UNAUTHENTICATED")
	// A REST caller cannot name itself through the gateway's headers.
	spoof := http.Header{"Grpc-Metadata-X-Handshaked-Caller": {idAdmin}}
	if r := s.rest(t, "", "POST", "/v1/keys/key-a:sign", signBody, spoof); r.status != http.StatusUnauthorized {
		t.Fatalf("anonymous REST caller claiming to be the admin: %d %s", r.status, r.body)
	}
	if r := s.rest(t, "edge", "POST", "/v1/keys/key-a:rotate", map[string]any{}, spoof); r.status != http.StatusForbidden {
		t.Fatalf("edge claiming to be the admin over REST: %d %s", r.status, r.body)
	}
	for _, tc := range []struct{ who, why string }{{"foreign", "unknown authority"}, {"expired", "expired"}} {
		before := len(s.auditEntries(t))
		if r := s.rest(t, tc.who, "POST", "/v1/keys/key-a:sign", signBody, nil); r.err == nil {
			t.Fatalf("%s certificate: HTTP %d, want the TLS handshake refused", tc.who, r.status)
		}
		refusedTLS(t, s, before, tc.why)
	}

	r = s.rest(t, "edge", "POST", "/v1/keys/key-a:sign", signBody, nil)
	if r.status != http.StatusOK {
		t.Fatalf("edge signs with key-a: %d %s %v", r.status, r.body, r.err)
	}
	if e := wantAudit(t, s, r.requestID, idEdge, "KeyVault.Sign", "key-a", "OK"); strings.HasPrefix(e.Peer, "bufconn") || e.Peer == "" {
		t.Fatalf("REST call audited with peer %q, want the REST client's address", e.Peer)
	}
	signB := map[string]any{"scheme": edScheme.String(), "message": "aGk="}
	r = s.rest(t, "edge", "POST", "/v1/keys/key-b:sign", signB, nil)
	if r.status != http.StatusForbidden {
		t.Fatalf("edge signs with key-b: %d %s", r.status, r.body)
	}
	wantAudit(t, s, r.requestID, idEdge, "KeyVault.Sign", "key-b", "PERMISSION_DENIED")
	r = s.rest(t, "edge", "POST", "/v1/keys/key-a:rotate", map[string]any{}, nil)
	if r.status != http.StatusForbidden {
		t.Fatalf("edge rotates key-a: %d %s", r.status, r.body)
	}
	wantAudit(t, s, r.requestID, idEdge, "KeyVault.RotateKey", "key-a", "PERMISSION_DENIED")
	r = s.rest(t, "admin", "POST", "/v1/keys/key-a:rotate", map[string]any{}, nil)
	if r.status != http.StatusOK {
		t.Fatalf("admin rotates key-a: %d %s", r.status, r.body)
	}
	wantAudit(t, s, r.requestID, idAdmin, "KeyVault.RotateKey", "key-a", "OK")
	if r := s.rest(t, "admin", "POST", "/v1/keys/key-b:sign", signB, nil); r.status != http.StatusOK {
		t.Fatalf("admin signs with key-b: %d %s", r.status, r.body)
	}
	// An import over REST carries a private key in its body; it must not
	// reach any log.
	pemKey := fixture(t, "rsa2048-pkcs1.pem")
	if r := s.rest(t, "admin", "POST", "/v1/keys:import", map[string]any{"id": "key-rsa", "privateKeyPem": pemKey}, nil); r.status != http.StatusOK {
		t.Fatalf("admin imports over REST: %d %s", r.status, r.body)
	}
	if r := s.rest(t, "edge", "GET", "/v1/keys", nil, nil); r.status != http.StatusOK || strings.Contains(string(r.body), "key-b") || !strings.Contains(string(r.body), "key-rsa") {
		t.Fatalf("edge's listing: %d %s", r.status, r.body)
	}
	// Health and metrics answer without a client certificate.
	for _, path := range []string{"/healthz", "/metrics"} {
		if r := s.rest(t, "", "GET", path, nil, nil); r.status != http.StatusOK {
			t.Fatalf("%s without a certificate: %d %v", path, r.status, r.err)
		}
	}
	checkNoSecrets(t, readAll(t, s.audit))
}

// TestProductionHandshakeAndPremaster: a handshake needs use on every key
// it offers; an edge completes one with its key and decrypts a premaster;
// the session secrets and the premaster then appear in no log.
func TestProductionHandshakeAndPremaster(t *testing.T) {
	s := startSecure(t, secureOptions{})
	ctx := context.Background()
	s.adminImport(t, "key-a", "p256-sec1.pem", nil)
	s.adminImport(t, "key-b", "p384-sec1.pem", nil)
	s.adminImport(t, "key-rsa", "rsa2048-pkcs1.pem", nil)
	pool := x509.NewCertPool()
	for _, id := range []string{"key-a", "key-b"} {
		der, err := s.vault.CreateSelfSignedCertificate(ctx, id, 1, &x509.Certificate{
			SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: id + ".test"}, DNSNames: []string{id + ".test"},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, IsCA: true, BasicConstraintsValid: true,
		})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.kv(t, "admin").AttachCertificateChain(ctx, &pb.AttachCertificateChainRequest{Key: id, Version: 1, CertificateChain: [][]byte{der}}); err != nil {
			t.Fatal(err)
		}
		cert, _ := x509.ParseCertificate(der)
		pool.AddCert(cert)
	}
	edgeConn := s.dial(t, "edge")
	hc := pb.NewHandshakeClient(edgeConn)

	// Offering key-b, even next to key-a, is refused.
	var rid requestID
	both := &pb.StartHandshakeRequest{Config: &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: "key-a"}, {Key: "key-b"}}}}
	if _, err := hc.StartHandshake(ctx, both, rid.opt()); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("handshake offering key-b: %v, want PERMISSION_DENIED", err)
	}
	if e := wantAudit(t, s, rid.String(), idEdge, "Handshake.StartHandshake", "", "PERMISSION_DENIED"); !slices.Equal(e.Keys, []string{"key-a", "key-b"}) {
		t.Fatalf("audit entry keys %v", e.Keys)
	}
	stream, err := hc.Stream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	stream.Send(&pb.StreamRequest{Request: &pb.StreamRequest_Start{Start: both}})
	if _, err := stream.Recv(); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("stream offering key-b: %v, want PERMISSION_DENIED", err)
	}
	if r := s.rest(t, "edge", "POST", "/v1/handshakes", map[string]any{"config": map[string]any{"keys": []map[string]any{{"key": "key-b"}}}}, nil); r.status != http.StatusForbidden {
		t.Fatalf("REST handshake offering key-b: %d %s", r.status, r.body)
	}

	// With key-a alone it completes; another identity cannot step it.
	only := &pb.StartHandshakeRequest{Config: &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: "key-a"}}}}
	var st *unaryStepper
	_, relayed := runClient(t, &tls.Config{RootCAs: pool, ServerName: "key-a.test"}, func() stepper {
		st = &unaryStepper{hc: hc, start: only}
		return st
	})
	if _, err := pb.NewHandshakeClient(s.dial(t, "admin")).GetHandshake(ctx, &pb.GetHandshakeRequest{Id: st.id}); status.Code(err) != codes.NotFound {
		t.Fatalf("another identity reads the edge's handshake: %v", err)
	}
	var completed bool
	for _, e := range s.auditEntries(t) {
		completed = completed || e.Handshake == st.id && e.Caller == idEdge && e.Key == "key-a" && strings.Contains(e.Detail, "COMPLETE") && e.Scheme != ""
	}
	if !completed {
		t.Fatalf("completed handshake %s not audited with its key and suite: %+v", st.id, s.auditEntries(t))
	}
	keys := relayed.session.GetKeys()
	for name, b := range map[string][]byte{
		"client traffic secret": keys.GetClientApplicationTrafficSecret(), "server traffic secret": keys.GetServerApplicationTrafficSecret(),
		"exporter secret": keys.GetExporterMasterSecret(), "client write key": keys.GetClientWriteKey(), "server write key": keys.GetServerWriteKey(),
	} {
		secrets.add(name, b)
	}

	// A premaster, encrypted to key-rsa as a TLS client would.
	pubResp, err := pb.NewKeyVaultClient(edgeConn).GetPublicKey(ctx, &pb.GetPublicKeyRequest{Key: "key-rsa"})
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode([]byte(pubResp.GetPem()))
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	premaster := make([]byte, 48)
	rand.Read(premaster)
	premaster[0], premaster[1] = 3, 3
	secrets.add("premaster", premaster)
	ct, err := rsa.EncryptPKCS1v15(rand.Reader, pub.(*rsa.PublicKey), premaster)
	if err != nil {
		t.Fatal(err)
	}
	dec, err := pb.NewKeyVaultClient(edgeConn).Decrypt(ctx, &pb.DecryptRequest{Key: "key-rsa", Mode: pb.DecryptMode_DECRYPT_MODE_RSA_PKCS1_TLS_PREMASTER,
		Ciphertext: ct, ExpectedClientVersion: 0x0303}, rid.opt())
	if err != nil || string(dec.GetPlaintext()) != string(premaster) {
		t.Fatalf("decrypt: %v", err)
	}
	if e := wantAudit(t, s, rid.String(), idEdge, "KeyVault.Decrypt", "key-rsa", "OK"); e.Mode != pb.DecryptMode_DECRYPT_MODE_RSA_PKCS1_TLS_PREMASTER.String() || e.Version != 1 {
		t.Fatalf("decrypt audited as %+v", e)
	}
	checkNoSecrets(t, readAll(t, s.audit))
}
