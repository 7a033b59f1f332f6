package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/service"
	"github.com/handshaked/handshaked/internal/servicetest"
	"github.com/handshaked/handshaked/internal/testenv"
)

// fixture is a service with an RSA and an ECDSA key whose certificates
// trust files the external clients can read.
type fixture struct {
	srv        *servicetest.Server
	rsa, ecdsa servicetest.ServerKey
	rsaCA      string // PEM file of the RSA key's certificate
	ecCA       string
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	return newFixtureWith(t, service.Options{})
}

// newFixtureWith is newFixture with the service started with opts.
func newFixtureWith(t testing.TB, opts service.Options) *fixture {
	t.Helper()
	srv := servicetest.Start(t, opts)
	f := &fixture{srv: srv,
		rsa:   srv.ServerKey(t, "edge-rsa", "rsa2048-pkcs1.pem", "rsa.test"),
		ecdsa: srv.ServerKey(t, "edge-ec", "p256-pkcs8.pem", "ec.test")}
	dir := t.TempDir()
	f.rsaCA, f.ecCA = filepath.Join(dir, "rsa.pem"), filepath.Join(dir, "ec.pem")
	os.WriteFile(f.rsaCA, []byte(f.rsa.CertPEM), 0o600)
	os.WriteFile(f.ecCA, []byte(f.ecdsa.CertPEM), 0o600)
	return f
}

// start runs handshake-edge with args (plus -handshaked, -listen and the
// keys, ECDSA first) and returns its address and log, in text.
func (f *fixture) start(t testing.TB, args ...string) (string, *testenv.Buffer) {
	t.Helper()
	return startEdge(t, append([]string{"-handshaked", f.srv.GRPCAddr, "-key", f.ecdsa.ID, "-key", f.rsa.ID}, args...)...)
}

// startEdge runs handshake-edge with args (plus -listen and -log-format
// text) until the test ends and returns its address and log.
func startEdge(t testing.TB, args ...string) (string, *testenv.Buffer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	addrc := make(chan net.Addr, 1)
	done := make(chan error, 1)
	log := &testenv.Buffer{}
	args = append([]string{"-listen", "127.0.0.1:0", "-log-format", "text"}, args...)
	go func() { done <- run(ctx, args, log, func(a net.Addr) { addrc <- a }) }()
	select {
	case a := <-addrc:
		t.Cleanup(func() {
			cancel()
			assert.NoError(t, <-done, "handshake-edge")
		})
		return a.String(), log
	case err := <-done:
		cancel()
		require.FailNow(t, "handshake-edge did not start", "%v", err)
	}
	return "", nil
}

// echoBackend is a TCP backend that sends back what it reads and passes
// on the half-close. It reports each connection's bytes and how it ended.
func echoBackend(t testing.TB) (string, <-chan error) {
	t.Helper()
	ended := make(chan error, 16)
	addr := serveBackend(t, func(c net.Conn) {
		_, err := io.Copy(c, c)
		c.(*net.TCPConn).CloseWrite()
		ended <- err
	})
	return addr, ended
}

// serveBackend is a TCP backend that runs serve on each connection, then
// closes it.
func serveBackend(t testing.TB, serve func(net.Conn)) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				serve(c)
			}()
		}
	}()
	return l.Addr().String()
}

func randomFile(t testing.TB, n int) (string, []byte) {
	t.Helper()
	b := make([]byte, n)
	rand.Read(b)
	name := filepath.Join(t.TempDir(), "body.bin")
	require.NoError(t, os.WriteFile(name, b, 0o600))
	return name, b
}

