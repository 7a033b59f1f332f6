package main

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/service"
	"github.com/handshaked/handshaked/internal/servicetest"
)

// TestCreateBackend: create -backend names the key backend; one the service
// has not configured, or an unknown one, is a clear error.
func TestCreateBackend(t *testing.T) {
	srv := servicetest.Start(t, service.Options{})
	out := mustCtl(t, srv, nil, "create", "-backend", "software", "ctl-soft")
	assert.Contains(t, out, "version 1\tecdsa_p256\tenabled\tcreated")
	_, err := ctl(t, srv, nil, "create", "-backend", "pkcs11", "ctl-hsm")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "not configured")
	_, err = ctl(t, srv, nil, "create", "-backend", "tpm", "ctl-tpm")
	assert.ErrorContains(t, err, `unknown backend "tpm"`)
}
