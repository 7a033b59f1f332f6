package main

import (
	"testing"

	"github.com/handshaked/handshaked/internal/buildinfo/buildinfotest"
)

// TestVersion: -version and the version command print the build and exit 0,
// with no valid configuration needed (production mode, no TLS files).
func TestVersion(t *testing.T) {
	buildinfotest.CheckVersion(t, "handshaked", []string{"HANDSHAKED_MODE=production"}, []string{"-version"}, []string{"version"})
}
