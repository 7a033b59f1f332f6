package service_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/testenv"
)

// clientPKI is a client CA and a client certificate signed by it, as PEM
// files for openssl/gnutls and as the CA PEM for the handshake config.
type clientPKI struct {
	caPEM             string
	certFile, keyFile string
	caFile            string
}

var (
	clientPKIOnce sync.Once
	clientPKIVal  clientPKI
	clientPKIErr  error
)

func newClientPKI(t testing.TB) clientPKI {
	t.Helper()
	clientPKIOnce.Do(func() {
		dir, err := os.MkdirTemp("", "handshaked-client-pki")
		if err != nil {
			clientPKIErr = err
			return
		}
		caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "client CA"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
		caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
		ca, _ := x509.ParseCertificate(caDER)
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "edge-client"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			clientPKIErr = err
			return
		}
		keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
		p := clientPKI{
			caPEM:    string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})),
			certFile: filepath.Join(dir, "client.pem"), keyFile: filepath.Join(dir, "client.key"), caFile: filepath.Join(dir, "ca.pem"),
		}
		os.WriteFile(p.certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
		os.WriteFile(p.keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600)
		os.WriteFile(p.caFile, []byte(p.caPEM), 0o600)
		clientPKIVal = p
	})
	if clientPKIErr != nil {
		t.Fatal(clientPKIErr)
	}
	return clientPKIVal
}

// runPeer starts a relay on loopback TCP that steps handshakes through the
// gRPC stream, runs an external TLS client against it, sends "ping" on the
// client's stdin and expects the relay's echo in the client's output. It
// returns the client's output and the session the service reported.
func runPeer(t *testing.T, s *testServer, start *pb.StartHandshakeRequest, name string, args func(addr string) []string) (string, *pb.Session) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	hc := s.handshakeClient(t)
	type result struct {
		session *pb.Session
		err     error
	}
	done := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(30 * time.Second))
		stream, err := hc.Stream(context.Background())
		if err != nil {
			done <- result{err: err}
			return
		}
		r, err := relay(c, &streamStepper{stream: stream, start: start})
		if err != nil {
			done <- result{err: err}
			return
		}
		msg, err := r.readData()
		if err == nil {
			err = r.write(23, append([]byte("echo: "), msg...))
		}
		if err == nil {
			err = r.closeNotify()
		}
		done <- result{r.session, err}
	}()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args(ln.Addr().String())...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Keep stdin open until the client exits: both clients quit at stdin's
	// EOF, which would race the echo.
	stdin.Write([]byte("ping\n"))
	werr := cmd.Wait()
	stdin.Close()
	res := <-done
	if res.err != nil {
		t.Fatalf("relay: %v\n%s output:\n%s", res.err, name, out.String())
	}
	if !strings.Contains(out.String(), "echo: ping") {
		t.Fatalf("%s did not print the echo (exit: %v):\n%s", name, werr, out.String())
	}
	return out.String(), res.session
}

// peerSetup gives the external-client tests a service with an RSA key for
// rsa.test and an ECDSA key for ec.test, a CA file trusting both, and the
// client PKI.
func peerSetup(t *testing.T) (*testServer, []*pb.KeyRef, string, clientPKI) {
	s := startServer(t)
	rsaKey := newServerKey(t, s, "rsa2048-pkcs1.pem", "rsa.test")
	ecKey := newServerKey(t, s, "p256-sec1.pem", "ec.test")
	caFile := filepath.Join(t.TempDir(), "server-ca.pem")
	if err := os.WriteFile(caFile, []byte(rsaKey.certPEM+ecKey.certPEM), 0o600); err != nil {
		t.Fatal(err)
	}
	return s, []*pb.KeyRef{{Key: rsaKey.id}, {Key: ecKey.id}}, caFile, newClientPKI(t)
}

