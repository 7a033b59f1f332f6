package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
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

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/testenv"
	"github.com/handshaked/handshaked/internal/testpki"
)

func TestConfigPrecedence(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "config.json")
	os.WriteFile(file, []byte(`{"mode":"production","tls-cert":"file.crt","tls-key":"file.key","client-ca":"file-ca.pem",
		"policy":"file-policy.json","grpc-addr":"0.0.0.0:1","rate-limit":5,"call-timeout":"3s"}`), 0o600)
	env := map[string]string{"HANDSHAKED_CONFIG": file, "HANDSHAKED_TLS_CERT": "env.crt", "HANDSHAKED_GRPC_ADDR": "0.0.0.0:2", kekEnv: "00"}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	cfg, err := parseConfig([]string{"-grpc-addr", "0.0.0.0:3"}, lookup, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
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
		if got != want {
			t.Errorf("%s: %v, want %v", name, got, want)
		}
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
		if _, err := parseConfig(tc.args, none, io.Discard); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want an error with %q", tc.args, err, tc.want)
		}
	}
	os.WriteFile(file, []byte(`{"polciy":"p.json"}`), 0o600)
	if _, err := parseConfig([]string{"-config", file}, none, io.Discard); err == nil || !strings.Contains(err.Error(), "polciy") {
		t.Errorf("misspelt setting: %v", err)
	}
	if cfg, err := parseConfig(nil, none, io.Discard); err != nil || cfg.rateLimit != 0 || cfg.auditLog != "" {
		t.Errorf("development defaults: %+v %v", cfg, err)
	}
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
	if pkiErr != nil {
		t.Fatal(pkiErr)
	}
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
		if err := os.WriteFile(path, f.data, f.mode); err != nil {
			t.Fatal(err)
		}
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
			if out := waitExit(t, startProcess(t, s.dataDir, args...)); !strings.Contains(out, tc.want) {
				t.Fatalf("refusal does not say %q:\n%s", tc.want, out)
			}
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
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pb.NewKeyVaultClient(conn)
}

func auditOperations(t *testing.T, path string) []map[string]any {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		if line == "" {
			continue
		}
		var e map[string]any
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("audit line %q: %v", line, err)
		}
		out = append(out, e)
	}
	return out
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
	os.WriteFile(config, settings, 0o600)
	env := []string{"HANDSHAKED_MODE=production", "HANDSHAKED_CONFIG=" + config, kekEnv + "=" + s.kekHex, "HANDSHAKED_INIT=true"}
	p := startProcessEnv(t, s.dataDir, env)
	if p.grpcAddr == "" {
		t.Fatalf("did not start:\n%s", p.out())
	}
	if !strings.HasPrefix(p.restURL, "https://") || strings.Contains(p.out(), "DEVELOPMENT MODE") {
		t.Fatalf("not in production mode:\n%s", p.out())
	}
	ctx := context.Background()
	admin, edge, anon := s.kv(t, p.grpcAddr, s.admin), s.kv(t, p.grpcAddr, s.edge), s.kv(t, p.grpcAddr, nil)
	if _, err := admin.CreateKey(ctx, &pb.CreateKeyRequest{Id: "prod-key", Algorithm: pb.Algorithm_ALGORITHM_ED25519}); err != nil {
		t.Fatalf("admin creates a key: %v", err)
	}
	sign := &pb.SignRequest{Key: "prod-key", Scheme: pb.SignatureScheme_SIGNATURE_SCHEME_ED25519, Input: &pb.SignRequest_Message{Message: []byte("m")}}
	if _, err := edge.Sign(ctx, sign); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("edge signs before its grant: %v", err)
	}
	if _, err := anon.Sign(ctx, sign); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("anonymous caller: %v", err)
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: s.tlsConfig(nil)}}
	resp, err := client.Get(p.restURL + "/v1/keys")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("REST without a certificate: %d", resp.StatusCode)
	}
	fi, err := os.Stat(s.auditLog)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("audit log: %v %v", fi, err)
	}
	if n := len(auditOperations(t, s.auditLog)); n < 4 {
		t.Fatalf("%d audit entries for 4 calls", n)
	}

	// SIGHUP: a new grant takes effect and the rotated audit log is
	// reopened.
	os.WriteFile(s.policy, []byte(`{"grants":[{"identities":["spiffe://test/admin"],"rights":["admin"]},
		{"identities":["edge.test"],"rights":["use"],"keys":["prod-*"]}]}`), 0o644)
	os.Rename(s.auditLog, s.auditLog+".1")
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, err := edge.Sign(ctx, sign)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("grant not in force after SIGHUP: %v\n%s", err, p.out())
		}
		time.Sleep(20 * time.Millisecond)
	}
	var signed bool
	for _, e := range auditOperations(t, s.auditLog) {
		signed = signed || e["operation"] == "KeyVault.Sign" && e["caller"] == "edge.test" && e["outcome"] == "OK"
	}
	if !signed {
		t.Fatal("the reopened audit log lacks the edge's signature")
	}
	if fi, err := os.Stat(s.auditLog); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("reopened audit log: %v %v", fi, err)
	}
	if strings.Contains(p.out(), s.kekHex) {
		t.Fatal("the key-encryption key is in the log")
	}
	p.cmd.Process.Kill()
	<-p.exited

	// The same store opens with the KEK from a file.
	p = startProcess(t, s.dataDir, s.args()...)
	if p.grpcAddr == "" {
		t.Fatalf("restart with -kek-file:\n%s", p.out())
	}
	if _, err := s.kv(t, p.grpcAddr, s.admin).GetKey(ctx, &pb.GetKeyRequest{Key: "prod-key"}); err != nil {
		t.Fatalf("key after restart: %v", err)
	}
}

