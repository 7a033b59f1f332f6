//go:build pkcs11

package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/keyvault"
	"github.com/handshaked/handshaked/internal/keyvault/pkcs11/softhsmtest"
	"github.com/handshaked/handshaked/internal/service"
	"github.com/handshaked/handshaked/internal/servicetest"
)

// TestCreateInToken: create -backend pkcs11 makes the key in the service's
// SoftHSM token; get shows it; it signs and the signature verifies.
func TestCreateInToken(t *testing.T) {
	b := softhsmtest.OpenNewToken(t)
	srv := servicetest.StartWithVault(t, service.Options{}, keyvault.WithBackend(b))

	out := mustCtl(t, srv, nil, "create", "-backend", "pkcs11", "-algorithm", "rsa2048", "ctl-hsm")
	assert.Contains(t, out, "version 1\trsa_2048\tenabled\tin pkcs11")
	assert.Contains(t, mustCtl(t, srv, nil, "get", "ctl-hsm"), "in pkcs11")
	msg := filepath.Join(t.TempDir(), "msg")
	sig := filepath.Join(t.TempDir(), "sig")
	require.NoError(t, os.WriteFile(msg, []byte("signed in the token"), 0o600))
	mustCtl(t, srv, nil, "sign", "-scheme", "rsa_pss_rsae_sha256", "-in", msg, "-o", sig, "ctl-hsm")
	assert.Contains(t, mustCtl(t, srv, nil, "verify", "-scheme", "rsa_pss_rsae_sha256", "-in", msg, "-sig", sig, "ctl-hsm"), "signature OK")
}