func TestOpenSSLClientThroughService(t *testing.T) {
	openssl := testenv.LookPath(t, "openssl")
	s, keys, caFile, pki := peerSetup(t)

	for _, tc := range []struct {
		name       string
		clientAuth bool
		sni        string
		flags      []string
		want       []string
		version    uint32
	}{
		{"TLS12-RSA-kx", false, "rsa.test", []string{"-tls1_2", "-cipher", "AES128-GCM-SHA256"}, []string{"Cipher is AES128-GCM-SHA256"}, 0x0303},
		{"TLS12-ECDHE-ECDSA", false, "ec.test", []string{"-tls1_2", "-cipher", "ECDHE-ECDSA-AES256-GCM-SHA384"}, []string{"Cipher is ECDHE-ECDSA-AES256-GCM-SHA384"}, 0x0303},
		{"TLS12-ECDHE-RSA-mTLS", true, "rsa.test", []string{"-tls1_2", "-cipher", "ECDHE-RSA-CHACHA20-POLY1305"}, []string{"Cipher is ECDHE-RSA-CHACHA20-POLY1305"}, 0x0303},
		{"TLS13", false, "ec.test", []string{"-tls1_3"}, []string{"TLSv1.3"}, 0x0304},
		{"TLS13-mTLS", true, "rsa.test", []string{"-tls1_3", "-ciphersuites", "TLS_AES_256_GCM_SHA384"}, []string{"TLS_AES_256_GCM_SHA384"}, 0x0304},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := &pb.HandshakeConfig{Keys: keys}
			if tc.clientAuth {
				cfg.ClientAuth, cfg.ClientCaPem = pb.ClientAuth_CLIENT_AUTH_REQUIRED, pki.caPEM
			}
			out, sess := runPeer(t, s, &pb.StartHandshakeRequest{Config: cfg}, openssl, func(addr string) []string {
				args := []string{"s_client", "-connect", addr, "-servername", tc.sni, "-CAfile", caFile, "-verify_return_error", "-ign_eof"}
				if tc.clientAuth {
					args = append(args, "-cert", pki.certFile, "-key", pki.keyFile)
				}
				return append(args, tc.flags...)
			})
			for _, w := range append(tc.want, "Verify return code: 0 (ok)") {
				if !strings.Contains(out, w) {
					t.Errorf("openssl output lacks %q:\n%s", w, out)
				}
			}
			if sess.GetVersion() != tc.version || sess.GetServerName() != tc.sni {
				t.Errorf("service session: %v", sess)
			}
			if tc.clientAuth && len(sess.GetPeerCertificates()) != 1 {
				t.Errorf("client certificate not reported: %d certificates", len(sess.GetPeerCertificates()))
			}
		})
	}
}

func TestGnuTLSClientThroughService(t *testing.T) {
	gnutls := testenv.LookPath(t, "gnutls-cli")
	s, keys, caFile, pki := peerSetup(t)
	for _, tc := range []struct {
		name, sni, priority string
		clientAuth          bool
		want                string
	}{
		{"TLS12-RSA-kx", "rsa.test", "NORMAL:-KX-ALL:+RSA:-VERS-ALL:+VERS-TLS1.2", false, "(TLS1.2-X.509)-(RSA)-(AES-"},
		{"TLS12-ECDHE-ECDSA", "ec.test", "NORMAL:-KX-ALL:+ECDHE-ECDSA:-VERS-ALL:+VERS-TLS1.2", false, "(TLS1.2-X.509)-(ECDHE-X25519)-(ECDSA-SHA256)"},
		{"TLS13", "ec.test", "NORMAL:-VERS-ALL:+VERS-TLS1.3", false, "(TLS1.3-X.509)"},
		{"TLS13-mTLS", "rsa.test", "NORMAL:-VERS-ALL:+VERS-TLS1.3", true, "(TLS1.3-X.509)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := &pb.HandshakeConfig{Keys: keys}
			if tc.clientAuth {
				cfg.ClientAuth, cfg.ClientCaPem = pb.ClientAuth_CLIENT_AUTH_REQUIRED, pki.caPEM
			}
			out, sess := runPeer(t, s, &pb.StartHandshakeRequest{Config: cfg}, gnutls, func(addr string) []string {
				host, port, _ := net.SplitHostPort(addr)
				args := []string{"--port", port, "--x509cafile", caFile, "--sni-hostname", tc.sni, "--verify-hostname", tc.sni, "--priority", tc.priority}
				if tc.clientAuth {
					args = append(args, "--x509certfile", pki.certFile, "--x509keyfile", pki.keyFile)
				}
				return append(args, host)
			})
			if !strings.Contains(out, tc.want) {
				t.Errorf("gnutls-cli output lacks %q:\n%s", tc.want, out)
			}
			if sess.GetServerName() != tc.sni || (tc.clientAuth && len(sess.GetPeerCertificates()) != 1) {
				t.Errorf("service session: %v", sess)
			}
		})
	}
}
