package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protojson"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/audit"
	"github.com/handshaked/handshaked/internal/authz"
	"github.com/handshaked/handshaked/internal/service"
	"github.com/handshaked/handshaked/internal/servicetest"
	"github.com/handshaked/handshaked/internal/testenv"
	"github.com/handshaked/handshaked/internal/testpki"
)

// runCtl runs handshakectl with exactly args (no connection flags added)
// and returns its standard output, standard error and error.
func runCtl(args ...string) (string, string, error) {
	var stdout, stderr bytes.Buffer
	err := run(context.Background(), args, bytes.NewReader(nil), &stdout, &stderr)
	return stdout.String(), stderr.String(), err
}

// TestHelpExitsZero: -h, for the whole command and for one command, prints
// the usage and exits 0 from the real binary; a mistake exits 1.
func TestHelpExitsZero(t *testing.T) {
	bin := testenv.BuildCommand(t, "handshakectl")
	for _, args := range [][]string{{"-h"}, {"-help"}, {"list", "-h"}, {"get", "-h"}} {
		var stderr bytes.Buffer
		cmd := exec.Command(bin, args...)
		cmd.Stderr = &stderr
		require.NoError(t, cmd.Run(), "handshakectl %v:\n%s", args, stderr.String())
		assert.Contains(t, stderr.String(), "usage: handshakectl", "handshakectl %v", args)
	}
	cmd := exec.Command(bin, "-handshaked", "127.0.0.1:1", "no-such-command")
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	require.ErrorAs(t, err, &exit, "%s", out)
	assert.Equal(t, 1, exit.ExitCode())
	assert.Contains(t, string(out), `handshakectl: unknown command "no-such-command"`)
}

// synopsis is a command's usage as the help prints it, with its optional
// parts ([...]) left out and each placeholder replaced from values: the
// command line a reader of the help would type.
func synopsis(t *testing.T, help, name string, values map[string]string) []string {
	t.Helper()
	for _, line := range strings.Split(help, "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 || strings.TrimSuffix(fields[0], ":") != name {
			continue
		}
		line, _, _ = strings.Cut(strings.TrimSpace(line), ":")
		var args []string
		depth := 0
		for _, f := range strings.Fields(line) {
			depth += strings.Count(f, "[")
			if depth == 0 {
				if v, ok := values[f]; ok {
					f = v
				}
				args = append(args, f)
			}
			depth -= strings.Count(f, "]")
		}
		return args
	}
	require.FailNow(t, "help lists no command "+name, help)
	return nil
}

// TestHelpAgreesWithCommands runs the read commands exactly as the help
// prints them ("list", not "list keys").
func TestHelpAgreesWithCommands(t *testing.T) {
	srv := servicetest.Start(t, service.Options{})
	mustCtl(t, srv, nil, "create", "help-ec")
	_, help, err := runCtl("-h")
	require.ErrorIs(t, err, flag.ErrHelp)
	for _, name := range []string{"list", "get", "public-key"} {
		args := synopsis(t, help, name, map[string]string{"ID": "help-ec"})
		out, err := ctl(t, srv, nil, args...)
		require.NoError(t, err, "handshakectl %v, as the help prints it", args)
		assert.NotEmpty(t, out, "handshakectl %v", args)
	}
}

// TestJSONOutput: -json prints what the REST API answers for the same
// read.
func TestJSONOutput(t *testing.T) {
	srv := servicetest.Start(t, service.Options{})
	mustCtl(t, srv, nil, "create", "-label", "team=edge", "json-ec")
	mustCtl(t, srv, nil, "rotate", "json-ec")
	for _, c := range []struct {
		args []string
		rest string
	}{
		{[]string{"list", "-json"}, "/v1/keys"},
		{[]string{"get", "-json", "json-ec"}, "/v1/keys/json-ec"},
		{[]string{"public-key", "-json", "-version", "1", "json-ec"}, "/v1/keys/json-ec/publicKey?version=1"},
	} {
		out := mustCtl(t, srv, nil, c.args...)
		var got, want any
		require.NoError(t, json.Unmarshal([]byte(out), &got), "handshakectl %v printed %s", c.args, out)
		resp, err := http.Get(srv.RESTURL + c.rest)
		require.NoError(t, err)
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
		require.NoError(t, json.Unmarshal(body, &want))
		assert.Equal(t, want, got, "handshakectl %v against GET %s", c.args, c.rest)
	}
	// And it decodes as the API's own message.
	var k pb.Key
	require.NoError(t, protojson.Unmarshal([]byte(mustCtl(t, srv, nil, "get", "-json", "json-ec")), &k))
	assert.Equal(t, uint32(2), k.GetPrimaryVersion())
	assert.Equal(t, map[string]string{"team": "edge"}, k.GetLabels())
}

// productionServer is a service in production mode whose certificate names
// only serverName (no IP address), with the files a caller needs.
type productionServer struct {
	addr                  string
	ca                    string
	adminCert, adminKey   string
	nobodyCert, nobodyKey string
	// write writes a file of the test's beside the service's, 0600.
	write func(name string, data []byte) string
}

const serverName = "handshaked.test"

