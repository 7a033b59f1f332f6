//go:build openssl

package opensslrsa_test

import (
	"os"
	"testing"

	"github.com/handshaked/handshaked/internal/testenv"
)

// TestMain fails the run when a test leaves files outside its t.TempDir().
func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }
