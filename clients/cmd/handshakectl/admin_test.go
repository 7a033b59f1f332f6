package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/keyvault"
	"github.com/handshaked/handshaked/internal/service"
	"github.com/handshaked/handshaked/internal/servicetest"
)

// writeKEKFile writes a new KEK as handshaked's -kek-file holds one.
func writeKEKFile(t *testing.T, path string) []byte {
	t.Helper()
	kek := make([]byte, 32)
	_, err := rand.Read(kek)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(path, []byte(hex.EncodeToString(kek)+"\n"), 0o600))
	return kek
}

// keptKEK keeps a KEK in memory, as handshaked keeps a token-wrapped one
// in its -kek-pkcs11-file.
type keptKEK struct {
	mu  sync.Mutex
	kek []byte
}

func (k *keptKEK) KeepKEK(ctx context.Context, kek []byte) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.kek = bytes.Clone(kek)
	return nil
}

// TestKEKRotateMadeByTheService: kek-rotate without -new-kek-file has a
// service that keeps its KEK itself (a token-wrapped KEK) make the new
// one, and says where it is kept; a service that does not keep its KEK
// refuses in plain words.
func TestKEKRotateMadeByTheService(t *testing.T) {
	keeper := &keptKEK{}
	srv := servicetest.StartWithVault(t, service.Options{}, keyvault.WithKEKKeeper(keeper))
	mustCtl(t, srv, nil, "create", "web")
	out := mustCtl(t, srv, nil, "kek-rotate")
	keeper.mu.Lock()
	kept := bytes.Clone(keeper.kek)
	keeper.mu.Unlock()
	require.Len(t, kept, 32)
	assert.Contains(t, out, "KEK "+keyvault.KEKID(kept))
	assert.Contains(t, out, "wrapped by the token")
	mustCtl(t, srv, []byte("hello"), "sign", "-scheme", "ecdsa_secp256r1_sha256", "web")

	plain := servicetest.Start(t, service.Options{})
	_, err := ctl(t, plain, nil, "kek-rotate")
	require.Error(t, err)
	assert.Contains(t, plainError(err), "failed precondition: ")
	assert.Contains(t, plainError(err), "give the new KEK")
}

// TestAdminCommands: kek-rotate rewraps the vault under the KEK of a file
// and kek-status shows it; backup writes a snapshot that restore loads
// into a fresh service under the same KEK, whose keys then sign; restore
// refuses a tampered snapshot in plain words, and backup never overwrites
// a file.
func TestAdminCommands(t *testing.T) {
	dir := t.TempDir()
	in := func(name string) string { return filepath.Join(dir, name) }
	kek := writeKEKFile(t, in("kek"))
	src := servicetest.Start(t, service.Options{})
	dst := servicetest.Start(t, service.Options{})
	mustCtl(t, src, nil, "create", "web")

	_, err := ctl(t, src, nil, "kek-rotate", "-new-kek-file", in("missing"))
	assert.Error(t, err)
	require.NoError(t, os.WriteFile(in("bad"), []byte("not hex\n"), 0o600))
	_, err = ctl(t, src, nil, "kek-rotate", "-new-kek-file", in("bad"))
	assert.ErrorContains(t, err, "64 hex digits")
	for _, srv := range []*servicetest.Server{src, dst} {
		out := mustCtl(t, srv, nil, "kek-rotate", "-new-kek-file", in("kek"))
		assert.Contains(t, out, "KEK "+keyvault.KEKID(kek))
		assert.Contains(t, out, "opens with the new KEK only")
	}
	assert.Contains(t, mustCtl(t, src, nil, "kek-status"), "KEK "+keyvault.KEKID(kek)+"\t")
	// protojson varies its spacing on purpose: the JSON is decoded.
	var st struct{ KekID string }
	require.NoError(t, json.Unmarshal([]byte(mustCtl(t, src, nil, "kek-status", "-json")), &st))
	assert.Equal(t, keyvault.KEKID(kek), st.KekID)

	out := mustCtl(t, src, nil, "backup", "-o", in("vault.snapshot"))
	assert.Contains(t, out, "written to "+in("vault.snapshot"))
	fi, err := os.Stat(in("vault.snapshot"))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	_, err = ctl(t, src, nil, "backup", "-o", in("vault.snapshot"))
	assert.ErrorContains(t, err, "not overwritten")

	snap, err := os.ReadFile(in("vault.snapshot"))
	require.NoError(t, err)
	snap[len(snap)-40] ^= 1
	require.NoError(t, os.WriteFile(in("tampered.snapshot"), snap, 0o600))
	_, err = ctl(t, dst, nil, "restore", in("tampered.snapshot"))
	require.Error(t, err)
	assert.Contains(t, plainError(err), "invalid argument: ")
	assert.Contains(t, plainError(err), "altered or truncated")

	out = mustCtl(t, dst, nil, "restore", in("vault.snapshot"))
	assert.Regexp(t, `^restored 1 key \(\d+ records, \d+ bytes\) under KEK `, out, "one key, in the singular")
	mustCtl(t, dst, []byte("hello"), "sign", "-scheme", "ecdsa_secp256r1_sha256", "web")
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	assert.Len(t, entries, 4, "kek, bad, the snapshot and the tampered one: no temporary file left")
}
