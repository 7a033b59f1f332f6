package main

import (
	"testing"

	"github.com/handshaked/handshaked/internal/buildinfo/buildinfotest"
)

// TestVersion: -version prints the build and exits 0 without using the
// service address it is given (a loopback port nothing listens on).
func TestVersion(t *testing.T) {
	buildinfotest.CheckVersion(t, "handshake-edge", nil, []string{"-version"}, []string{"-handshaked", "127.0.0.1:1", "-version"})
}