// TestCurl: curl over TLS 1.2 and TLS 1.3 fetches the echo page (HTTP/1.1
// and HTTP/1.0) and posts 1 MiB that comes back.
func TestCurl(t *testing.T) {
	curl := testenv.LookPath(t, "curl")
	f := newFixture(t)
	addr, _ := f.start(t)
	_, port, _ := net.SplitHostPort(addr)
	body, want := randomFile(t, 1<<20)
	for _, tc := range []struct {
		name, version, key, ca string
		args                   []string
	}{
		{"TLS1.2 RSA key exchange", "TLS 1.2", "rsa.test", f.rsaCA, []string{"--tlsv1.2", "--tls-max", "1.2", "--ciphers", "AES256-GCM-SHA384"}},
		{"TLS1.2 ECDHE", "TLS 1.2", "ec.test", f.ecCA, []string{"--tlsv1.2", "--tls-max", "1.2"}},
		{"TLS1.3", "TLS 1.3", "ec.test", f.ecCA, []string{"--tlsv1.3"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			url := "https://" + tc.key + ":" + port + "/"
			common := append([]string{"-fsS", "--max-time", "30", "--cacert", tc.ca, "--resolve", tc.key + ":" + port + ":127.0.0.1"}, tc.args...)
			for _, proto := range []string{"--http1.1", "--http1.0"} {
				out, err := exec.Command(curl, append(common, proto, url)...).CombinedOutput()
				require.NoError(t, err, "curl %s:\n%s", proto, out)
				wantProto := map[string]string{"--http1.1": "HTTP/1.1", "--http1.0": "HTTP/1.0"}[proto]
				for _, s := range []string{"GET / " + wantProto, "TLS version: " + tc.version, "Server name: " + tc.key} {
					assert.Contains(t, string(out), s, "curl %s", proto)
				}
			}
			outFile := filepath.Join(t.TempDir(), "out.bin")
			out, err := exec.Command(curl, append(common, "--data-binary", "@"+body, "-o", outFile, url)...).CombinedOutput()
			require.NoError(t, err, "curl POST:\n%s", out)
			got, _ := os.ReadFile(outFile)
			assert.True(t, bytes.Equal(got, want), "1 MiB POST came back as %d other bytes", len(got))
		})
	}
}

// TestGoClient: Go's client, HTTP/1.1 keep-alive, 1 MiB each way on both
// versions, and the negotiated group on the page and in the edge's log.
func TestGoClient(t *testing.T) {
	f := newFixture(t)
	addr, log := f.start(t, "-groups", "X25519MLKEM768,X25519")
	_, want := randomFile(t, 1<<20)
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		tr := &http.Transport{TLSClientConfig: &tls.Config{ServerName: f.ecdsa.Name, RootCAs: f.ecdsa.Pool, MaxVersion: v}}
		c := &http.Client{Transport: tr, Timeout: 30 * time.Second}
		resp, err := c.Post("https://"+addr+"/", "application/octet-stream", bytes.NewReader(want))
		require.NoError(t, err)
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		assert.True(t, bytes.Equal(got, want), "%s: 1 MiB came back as %d other bytes", tls.VersionName(v), len(got))
		resp, err = c.Get("https://" + addr + "/")
		require.NoError(t, err)
		page, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		wantGroup := "Group: X25519MLKEM768"
		if v == tls.VersionTLS12 {
			wantGroup = "Group: X25519" // no hybrid groups in TLS 1.2
		}
		assert.Contains(t, string(page), wantGroup+"\n", tls.VersionName(v))
		assert.Contains(t, log.String(), "group="+strings.TrimPrefix(wantGroup, "Group: ")+" ", tls.VersionName(v))
		assert.Equal(t, v, resp.TLS.Version)
		tr.CloseIdleConnections()
	}
}

// hexLines is about n bytes of lines that start with "@": no s_client
// command letter, and never in the PEM and logs the clients print.
func hexLines(n int) []byte {
	raw := make([]byte, n/2)
	rand.Read(raw)
	h := []byte(hex.EncodeToString(raw))
	var b bytes.Buffer
	for len(h) > 0 {
		line := h[:min(len(h), 63)]
		h = h[len(line):]
		b.WriteString("@")
		b.Write(line)
		b.WriteString("\n")
	}
	return b.Bytes()
}

