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
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

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

// clientPEMs is the client PKI, made once per package; each test writes
// its files into its own t.TempDir().
type clientPEMs struct{ ca, cert, key []byte }

var (
	clientPKIOnce sync.Once
	clientPKIVal  clientPEMs
	clientPKIErr  error
)

func newClientPKI(t testing.TB) clientPKI {
	t.Helper()
	clientPKIOnce.Do(func() {
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
		clientPKIVal = clientPEMs{
			ca:   pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
			cert: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
			key:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		}
	})
	require.NoError(t, clientPKIErr)
	dir := t.TempDir()
	p := clientPKI{
		caPEM:    string(clientPKIVal.ca),
		certFile: filepath.Join(dir, "client.pem"), keyFile: filepath.Join(dir, "client.key"), caFile: filepath.Join(dir, "ca.pem"),
	}
	require.NoError(t, os.WriteFile(p.certFile, clientPKIVal.cert, 0o600))
	require.NoError(t, os.WriteFile(p.keyFile, clientPKIVal.key, 0o600))
	require.NoError(t, os.WriteFile(p.caFile, clientPKIVal.ca, 0o600))
	return p
}

// runPeer starts a relay on loopback TCP that steps handshakes through the
// gRPC stream, runs an external TLS client against it, sends "ping" on the
// client's stdin and expects the relay's echo in the client's output. It
// returns the client's output and the session the service reported.
func runPeer(t *testing.T, s *testServer, start *pb.StartHandshakeRequest, name string, args func(addr string) []string) (string, *pb.Session) {
	t.Helper()
	out, sess := runRelayed(t, s, start, func(msg []byte) []byte { return append([]byte("echo: "), msg...) }, "ping\n", name, args)
	require.Contains(t, out, "echo: ping", "%s did not print the echo", name)
	return out, sess
}

// runRelayed runs the client name against a relay of the service that
// answers the first application data the client sends with reply(data),
// then closes; input is the client's stdin, kept open until it exits.
func runRelayed(t *testing.T, s *testServer, start *pb.StartHandshakeRequest, reply func([]byte) []byte, input, name string, args func(addr string) []string) (string, *pb.Session) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
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
			err = r.write(23, reply(msg))
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
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	// Keep stdin open until the client exits: openssl and gnutls-cli quit
	// at stdin's EOF, which would race the reply.
	stdin.Write([]byte(input))
	werr := cmd.Wait()
	stdin.Close()
	res := <-done
	require.NoError(t, res.err, "relay; %s output:\n%s", name, out.String())
	if werr != nil {
		t.Logf("%s exited: %v", name, werr)
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
	require.NoError(t, os.WriteFile(caFile, []byte(rsaKey.certPEM+ecKey.certPEM), 0o600))
	return s, []*pb.KeyRef{{Key: rsaKey.id}, {Key: ecKey.id}}, caFile, newClientPKI(t)
}

func TestOpenSSLClientThroughService(t *testing.T) {
	openssl := testenv.LookPath(t, "openssl")
	s, keys, caFile, pki := peerSetup(t)
	opensslMatrix(t, openssl, s, keys, caFile, pki)
}

// opensslMatrix runs openssl s_client through the service with keys, an
// RSA key for rsa.test and an ECDSA one for ec.test, that caFile trusts.
func opensslMatrix(t *testing.T, openssl string, s *testServer, keys []*pb.KeyRef, caFile string, pki clientPKI) {

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
				assert.Contains(t, out, w, "openssl output")
			}
			assert.Equal(t, tc.version, sess.GetVersion(), "service session: %v", sess)
			assert.Equal(t, tc.sni, sess.GetServerName(), "service session: %v", sess)
			if tc.clientAuth {
				assert.Len(t, sess.GetPeerCertificates(), 1, "client certificate not reported")
			}
		})
	}
}

func TestGnuTLSClientThroughService(t *testing.T) {
	gnutls := testenv.LookPath(t, "gnutls-cli")
	s, keys, caFile, pki := peerSetup(t)
	gnutlsMatrix(t, gnutls, s, keys, caFile, pki)
}

// gnutlsMatrix is opensslMatrix with gnutls-cli.
func gnutlsMatrix(t *testing.T, gnutls string, s *testServer, keys []*pb.KeyRef, caFile string, pki clientPKI) {
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
			assert.Contains(t, out, tc.want, "gnutls-cli output")
			assert.Equal(t, tc.sni, sess.GetServerName(), "service session: %v", sess)
			if tc.clientAuth {
				assert.Len(t, sess.GetPeerCertificates(), 1, "client certificate not reported")
			}
		})
	}
}
