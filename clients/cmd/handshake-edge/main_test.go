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
	srv := servicetest.Start(t, service.Options{})
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
	ctx, cancel := context.WithCancel(context.Background())
	addrc := make(chan net.Addr, 1)
	done := make(chan error, 1)
	log := &testenv.Buffer{}
	args = append([]string{"-handshaked", f.srv.GRPCAddr, "-listen", "127.0.0.1:0", "-key", f.ecdsa.ID, "-key", f.rsa.ID, "-log-format", "text"}, args...)
	go func() { done <- run(ctx, args, log, func(a net.Addr) { addrc <- a }) }()
	select {
	case a := <-addrc:
		t.Cleanup(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("handshake-edge: %v", err)
			}
		})
		return a.String(), log
	case err := <-done:
		cancel()
		t.Fatalf("handshake-edge did not start: %v", err)
	}
	return "", nil
}

// echoBackend is a TCP backend that sends back what it reads and passes
// on the half-close. It reports each connection's bytes and how it ended.
func echoBackend(t testing.TB) (string, <-chan error) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	ended := make(chan error, 16)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, err := io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
				ended <- err
			}()
		}
	}()
	return l.Addr().String(), ended
}

func randomFile(t testing.TB, n int) (string, []byte) {
	t.Helper()
	b := make([]byte, n)
	rand.Read(b)
	name := filepath.Join(t.TempDir(), "body.bin")
	if err := os.WriteFile(name, b, 0o600); err != nil {
		t.Fatal(err)
	}
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
				if err != nil {
					t.Fatalf("curl %s: %v\n%s", proto, err, out)
				}
				wantProto := map[string]string{"--http1.1": "HTTP/1.1", "--http1.0": "HTTP/1.0"}[proto]
				for _, s := range []string{"GET / " + wantProto, "TLS version: " + tc.version, "Server name: " + tc.key} {
					if !strings.Contains(string(out), s) {
						t.Errorf("curl %s: page lacks %q:\n%s", proto, s, out)
					}
				}
			}
			outFile := filepath.Join(t.TempDir(), "out.bin")
			out, err := exec.Command(curl, append(common, "--data-binary", "@"+body, "-o", outFile, url)...).CombinedOutput()
			if err != nil {
				t.Fatalf("curl POST: %v\n%s", err, out)
			}
			got, _ := os.ReadFile(outFile)
			if !bytes.Equal(got, want) {
				t.Errorf("1 MiB POST came back as %d other bytes", len(got))
			}
		})
	}
}

// TestGoClient: Go's client, HTTP/1.1 keep-alive, 1 MiB each way on both
// versions, and the negotiated group on the page.
func TestGoClient(t *testing.T) {
	f := newFixture(t)
	addr, _ := f.start(t, "-groups", "X25519MLKEM768,X25519")
	_, want := randomFile(t, 1<<20)
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		tr := &http.Transport{TLSClientConfig: &tls.Config{ServerName: f.ecdsa.Name, RootCAs: f.ecdsa.Pool, MaxVersion: v}}
		c := &http.Client{Transport: tr, Timeout: 30 * time.Second}
		resp, err := c.Post("https://"+addr+"/", "application/octet-stream", bytes.NewReader(want))
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !bytes.Equal(got, want) {
			t.Errorf("%s: 1 MiB came back as %d other bytes", tls.VersionName(v), len(got))
		}
		resp, err = c.Get("https://" + addr + "/")
		if err != nil {
			t.Fatal(err)
		}
		page, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		wantGroup := "Group: X25519MLKEM768"
		if v == tls.VersionTLS12 {
			wantGroup = "Group: X25519" // no hybrid groups in TLS 1.2
		}
		if !strings.Contains(string(page), wantGroup+"\n") || resp.TLS.Version != v {
			t.Errorf("%s page:\n%s", tls.VersionName(v), page)
		}
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
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr testenv.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killer := time.AfterFunc(60*time.Second, func() { cmd.Process.Kill() })
	defer killer.Stop()
	r := bufio.NewReader(stdout)
	stdin.Write(first)
	// s_client reports a key update on stderr.
	for deadline := time.Now().Add(20 * time.Second); marker != "" && !strings.Contains(stderr.String(), marker); {
		if time.Now().After(deadline) {
			t.Fatalf("%s: no %q:\n%s", cmd.Path, marker, stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	go stdin.Write(data)
	wantLines := bytes.Count(data, []byte("\n"))
	var echoed bytes.Buffer
	for n := 0; n < wantLines; {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("%s: %v after %d of %d lines\n%s", cmd.Path, err, n, wantLines, stderr.String())
		}
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
		t.Errorf("%s: the echo (%d bytes) differs from what was sent (%d bytes) at byte %d: %q vs %q", cmd.Path, len(e), len(d), i, e[max(0, i-70):min(len(e), i+70)], d[max(0, i-70):min(len(d), i+70)])
	}
	stdin.Close()
	io.Copy(io.Discard, r)
	if err := cmd.Wait(); err != nil {
		t.Errorf("%s: %v\n%s", cmd.Path, err, stderr.String())
	}
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
	if err := <-ended; err != nil {
		t.Errorf("backend connection: %v", err)
	}

	cmd = exec.Command(openssl, append(common, "-tls1_2", "-cipher", "ECDHE-ECDSA-CHACHA20-POLY1305")...)
	runInteractive(t, cmd, nil, "", data)
	if err := <-ended; err != nil {
		t.Errorf("backend connection: %v", err)
	}
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
		if err := <-ended; err != nil {
			t.Errorf("%s: backend connection: %v", prio, err)
		}
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
		if err != nil {
			t.Fatal(err)
		}
		c := tls.Client(raw, cfg)
		c.Write([]byte("ping"))
		buf := make([]byte, 4)
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
			t.Fatalf("echo: %q, %v", buf, err)
		}
		if abrupt {
			raw.Close()
		} else {
			c.CloseWrite() // close_notify
			if rest, err := io.ReadAll(c); err != nil || len(rest) != 0 {
				t.Errorf("after close_notify: %q, %v; want a clean EOF", rest, err)
			}
			c.Close()
		}
		select {
		case <-ended:
		case <-time.After(10 * time.Second):
			t.Fatalf("abrupt=%v: the backend connection did not end", abrupt)
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
		if err != nil {
			t.Fatal(err)
		}
		c := tls.Client(raw, &tls.Config{ServerName: f.ecdsa.Name, RootCAs: f.ecdsa.Pool, MaxVersion: v})
		if err := c.Handshake(); err != nil {
			t.Fatal(err)
		}
		// A forged application_data record.
		raw.Write(append([]byte{23, 3, 3, 0, 40}, make([]byte, 40)...))
		raw.SetReadDeadline(time.Now().Add(10 * time.Second))
		rest, err := io.ReadAll(raw)
		if err != nil {
			t.Fatalf("%s: %v", tls.VersionName(v), err)
		}
		// Skip a TLS 1.3 NewSessionTicket? The engine sends none: what
		// follows the handshake is the alert alone.
		wantType, wantLen := byte(21), 8+2+16 // TLS 1.2: explicit nonce, alert, tag
		if v == tls.VersionTLS13 {
			wantType, wantLen = 23, 2+1+16 // alert, inner type, tag
		}
		if len(rest) != 5+wantLen || rest[0] != wantType {
			t.Errorf("%s: after the forged record the edge sent % x, want one %d-byte alert record then EOF", tls.VersionName(v), rest, wantLen)
		}
		raw.Close()
	}
}
