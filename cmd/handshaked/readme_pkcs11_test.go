package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/testenv"
)

// TestREADMEPKCS11Build runs the README's build command for the PKCS#11
// backend verbatim: it makes a cgo binary (with an ELF interpreter, unlike
// the default static one) that accepts the -pkcs11-* settings and fails on
// a missing module rather than saying it lacks the backend.
func TestREADMEPKCS11Build(t *testing.T) {
	bin, _ := buildFromREADME(t, "pkcs11-build")

	run := exec.Command(bin, "-data-dir", t.TempDir(), "-pkcs11-module", filepath.Join(t.TempDir(), "missing.so"), "-pkcs11-token", "t")
	run.Env = append(os.Environ(), pkcs11PINEnv+"=1234")
	out, err := run.CombinedOutput()
	require.Error(t, err)
	assert.Contains(t, string(out), "cannot load module")
	assert.NotContains(t, string(out), "built without PKCS#11 support")
}

// TestREADMEPKCS11SoftHSM runs the README's SoftHSM2 block as written in a
// copy of the tree (only the ports differ: the block leaves the service's
// at their defaults, and the test sets them in the environment): the
// pkcs11 build, a token initialised, a development instance whose KEK the
// token wraps, a key generated in the token that signs there and whose
// signature verifies, and a rotation to a KEK the service made in the token.
func TestREADMEPKCS11SoftHSM(t *testing.T) {
	for _, tool := range []string{"bash", "go", "gcc", "curl", "softhsm2-util"} {
		testenv.LookPath(t, tool)
	}
	script := readmeBlock(t, "pkcs11-softhsm")
	grpc, rest := testenv.FreeAddr(t), testenv.FreeAddr(t)
	const documentedREST = "http://127.0.0.1:7080"
	require.Contains(t, script, documentedREST, "the block waits for the documented REST address")
	script = strings.ReplaceAll(script, documentedREST, "http://"+rest)
	clone, out, err := testenv.RunInClone(t, filepath.Join("..", ".."), script,
		"CGO_ENABLED=1", "HANDSHAKED_GRPC_ADDR="+grpc, "HANDSHAKED_HTTP_ADDR="+rest, "HANDSHAKED_ADDR="+grpc)
	log, _ := os.ReadFile(filepath.Join(clone, "hsm", "handshaked.log"))
	require.NoError(t, err, "the README's SoftHSM2 block failed:\n%s\nhandshaked.log:\n%s", out, log)
	assert.Contains(t, out, "in pkcs11", "the key's version is in the token")
	assert.Contains(t, out, "signature OK (hsm-rsa version 1, rsa_pss_rsae_sha256)")
	assert.Contains(t, string(log), "created a new key-encryption key, wrapped by the PKCS#11 token")
	assert.NoFileExists(t, filepath.Join(clone, "hsm", "data", "kek"), "no plaintext KEK")
	assert.FileExists(t, filepath.Join(clone, "hsm", "kek.wrapped"))
	first := regexp.MustCompile(`kek_id=([0-9a-f]{16})`).FindStringSubmatch(string(log))
	require.NotNil(t, first, "the KEK's id in the log:\n%s", log)
	status := regexp.MustCompile(`(?m)^KEK ([0-9a-f]{16})\t`).FindAllStringSubmatch(out, -1)
	require.NotEmpty(t, status, "kek-status's output:\n%s", out)
	assert.NotEqual(t, first[1], status[len(status)-1][1], "kek-status after kek-rotate names the KEK the service started with")
	assert.Contains(t, out, "every record is rewrapped: the store opens with the new KEK only, which every replica keeps wrapped by the token")
}
