package main

import (
	"testing"

	"github.com/handshaked/handshaked/internal/configdoc"
)

// TestConfigurationReference: docs/configuration.md lists handshakectl's
// flags, the environment variables of its connection flags and its
// commands as the code defines them (go generate ./internal/configdoc
// rewrites it).
func TestConfigurationReference(t *testing.T) {
	fs, _ := newFlagSet()
	env := map[string]string{}
	for _, f := range connFlags {
		env[f.name] = f.env
	}
	var cmds []string
	for _, c := range commands {
		cmds = append(cmds, c.usage)
	}
	configdoc.Check(t, configdoc.Binary{
		Name:     "handshakectl",
		Flags:    fs,
		Env:      func(name string) string { return env[name] },
		Commands: append(cmds, "version: print the build"),
	})
}
