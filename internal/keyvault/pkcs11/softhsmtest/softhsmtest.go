//go:build pkcs11

// Package softhsmtest gives tests a real SoftHSM2 token: one per test
// binary (Main, Config, Open), initialised in a directory of its own and
// removed after the run, or one per test for a process the test starts
// (NewToken). SoftHSM reads its configuration once per process
// (C_Initialize), so every test of a package shares the first.
package softhsmtest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/handshaked/handshaked/internal/keyvault/pkcs11"
	"github.com/handshaked/handshaked/internal/testenv"
)

// The token's label and PINs: test values, in a throwaway token.
const (
	TokenLabel = "handshaked-test"
	PIN        = "7531"
	soPIN      = "8642"
)

// moduleCandidates are where Debian and other distributions install
// SoftHSM2's PKCS #11 module; $SOFTHSM2_MODULE comes first.
var moduleCandidates = []string{
	"/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib/softhsm/libsofthsm2.so",
	"/usr/lib64/softhsm/libsofthsm2.so",
	"/usr/local/lib/softhsm/libsofthsm2.so",
}

var (
	module   string
	setupErr error
)

type runFunc func() int

func (f runFunc) Run() int { return f() }

// Main runs a package's tests as testenv.Main does, with the token set up
// first: os.Exit(softhsmtest.Main(m)) from TestMain.
func Main(m interface{ Run() int }) int {
	return testenv.Main(runFunc(func() int {
		dir, err := os.MkdirTemp("", "softhsm-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "softhsmtest:", err)
			return 1
		}
		defer os.RemoveAll(dir)
		var conf string
		if conf, setupErr = initToken(dir); setupErr == nil {
			setupErr = os.Setenv("SOFTHSM2_CONF", conf)
		}
		return m.Run()
	}))
}

// initToken initialises a token in dir and returns the path of the
// SoftHSM2 configuration that finds it.
func initToken(dir string) (string, error) {
	for _, c := range append([]string{os.Getenv("SOFTHSM2_MODULE")}, moduleCandidates...) {
		if c != "" {
			if _, err := os.Stat(c); err == nil {
				module = c
				break
			}
		}
	}
	if module == "" {
		return "", fmt.Errorf("no SoftHSM2 module in %v ($SOFTHSM2_MODULE)", moduleCandidates)
	}
	util, err := exec.LookPath("softhsm2-util")
	if err != nil {
		return "", err
	}
	tokens := filepath.Join(dir, "tokens")
	if err := os.Mkdir(tokens, 0o700); err != nil {
		return "", err
	}
	conf := filepath.Join(dir, "softhsm2.conf")
	if err := os.WriteFile(conf, []byte("directories.tokendir = "+tokens+"\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n"), 0o600); err != nil {
		return "", err
	}
	cmd := exec.Command(util, "--init-token", "--free", "--label", TokenLabel, "--so-pin", soPIN, "--pin", PIN)
	cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+conf)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("softhsm2-util --init-token: %v: %s", err, out)
	}
	return conf, nil
}

// NewToken initialises a token of its own in t.TempDir() for a process the
// test starts (SoftHSM reads its configuration per process), and returns
// the SOFTHSM2_CONF value that finds it and its configuration. Skipped, or
// failed in CI, as Config.
func NewToken(t testing.TB) (conf string, cfg pkcs11.Config) {
	t.Helper()
	testenv.LookPath(t, "softhsm2-util")
	conf, err := initToken(t.TempDir())
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("SoftHSM2 is required in CI (.ci/run installs it): %v", err)
		}
		t.Skipf("SoftHSM2 token: %v", err)
	}
	return conf, pkcs11.Config{Module: module, TokenLabel: TokenLabel, PIN: PIN, Sessions: 4}
}

// Config returns the configuration of the package's token. Where SoftHSM2
// is missing the test is skipped, except in CI (CI=true), where .ci/run
// installs it and the test fails.
func Config(t testing.TB) pkcs11.Config {
	t.Helper()
	testenv.LookPath(t, "softhsm2-util")
	if setupErr != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("SoftHSM2 is required in CI (.ci/run installs it): %v", setupErr)
		}
		t.Skipf("SoftHSM2 token: %v", setupErr)
	}
	return pkcs11.Config{Module: module, TokenLabel: TokenLabel, PIN: PIN, Sessions: 4}
}

// Open opens a backend on the package's token, closed when the test ends.
func Open(t testing.TB) *pkcs11.Backend {
	t.Helper()
	b, err := pkcs11.Open(Config(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// OpenNewToken opens a backend on a token of the test's own (NewToken) in
// this process, for a package with no Main-wide token: it points
// SOFTHSM2_CONF at the token for the test (SoftHSM reads it when the module
// is initialised) and closes the backend when the test ends.
func OpenNewToken(t testing.TB) *pkcs11.Backend {
	t.Helper()
	conf, cfg := NewToken(t)
	t.Setenv("SOFTHSM2_CONF", conf)
	b, err := pkcs11.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}
