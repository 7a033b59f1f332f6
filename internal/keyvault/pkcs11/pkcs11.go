//go:build pkcs11

// Package pkcs11 is the vault's PKCS #11 key backend: private keys are
// generated inside a token (an HSM; SoftHSM in tests) as sensitive and
// non-extractable, and the vault's store holds only their handle, an RFC
// 7512 URI. It also wraps the vault's key-encryption key under a key of the
// token, so that no plaintext KEK is on disk (an HSM-held KEK).
//
// It needs cgo (the module is a C library, loaded with dlopen), so it is
// built only with the pkcs11 build tag; the default build stays static and
// cgo-free.
package pkcs11

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"

	"github.com/miekg/pkcs11"
)

// Config says which token to use and how to log in.
type Config struct {
	// Module is the path of the token's PKCS #11 library, e.g.
	// /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so.
	Module string
	// TokenLabel selects the token by its label. If empty, Slot does.
	TokenLabel string
	// Slot selects the token by slot ID when TokenLabel is empty.
	Slot uint
	// PIN is the user PIN. Read it from a file or the environment, never a
	// command-line flag (which every user of the host sees in ps).
	PIN string
	// Sessions caps the pooled sessions (default 8): concurrent operations
	// each take one, so they do not serialise on a single session.
	Sessions int
}

// String and GoString describe the configuration without its PIN, so that a
// Config in a log line, an error or a panic (%v, %+v, %#v) does not give
// the PIN away; LogValue does the same for log/slog.
func (c Config) String() string {
	pin := "none"
	if c.PIN != "" {
		pin = "redacted"
	}
	return fmt.Sprintf("pkcs11.Config{Module: %q, TokenLabel: %q, Slot: %d, PIN: %s, Sessions: %d}", c.Module, c.TokenLabel, c.Slot, pin, c.Sessions)
}

// GoString is String, for %#v.
func (c Config) GoString() string { return c.String() }

// LogValue is String, for log/slog.
func (c Config) LogValue() slog.Value { return slog.StringValue(c.String()) }

const defaultSessions = 8

// Backend is a keyvault.KeyBackend whose keys live in one PKCS #11 token.
// It is safe for concurrent use.
type Backend struct {
	mod   *module
	slot  uint
	token string // the token's label, for URIs

	// sessions holds idle sessions; slots bounds how many exist. Idle
	// sessions stay open until Close, so the login (which belongs to the
	// application, not one session) lasts.
	sessions chan pkcs11.SessionHandle
	slots    chan struct{}

	// pin logs a new session in again when the token ended the
	// application's login (it closed every session: C_CloseAllSessions,
	// a token or HSM-cluster failover). Never logged, never in an error.
	pin string

	mu     sync.Mutex
	closed bool
	open   []pkcs11.SessionHandle // every session open, to close them in Close
}

// String and GoString name the backend's token without the PIN it keeps,
// so that a Backend printed by fmt (%v, %+v, %#v) does not give it away;
// LogValue does the same for log/slog.
func (b *Backend) String() string {
	return fmt.Sprintf("pkcs11.Backend{Token: %q, Slot: %d}", b.token, b.slot)
}

// GoString is String, for %#v.
func (b *Backend) GoString() string { return b.String() }

// LogValue is String, for log/slog.
func (b *Backend) LogValue() slog.Value { return slog.StringValue(b.String()) }

// Open loads the module, finds the token and logs in.
func Open(cfg Config) (*Backend, error) {
	if cfg.Module == "" {
		return nil, errors.New("pkcs11: no module path")
	}
	if cfg.PIN == "" {
		return nil, errors.New("pkcs11: no user PIN")
	}
	n := cfg.Sessions
	if n <= 0 {
		n = defaultSessions
	}
	mod, err := loadModule(cfg.Module)
	if err != nil {
		return nil, err
	}
	b := &Backend{mod: mod, pin: cfg.PIN, sessions: make(chan pkcs11.SessionHandle, n), slots: make(chan struct{}, n)}
	if err := b.findToken(cfg); err != nil {
		mod.release()
		return nil, err
	}
	sh, err := b.newSession()
	if err != nil {
		b.Close()
		return nil, err
	}
	b.slots <- struct{}{}
	b.sessions <- sh
	return b, nil
}

func (b *Backend) findToken(cfg Config) error {
	slots, err := b.mod.ctx.GetSlotList(true)
	if err != nil {
		return fmt.Errorf("pkcs11: list slots: %w", err)
	}
	for _, slot := range slots {
		info, err := b.mod.ctx.GetTokenInfo(slot)
		if err != nil {
			continue
		}
		if cfg.TokenLabel != "" && info.Label == cfg.TokenLabel || cfg.TokenLabel == "" && slot == cfg.Slot {
			b.slot, b.token = slot, info.Label
			return nil
		}
	}
	if cfg.TokenLabel != "" {
		return fmt.Errorf("pkcs11: no token labelled %q in %s", cfg.TokenLabel, cfg.Module)
	}
	return fmt.Errorf("pkcs11: no token in slot %d of %s", cfg.Slot, cfg.Module)
}

