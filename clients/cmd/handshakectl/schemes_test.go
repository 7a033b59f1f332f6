package main

import (
	"crypto/sha512"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/service"
	"github.com/handshaked/handshaked/internal/servicetest"
)

// TestSchemeNames: a scheme is named as in the TLS registry or as the proto
// enum, in any case; other names are refused.
func TestSchemeNames(t *testing.T) {
	for name, want := range map[string]uint16{
		"ecdsa_secp256r1_sha256":                  0x0403,
		"ECDSA_SECP521R1_SHA512":                  0x0603,
		"SIGNATURE_SCHEME_ECDSA_SECP521R1_SHA512": 0x0603,
		"rsa_pss_rsae_sha384":                     0x0805,
		"signature_scheme_ed25519":                0x0807,
	} {
		s, err := schemeByName(name)
		if assert.NoError(t, err, name) {
			assert.Equal(t, want, uint16(s.ID), name)
		}
	}
	for _, name := range []string{"", "rsa_pkcs1_sha1", "ecdsa_sha1", "SIGNATURE_SCHEME_UNSPECIFIED", "ed448"} {
		_, err := schemeByName(name)
		assert.Error(t, err, name)
	}
}

// TestP521Commands: a P-521 key is created, signs with
// ecdsa_secp521r1_sha512 over a message and a digest, and its signature
// verifies locally, and not over another message.
func TestP521Commands(t *testing.T) {
	srv := servicetest.Start(t, service.Options{})
	dir := t.TempDir()
	path := func(name string) string { return filepath.Join(dir, name) }
	out := mustCtl(t, srv, nil, "create", "-algorithm", "p521", "ctl-p521")
	assert.Contains(t, out, "version 1\tecdsa_p521\tenabled")

	msg := []byte("signed by P-521")
	require.NoError(t, os.WriteFile(path("msg"), msg, 0o600))
	mustCtl(t, srv, nil, "sign", "-scheme", "ecdsa_secp521r1_sha512", "-in", path("msg"), "-o", path("sig"), "ctl-p521")
	out = mustCtl(t, srv, nil, "verify", "-scheme", "ecdsa_secp521r1_sha512", "-in", path("msg"), "-sig", path("sig"), "ctl-p521")
	assert.Contains(t, out, "signature OK (ctl-p521 version 1, ecdsa_secp521r1_sha512)")
	_, err := ctl(t, srv, []byte("another message"), "verify", "-scheme", "ecdsa_secp521r1_sha512", "-sig", path("sig"), "ctl-p521")
	assert.Error(t, err)

	digest := sha512.Sum512(msg)
	require.NoError(t, os.WriteFile(path("digest"), digest[:], 0o600))
	mustCtl(t, srv, nil, "sign", "-scheme", "ecdsa_secp521r1_sha512", "-digest", "-in", path("digest"), "-o", path("dsig"), "ctl-p521")
	mustCtl(t, srv, nil, "verify", "-scheme", "ecdsa_secp521r1_sha512", "-in", path("msg"), "-sig", path("dsig"), "ctl-p521")
	mustCtl(t, srv, nil, "verify", "-scheme", "ecdsa_secp521r1_sha512", "-digest", "-in", path("digest"), "-sig", path("dsig"), "ctl-p521")
}
