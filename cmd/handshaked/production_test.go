package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/audit"
	"github.com/handshaked/handshaked/internal/testenv"
	"github.com/handshaked/handshaked/internal/testpki"
)

func TestConfigPrecedence(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "config.json")
	require.NoError(t, os.WriteFile(file, []byte(`{"mode":"production","tls-cert":"file.crt","tls-key":"file.key","client-ca":"file-ca.pem",
		"policy":"file-policy.json","grpc-addr":"0.0.0.0:1","rate-limit":5,"call-timeout":"3s"}`), 0o600))
	env := map[string]string{"HANDSHAKED_CONFIG": file, "HANDSHAKED_TLS_CERT": "env.crt", "HANDSHAKED_GRPC_ADDR": "0.0.0.0:2", kekEnv: "00"}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	cfg, err := parseConfig([]string{"-grpc-addr", "0.0.0.0:3"}, lookup, io.Discard)
	require.NoError(t, err)
	for name, got := range map[string]any{
		"grpc-addr (flag over env and file)": cfg.grpcAddr, "tls-cert (env over file)": cfg.tlsCert,
		"tls-key (file)": cfg.tlsKey, "mode (file)": cfg.mode, "rate-limit (file)": cfg.rateLimit,
		"call-timeout (file)": cfg.callTimeout, "rate-burst (production default)": cfg.rateBurst,
		"max-in-flight (production default)": cfg.maxInFlight, "audit-log (production default)": cfg.auditLog,
		"kek (environment only)": cfg.kek,
	} {
		want := map[string]any{
			"grpc-addr (flag over env and file)": "0.0.0.0:3", "tls-cert (env over file)": "env.crt",
			"tls-key (file)": "file.key", "mode (file)": modeProduction, "rate-limit (file)": 5.0,
			"call-timeout (file)": 3 * time.Second, "rate-burst (production default)": productionBurst,
			"max-in-flight (production default)": productionMaxInFlight, "audit-log (production default)": "-",
			"kek (environment only)": "00",
		}[name]
		assert.Equal(t, want, got, name)
	}
	none := func(string) (string, bool) { return "", false }
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-mode", "production", "-tls-cert", "a", "-tls-key", "b", "-client-ca", "c"}, "-policy"},
		{[]string{"-tls-cert", "a"}, "production mode"},
		{[]string{"-mode", "staging"}, "-mode"},
		{[]string{"-config", file + ".missing"}, "config"},
		{[]string{"extra"}, "unexpected"},
	} {
		_, err := parseConfig(tc.args, none, io.Discard)
		assert.ErrorContains(t, err, tc.want, "%q", tc.args)
	}
	require.NoError(t, os.WriteFile(file, []byte(`{"polciy":"p.json"}`), 0o600))
	_, err = parseConfig([]string{"-config", file}, none, io.Discard)
	assert.ErrorContains(t, err, "polciy", "misspelt setting")
	cfg, err = parseConfig(nil, none, io.Discard)
	require.NoError(t, err, "development defaults")
	assert.Zero(t, cfg.rateLimit, "development rate limit")
	assert.Empty(t, cfg.auditLog, "development audit log")
}

// prodSetup is a production configuration in a temporary directory.
type prodSetup struct {
	dir, dataDir                             string
	cert, key, ca, policy, kekFile, auditLog string
	kekHex                                   string
	clientCA                                 *testpki.CA
	serverCA                                 *testpki.CA
	admin, edge                              *testpki.Leaf
}

var (
	pkiOnce           sync.Once
	pkiCA             *testpki.CA
	pkiServer         *testpki.Leaf
	pkiAdmin, pkiEdge *testpki.Leaf
	pkiErr            error
)