// newSession opens a session, logged in: the login belongs to the
// application (PKCS #11 v2.40, Section 5.6), so only the first session
// and one opened after the token ended every session need C_Login.
func (b *Backend) newSession() (pkcs11.SessionHandle, error) {
	sh, err := b.mod.ctx.OpenSession(b.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		return 0, fmt.Errorf("pkcs11: open a session on token %q: %w", b.token, err)
	}
	info, err := b.mod.ctx.GetSessionInfo(sh)
	if err == nil && info.State != pkcs11.CKS_RW_USER_FUNCTIONS {
		if err = b.mod.ctx.Login(sh, pkcs11.CKU_USER, b.pin); errors.Is(err, pkcs11.Error(pkcs11.CKR_USER_ALREADY_LOGGED_IN)) {
			err = nil
		}
	}
	if err != nil {
		b.mod.ctx.CloseSession(sh)
		// The error is the token's code (CKR_PIN_INCORRECT, ...), never the PIN.
		return 0, fmt.Errorf("pkcs11: log in to token %q: %w", b.token, err)
	}
	b.mu.Lock()
	b.open = append(b.open, sh)
	b.mu.Unlock()
	return sh, nil
}

var errClosed = errors.New("pkcs11: the backend is closed")

// withSession runs fn with a session of the pool: an idle one, or a new one
// while fewer than Config.Sessions exist, or the first to come back. A
// session the token no longer knows leaves the pool, and fn runs again: the
// token refused the call before doing anything. When the token ended every
// session, the other idle ones are as dead: fn runs again on each, at most
// once per session the pool can hold, and then on a new session.
func (b *Backend) withSession(ctx context.Context, fn func(pkcs11.SessionHandle) error) error {
	for tries := 0; ; tries++ {
		sh, err := b.session(ctx)
		if err != nil {
			return err
		}
		err = fn(sh)
		if !sessionLost(err) {
			b.sessions <- sh
			return err
		}
		b.drop(sh)
		if tries == cap(b.slots) {
			return err
		}
	}
}

func (b *Backend) session(ctx context.Context) (pkcs11.SessionHandle, error) {
	var sh pkcs11.SessionHandle
	select {
	case sh = <-b.sessions:
	default:
		select {
		case sh = <-b.sessions:
		case b.slots <- struct{}{}:
			var err error
			if sh, err = b.newSession(); err != nil {
				<-b.slots
				return 0, err
			}
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	b.mu.Lock()
	closed := b.closed
	b.mu.Unlock()
	if closed {
		b.sessions <- sh
		return 0, errClosed
	}
	return sh, nil
}

// sessionLost reports whether err says the session is gone (closed by the
// token or another caller in the process, or logged out with it), so that
// it must not go back to the pool, where every later call would fail.
func sessionLost(err error) bool {
	for _, code := range []uint{pkcs11.CKR_SESSION_HANDLE_INVALID, pkcs11.CKR_SESSION_CLOSED, pkcs11.CKR_USER_NOT_LOGGED_IN} {
		if errors.Is(err, pkcs11.Error(code)) {
			return true
		}
	}
	return false
}

// drop closes a lost session (best effort: the token may have closed it)
// and frees its place in the pool.
func (b *Backend) drop(sh pkcs11.SessionHandle) {
	b.mod.ctx.CloseSession(sh)
	b.mu.Lock()
	b.open = slices.DeleteFunc(b.open, func(o pkcs11.SessionHandle) bool { return o == sh })
	b.mu.Unlock()
	<-b.slots
}

// Close closes the sessions, logging out, and releases the module. Keys
// loaded from the backend stop working.
func (b *Backend) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	open := b.open
	b.mu.Unlock()
	var errs []error
	for _, sh := range open {
		if err := b.mod.ctx.CloseSession(sh); err != nil {
			errs = append(errs, err)
		}
	}
	b.mod.release()
	return errors.Join(errs...)
}

// module is a loaded PKCS #11 library. C_Initialize and C_Finalize belong
// to the process, not to one caller, so backends on the same library share
// one, and the last to close finalises it.
type module struct {
	path string
	ctx  *pkcs11.Ctx
	refs int
}

var (
	modulesMu sync.Mutex
	modules   = make(map[string]*module)
)

func loadModule(path string) (*module, error) {
	modulesMu.Lock()
	defer modulesMu.Unlock()
	if m, ok := modules[path]; ok {
		m.refs++
		return m, nil
	}
	ctx := pkcs11.New(path)
	if ctx == nil {
		return nil, fmt.Errorf("pkcs11: cannot load module %s", path)
	}
	if err := ctx.Initialize(); err != nil {
		ctx.Destroy()
		return nil, fmt.Errorf("pkcs11: initialise %s: %w", path, err)
	}
	m := &module{path: path, ctx: ctx, refs: 1}
	modules[path] = m
	return m, nil
}

func (m *module) release() {
	modulesMu.Lock()
	defer modulesMu.Unlock()
	if m.refs--; m.refs > 0 {
		return
	}
	delete(modules, m.path)
	m.ctx.Finalize()
	m.ctx.Destroy()
}
