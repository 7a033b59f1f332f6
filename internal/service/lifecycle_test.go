package service_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
)

// foreignCertPEM is a self-signed certificate for a key the vault does not hold.
func foreignCertPEM(t testing.TB) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "foreign"}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

type restKey struct {
	ID             string
	PrimaryVersion int
	Versions       []struct {
		Version          int
		State            string
		CertificateChain [][]byte
	}
}

func TestKeyLifecycleREST(t *testing.T) {
	s := startServer(t)
	id := uniqueID("life")
	var k restKey
	mustRest(t, s, "POST", "/v1/keys", map[string]any{"id": id, "algorithm": "ALGORITHM_ECDSA_P256"}, &k)
	mustRest(t, s, "POST", "/v1/keys/"+id+":rotate", `{}`, &k)
	if k.PrimaryVersion != 2 || len(k.Versions) != 2 {
		t.Fatalf("after rotate: %+v", k)
	}
	sign := func(version int) (int, []byte) {
		return s.restCall(t, "POST", "/v1/keys/"+id+":sign", map[string]any{"version": version, "scheme": "SIGNATURE_SCHEME_ECDSA_SECP256R1_SHA256", "message": []byte("m")}, nil)
	}
	var signed struct{ Version int }
	mustRest(t, s, "POST", "/v1/keys/"+id+":sign", map[string]any{"scheme": "SIGNATURE_SCHEME_ECDSA_SECP256R1_SHA256", "message": []byte("m")}, &signed)
	if signed.Version != 2 {
		t.Fatalf("default version = %d, want the primary 2", signed.Version)
	}
	if code, raw := sign(1); code != 200 {
		t.Fatalf("version 1 must keep working after rotation: %d %s", code, raw)
	}
	mustRest(t, s, "POST", "/v1/keys/"+id+"/versions/1:disable", `{}`, &k)
	if k.Versions[0].State != "KEY_VERSION_STATE_DISABLED" {
		t.Fatalf("after disable: %+v", k)
	}
	if code, _ := sign(1); code != 400 {
		t.Fatalf("disabled version signs: HTTP %d", code)
	}
	mustRest(t, s, "POST", "/v1/keys/"+id+"/versions/1:destroy", `{}`, &k)
	if k.Versions[0].State != "KEY_VERSION_STATE_DESTROYED" {
		t.Fatalf("after destroy: %+v", k)
	}
	checkRESTStatus(t, s, "POST", "/v1/keys/"+id+"/versions/1:enable", `{}`, codes.FailedPrecondition)
	if code, _ := sign(2); code != 200 {
		t.Fatalf("version 2 stopped working: HTTP %d", code)
	}
}

func TestListKeysPages(t *testing.T) {
	s := startServer(t)
	ctx := context.Background()
	want := map[string]bool{}
	for i := 0; i < 7; i++ {
		id := uniqueID("list")
		if _, err := s.kv.CreateKey(ctx, &pb.CreateKeyRequest{Id: id, Algorithm: pb.Algorithm_ALGORITHM_ED25519}); err != nil {
			t.Fatal(err)
		}
		want[id] = true
	}
	seen := map[string]bool{}
	token, pages := "", 0
	for {
		resp, err := s.kv.ListKeys(ctx, &pb.ListKeysRequest{PageSize: 3, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		pages++
		if len(resp.GetKeys()) > 3 {
			t.Fatalf("page of %d keys, asked for 3", len(resp.GetKeys()))
		}
		for _, k := range resp.GetKeys() {
			if seen[k.GetId()] {
				t.Fatalf("%s listed twice", k.GetId())
			}
			seen[k.GetId()] = true
		}
		if token = resp.GetNextPageToken(); token == "" {
			break
		}
	}
	if pages != 3 || len(seen) != len(want) {
		t.Fatalf("%d pages, %d keys; want 3 pages, %d keys", pages, len(seen), len(want))
	}
}

// TestCSRAndChain has the vault make a CSR, issues a certificate from a test
// CA, and attaches the chain: the private key never leaves the vault.
func TestCSRAndChain(t *testing.T) {
	s := startServer(t)
	ctx := context.Background()
	id := uniqueID("csr")
	importFixture(t, s, id, "rsa2048-pkcs1.pem")
	var csrResp struct{ Pem string }
	mustRest(t, s, "POST", "/v1/keys/"+id+":createCertificateSigningRequest", map[string]any{
		"commonName": "edge.example.test", "dnsNames": []string{"edge.example.test", "www.example.test"}, "ipAddresses": []string{"127.0.0.1"},
	}, &csrResp)
	block, _ := pem.Decode([]byte(csrResp.Pem))
	if block == nil {
		t.Fatalf("CSR PEM: %q", csrResp.Pem)
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if err := csr.CheckSignature(); err != nil {
		t.Fatalf("CSR signature: %v", err)
	}
	if csr.Subject.CommonName != "edge.example.test" || len(csr.DNSNames) != 2 || len(csr.IPAddresses) != 1 || !csr.IPAddresses[0].Equal(net.IPv4(127, 0, 0, 1)) {
		t.Fatalf("CSR content: %v %v %v", csr.Subject, csr.DNSNames, csr.IPAddresses)
	}

	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	leafTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: csr.Subject, DNSNames: csr.DNSNames, IPAddresses: csr.IPAddresses, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, ca, csr.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	chainPEM := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leafDER})) + string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}))
	k, err := s.kv.AttachCertificateChain(ctx, &pb.AttachCertificateChainRequest{Key: id, Version: 1, CertificateChainPem: chainPEM})
	if err != nil {
		t.Fatal(err)
	}
	if chain := k.GetVersions()[0].GetCertificateChain(); len(chain) != 2 || string(chain[0]) != string(leafDER) {
		t.Fatalf("attached chain: %d certificates", len(chain))
	}
	// The chain survives a read-back.
	got, err := s.kv.GetKey(ctx, &pb.GetKeyRequest{Key: id})
	if err != nil || len(got.GetVersions()[0].GetCertificateChain()) != 2 {
		t.Fatalf("chain after GetKey: %v %v", got, err)
	}
	_, err = s.kv.AttachCertificateChain(ctx, &pb.AttachCertificateChainRequest{Key: id, Version: 1, CertificateChain: [][]byte{leafDER}, CertificateChainPem: chainPEM})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("both chain forms: %v", err)
	}
}
