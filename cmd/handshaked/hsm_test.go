//go:build !pkcs11

package main

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

// TestPKCS11NeedsTheBuildTag: a default (cgo-free) build asked for a token
// says how to get one rather than starting without it.
func TestPKCS11NeedsTheBuildTag(t *testing.T) {
	out := waitExit(t, startProcess(t, t.TempDir(), "-pkcs11-module", "/nonexistent.so", "-pkcs11-token", "t"))
	assert.Contains(t, out, "built without PKCS#11 support; build it with -tags pkcs11")
	out = waitExit(t, startProcess(t, t.TempDir(), "-kek-pkcs11-file", "/nonexistent"))
	assert.Contains(t, out, "need -pkcs11-module")
}