func startProduction(t *testing.T) *productionServer {
	t.Helper()
	ca, err := testpki.NewCA("handshakectl test CA")
	require.NoError(t, err)
	server, err := ca.ServerNamed(serverName)
	require.NoError(t, err)
	admin, err := ca.Client("ctl-admin", false, time.Now().Add(time.Hour))
	require.NoError(t, err)
	nobody, err := ca.Client("ctl-nobody", false, time.Now().Add(time.Hour))
	require.NoError(t, err)
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		path := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(path, data, 0o600))
		return path
	}
	files := service.TLSFiles{CertFile: write("server.crt", server.CertPEM), KeyFile: write("server.key", server.KeyPEM), ClientCAFile: write("ca.pem", ca.PEM)}
	policy, err := authz.Open(write("policy.json", []byte(`{"grants": [{"identities": ["ctl-admin"], "rights": ["admin"]}]}`)))
	require.NoError(t, err)
	auditLog, err := audit.Open(filepath.Join(dir, "audit.log"))
	require.NoError(t, err)
	t.Cleanup(func() { auditLog.Close() })
	srv := servicetest.Start(t, service.Options{TLS: &files, Policy: policy, Audit: auditLog, ReloadInterval: -1})
	return &productionServer{addr: srv.GRPCAddr, ca: files.ClientCAFile, write: write,
		adminCert: write("admin.crt", admin.CertPEM), adminKey: write("admin.key", admin.KeyPEM),
		nobodyCert: write("nobody.crt", nobody.CertPEM), nobodyKey: write("nobody.key", nobody.KeyPEM)}
}

// TestConnectionFromEnvironment: the connection flags come from
// HANDSHAKED_* variables, a flag on the command line wins over its
// variable, and -server-name (or its variable) names the service's
// certificate when the address is an IP address it does not carry.
func TestConnectionFromEnvironment(t *testing.T) {
	p := startProduction(t)
	t.Setenv("HANDSHAKED_ADDR", p.addr)
	t.Setenv("HANDSHAKED_CA", p.ca)
	t.Setenv("HANDSHAKED_CERT", p.adminCert)
	t.Setenv("HANDSHAKED_KEY", p.adminKey)
	t.Setenv("HANDSHAKED_SERVER_NAME", serverName)

	out, _, err := runCtl("create", "env-ec")
	require.NoError(t, err, "create with the connection from the environment")
	assert.Contains(t, out, "env-ec\tprimary version 1")
	out, _, err = runCtl("-server-name", serverName, "list")
	require.NoError(t, err)
	assert.Contains(t, out, "env-ec\tprimary version 1")

	// The flags win: another identity, refused in plain words.
	_, _, err = runCtl("-cert", p.nobodyCert, "-key", p.nobodyKey, "get", "env-ec")
	require.Error(t, err)
	assert.Contains(t, plainError(err), "permission denied: ")
	// Without the server name the certificate does not match the address.
	_, _, err = runCtl("-server-name", "", "list")
	require.Error(t, err)
	assert.Contains(t, plainError(err), "unavailable: ")
	assert.Contains(t, plainError(err), "give -server-name")
	// Half a client certificate is a mistake, not a call without one.
	_, _, err = runCtl("-key", "", "list")
	assert.EqualError(t, err, "-cert and -key go together")
}

// TestPlainErrors: errors name the gRPC code in words, once (the vault's
// message ends with them too), never gRPC's own "rpc error: code = ...
// desc = ..." rendering.
func TestPlainErrors(t *testing.T) {
	srv := servicetest.Start(t, service.Options{})
	_, err := ctl(t, srv, nil, "get", "no-such-key")
	require.Error(t, err)
	msg := plainError(err)
	assert.Equal(t, `handshaked: get key no-such-key: not found: keyvault: key "no-such-key"`, msg, "the error names the operation and the key")

	mustCtl(t, srv, nil, "create", "web")
	mustCtl(t, srv, nil, "rotate", "web")
	mustCtl(t, srv, nil, "disable", "web", "1")
	_, err = ctl(t, srv, []byte("hello"), "sign", "-scheme", "ecdsa_secp256r1_sha256", "-version", "1", "web")
	require.Error(t, err)
	assert.Equal(t, `handshaked: sign with web: failed precondition: keyvault: key "web" version 1 is DISABLED`, plainError(err))

	_, _, err = runCtl("-handshaked", "127.0.0.1:1", "-timeout", "2s", "list")
	require.Error(t, err)
	unavailable := plainError(err)
	assert.Contains(t, unavailable, "unavailable: ")
	assert.Contains(t, unavailable, "is handshaked running at that address")

	for _, msg := range []string{msg, unavailable} {
		assert.NotContains(t, msg, "rpc error")
		assert.NotContains(t, msg, "code = ")
	}
	var stderr bytes.Buffer
	assert.Equal(t, 1, report(err, &stderr))
	assert.Equal(t, "handshakectl: "+unavailable+"\n", stderr.String())
	assert.Equal(t, 0, report(nil, &stderr))
	assert.Equal(t, 0, report(errors.Join(flag.ErrHelp), &stderr))
}

// TestRefusedClientCertificate: a client certificate handshaked refuses
// (another CA's) is said to be the likely cause, not the
// address or the transport (which the error, a closed connection after
// the handshake, would otherwise suggest).
func TestRefusedClientCertificate(t *testing.T) {
	p := startProduction(t)
	other, err := testpki.NewCA("another CA")
	require.NoError(t, err)
	foreign, err := other.Client("ctl-admin", false, time.Now().Add(time.Hour))
	require.NoError(t, err)
	write := p.write
	_, _, err = runCtl("-handshaked", p.addr, "-server-name", serverName, "-ca", p.ca,
		"-cert", write("foreign.crt", foreign.CertPEM), "-key", write("foreign.key", foreign.KeyPEM), "-timeout", "5s", "list")
	require.Error(t, err)
	msg := plainError(err)
	assert.Contains(t, msg, "unavailable: ")
	assert.Contains(t, msg, "it refused the client certificate, most likely")
	assert.Contains(t, msg, "-client-ca")
	assert.NotContains(t, msg, "is handshaked running at that address")
}
