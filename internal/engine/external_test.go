package engine

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/testenv"
)

// Interop with the TLS clients of other stacks, when installed: OpenSSL's
// s_client, curl and GnuTLS's gnutls-cli. Each connects over loopback TCP to
// the engine, completes the handshake and exchanges application data under
// the session keys.

type externalOutcome struct {
	session *Session
	err     error
	trace   []TraceEvent
	// skippedEarlyData is the refused 0-RTT data skipped, in bytes.
	skippedEarlyData int
}

// externalServer accepts one connection, runs the handshake and hands the
// record layer to serve.
func externalServer(t *testing.T, cfg Config, serve func(rc *recordConn) error) (port string, done <-chan externalOutcome) {
	return externalServerKeys(t, cfg, getPKI(t).keys, serve)
}

// externalServerKeys is externalServer with the KeyOps to use.
func externalServerKeys(t *testing.T, cfg Config, keys KeyOps, serve func(rc *recordConn) error) (port string, done <-chan externalOutcome) {
	t.Helper()
	return externalServerN(t, cfg, keys, 1, serve)
}

// externalServerN is externalServerKeys for n connections in a row (a
// client that resumes connects twice), each with a fresh Handshake under
// cfg.
func externalServerN(t *testing.T, cfg Config, keys KeyOps, n int, serve func(rc *recordConn) error) (port string, done <-chan externalOutcome) {
	t.Helper()
	return serveConnections(t, cfg, slices.Repeat([]KeyOps{keys}, n), slices.Repeat([]func(*recordConn) error{serve}, n))
}

// serveConnections accepts len(keys) connections one after the other, the
// i-th with KeyOps keys[i] and served by serve[i] after the handshake.
func serveConnections(t *testing.T, cfg Config, keys []KeyOps, serve []func(*recordConn) error) (port string, done <-chan externalOutcome) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	// A client that fails before its last connection (runClient gives up
	// on it after 15 s) must not leave Accept waiting for that connection
	// until go test's timeout, ten minutes with no word of which test.
	require.NoError(t, ln.(*net.TCPListener).SetDeadline(time.Now().Add(time.Minute)))
	require.NoError(t, cfg.check())
	ch := make(chan externalOutcome, len(keys))
	go func() {
		defer ln.Close()
		for i := range keys {
			ch <- serveExternal(ln, &cfg, keys[i], serve[i])
		}
	}()
	_, port, _ = net.SplitHostPort(ln.Addr().String())
	return port, ch
}

// serveExternal accepts one connection on ln and serves it.
func serveExternal(ln net.Listener, cfg *Config, keys KeyOps, serve func(rc *recordConn) error) externalOutcome {
	h, err := NewHandshake(cfg)
	if err != nil {
		return externalOutcome{err: err}
	}
	conn, err := ln.Accept()
	if err != nil {
		return externalOutcome{err: err}
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	out := (&relay{h: h, keys: keys}).run(conn)
	res := externalOutcome{session: out.session, err: out.err, trace: out.trace, skippedEarlyData: h.skippedEarlyData}
	switch {
	case out.err != nil:
	case out.session == nil:
		res.err = fmt.Errorf("engine: %v %v %s\n%s", out.last.State, out.last.AlertDescription, out.last.Reason, traceText(out.trace))
	default:
		rc, err := newRecordConn(conn, out.session, out.leftover)
		if err == nil {
			err = serve(rc)
		}
		res.err = err
	}
	return res
}

// pingPong reads the client's line and answers with pong.
func pingPong(rc *recordConn) error {
	got, err := rc.readAppData()
	if err != nil {
		return fmt.Errorf("reading client data: %w", err)
	}
	if !bytes.HasPrefix(got, ping) {
		return fmt.Errorf("client sent %q", got)
	}
	if err := rc.writeAppData(append(pong, '\n')); err != nil {
		return err
	}
	return rc.closeNotify()
}

// httpPong answers one HTTP/1.1 request with pong.
func httpPong(rc *recordConn) error {
	return httpAnswer(rc, func([]byte) string { return string(pong) })
}

// httpAnswer answers one HTTP/1.1 request with the HTML page(request) and
// closes the connection.
func httpAnswer(rc *recordConn, page func(req []byte) string) error {
	var req []byte
	for !bytes.Contains(req, []byte("\r\n\r\n")) {
		got, err := rc.readAppData()
		if err != nil {
			return fmt.Errorf("reading request: %w", err)
		}
		req = append(req, got...)
	}
	body := page(req)
	if err := rc.writeAppData([]byte(fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body))); err != nil {
		return err
	}
	return rc.closeNotify()
}

func writePEM(t *testing.T, name, typ string, ders ...[]byte) string {
	t.Helper()
	var buf bytes.Buffer
	for _, der := range ders {
		pem.Encode(&buf, &pem.Block{Type: typ, Bytes: der})
	}
	path := filepath.Join(t.TempDir(), name)
	require.NoError(t, os.WriteFile(path, buf.Bytes(), 0o600))
	return path
}

func rootsPEM(t *testing.T, p *testPKI) string {
	return writePEM(t, "roots.pem", "CERTIFICATE", p.rsa.cert.Chain[0], p.p256.cert.Chain[0], p.p384.cert.Chain[0], p.ed.cert.Chain[0])
}

// runClient runs an external client with stdin and waits until its output
// contains want, or it exits.
func runClient(t *testing.T, stdin string, want string, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = testenv.HomeIn(t.TempDir()) // Chromium writes under HOME
	cmd.Stdin = strings.NewReader(stdin)
	var out testenv.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return "", err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	deadline := time.After(15 * time.Second)
	for {
		select {
		case err := <-exited:
			if want != "" && strings.Contains(out.String(), want) {
				err = nil
			}
			return out.String(), err
		case <-deadline:
			cmd.Process.Kill()
			<-exited
			return out.String(), fmt.Errorf("timed out")
		case <-time.After(20 * time.Millisecond):
		}
		if want != "" && strings.Contains(out.String(), want) {
			cmd.Process.Kill()
			<-exited
			return out.String(), nil
		}
	}
}

func TestOpenSSLClient(t *testing.T) {
	testenv.LookPath(t, "openssl")
	p := getPKI(t)
	roots := rootsPEM(t, p)
	clientKey, err := x509.MarshalPKCS8PrivateKey(p.clientCerts["p256"].PrivateKey)
	require.NoError(t, err)
	certFile := writePEM(t, "client.pem", "CERTIFICATE", p.clientCerts["p256"].Certificate[0])
	keyFile := writePEM(t, "client.key", "PRIVATE KEY", clientKey)
	tests := []struct {
		name, key string
		args      []string
		auth      bool
		groups    []tls.CurveID
	}{ // the name's prefix is the version the session must have
		{"TLS1.3 ECDSA", "p256", []string{"-tls1_3"}, false, nil},
		{"TLS1.3 RSA-PSS", "rsa", []string{"-tls1_3"}, false, nil},
		{"TLS1.3 Ed25519", "ed25519", []string{"-tls1_3"}, false, nil},
		{"TLS1.3 AES256", "p384", []string{"-tls1_3", "-ciphersuites", "TLS_AES_256_GCM_SHA384"}, false, nil},
		{"TLS1.3 ChaCha20", "p256", []string{"-tls1_3", "-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256"}, false, nil},
		{"TLS1.3 HelloRetryRequest", "p256", []string{"-tls1_3", "-groups", "X25519:P-256"}, false, []tls.CurveID{tls.CurveP256}},
		{"TLS1.3 client auth", "p256", []string{"-tls1_3", "-cert", certFile, "-key", keyFile}, true, nil},
		{"TLS1.2 ECDHE-ECDSA", "p256", []string{"-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"}, false, nil},
		{"TLS1.2 ECDHE-RSA P-384", "rsa", []string{"-tls1_2", "-cipher", "ECDHE-RSA-AES256-GCM-SHA384", "-groups", "P-384"}, false, nil},
		{"TLS1.2 ChaCha20", "rsa", []string{"-tls1_2", "-cipher", "ECDHE-RSA-CHACHA20-POLY1305"}, false, nil},
		{"TLS1.2 RSA", "rsa", []string{"-tls1_2", "-cipher", "AES128-GCM-SHA256"}, false, nil},
		{"TLS1.2 RSA AES256", "rsa", []string{"-tls1_2", "-cipher", "AES256-GCM-SHA384"}, false, nil},
		{"TLS1.2 client auth", "rsa", []string{"-tls1_2", "-cert", certFile, "-key", keyFile}, true, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := serverConfig(p.key(tc.key))
			cfg.Groups = tc.groups
			if tc.auth {
				cfg.ClientAuth, cfg.ClientCAs = ClientAuthRequired, p.clientCA
			}
			port, done := externalServer(t, cfg, pingPong)
			args := append([]string{"s_client", "-connect", "127.0.0.1:" + port, "-servername", tc.key + ".example.com",
				"-CAfile", roots, "-verify_return_error", "-quiet"}, tc.args...)
			out, err := runClient(t, string(ping)+"\n", string(pong), "openssl", args...)
			res := <-done
			require.Truef(t, res.err == nil && err == nil, "server: %v\nclient: %v\n%s", res.err, err, out)
			s := res.session
			wantVers := uint16(tls.VersionTLS12)
			if strings.HasPrefix(tc.name, "TLS1.3") {
				wantVers = tls.VersionTLS13
			}
			assert.Equal(t, wantVers, s.Version, "session %s", s)
			assert.Equal(t, tc.groups != nil, s.DidHelloRetryRequest, "session %s", s)
			assert.Equal(t, tc.auth, len(s.PeerCertificates) == 1, "session %s", s)
		})
	}
}

func TestCurlClient(t *testing.T) {
	testenv.LookPath(t, "curl")
	p := getPKI(t)
	roots := rootsPEM(t, p)
	for _, tc := range []struct{ name, key, args string }{
		{"TLS1.3", "p256", "--tlsv1.3"},
		{"TLS1.2 ECDHE", "rsa", "--tls-max 1.2"},
		{"TLS1.2 RSA", "rsa", "--tls-max 1.2 --ciphers AES128-GCM-SHA256"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := serverConfig(p.key(tc.key))
			cfg.NextProtos = []string{"http/1.1"}
			port, done := externalServer(t, cfg, httpPong)
			host := tc.key + ".example.com"
			args := append([]string{"-sS", "--cacert", roots, "--resolve", host + ":" + port + ":127.0.0.1"},
				strings.Fields(tc.args)...)
			args = append(args, "https://"+host+":"+port+"/")
			out, err := runClient(t, "", "", "curl", args...)
			res := <-done
			require.Truef(t, res.err == nil && err == nil && strings.Contains(out, string(pong)), "server: %v\nclient: %v\n%s", res.err, err, out)
			assert.Equal(t, "http/1.1", res.session.ALPN, "session %s", res.session)
		})
	}
}

func TestGnuTLSClient(t *testing.T) {
	testenv.LookPath(t, "gnutls-cli")
	p := getPKI(t)
	roots := rootsPEM(t, p)
	for _, tc := range []struct{ name, key, priority string }{
		{"TLS1.3", "p256", "NORMAL:-VERS-ALL:+VERS-TLS1.3"},
		{"TLS1.3 RSA-PSS", "rsa", "NORMAL:-VERS-ALL:+VERS-TLS1.3"},
		{"TLS1.2 ECDHE", "p384", "NORMAL:-VERS-ALL:+VERS-TLS1.2"},
		{"TLS1.2 RSA", "rsa", "NORMAL:-KX-ALL:+RSA:-VERS-ALL:+VERS-TLS1.2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			port, done := externalServer(t, serverConfig(p.key(tc.key)), pingPong)
			out, err := runClient(t, string(ping)+"\n", string(pong), "gnutls-cli", "--x509cafile", roots,
				"--priority", tc.priority, "--sni-hostname", tc.key+".example.com", "--verify-hostname", tc.key+".example.com",
				"-p", port, "127.0.0.1")
			res := <-done
			require.Truef(t, res.err == nil && err == nil, "server: %v\nclient: %v\n%s", res.err, err, out)
		})
	}
}

// TestChromium loads a page from the engine in headless Chromium (BoringSSL:
// GREASE, permuted extensions, X25519MLKEM768). Chromium may open more than
// one connection; every one is served.
func TestChromium(t *testing.T) {
	testenv.LookPath(t, "chromium")
	p := getPKI(t)
	for _, tc := range []struct {
		name, key, flag string
		vers            uint16
	}{
		{"TLS1.3", "p256", "", tls.VersionTLS13},
		{"TLS1.3 RSA", "rsa", "", tls.VersionTLS13},
		{"TLS1.2", "rsa", "--ssl-version-max=tls1.2", tls.VersionTLS12},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := serverConfig(p.key(tc.key))
			cfg.NextProtos = []string{"http/1.1"}
			sessions := loadInChromium(t, cfg, func([]byte) string { return string(pong) }, tc.key+".example.com", tc.flag)
			select {
			case s := <-sessions:
				assert.Equal(t, tc.vers, s.Version, "session %s", s)
				assert.Equal(t, "http/1.1", s.ALPN, "session %s", s)
				t.Logf("session %s", s)
			case <-time.After(5 * time.Second):
				require.Fail(t, "no completed session")
			}
		})
	}
}

// loadInChromium starts an engine server answering each HTTP/1.1 request with
// page(request), over connections served concurrently, and has headless
// Chromium load https://host/ from it (host mapped to loopback, with the
// extra flags). It returns the sessions of the completed handshakes.
func loadInChromium(t *testing.T, cfg Config, page func(req []byte) string, host string, flags ...string) <-chan *Session {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	keys := getPKI(t).keys
	sessions := make(chan *Session, 16)
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				conn.SetDeadline(time.Now().Add(20 * time.Second))
				h, _ := NewHandshake(&cfg)
				out := (&relay{h: h, keys: keys}).run(conn)
				if out.session == nil {
					t.Logf("connection failed: %v %s", out.err, out.last.Reason)
					return
				}
				sessions <- out.session
				if rc, err := newRecordConn(conn, out.session, out.leftover); err == nil {
					httpAnswer(rc, page)
				}
			}()
		}
	}()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	args := []string{"--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
		"--disable-component-update", "--disable-sync", "--ignore-certificate-errors",
		"--user-data-dir=" + t.TempDir(), "--host-resolver-rules=MAP " + host + " 127.0.0.1"}
	for _, f := range flags {
		if f != "" {
			args = append(args, f)
		}
	}
	args = append(args, "--dump-dom", "https://"+host+":"+port+"/")
	out, err := runClient(t, "", "", "chromium", args...)
	require.Truef(t, err == nil && strings.Contains(out, string(pong)), "chromium: %v\n%s", err, out)
	return sessions
}
