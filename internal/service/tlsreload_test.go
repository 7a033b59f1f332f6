package service_test

import (
	"context"
	"crypto/tls"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
)

// eventually polls cond until it holds, for a reload the poller has yet to
// notice.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after 10 s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// serverSerial is the serial of the certificate a new connection gets.
func (s *secureServer) serverSerial(t *testing.T) string {
	t.Helper()
	conn, err := tls.Dial("tcp", s.grpcAddr, &tls.Config{RootCAs: s.pki.ca.Pool(), ServerName: "localhost", NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber.String()
}

// TestReloadWhileCallsInFlight changes the policy, the server certificate
// and the client CA bundle while a caller keeps calling on one connection
// and holds a stream open: changes are picked up by polling, new
// connections see them, and the calls in flight are never dropped.
func TestReloadWhileCallsInFlight(t *testing.T) {
	s := startSecure(t, secureOptions{reloadInterval: 20 * time.Millisecond})
	s.adminImport(t, "key-a", "p256-pkcs8.pem", nil)
	ctx := context.Background()
	edge := s.kv(t, "edge")
	stream, err := edge.SignStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	streamSign := func() error {
		if err := stream.Send(&pb.SignStreamRequest{Request: signReq("key-a", p256Scheme)}); err != nil {
			return err
		}
		_, err := stream.Recv()
		return err
	}
	if err := streamSign(); err != nil {
		t.Fatal(err)
	}

	// The caller in flight: only OK or, while its grant is revoked,
	// PERMISSION_DENIED; never a dropped connection.
	stop := make(chan struct{})
	var loop sync.WaitGroup
	var mu sync.Mutex
	var last codes.Code
	calls := 0
	loop.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			_, err := edge.Sign(ctx, signReq("key-a", p256Scheme))
			code := status.Code(err)
			if code != codes.OK && code != codes.PermissionDenied {
				t.Errorf("call in flight during a reload: %v", err)
				return
			}
			mu.Lock()
			last, calls = code, calls+1
			mu.Unlock()
		}
	})
	lastCode := func() codes.Code {
		mu.Lock()
		defer mu.Unlock()
		return last
	}
	callsSoFar := func() int {
		mu.Lock()
		defer mu.Unlock()
		return calls
	}

	// Policy: revoke the edge's grant, then give it back.
	writeFile(t, s.policy, []byte(`{"grants":[{"identities":["`+idAdmin+`"],"rights":["admin"]}]}`), 0o644)
	eventually(t, "revoked grant", func() bool { return lastCode() == codes.PermissionDenied })
	writeFile(t, s.policy, []byte(testPolicy), 0o644)
	eventually(t, "restored grant", func() bool { return lastCode() == codes.OK })

	// Server certificate: new connections get the new one.
	oldSerial := s.serverSerial(t)
	next, err := s.pki.ca.Server()
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, s.files.KeyFile, next.KeyPEM, 0o600)
	writeFile(t, s.files.CertFile, next.CertPEM, 0o644)
	eventually(t, "new server certificate", func() bool { return s.serverSerial(t) == next.Cert.SerialNumber.String() })
	if oldSerial == next.Cert.SerialNumber.String() {
		t.Fatal("the test certificates share a serial")
	}

	// Client CA: after switching to the other CA, a new connection with an
	// old-CA certificate is refused, one from the new CA is let in, and
	// the edge's connection made before goes on working.
	writeFile(t, s.files.ClientCAFile, s.pki.otherCA.PEM, 0o644)
	eventually(t, "new client CA", func() bool {
		_, err := s.kv(t, "nobody").GetKey(ctx, &pb.GetKeyRequest{Key: "key-a"})
		return status.Code(err) == codes.Unavailable
	})
	// "foreign" is the other CA's certificate naming the admin.
	if _, err := s.kv(t, "foreign").GetKey(ctx, &pb.GetKeyRequest{Key: "key-a"}); err != nil {
		t.Fatalf("certificate of the new CA: %v", err)
	}
	n := callsSoFar()
	eventually(t, "calls on the old connection", func() bool { return callsSoFar() > n+5 })
	if err := streamSign(); err != nil {
		t.Fatalf("stream opened before the reloads: %v", err)
	}
	writeFile(t, s.files.ClientCAFile, s.pki.ca.PEM, 0o644)

	close(stop)
	loop.Wait()

	var reloads []string
	for _, e := range s.auditEntries(t) {
		if strings.HasSuffix(e.Operation, ".reload") && e.Outcome == "OK" {
			reloads = append(reloads, e.Operation)
		}
	}
	if !strings.Contains(strings.Join(reloads, " "), "policy.reload") || !strings.Contains(strings.Join(reloads, " "), "tls.reload") {
		t.Fatalf("reloads not audited: %v", reloads)
	}
	t.Logf("%d calls in flight across %d reloads", callsSoFar(), len(reloads))
}

