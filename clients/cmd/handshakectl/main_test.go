package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/handshaked/handshaked/internal/engine/record"
	"github.com/handshaked/handshaked/internal/service"
	"github.com/handshaked/handshaked/internal/servicetest"
)

// ctl runs handshakectl against srv and returns its standard output.
func ctl(t *testing.T, srv *servicetest.Server, stdin []byte, args ...string) (string, error) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	err := run(context.Background(), append([]string{"-handshaked", srv.GRPCAddr}, args...), bytes.NewReader(stdin), &stdout, &stderr)
	return stdout.String(), err
}

func mustCtl(t *testing.T, srv *servicetest.Server, stdin []byte, args ...string) string {
	t.Helper()
	out, err := ctl(t, srv, stdin, args...)
	if err != nil {
		t.Fatalf("handshakectl %v: %v", args, err)
	}
	return out
}

func TestKeyCommands(t *testing.T) {
	srv := servicetest.Start(t, service.Options{})
	dir := t.TempDir()
	path := func(name string) string { return filepath.Join(dir, name) }

	out := mustCtl(t, srv, nil, "create", "-algorithm", "p256", "-label", "team=edge", "ctl-ec")
	if !strings.Contains(out, "version 1\tecdsa_p256\tenabled") {
		t.Errorf("create printed:\n%s", out)
	}
	mustCtl(t, srv, nil, "rotate", "ctl-ec")
	if out := mustCtl(t, srv, nil, "list"); !strings.Contains(out, "ctl-ec\tprimary version 2\tlabels map[team:edge]") {
		t.Errorf("list printed:\n%s", out)
	}
	if out := mustCtl(t, srv, nil, "public-key", "ctl-ec"); !strings.HasPrefix(out, "-----BEGIN PUBLIC KEY-----") {
		t.Errorf("public-key printed:\n%s", out)
	}

	msg := []byte("signed in the vault")
	os.WriteFile(path("msg"), msg, 0o600)
	mustCtl(t, srv, nil, "sign", "-scheme", "ecdsa_secp256r1_sha256", "-in", path("msg"), "-o", path("sig"), "ctl-ec")
	if out := mustCtl(t, srv, nil, "verify", "-scheme", "ecdsa_secp256r1_sha256", "-in", path("msg"), "-sig", path("sig"), "ctl-ec"); !strings.Contains(out, "signature OK") {
		t.Errorf("verify printed %q", out)
	}
	if _, err := ctl(t, srv, []byte("another message"), "verify", "-scheme", "ecdsa_secp256r1_sha256", "-sig", path("sig"), "ctl-ec"); err == nil {
		t.Error("verify accepted a signature over another message")
	}
	if _, err := ctl(t, srv, nil, "verify", "-version", "1", "-scheme", "ecdsa_secp256r1_sha256", "-in", path("msg"), "-sig", path("sig"), "ctl-ec"); err == nil {
		t.Error("verify with version 1 accepted version 2's signature")
	}

	mustCtl(t, srv, nil, "disable", "ctl-ec", "1")
	if _, err := ctl(t, srv, nil, "destroy", "ctl-ec", "1"); err == nil {
		t.Error("destroy without -confirm succeeded")
	}
	if out := mustCtl(t, srv, nil, "destroy", "-confirm", "ctl-ec", "ctl-ec", "1"); !strings.Contains(out, "version 1\tecdsa_p256\tdestroyed") {
		t.Errorf("destroy printed:\n%s", out)
	}
	mustCtl(t, srv, nil, "enable", "ctl-ec", "2")

	csrPEM := mustCtl(t, srv, nil, "csr", "-cn", "edge.test", "-dns", "edge.test,www.edge.test", "ctl-ec")
	block, _ := pem.Decode([]byte(csrPEM))
	if block == nil {
		t.Fatalf("csr printed %q", csrPEM)
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil || csr.CheckSignature() != nil || len(csr.DNSNames) != 2 {
		t.Errorf("CSR: %v, names %v", err, csr.DNSNames)
	}

	// An imported RSA key decrypts a premaster secret; a chain is attached.
	key := srv.ServerKey(t, "ctl-rsa", "rsa2048-pkcs1.pem", "rsa.test")
	os.WriteFile(path("chain.pem"), []byte(key.CertPEM), 0o600)
	if out := mustCtl(t, srv, nil, "attach-chain", "-chain", path("chain.pem"), "ctl-rsa"); !strings.Contains(out, "chain of 1") {
		t.Errorf("attach-chain printed:\n%s", out)
	}
	pubBlock, _ := pem.Decode([]byte(mustCtl(t, srv, nil, "public-key", "ctl-rsa")))
	pub, err := x509.ParsePKIXPublicKey(pubBlock.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	premaster := append([]byte{3, 3}, make([]byte, 46)...)
	rand.Read(premaster[2:])
	ct, _ := rsa.EncryptPKCS1v15(rand.Reader, pub.(*rsa.PublicKey), premaster)
	out = mustCtl(t, srv, ct, "decrypt", "-mode", "premaster", "-client-version", "771", "ctl-rsa")
	if got, _ := base64.StdEncoding.DecodeString(strings.TrimSpace(out)); !bytes.Equal(got, premaster) {
		t.Errorf("decrypt: got %x", got)
	}
	os.WriteFile(path("ed.pem"), servicetest.Fixture(t, "ed25519-pkcs8.pem"), 0o600)
	mustCtl(t, srv, nil, "import", "-pem", path("ed.pem"), "ctl-ed")
	mustCtl(t, srv, msg, "sign", "-scheme", "ed25519", "-o", path("edsig"), "ctl-ed")
	mustCtl(t, srv, msg, "verify", "-scheme", "ed25519", "-sig", path("edsig"), "ctl-ed")

	if _, err := ctl(t, srv, nil, "no-such-command"); err == nil {
		t.Error("an unknown command succeeded")
	}
}

// TestTraceLive narrates a Go client's TLS 1.3 handshake in order.
func TestTraceLive(t *testing.T) {
	srv := servicetest.Start(t, service.Options{})
	key := srv.ServerKey(t, "trace-ec", "p256-pkcs8.pem", "trace.test")
	var stdout, stderr bytes.Buffer
	addrc := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- runEnv(context.Background(), []string{"-handshaked", srv.GRPCAddr, "trace", "-key", key.ID, "-listen", "127.0.0.1:0"},
			&env{stdin: bytes.NewReader(nil), stdout: &stdout, stderr: &stderr, ready: func(a string) { addrc <- a }})
	}()
	c, err := tls.Dial("tcp", <-addrc, &tls.Config{ServerName: key.Name, RootCAs: key.Pool, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: trace.test\r\n\r\n")
	resp, _ := io.ReadAll(c)
	c.Close()
	if err := <-done; err != nil {
		t.Fatalf("trace: %v\n%s", err, stderr.String())
	}
	if !strings.Contains(string(resp), "handshake traced") {
		t.Errorf("client got %q", resp)
	}
	out := stdout.String()
	last := -1
	for _, want := range []string{"step 1:", "client → server  ClientHello", "server → client  ServerHello", "server → client  EncryptedExtensions",
		"server → client  Certificate ", "server → client  CertificateVerify", "server → client  Finished", "step 2:", "client → server  Finished", "COMPLETE after", ": TLS 1.3, TLS_"} {
		i := strings.Index(out, want)
		if i < 0 || i < last {
			t.Errorf("trace lacks %q, or has it out of order:\n%s", want, out)
		}
		last = max(last, i)
	}
	if !strings.Contains(out, "a signature over the transcript") {
		t.Errorf("trace is not narrated:\n%s", out)
	}
}

// TestTraceReplay replays a captured ClientHello.
func TestTraceReplay(t *testing.T) {
	srv := servicetest.Start(t, service.Options{})
	key := srv.ServerKey(t, "replay-ec", "p256-pkcs8.pem", "replay.test")
	c1, c2 := net.Pipe()
	go tls.Client(c1, &tls.Config{ServerName: "replay.test", MaxVersion: tls.VersionTLS12}).Handshake()
	buf := make([]byte, 4096)
	var capture []byte
	for {
		n, err := c2.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		capture = append(capture, buf[:n]...)
		if _, _, _, m, _ := record.Parse(capture, record.MaxPlaintext); m > 0 {
			break
		}
	}
	c2.Close()
	file := filepath.Join(t.TempDir(), "capture.hex")
	os.WriteFile(file, []byte(hex.EncodeToString(capture)), 0o600)
	out := mustCtl(t, srv, nil, "trace", "-key", key.ID, "-replay", file, "-hex")
	for _, want := range []string{"client → server  ClientHello", "server → client  ServerHello", "server → client  ServerKeyExchange", "server → client  ServerHelloDone", "capture exhausted"} {
		if !strings.Contains(out, want) {
			t.Errorf("replay lacks %q:\n%s", want, out)
		}
	}
}
