package main

import (
	"bufio"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestREADMEOpenSSLBuild runs the README's build command for RSA in
// OpenSSL verbatim: it makes a cgo binary linked to libcrypto that, started
// as a development instance, names OpenSSL as its RSA implementation.
func TestREADMEOpenSSLBuild(t *testing.T) {
	bin, libs := buildFromREADME(t, "openssl-build")
	assert.True(t, slices.ContainsFunc(libs, func(l string) bool { return strings.HasPrefix(l, "libcrypto.so.") }), "linked to %v", libs)

	run := exec.Command(bin, "-data-dir", t.TempDir(), "-grpc-addr", "127.0.0.1:0", "-http-addr", "127.0.0.1:0")
	stderr, err := run.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, run.Start())
	defer func() { run.Process.Kill(); run.Wait() }()
	var logged []string
	for sc := bufio.NewScanner(stderr); sc.Scan(); {
		logged = append(logged, sc.Text())
		if strings.Contains(sc.Text(), `msg="key store"`) {
			assert.Contains(t, sc.Text(), `rsa="OpenSSL 3.`)
			return
		}
	}
	require.Fail(t, "no key store line", strings.Join(logged, "\n"))
}