// TestReloadOnDemand is SIGHUP's path: Reload loads the files even when a
// poll would not notice (polling is off here), a broken policy is refused
// and the one in force stays, and a rotated audit log is reopened.
func TestReloadOnDemand(t *testing.T) {
	s := startSecure(t, secureOptions{})
	s.adminImport(t, "key-a", "p256-pkcs8.pem", nil)
	ctx := context.Background()
	edge := s.kv(t, "edge")

	writeFile(t, s.policy, []byte(`{"grants": [{"identities": ["x"], "rights": ["admin"]}`), 0o644)
	if err := s.srv.Reload(); err == nil || !strings.Contains(err.Error(), "policy") {
		t.Fatalf("broken policy: %v", err)
	}
	if _, err := edge.Sign(ctx, signReq("key-a", p256Scheme)); err != nil {
		t.Fatalf("policy in force after a broken reload: %v", err)
	}
	writeFile(t, s.policy, []byte(`{"grants":[{"identities":["`+idAdmin+`"],"rights":["admin"]}]}`), 0o644)
	if err := s.srv.Reload(); err != nil {
		t.Fatal(err)
	}
	if _, err := edge.Sign(ctx, signReq("key-a", p256Scheme)); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("after reload: %v", err)
	}
	// A server key made world-readable is refused on reload too.
	writeFile(t, s.files.KeyFile, s.pki.server.KeyPEM, 0o644)
	if err := s.srv.Reload(); err == nil || !strings.Contains(err.Error(), "world-readable") {
		t.Fatalf("world-readable key: %v", err)
	}
	writeFile(t, s.files.KeyFile, s.pki.server.KeyPEM, 0o600)

	rotated := s.audit + ".1"
	if err := os.Rename(s.audit, rotated); err != nil {
		t.Fatal(err)
	}
	if err := s.srv.Reload(); err != nil {
		t.Fatal(err)
	}
	var rid requestID
	edge.Sign(ctx, signReq("key-a", p256Scheme), rid.opt())
	wantAudit(t, s, rid.String(), idEdge, "KeyVault.Sign", "key-a", "PERMISSION_DENIED")
	if strings.Contains(string(readAll(t, rotated)), rid.String()) {
		t.Fatal("entry written to the rotated file after reopening")
	}
}

// TestReloadRefusesAKeyThatDoesNotMatch: a certificate renewed while the
// key file still holds the old key (or the reverse, half of a rotation
// written) is refused at reload, saying so, and the pair in force goes on
// serving new connections: no caller sees a handshake fail.
func TestReloadRefusesAKeyThatDoesNotMatch(t *testing.T) {
	s := startSecure(t, secureOptions{})
	ctx := context.Background()
	other, err := s.pki.ca.Server()
	require.NoError(t, err)
	writeFile(t, s.files.CertFile, other.CertPEM, 0o644) // the key file keeps the old key
	err = s.srv.Reload()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "private key does not match public key")
	assert.Contains(t, err.Error(), s.files.CertFile)
	_, err = s.kv(t, "admin").ListKeys(ctx, &pb.ListKeysRequest{})
	require.NoError(t, err, "a new connection after the refused reload")

	writeFile(t, s.files.KeyFile, other.KeyPEM, 0o600) // the other half
	require.NoError(t, s.srv.Reload())
	_, err = s.kv(t, "admin").ListKeys(ctx, &pb.ListKeysRequest{})
	require.NoError(t, err, "the new pair serves")
}