func newProdSetup(t *testing.T) *prodSetup {
	t.Helper()
	pkiOnce.Do(func() {
		if pkiCA, pkiErr = testpki.NewCA("cmd test CA"); pkiErr != nil {
			return
		}
		if pkiServer, pkiErr = pkiCA.Server(); pkiErr != nil {
			return
		}
		if pkiAdmin, pkiErr = pkiCA.Client("spiffe://test/admin", false, time.Now().Add(time.Hour)); pkiErr != nil {
			return
		}
		pkiEdge, pkiErr = pkiCA.Client("edge.test", true, time.Now().Add(time.Hour))
	})
	require.NoError(t, pkiErr)
	dir := t.TempDir()
	kek := make([]byte, 32)
	rand.Read(kek)
	s := &prodSetup{dir: dir, dataDir: filepath.Join(dir, "data"), cert: filepath.Join(dir, "tls.crt"), key: filepath.Join(dir, "tls.key"),
		ca: filepath.Join(dir, "ca.pem"), policy: filepath.Join(dir, "policy.json"), kekFile: filepath.Join(dir, "kek"),
		auditLog: filepath.Join(dir, "audit.log"), kekHex: hex.EncodeToString(kek),
		clientCA: pkiCA, serverCA: pkiCA, admin: pkiAdmin, edge: pkiEdge}
	for path, f := range map[string]struct {
		data []byte
		mode os.FileMode
	}{
		s.cert: {pkiServer.CertPEM, 0o644}, s.key: {pkiServer.KeyPEM, 0o600}, s.ca: {pkiCA.PEM, 0o644},
		s.policy:  {[]byte(`{"grants":[{"identities":["spiffe://test/admin"],"rights":["admin"]}]}`), 0o644},
		s.kekFile: {[]byte(s.kekHex + "\n"), 0o600},
	} {
		require.NoError(t, os.WriteFile(path, f.data, f.mode))
	}
	return s
}

func (s *prodSetup) args() []string {
	return []string{"-mode", "production", "-tls-cert", s.cert, "-tls-key", s.key, "-client-ca", s.ca,
		"-policy", s.policy, "-kek-file", s.kekFile, "-audit-log", s.auditLog, "-init"}
}

// TestProductionRefusesToStart: each thing production mode insists on,
// missing or unsafe, stops the service with a message naming it.
func TestProductionRefusesToStart(t *testing.T) {
	for _, tc := range []struct {
		name   string
		break_ func(s *prodSetup) []string // returns extra arguments
		want   string
	}{
		{"world-readable TLS key", func(s *prodSetup) []string { os.Chmod(s.key, 0o644); return nil }, "world-readable"},
		{"world-readable KEK", func(s *prodSetup) []string { os.Chmod(s.kekFile, 0o604); return nil }, "world-readable"},
		{"missing CA", func(s *prodSetup) []string { os.Remove(s.ca); return nil }, "client CA bundle"},
		{"empty CA", func(s *prodSetup) []string { os.WriteFile(s.ca, []byte("no certificates here\n"), 0o644); return nil }, "no PEM certificate"},
		{"no KEK", func(s *prodSetup) []string { return []string{"-kek-file", ""} }, "key-encryption key"},
		{"missing policy", func(s *prodSetup) []string { os.Remove(s.policy); return nil }, "policy"},
		{"production flag in development mode", func(s *prodSetup) []string { return []string{"-mode", "development"} }, "production mode"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newProdSetup(t)
			args := append(s.args(), tc.break_(s)...)
			assert.Contains(t, waitExit(t, startProcess(t, s.dataDir, args...)), tc.want, "the refusal names what is wrong")
		})
	}
}

func (s *prodSetup) tlsConfig(leaf *testpki.Leaf) *tls.Config {
	cfg := &tls.Config{RootCAs: s.serverCA.Pool(), ServerName: "localhost"}
	if leaf != nil {
		cfg.Certificates = []tls.Certificate{leaf.TLS}
	}
	return cfg
}

func (s *prodSetup) kv(t *testing.T, addr string, leaf *testpki.Leaf) pb.KeyVaultClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(s.tlsConfig(leaf))))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	return pb.NewKeyVaultClient(conn)
}

// readAudit parses every line of the audit log at path; a line that is not
// an entry, or has a field an entry does not, fails the test.
func readAudit(t *testing.T, path string) []audit.Entry {
	t.Helper()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	var out []audit.Entry
	for line := range strings.Lines(string(data)) {
		dec := json.NewDecoder(strings.NewReader(line))
		dec.DisallowUnknownFields()
		var e audit.Entry
		require.NoError(t, dec.Decode(&e), "audit line %q", line)
		out = append(out, e)
	}
	return out
}

