package main

import (
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/handshaked/handshaked/internal/keyvault"
	"github.com/handshaked/handshaked/internal/service"
)

// pkcs11PINEnv holds the PKCS #11 user PIN, for deployments that inject
// secrets as environment variables. Like the KEK it is not a flag.
const pkcs11PINEnv = "HANDSHAKED_PKCS11_PIN"

// hsmConfig is the PKCS #11 token's configuration (-pkcs11-*), and where
// the KEK wrapped by the token is kept (-kek-pkcs11-file).
type hsmConfig struct {
	module   string
	token    string
	slot     int // -1: by -pkcs11-token
	pinFile  string
	pin      string // from pkcs11PINEnv
	sessions int
	kekFile  string
}

func registerHSMFlags(fs *flag.FlagSet, h *hsmConfig) {
	fs.StringVar(&h.module, "pkcs11-module", "", "PKCS#11 module (HSM library) for keys created with backend KEY_BACKEND_PKCS11 and the token-wrapped KEK; needs a build with -tags pkcs11")
	fs.StringVar(&h.token, "pkcs11-token", "", "label of the PKCS#11 token to use")
	fs.IntVar(&h.slot, "pkcs11-slot", -1, "slot ID of the PKCS#11 token, instead of -pkcs11-token")
	fs.StringVar(&h.pinFile, "pkcs11-pin-file", "", "file holding the token's user PIN, not world-readable (or $"+pkcs11PINEnv+")")
	fs.IntVar(&h.sessions, "pkcs11-sessions", 8, "PKCS#11 sessions kept open for concurrent key operations")
	fs.StringVar(&h.kekFile, "kek-pkcs11-file", "", "file holding the key-encryption key wrapped by an AES key of the PKCS#11 token (created with a new KEK when the vault is created): no plaintext KEK on disk; instead of -kek-file")
}

// tokenBackend is what the service needs of the PKCS #11 backend; built
// with the pkcs11 tag, hsm_pkcs11.go sets openTokenBackend.
type tokenBackend interface {
	keyvault.KeyBackend
	WrapKEK(ctx context.Context, kek []byte) ([]byte, error)
	UnwrapKEK(ctx context.Context, wrapped []byte) ([]byte, error)
	Close() error
}

var openTokenBackend func(h *hsmConfig) (tokenBackend, error)

// openToken opens the configured PKCS #11 token, or returns nil if none is.
func openToken(cfg *config) (tokenBackend, error) {
	h := &cfg.hsm
	if h.module == "" {
		if h.token != "" || h.slot >= 0 || h.pinFile != "" || h.kekFile != "" {
			return nil, errors.New("the -pkcs11-* and -kek-pkcs11-file settings need -pkcs11-module")
		}
		return nil, nil
	}
	if openTokenBackend == nil {
		return nil, errors.New("-pkcs11-module: this handshaked is built without PKCS#11 support; build it with -tags pkcs11 (it needs cgo)")
	}
	if (h.token == "") == (h.slot < 0) {
		return nil, errors.New("-pkcs11-module needs the token: its label (-pkcs11-token) or its slot ID (-pkcs11-slot), one of them")
	}
	switch {
	case h.pin != "" && h.pinFile != "":
		return nil, fmt.Errorf("the PKCS#11 PIN comes from -pkcs11-pin-file or $%s, not both", pkcs11PINEnv)
	case h.pinFile != "":
		if err := service.CheckPrivateFile("PKCS#11 PIN", h.pinFile); err != nil {
			return nil, err
		}
		data, err := os.ReadFile(h.pinFile)
		if err != nil {
			return nil, fmt.Errorf("PKCS#11 PIN: %w", err)
		}
		h.pin = strings.TrimSpace(string(data))
	case h.pin == "":
		return nil, fmt.Errorf("the PKCS#11 token needs its user PIN: -pkcs11-pin-file or $%s", pkcs11PINEnv)
	}
	b, err := openTokenBackend(h)
	h.pin = ""
	if err != nil {
		return nil, err
	}
	slog.Info("PKCS#11 token open", "module", h.module, "token", h.token, "slot", h.slot, "sessions", h.sessions)
	return b, nil
}

// loadTokenKEK returns the KEK wrapped by the token in -kek-pkcs11-file,
// or, when the vault is being created and the file does not exist, makes a
// new KEK and writes it there wrapped (mode 0600, never overwriting).
func loadTokenKEK(ctx context.Context, cfg *config, token tokenBackend) ([]byte, error) {
	path := cfg.hsm.kekFile
	if cfg.kek != "" || cfg.kekFile != "" {
		return nil, fmt.Errorf("the key-encryption key comes from -kek-pkcs11-file, -kek-file or $%s: only one", kekEnv)
	}
	wrapped, err := os.ReadFile(path)
	if err == nil {
		return token.UnwrapKEK(ctx, wrapped)
	}
	create := cfg.mode == modeDevelopment || cfg.initStore
	if !errors.Is(err, os.ErrNotExist) || !create {
		return nil, fmt.Errorf("token-wrapped key-encryption key: %w", err)
	}
	kek := make([]byte, 32)
	rand.Read(kek)
	if wrapped, err = token.WrapKEK(ctx, kek); err != nil {
		clear(kek)
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err == nil {
		err = writeAndClose(f, wrapped)
	}
	if err != nil {
		clear(kek)
		return nil, fmt.Errorf("token-wrapped key-encryption key %s: %w", path, err)
	}
	slog.Warn("created a new key-encryption key, wrapped by the PKCS#11 token", "file", path, "token", cfg.hsm.token)
	return kek, nil
}

// tokenKEKFile keeps the vault's KEK wrapped by the token in
// -kek-pkcs11-file (keyvault.KEKKeeper): a KEK rotation's new KEK
// replaces the file whole, written beside it and renamed over it, so that
// a start at any moment finds the old KEK or the new one, either of which
// opens the store until the rotation completes.
type tokenKEKFile struct {
	path  string
	token tokenBackend
}

func (f tokenKEKFile) KeepKEK(ctx context.Context, kek []byte) error {
	wrapped, err := f.token.WrapKEK(ctx, kek)
	if err != nil {
		return err
	}
	dir := filepath.Dir(f.path)
	tmp, err := os.CreateTemp(dir, ".kek-pkcs11-*") // mode 0600
	if err != nil {
		return fmt.Errorf("token-wrapped key-encryption key: %w", err)
	}
	defer os.Remove(tmp.Name()) // after a failure; gone once renamed
	if err = writeAndClose(tmp, wrapped); err == nil {
		err = os.Rename(tmp.Name(), f.path)
	}
	if err == nil {
		err = syncDir(dir) // the rename survives a crash too
	}
	if err != nil {
		return fmt.Errorf("token-wrapped key-encryption key %s: %w", f.path, err)
	}
	slog.InfoContext(ctx, "the new key-encryption key is kept wrapped by the PKCS#11 token", "file", f.path, "kek_id", keyvault.KEKID(kek))
	return nil
}

// syncDir makes the entries of directory dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
