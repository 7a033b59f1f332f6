package keyvault

import (
	"os"
	"testing"

	"github.com/handshaked/handshaked/internal/testenv"
)

// TestMain fails the run when a test leaves files outside its t.TempDir().
// Started by a crash test as its child, the test binary instead runs the
// vault under load until it is killed (rotationChild).
func TestMain(m *testing.M) {
	if os.Getenv(rotationChildEnv) != "" {
		os.Exit(rotationChild())
	}
	os.Exit(testenv.Main(m))
}