// runInteractive starts cmd, hands it first, waits for marker on its
// standard error (if any), then sends data and reads until the backend's echo of
// all of it came back, then closes its stdin and waits for it to end.
func runInteractive(t *testing.T, cmd *exec.Cmd, first []byte, marker string, data []byte) {
	t.Helper()
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	var stderr testenv.Buffer
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
	killer := time.AfterFunc(60*time.Second, func() { cmd.Process.Kill() })
	defer killer.Stop()
	r := bufio.NewReader(stdout)
	stdin.Write(first)
	// s_client reports a key update on stderr.
	for deadline := time.Now().Add(20 * time.Second); marker != "" && !strings.Contains(stderr.String(), marker); {
		require.False(t, time.Now().After(deadline), "%s: no %q:\n%s", cmd.Path, marker, stderr.String())
		time.Sleep(10 * time.Millisecond)
	}
	go stdin.Write(data)
	wantLines := bytes.Count(data, []byte("\n"))
	var echoed bytes.Buffer
	for n := 0; n < wantLines; {
		line, err := r.ReadString('\n')
		require.NoError(t, err, "%s: after %d of %d lines\n%s", cmd.Path, n, wantLines, stderr.String())
		if strings.HasPrefix(line, "@") {
			echoed.WriteString(line)
			n++
		}
	}
	if !bytes.Equal(echoed.Bytes(), data) {
		e, d := echoed.Bytes(), data
		i := 0
		for i < min(len(e), len(d)) && e[i] == d[i] {
			i++
		}
		assert.Fail(t, "the echo differs", "%s: the echo (%d bytes) differs from what was sent (%d bytes) at byte %d: %q vs %q", cmd.Path, len(e), len(d), i, e[max(0, i-70):min(len(e), i+70)], d[max(0, i-70):min(len(d), i+70)])
	}
	stdin.Close()
	io.Copy(io.Discard, r)
	assert.NoError(t, cmd.Wait(), "%s:\n%s", cmd.Path, stderr.String())
}

// TestOpenSSLClient: s_client over TLS 1.3 asks for a key update (the k
// command), then sends 1 MiB through the edge to an echo backend and gets
// it back, then closes cleanly; then the same over TLS 1.2.
func TestOpenSSLClient(t *testing.T) {
	openssl := testenv.LookPath(t, "openssl")
	f := newFixture(t)
	backend, ended := echoBackend(t)
	addr, _ := f.start(t, "-backend", backend)
	data := hexLines(1 << 20)
	common := []string{"s_client", "-connect", addr, "-servername", "ec.test", "-CAfile", f.ecCA, "-verify_return_error"}

	cmd := exec.Command(openssl, append(common, "-tls1_3")...)
	runInteractive(t, cmd, []byte("k\n"), "KEYUPDATE", data)
	assert.NoError(t, <-ended, "backend connection")

	cmd = exec.Command(openssl, append(common, "-tls1_2", "-cipher", "ECDHE-ECDSA-CHACHA20-POLY1305")...)
	runInteractive(t, cmd, nil, "", data)
	assert.NoError(t, <-ended, "backend connection")
}

// TestGnuTLSClient: gnutls-cli sends 1 MiB through the edge and back, over
// TLS 1.3 and TLS 1.2.
func TestGnuTLSClient(t *testing.T) {
	gnutls := testenv.LookPath(t, "gnutls-cli")
	f := newFixture(t)
	backend, ended := echoBackend(t)
	addr, _ := f.start(t, "-backend", backend)
	host, port, _ := net.SplitHostPort(addr)
	data := hexLines(1 << 20)
	for _, prio := range []string{"NORMAL:-VERS-ALL:+VERS-TLS1.3", "NORMAL:-VERS-ALL:+VERS-TLS1.2"} {
		cmd := exec.Command(gnutls, "--x509cafile", f.rsaCA, "--sni-hostname", "rsa.test", "--verify-hostname", "rsa.test",
			"--priority", prio, "-p", port, host)
		runInteractive(t, cmd, nil, "", data)
		assert.NoError(t, <-ended, "%s: backend connection", prio)
	}
}

