package service_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/handshaked/handshaked/internal/testenv"
)

// Every slog record this test binary writes (at the default level, Info:
// what the service would print) is also kept as JSON in capturedLogs, so
// checkNoSecrets can look through all of it.
var capturedLogs testenv.Buffer

func init() {
	slog.SetDefault(slog.New(slog.NewMultiHandler(
		slog.NewTextHandler(os.Stderr, nil),
		slog.NewJSONHandler(&capturedLogs, nil),
	)))
}

// secretSet recognizes secret bytes in text: raw, hex or base64 (standard
// or URL alphabet, at any alignment), by any 16-byte run of them.
type secretSet struct {
	mu      sync.Mutex
	windows map[[secretWindow]byte]string
	lines   map[string]string // PEM body lines, matched literally
}

const secretWindow = 16

var secrets = &secretSet{windows: map[[secretWindow]byte]string{}, lines: map[string]string{}}

func (s *secretSet) add(name string, b []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := 0; i+secretWindow <= len(b); i++ {
		s.windows[[secretWindow]byte(b[i:])] = name
	}
}

var fixturesOnce sync.Once

// addFixtures registers every test key's private material: each PEM body
// line, and the private numbers inside (the DER also holds the public key,
// which may legitimately be shown).
func (s *secretSet) addFixtures(t testing.TB) {
	fixturesOnce.Do(func() {
		_, file, _, _ := runtime.Caller(0)
		paths, _ := filepath.Glob(filepath.Join(filepath.Dir(file), "..", "..", "testdata", "keys", "*.pem"))
		if len(paths) == 0 {
			t.Fatal("no fixture keys found")
		}
		for _, p := range paths {
			data, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			name := filepath.Base(p)
			for _, line := range strings.Split(string(data), "\n") {
				if len(line) >= 40 && !strings.HasPrefix(line, "-----") {
					s.mu.Lock()
					s.lines[line] = name
					s.mu.Unlock()
				}
			}
			block, _ := pem.Decode(data)
			if block == nil {
				t.Fatalf("%s: not PEM", name)
			}
			for _, b := range privateParts(block) {
				s.add(name, b)
			}
		}
	})
}

func privateParts(block *pem.Block) [][]byte {
	var key any
	var err error
	switch block.Type {
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	default: // encrypted: its body lines are registered, nothing to parse
		return nil
	}
	if err != nil {
		return nil
	}
	switch k := key.(type) {
	case *rsa.PrivateKey:
		parts := [][]byte{k.D.Bytes(), k.Precomputed.Dp.Bytes(), k.Precomputed.Dq.Bytes(), k.Precomputed.Qinv.Bytes()}
		for _, p := range k.Primes {
			parts = append(parts, p.Bytes())
		}
		return parts
	case *ecdsa.PrivateKey:
		b, _ := k.Bytes()
		return [][]byte{b}
	case ed25519.PrivateKey:
		return [][]byte{k.Seed()}
	}
	return nil
}

var (
	hexRun    = regexp.MustCompile(`[0-9a-fA-F]{32,}`)
	base64Run = regexp.MustCompile(`[A-Za-z0-9+/_-]{22,}`)
)

// find returns the names of the secrets text shows, in any form.
func (s *secretSet) find(text []byte) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	found := map[string]bool{}
	look := func(b []byte) {
		for i := 0; i+secretWindow <= len(b); i++ {
			if name, ok := s.windows[[secretWindow]byte(b[i:])]; ok {
				found[name] = true
			}
		}
	}
	look(text)
	for _, run := range hexRun.FindAll(text, -1) {
		for off := 0; off < 2; off++ {
			r := run[off:]
			b, _ := hex.DecodeString(string(r[:len(r)/2*2]))
			look(b)
		}
	}
	for _, run := range base64Run.FindAll(text, -1) {
		norm := strings.NewReplacer("-", "+", "_", "/").Replace(string(run))
		for off := 0; off < 4 && off < len(norm); off++ {
			r := norm[off:]
			b, _ := base64.StdEncoding.DecodeString(r[:len(r)/4*4])
			look(b)
		}
	}
	for line, name := range s.lines {
		if bytes.Contains(text, []byte(line)) {
			found[name+" (PEM line)"] = true
		}
	}
	var names []string
	for n := range found {
		names = append(names, n)
	}
	return names
}

// checkNoSecrets fails t if any log record written so far by this test
// binary, or any of outputs (audit logs), shows a registered secret.
func checkNoSecrets(t testing.TB, outputs ...[]byte) {
	t.Helper()
	secrets.addFixtures(t)
	logs := capturedLogs.Bytes()
	if names := secrets.find(logs); len(names) > 0 {
		t.Errorf("logs show secrets: %v", names)
	}
	for i, out := range outputs {
		if names := secrets.find(out); len(names) > 0 {
			t.Errorf("output %d shows secrets: %v", i, names)
		}
	}
	t.Logf("checked %d bytes of logs and %d outputs for %d secret windows", len(logs), len(outputs), len(secrets.windows))
}

// TestSecretFinder: the finder itself recognizes a secret in each form, so
// a clean result means something.
func TestSecretFinder(t *testing.T) {
	set := &secretSet{windows: map[[secretWindow]byte]string{}, lines: map[string]string{}}
	secret := []byte("0123456789abcdef-premaster-secret-bytes-48-long!")
	set.add("premaster", secret)
	for name, text := range map[string]string{
		"raw":        "x " + string(secret[5:30]) + " y",
		"hex":        `{"v":"ff` + hex.EncodeToString(secret[3:40]) + `"}`,
		"HEX":        strings.ToUpper("a" + hex.EncodeToString(secret)),
		"base64":     "k=" + base64.StdEncoding.EncodeToString(append([]byte{1}, secret...)),
		"base64url":  "zz" + base64.RawURLEncoding.EncodeToString(append([]byte{1, 2}, secret...)),
		"base64-off": "Q" + base64.StdEncoding.EncodeToString(secret[1:]),
	} {
		if got := set.find([]byte(text)); len(got) != 1 {
			t.Errorf("%s form not recognized in %q", name, text)
		}
	}
	if got := set.find([]byte(hex.EncodeToString(secret[:secretWindow-1]))); len(got) != 0 {
		t.Errorf("a run shorter than a window matched")
	}
	set.lines["MIIEowIBAAKCAQEA0123456789012345678901234567890123456789"] = "key.pem"
	if got := set.find([]byte("log: MIIEowIBAAKCAQEA0123456789012345678901234567890123456789 end")); len(got) != 1 {
		t.Errorf("PEM line not recognized")
	}
}
