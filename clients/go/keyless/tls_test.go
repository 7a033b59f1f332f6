package keyless_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	handshaked "github.com/handshaked/handshaked/clients/go"
	"github.com/handshaked/handshaked/clients/go/keyless"
	"github.com/handshaked/handshaked/internal/service"
	"github.com/handshaked/handshaked/internal/servicetest"
	"github.com/handshaked/handshaked/internal/testenv"
)

// The environment of the keyless HTTPS server child process: all it gets
// is where the vault is and which keys to use.
const (
	envGRPC = "KEYLESS_TEST_GRPC_ADDR"
	envKeys = "KEYLESS_TEST_KEY_IDS"
)

func TestMain(m *testing.M) {
	if addr := os.Getenv(envGRPC); addr != "" {
		if err := serveKeyless(addr, strings.Split(os.Getenv(envKeys), ",")); err != nil {
			fmt.Fprintln(os.Stderr, "keyless server:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(testenv.Main(m))
}

// serveKeyless is the child: an ordinary net/http HTTPS server whose
// certificates hold keyless keys. It prints its address and serves until
// its stdin closes.
func serveKeyless(addr string, ids []string) error {
	c, err := handshaked.Dial(addr, handshaked.WithInsecure())
	if err != nil {
		return err
	}
	defer c.Close()
	cfg := &tls.Config{
		// Listed explicitly: crypto/tls leaves RSA key exchange out of its
		// defaults, and the test wants it.
		CipherSuites: []uint16{
			tls.TLS_RSA_WITH_AES_128_GCM_SHA256, tls.TLS_RSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
			tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
		},
	}
	for _, id := range ids {
		cert, err := keyless.Certificate(context.Background(), c, id)
		if err != nil {
			return err
		}
		cfg.Certificates = append(cfg.Certificates, cert)
	}
	l, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		return err
	}
	fmt.Printf("ADDR %s\n", l.Addr())
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "keyless %s %s\n", tls.VersionName(r.TLS.Version), tls.CipherSuiteName(r.TLS.CipherSuite))
	})}
	go func() {
		io.Copy(io.Discard, os.Stdin)
		srv.Close()
	}()
	if err := srv.Serve(l); err != http.ErrServerClosed {
		return err
	}
	return nil
}

