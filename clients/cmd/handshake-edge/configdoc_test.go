package main

import (
	"slices"
	"testing"

	"github.com/handshaked/handshaked/internal/configdoc"
	"github.com/handshaked/handshaked/internal/flagenv"
)

// TestConfigurationReference: docs/configuration.md lists every flag of
// handshake-edge and its environment variable as run defines them (go
// generate ./internal/configdoc rewrites it).
func TestConfigurationReference(t *testing.T) {
	fs, _ := newFlagSet(&options{})
	configdoc.Check(t, configdoc.Binary{
		Name:  "handshake-edge",
		Flags: fs,
		Env: func(name string) string {
			if slices.Contains(notFromEnv, name) {
				return ""
			}
			return flagenv.Name(envPrefix, name)
		},
	})
}
