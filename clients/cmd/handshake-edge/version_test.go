package main

import (
	"testing"

	"github.com/handshaked/handshaked/internal/buildinfo/buildinfotest"
)

// TestVersion: -version prints the build and exits 0, dialling nothing.
func TestVersion(t *testing.T) {
	buildinfotest.CheckVersion(t, "handshake-edge", nil, []string{"-version"}, []string{"-handshaked", "192.0.2.1:1", "-version"})
}