// TestKeylessHTTPSServer runs an HTTPS server in a separate process that
// holds no private key — only the vault's address and key ids — and has Go
// and curl clients complete TLS 1.2 (RSA key exchange and ECDHE) and TLS 1.3
// handshakes with it.
func TestKeylessHTTPSServer(t *testing.T) {
	srv := servicetest.Start(t, service.Options{})
	rsaKey := srv.ServerKey(t, "web-rsa", "rsa2048-pkcs1.pem", "rsa.test")
	ecKey := srv.ServerKey(t, "web-ec", "p256-pkcs8.pem", "ec.test")
	edKey := srv.ServerKey(t, "web-ed", "ed25519-pkcs8.pem", "ed.test")

	self, err := os.Executable()
	require.NoError(t, err)
	dir := t.TempDir()
	cmd := exec.Command(self, "-test.run=^$")
	cmd.Dir = dir
	cmd.Env = []string{envGRPC + "=" + srv.GRPCAddr, envKeys + "=" + rsaKey.ID + "," + ecKey.ID + "," + edKey.ID}
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		stdin.Close()
		assert.NoError(t, cmd.Wait(), "keyless server")
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	require.NoError(t, err, "keyless server did not start")
	addr := strings.TrimSpace(strings.TrimPrefix(line, "ADDR "))
	_, port, _ := net.SplitHostPort(addr)

	assertHoldsNoKey(t, cmd.Process.Pid, dir)

	cases := []struct {
		name  string
		key   servicetest.ServerKey
		max   uint16
		suite uint16
		curl  []string
		want  string
	}{
		{"TLS1.2 RSA key exchange", rsaKey, tls.VersionTLS12, tls.TLS_RSA_WITH_AES_128_GCM_SHA256,
			[]string{"--tlsv1.2", "--tls-max", "1.2", "--ciphers", "AES128-GCM-SHA256"}, "TLS 1.2 TLS_RSA_WITH_AES_128_GCM_SHA256"},
		{"TLS1.2 ECDHE-RSA", rsaKey, tls.VersionTLS12, tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
			[]string{"--tlsv1.2", "--tls-max", "1.2", "--ciphers", "ECDHE-RSA-AES128-GCM-SHA256"}, "TLS 1.2 TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"},
		{"TLS1.2 ECDHE-ECDSA", ecKey, tls.VersionTLS12, tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
			[]string{"--tlsv1.2", "--tls-max", "1.2", "--ciphers", "ECDHE-ECDSA-AES256-GCM-SHA384"}, "TLS 1.2 TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"},
		{"TLS1.3 RSA-PSS", rsaKey, tls.VersionTLS13, 0, []string{"--tlsv1.3"}, "TLS 1.3 TLS_"},
		{"TLS1.3 ECDSA", ecKey, tls.VersionTLS13, 0, []string{"--tlsv1.3"}, "TLS 1.3 TLS_"},
		{"TLS1.3 Ed25519", edKey, tls.VersionTLS13, 0, []string{"--tlsv1.3"}, "TLS 1.3 TLS_"},
	}
	curl := testenv.LookPath(t, "curl")
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := &tls.Config{ServerName: tc.key.Name, RootCAs: tc.key.Pool, MinVersion: tc.max, MaxVersion: tc.max}
			if tc.suite != 0 {
				cfg.CipherSuites = []uint16{tc.suite}
			}
			client := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}}
			defer client.CloseIdleConnections()
			resp, err := client.Get("https://" + addr + "/")
			require.NoError(t, err, "Go client")
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			assert.True(t, strings.HasPrefix(string(body), "keyless "+tc.want), "Go client got %q, want %q", body, tc.want)

			caFile := filepath.Join(t.TempDir(), "ca.pem")
			require.NoError(t, os.WriteFile(caFile, []byte(tc.key.CertPEM), 0o600))
			args := append([]string{"-fsS", "--max-time", "20", "--cacert", caFile,
				"--resolve", tc.key.Name + ":" + port + ":127.0.0.1", "https://" + tc.key.Name + ":" + port + "/"}, tc.curl...)
			out, err := exec.Command(curl, args...).CombinedOutput()
			require.NoError(t, err, "curl %v:\n%s", args, out)
			assert.True(t, strings.HasPrefix(string(out), "keyless "+tc.want), "curl got %q, want %q", out, tc.want)
		})
	}
}

// assertHoldsNoKey checks that process pid was given no key material and
// opened no key file: its command line and environment hold no PEM, its
// working directory is empty, and none of its open files is a key fixture
// or a key store.
func assertHoldsNoKey(t *testing.T, pid int, dir string) {
	t.Helper()
	proc := fmt.Sprintf("/proc/%d", pid)
	for _, f := range []string{"cmdline", "environ"} {
		b, err := os.ReadFile(filepath.Join(proc, f))
		require.NoError(t, err)
		assert.NotContains(t, string(b), "PRIVATE KEY", "keyless server's %s mentions key material", f)
		assert.NotContains(t, string(b), ".pem", "keyless server's %s mentions key material", f)
	}
	entries, _ := os.ReadDir(dir)
	assert.Empty(t, entries, "keyless server's directory is not empty")
	fds, err := os.ReadDir(filepath.Join(proc, "fd"))
	require.NoError(t, err)
	for _, fd := range fds {
		target, _ := os.Readlink(filepath.Join(proc, "fd", fd.Name()))
		assert.False(t, strings.HasSuffix(target, ".pem") || strings.HasSuffix(target, ".db") || strings.Contains(target, "testdata/keys"),
			"keyless server has %s open", target)
	}
}
