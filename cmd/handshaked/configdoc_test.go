package main

import (
	"io"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/configdoc"
)

// TestConfigurationReference: docs/configuration.md lists every setting of
// handshaked as the flag set parsed by parseConfig defines it (go generate
// ./internal/configdoc rewrites it).
func TestConfigurationReference(t *testing.T) {
	cfg, err := parseConfig(nil, func(string) (string, bool) { return "", false }, io.Discard)
	require.NoError(t, err)
	configdoc.Check(t, configdoc.Binary{
		Name:  "handshaked",
		Flags: cfg.flags,
		Env: func(name string) string {
			if slices.Contains(notFromEnvOrFile, name) {
				return ""
			}
			return envName(name)
		},
		FileKey: func(name string) string {
			if slices.Contains(notFromFile, name) {
				return ""
			}
			return name
		},
		MoreEnv: []configdoc.Var{
			{Name: kekEnv, Usage: "the key-encryption key itself, 64 hex digits, instead of -kek-file (never a flag: a command line is visible to every user of the host); unset from the process's environment once read"},
			{Name: pkcs11PINEnv, Usage: "the PKCS#11 token's user PIN, instead of -pkcs11-pin-file (never a flag); unset from the process's environment once read"},
			{Name: "OTEL_EXPORTER_OTLP_HEADERS, OTEL_EXPORTER_OTLP_TIMEOUT, OTEL_EXPORTER_OTLP_COMPRESSION (and their OTEL_EXPORTER_OTLP_TRACES_ forms)", Usage: "read by the OpenTelemetry OTLP exporter when -otlp-endpoint turns tracing on; the flags decide the endpoint and its TLS"},
		},
	})
}
