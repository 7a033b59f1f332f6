package deploy

import (
	"bytes"
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
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/testenv"
)

// freeAddr is a loopback address nothing listens on at the moment.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().String()
}

// TestImageSettingsServe runs the release handshaked as the image runs it:
// no arguments, the image's ENV (its paths moved under a temporary root, its
// ports onto loopback), and the mounts the manifests give it (KEK, TLS
// files, client CA, all mode 0440, and the Kubernetes base's policy). It
// must start a production instance that the image's HEALTHCHECK
// ("handshaked health") finds SERVING, serve /metrics over HTTPS without a
// client certificate as the ServiceMonitor scrapes it, stop cleanly on
// SIGTERM, and open the same store again without HANDSHAKED_INIT.
func TestImageSettingsServe(t *testing.T) {
	bin := filepath.Join(release(t), "handshaked")
	root := t.TempDir()
	env := imageEnv(t)
	for k, v := range env {
		switch {
		case strings.HasPrefix(v, "/"):
			env[k] = filepath.Join(root, v)
		case strings.HasPrefix(v, ":"):
			env[k] = freeAddr(t)
		}
	}
	pki := newTestPKI(t)
	kek := make([]byte, 32)
	rand.Read(kek)
	policy, err := os.ReadFile("kubernetes/base/policy.json")
	require.NoError(t, err)
	for setting, data := range map[string][]byte{
		"HANDSHAKED_KEK_FILE": []byte(hex.EncodeToString(kek)), "HANDSHAKED_TLS_CERT": pki.serverCert,
		"HANDSHAKED_TLS_KEY": pki.serverKey, "HANDSHAKED_CLIENT_CA": pki.caCert, "HANDSHAKED_POLICY": policy,
	} {
		require.NoError(t, os.MkdirAll(filepath.Dir(env[setting]), 0o755))
		require.NoError(t, os.WriteFile(env[setting], data, 0o440))
	}
	require.NoError(t, os.MkdirAll(env["HANDSHAKED_DATA_DIR"], 0o700))

	var base []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "HANDSHAKED_") {
			base = append(base, kv)
		}
	}
	for k, v := range env {
		base = append(base, k+"="+v)
	}
	health := func() (int, string) {
		cmd := exec.Command(bin, "health", "-timeout", "2s")
		cmd.Env = base
		out, _ := cmd.CombinedOutput()
		return cmd.ProcessState.ExitCode(), string(out)
	}
	start := func(extra ...string) (*exec.Cmd, *testenv.Buffer) {
		cmd := exec.Command(bin)
		cmd.Env = append(base, extra...)
		log := &testenv.Buffer{}
		cmd.Stdout, cmd.Stderr = log, log
		require.NoError(t, cmd.Start())
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		require.Eventually(t, func() bool { code, _ := health(); return code == 0 }, 60*time.Second, 100*time.Millisecond,
			"the image's HEALTHCHECK never passed:\n%s", log)
		return cmd, log
	}
	stop := func(cmd *exec.Cmd, log *testenv.Buffer) {
		require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			assert.NoError(t, err, "exit after SIGTERM:\n%s", log)
		case <-time.After(45 * time.Second):
			t.Fatalf("no exit 45 s after SIGTERM (the pod's grace period):\n%s", log)
		}
	}

	cmd, log := start("HANDSHAKED_INIT=true")
	code, out := health()
	assert.Equal(t, 0, code)
	assert.Equal(t, "SERVING\n", out)

	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pki.pool, ServerName: "handshaked"}}}
	resp, err := client.Get("https://" + env["HANDSHAKED_HTTP_ADDR"] + "/metrics")
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
	assert.True(t, bytes.Contains(body, []byte("handshaked_build_info{")), "no build info in /metrics")
	assert.Contains(t, log.String(), "production mode")

	stop(cmd, log)
	code, _ = health()
	assert.Equal(t, 1, code, "health passes with the service stopped")

	cmd, log = start()
	stop(cmd, log)
}
