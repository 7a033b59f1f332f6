//go:build pkcs11

package pkcs11_test

import (
	"os"
	"testing"

	"github.com/handshaked/handshaked/internal/keyvault/pkcs11/softhsmtest"
)

func TestMain(m *testing.M) { os.Exit(softhsmtest.Main(m)) }
