package main

import (
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/testenv"
)

// TestREADMEEdge runs clients/README.md's end-to-end block and then its
// trace block as written, in one shell, in a copy of the source tree:
// go run of the development instance and of handshake-edge in front of it,
// the development certificate fetched over REST, curl in TLS 1.3, TLS 1.2
// with ECDHE and with RSA key exchange, openssl s_client verifying the
// chain, and handshakectl trace narrating curl's handshake. Only the ports
// differ: the service's, which the block leaves at their defaults, come
// from the environment, as every flag's can.
func TestREADMEEdge(t *testing.T) {
	for _, tool := range []string{"bash", "go", "curl", "jq", "openssl"} {
		testenv.LookPath(t, tool)
	}
	readme := filepath.Join("..", "..", "README.md")
	script := testenv.DocBlock(t, readme, "edge") + "\n" + testenv.DocBlock(t, readme, "trace")
	grpc, rest := testenv.FreeAddr(t), testenv.FreeAddr(t)
	const documentedREST = "http://127.0.0.1:7080"
	require.Contains(t, script, documentedREST, "the block fetches the certificate from the documented REST address")
	script = strings.ReplaceAll(script, documentedREST, "http://"+rest)
	for _, port := range []string{":8443", ":9443"} {
		require.Contains(t, script, port, "the blocks' ports")
		script = strings.ReplaceAll(script, port, ":"+strconv.Itoa(testenv.FreePort(t)))
	}
	_, got, err := testenv.RunInClone(t, filepath.Join("..", "..", ".."), script,
		"HANDSHAKED_GRPC_ADDR="+grpc, "HANDSHAKED_HTTP_ADDR="+rest, // go run ./cmd/handshaked
		"HANDSHAKE_EDGE_HANDSHAKED="+grpc, // handshake-edge -handshaked
		"HANDSHAKED_ADDR="+grpc)           // handshakectl -handshaked
	require.NoError(t, err, "the README's end-to-end or trace block failed:\n%s", got)
	for _, want := range []string{
		"TLS version: TLS 1.3",                                // curl's default
		"Cipher suite: TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", // --tls-max 1.2
		"Cipher suite: TLS_RSA_WITH_AES_128_GCM_SHA256",       // --ciphers AES128-GCM-SHA256
		"Verify return code: 0 (ok)",                          // openssl s_client with the chain
		"Key: dev-rsa version 1",                              //
		"COMPLETE after",                                      // handshakectl trace
		"server → client  CertificateVerify",                  // narrated message by message
	} {
		assert.Contains(t, got, want, "the blocks' output")
	}
}

// TestREADMEBenchmarks runs clients/README.md's benchmark commands, each
// benchmark once: they compile, select benchmarks, and those run.
func TestREADMEBenchmarks(t *testing.T) {
	testenv.LookPath(t, "bash")
	testenv.LookPath(t, "go")
	root := filepath.Join("..", "..", "..")
	testenv.RunBenchCommands(t, root, testenv.DocBlock(t, filepath.Join(root, "clients", "README.md"), "benchmarks"))
}