// TestGnuTLSClientRecordSizeLimit: gnutls-cli --recordsize 512 (RFC 8449)
// gets the handshake and 64 KiB through the edge, in TLS 1.3 and TLS 1.2.
// GnuTLS enforces the limit it advertises: a protected record over it, of
// the server's flight or of the data, aborts the connection ("Received
// packet with illegal length"). The backend answers a request line with
// the data and closes, for gnutls-cli 3.7.9 takes one record from its
// buffer each time the socket turns readable (openssl s_server
// -max_send_frag 512 stalls it the same way, with or without --recordsize):
// while the connection stays open, the records of one write of the edge's
// past the first wait for more bytes to arrive, and at the end the close
// is what keeps the socket readable until gnutls-cli has read them all.
func TestGnuTLSClientRecordSizeLimit(t *testing.T) {
	gnutls := testenv.LookPath(t, "gnutls-cli")
	f := newFixture(t)
	data := hexLines(64 << 10)
	backend := serveBackend(t, func(c net.Conn) {
		if _, err := bufio.NewReader(c).ReadString('\n'); err == nil {
			c.Write(data)
		}
	})
	addr, _ := f.start(t, "-backend", backend)
	host, port, _ := net.SplitHostPort(addr)
	for _, prio := range []string{"NORMAL:-VERS-ALL:+VERS-TLS1.3", "NORMAL:-VERS-ALL:+VERS-TLS1.2"} {
		cmd := exec.Command(gnutls, "--x509cafile", f.rsaCA, "--sni-hostname", "rsa.test", "--verify-hostname", "rsa.test",
			"--priority", prio, "--recordsize", "512", "-p", port, host)
		stdin, err := cmd.StdinPipe()
		require.NoError(t, err)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		require.NoError(t, cmd.Start())
		killer := time.AfterFunc(60*time.Second, func() { cmd.Process.Kill() })
		// stdin stays open: gnutls-cli ends its connection at the end of
		// its input, and here at the server's close_notify.
		stdin.Write([]byte("go\n"))
		err = cmd.Wait()
		killer.Stop()
		stdin.Close()
		require.NoError(t, err, "%s:\n%s", prio, stderr.String())
		var echoed bytes.Buffer
		for _, line := range bytes.SplitAfter(stdout.Bytes(), []byte("\n")) {
			if bytes.HasPrefix(line, []byte("@")) {
				echoed.Write(line)
			}
		}
		assert.Equal(t, len(data), echoed.Len(), "%s: bytes received", prio)
		assert.True(t, bytes.Equal(data, echoed.Bytes()), "%s: the data differs", prio)
	}
}

// TestCloses: through the proxy, a client that closes cleanly and one
// whose TCP connection just drops both end their backend connection, and
// the edge goes on serving.
func TestCloses(t *testing.T) {
	f := newFixture(t)
	backend, ended := echoBackend(t)
	addr, _ := f.start(t, "-backend", backend)
	cfg := &tls.Config{ServerName: f.ecdsa.Name, RootCAs: f.ecdsa.Pool}
	for _, abrupt := range []bool{false, true} {
		raw, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		c := tls.Client(raw, cfg)
		c.Write([]byte("ping"))
		buf := make([]byte, 4)
		_, err = io.ReadFull(c, buf)
		require.NoError(t, err, "echo")
		require.Equal(t, "ping", string(buf))
		if abrupt {
			raw.Close()
		} else {
			c.CloseWrite() // close_notify
			rest, err := io.ReadAll(c)
			assert.NoError(t, err, "after close_notify: want a clean EOF")
			assert.Empty(t, rest, "after close_notify: want a clean EOF")
			c.Close()
		}
		select {
		case <-ended:
		case <-time.After(10 * time.Second):
			require.FailNow(t, "the backend connection did not end", "abrupt=%v", abrupt)
		}
	}
}

// TestFatalAlert: after a record that fails authentication the edge sends
// exactly one alert record and closes the TCP connection.
func TestFatalAlert(t *testing.T) {
	f := newFixture(t)
	backend, _ := echoBackend(t)
	addr, _ := f.start(t, "-backend", backend)
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		raw, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		c := tls.Client(raw, &tls.Config{ServerName: f.ecdsa.Name, RootCAs: f.ecdsa.Pool, MaxVersion: v})
		require.NoError(t, c.Handshake())
		// A forged application_data record.
		raw.Write(append([]byte{23, 3, 3, 0, 40}, make([]byte, 40)...))
		raw.SetReadDeadline(time.Now().Add(10 * time.Second))
		rest, err := io.ReadAll(raw)
		require.NoError(t, err, tls.VersionName(v))
		// Skip a TLS 1.3 NewSessionTicket? The engine sends none: what
		// follows the handshake is the alert alone.
		wantType, wantLen := byte(21), 8+2+16 // TLS 1.2: explicit nonce, alert, tag
		if v == tls.VersionTLS13 {
			wantType, wantLen = 23, 2+1+16 // alert, inner type, tag
		}
		if !assert.Len(t, rest, 5+wantLen, tls.VersionName(v)) || rest[0] != wantType {
			assert.Fail(t, "not one alert record", "%s: after the forged record the edge sent % x, want one %d-byte alert record then EOF", tls.VersionName(v), rest, wantLen)
		}
		raw.Close()
	}
}