// wantEntry is the audit entry one call must leave.
type wantEntry struct {
	requestID, caller, operation, key, outcome string
}

// requireAudit checks that each call in want left exactly one entry in the
// log at path, by its request id, saying who called what on which key and
// how it ended, when and from where.
func requireAudit(t *testing.T, path string, want ...wantEntry) {
	t.Helper()
	byID := map[string][]audit.Entry{}
	for _, e := range readAudit(t, path) {
		byID[e.RequestID] = append(byID[e.RequestID], e)
	}
	for _, w := range want {
		require.NotEmpty(t, w.requestID, "a call without a request id: %+v", w)
		es := byID[w.requestID]
		require.Len(t, es, 1, "audit entries of request %s (%s)", w.requestID, w.operation)
		e := es[0]
		assert.Equal(t, w, wantEntry{e.RequestID, e.Caller, e.Operation, e.Key, e.Outcome}, "audit entry of request %s", w.requestID)
		assert.WithinDuration(t, time.Now(), e.Time, time.Hour, "time of request %s", w.requestID)
		assert.NotEmpty(t, e.Peer, "peer of request %s", w.requestID)
	}
}

// requestID captures the request id the service returns with a call.
type requestID struct{ md metadata.MD }

func (r *requestID) opt() grpc.CallOption { return grpc.Header(&r.md) }
func (r *requestID) String() string {
	if v := r.md.Get("x-request-id"); len(v) == 1 {
		return v[0]
	}
	return ""
}

// TestProductionInstance runs the binary in production mode configured by
// environment and a config file, with the KEK in the environment: callers
// are identified by certificate, the policy holds, the audit log is 0600,
// and SIGHUP reloads the policy and reopens a rotated audit log.
func TestProductionInstance(t *testing.T) {
	s := newProdSetup(t)
	config := filepath.Join(s.dir, "handshaked.json")
	settings, _ := json.Marshal(map[string]any{"tls-cert": s.cert, "tls-key": s.key, "client-ca": s.ca, "policy": s.policy,
		"audit-log": s.auditLog, "rate-limit": 500})
	require.NoError(t, os.WriteFile(config, settings, 0o600))
	env := []string{"HANDSHAKED_MODE=production", "HANDSHAKED_CONFIG=" + config, kekEnv + "=" + s.kekHex, "HANDSHAKED_INIT=true"}
	p := startProcessEnv(t, s.dataDir, env)
	require.NotEmpty(t, p.grpcAddr, "did not start:\n%s", p.out())
	require.True(t, strings.HasPrefix(p.restURL, "https://"), "REST not over TLS:\n%s", p.out())
	require.NotContains(t, p.out(), "DEVELOPMENT MODE")
	ctx := context.Background()
	admin, edge, anon := s.kv(t, p.grpcAddr, s.admin), s.kv(t, p.grpcAddr, s.edge), s.kv(t, p.grpcAddr, nil)
	var created, denied, anonymous requestID
	_, err := admin.CreateKey(ctx, &pb.CreateKeyRequest{Id: "prod-key", Algorithm: pb.Algorithm_ALGORITHM_ED25519}, created.opt())
	require.NoError(t, err, "admin creates a key")
	sign := &pb.SignRequest{Key: "prod-key", Scheme: pb.SignatureScheme_SIGNATURE_SCHEME_ED25519, Input: &pb.SignRequest_Message{Message: []byte("m")}}
	_, err = edge.Sign(ctx, sign, denied.opt())
	require.Equal(t, codes.PermissionDenied, status.Code(err), "edge signs before its grant: %v", err)
	_, err = anon.Sign(ctx, sign, anonymous.opt())
	require.Equal(t, codes.Unauthenticated, status.Code(err), "anonymous caller: %v", err)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: s.tlsConfig(nil)}}
	resp, err := client.Get(p.restURL + "/v1/keys")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode, "REST without a certificate")
	fi, err := os.Stat(s.auditLog)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), "audit log mode")
	before := []wantEntry{
		{created.String(), "spiffe://test/admin", "KeyVault.CreateKey", "prod-key", "OK"},
		{denied.String(), "edge.test", "KeyVault.Sign", "prod-key", "PERMISSION_DENIED"},
		{anonymous.String(), "", "KeyVault.Sign", "prod-key", "UNAUTHENTICATED"},
		{resp.Header.Get("Grpc-Metadata-X-Request-Id"), "", "KeyVault.ListKeys", "", "UNAUTHENTICATED"},
	}
	requireAudit(t, s.auditLog, before...)

	// SIGHUP: a new grant takes effect and the rotated audit log is
	// reopened.
	require.NoError(t, os.WriteFile(s.policy, []byte(`{"grants":[{"identities":["spiffe://test/admin"],"rights":["admin"]},
		{"identities":["edge.test"],"rights":["use"],"keys":["prod-*"]}]}`), 0o644))
	rotated := s.auditLog + ".1"
	require.NoError(t, os.Rename(s.auditLog, rotated))
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGHUP))
	var signed requestID
	require.Eventually(t, func() bool {
		_, err := edge.Sign(ctx, sign, signed.opt())
		return err == nil
	}, 20*time.Second, 20*time.Millisecond, "grant not in force after SIGHUP:\n%s", p.out())
	// The signature is in the reopened log; what came before stayed in the
	// rotated one.
	requireAudit(t, s.auditLog, wantEntry{signed.String(), "edge.test", "KeyVault.Sign", "prod-key", "OK"})
	requireAudit(t, rotated, before...)
	fi, err = os.Stat(s.auditLog)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), "reopened audit log mode")
	assert.NotContains(t, p.out(), s.kekHex, "the key-encryption key is in the log")
	require.NoError(t, p.cmd.Process.Kill())
	<-p.exited

	// The same store opens with the KEK from a file.
	p = startProcess(t, s.dataDir, s.args()...)
	require.NotEmpty(t, p.grpcAddr, "restart with -kek-file:\n%s", p.out())
	_, err = s.kv(t, p.grpcAddr, s.admin).GetKey(ctx, &pb.GetKeyRequest{Key: "prod-key"})
	require.NoError(t, err, "key after restart")
}

