package main

import (
	"testing"

	"github.com/handshaked/handshaked/internal/buildinfo/buildinfotest"
)

// TestVersion: -version and the version command print the build and exit 0,
// dialling nothing.
func TestVersion(t *testing.T) {
	buildinfotest.CheckVersion(t, "handshakectl", nil, []string{"-version"}, []string{"-handshaked", "127.0.0.1:1", "version"})
}