// readmeBlock returns the shell block of the README between two markers.
func readmeBlock(t *testing.T, name string) string {
	t.Helper()
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(readme), "<!-- "+name+":begin -->")
	block, _, ok2 := strings.Cut(rest, "<!-- "+name+":end -->")
	if !ok || !ok2 {
		t.Fatalf("README has no %s block", name)
	}
	block = strings.TrimSpace(block)
	block = strings.TrimPrefix(block, "```sh")
	return strings.TrimSuffix(block, "```")
}

// TestREADMECertificates runs the README's openssl commands verbatim, starts
// a production instance with what they make, and calls it as the caller
// they certify, with the README's curl command.
func TestREADMECertificates(t *testing.T) {
	for _, tool := range []string{"bash", "openssl", "curl"} {
		testenv.LookPath(t, tool)
	}
	dir := t.TempDir()
	cmd := exec.Command("bash", "-c", "set -euo pipefail\n"+readmeBlock(t, "certificates"))
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("README certificate commands: %v\n%s", err, out)
	}
	policy := filepath.Join(dir, "policy.json")
	os.WriteFile(policy, []byte(`{"grants":[{"identities":["spiffe://example.org/edge"],"rights":["use","manage"],"keys":["web-*"]}]}`), 0o644)
	in := func(name string) string { return filepath.Join(dir, name) }
	p := startProcess(t, in("data"), "-mode", "production", "-tls-cert", in("tls.crt"), "-tls-key", in("tls.key"),
		"-client-ca", in("clients-ca.pem"), "-policy", policy, "-kek-file", in("kek"), "-audit-log", in("audit.log"), "-init")
	if p.grpcAddr == "" {
		t.Fatalf("did not start with the README's files:\n%s", p.out())
	}
	leaf, err := tls.LoadX509KeyPair(in("edge.crt"), in("edge.key"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(readFileT(t, in("clients-ca.pem")))
	conn, err := grpc.NewClient(p.grpcAddr, grpc.WithTransportCredentials(credentials.NewTLS(
		&tls.Config{RootCAs: roots, ServerName: "handshaked.example.org", Certificates: []tls.Certificate{leaf}})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := pb.NewKeyVaultClient(conn).CreateKey(context.Background(), &pb.CreateKeyRequest{Id: "web-ec", Algorithm: pb.Algorithm_ALGORITHM_ECDSA_P256}); err != nil {
		t.Fatalf("the README's caller creates web-ec: %v", err)
	}
	// The README's curl call, pointed at this instance.
	_, port, _ := strings.Cut(strings.TrimPrefix(p.restURL, "https://"), ":")
	call := readmeCurl(t)
	call = strings.Replace(call, "handshaked.example.org:7443", "handshaked.example.org:"+port, 1)
	call = strings.Replace(call, "curl ", "curl -fsS --resolve handshaked.example.org:"+port+":127.0.0.1 ", 1)
	cmd = exec.Command("bash", "-c", call)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), `"signature"`) {
		t.Fatalf("README curl call: %v\n%s\nserver:\n%s", err, out, p.out())
	}
}

// readmeCurl is the curl call that follows the certificates block.
func readmeCurl(t *testing.T) string {
	t.Helper()
	readme, _ := os.ReadFile(filepath.Join("..", "..", "README.md"))
	_, rest, _ := strings.Cut(string(readme), "<!-- certificates:end -->")
	_, rest, ok := strings.Cut(rest, "```sh\n")
	call, _, ok2 := strings.Cut(rest, "```")
	if !ok || !ok2 || !strings.HasPrefix(call, "curl ") {
		t.Fatalf("no curl call after the certificates block: %q", call)
	}
	return call
}

func readFileT(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