// readmeBlock returns the shell block of the README between two markers.
func readmeBlock(t *testing.T, name string) string {
	t.Helper()
	return testenv.DocBlock(t, filepath.Join("..", "..", "README.md"), name)
}

// TestREADMEMutationCommand runs the README's mutation-testing command as
// written, narrowed to the smallest package and to a dry run (finding the
// mutants, not testing them: a full run takes far too long for the suite).
func TestREADMEMutationCommand(t *testing.T) {
	for _, tool := range []string{"bash", "nice", "go"} {
		testenv.LookPath(t, tool)
	}
	script := readmeBlock(t, "mutation")
	for old, new := range map[string]string{
		"for pkg in authz keyvault service engine;": "for pkg in authz;",
		"gremlins unleash ":                         "gremlins unleash --dry-run ",
	} {
		require.Equal(t, 1, strings.Count(script, old), "the README's mutation command has %q", old)
		script = strings.Replace(script, old, new, 1)
	}
	cmd := exec.Command("bash", "-c", "set -euo pipefail\n"+script)
	cmd.Dir = filepath.Join("..", "..")
	cmd.Env = append(os.Environ(), "TMPDIR="+t.TempDir()) // gremlins' coverage profile and work copies
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "README mutation command:\n%s", out)
	assert.Regexp(t, `RUNNABLE .* at policy\.go:`, string(out), "gremlins found the authz package's mutants")
	assert.Contains(t, string(out), "Dry run completed")
}

// TestREADMEBenchmarks runs the README's command for the service's Go
// benchmarks, each benchmark once: it compiles, selects benchmarks, and
// they run.
func TestREADMEBenchmarks(t *testing.T) {
	testenv.LookPath(t, "bash")
	testenv.LookPath(t, "go")
	testenv.RunBenchCommands(t, filepath.Join("..", ".."), readmeBlock(t, "benchmarks"))
}
