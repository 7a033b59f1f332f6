package keyvault

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"math/big"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/testenv"
)

// populateWithChain is populate plus a certificate chain on web's version 2
// and a disabled version.
func populateWithChain(t *testing.T, v *Vault) {
	t.Helper()
	populate(t, v)
	der, err := v.CreateSelfSignedCertificate(ctx, "web", 2, &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "web.example"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
	})
	require.NoError(t, err)
	_, err = v.AttachChain(ctx, "web", 2, [][]byte{der})
	require.NoError(t, err)
	_, err = v.SetVersionEnabled(ctx, "web", 1, false)
	require.NoError(t, err)
}

func backup(t *testing.T, v *Vault) []byte {
	t.Helper()
	var buf bytes.Buffer
	info, err := v.Backup(ctx, &buf)
	require.NoError(t, err)
	assert.Equal(t, int64(buf.Len()), info.Bytes)
	return buf.Bytes()
}

// freshVault is a new vault under kek, in a store of its own.
func freshVault(t *testing.T, kek []byte) (*Vault, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "fresh.db")
	return openTestVault(t, path, kek), path
}

func allKeys(t *testing.T, v *Vault) []*Key {
	t.Helper()
	keys, next, err := v.List(ctx, 1000, "")
	require.NoError(t, err)
	require.Empty(t, next)
	return keys
}

// TestBackupRestore: a snapshot restored into a fresh instance under the
// same KEK brings back every key, version, state, label and chain; the
// restored keys sign; the store holds them across a restart; and a second
// restore into the now populated instance is refused.
func TestBackupRestore(t *testing.T) {
	kek := newKEK(t)
	src, _ := freshVault(t, kek)
	populateWithChain(t, src)
	snap := backup(t, src)

	dst, dstPath := freshVault(t, kek)
	info, err := dst.Restore(ctx, bytes.NewReader(snap))
	require.NoError(t, err)
	src.writeMu.Lock()
	buckets := len(src.buckets) // the snapshot's
	src.writeMu.Unlock()
	require.NotZero(t, buckets)
	assert.Equal(t, SnapshotInfo{KEKID: KEKID(kek), Records: 1 + 1 + buckets + 3 + 5 + 4, Keys: 3, Bytes: int64(len(snap))}, info,
		"check, manifest, its buckets, 3 key records, 5 versions, 4 private keys (one version destroyed)")
	assert.Equal(t, allKeys(t, src), allKeys(t, dst), "the restored keys, versions, states, labels and chains")
	signOK(t, dst, "web", 2)
	signEd25519(t, dst, "ed")
	_, err = dst.Sign(ctx, "web", 1, 0x0403, []byte("m"), false)
	assert.ErrorIs(t, err, ErrFailedPrecondition, "the disabled version stays disabled")

	_, err = dst.Restore(ctx, bytes.NewReader(snap))
	assert.ErrorIs(t, err, ErrFailedPrecondition, "a restore into an instance holding keys")
	require.NoError(t, dst.Close())
	reopened := openTestVault(t, dstPath, kek)
	assert.Equal(t, allKeys(t, src), allKeys(t, reopened), "the restore is in the store")
	_, err = reopened.Create(ctx, "after", Ed25519, nil)
	require.NoError(t, err, "the restored instance takes writes")
}

// TestRestoreRefusesTamperedSnapshots: a snapshot changed anywhere, cut
// short, made under another KEK, or rebuilt by someone holding the KEK
// with a record dropped, is refused with a message that says so, and the
// instance stays fresh.
func TestRestoreRefusesTamperedSnapshots(t *testing.T) {
	kek := newKEK(t)
	src, _ := freshVault(t, kek)
	populateWithChain(t, src)
	snap := backup(t, src)
	dst, _ := freshVault(t, kek)

	flip := func(i int) []byte {
		b := bytes.Clone(snap)
		b[i] ^= 0x20
		return b
	}
	for name, tc := range map[string]struct {
		data []byte
		want string
	}{
		"magic":         {flip(0), "not a handshaked snapshot"},
		"KEK id":        {flip(len(snapshotMagic)), "made under KEK"},
		"record count":  {flip(snapshotHeaderSize - 1), "altered or truncated"},
		"a record":      {flip(len(snap) / 2), "altered or truncated"},
		"the tag":       {flip(len(snap) - 1), "altered or truncated"},
		"truncated":     {snap[:len(snap)-100], "altered or truncated"},
		"cut to header": {snap[:snapshotHeaderSize+5], "truncated"},
		"empty":         {nil, "not a handshaked snapshot"},
		"appended":      {append(bytes.Clone(snap), 0), "altered or truncated"},
	} {
		_, err := dst.Restore(ctx, bytes.NewReader(tc.data))
		require.Error(t, err, name)
		assert.ErrorIs(t, err, ErrSnapshotRefused, name)
		assert.Contains(t, err.Error(), tc.want, name)
	}

	other, _ := freshVault(t, newKEK(t))
	_, err := other.Restore(ctx, bytes.NewReader(snap))
	assert.ErrorIs(t, err, ErrFailedPrecondition, "another KEK")
	assert.Contains(t, err.Error(), "made under KEK "+KEKID(kek))

	// Someone with the KEK drops a record and authenticates the rest: the
	// manifest among the records still catches it.
	records, err := openSnapshot(snap, kek)
	require.NoError(t, err)
	var dropped []Record
	for _, r := range records {
		if r.RecordRef != (RecordRef{Kind: RecordVersion, ID: "web", Version: 1}) {
			dropped = append(dropped, r)
		}
	}
	_, err = dst.Restore(ctx, bytes.NewReader(encodeSnapshot(kek, dropped)))
	assert.ErrorIs(t, err, ErrCorrupted, "a dropped record")
	assert.ErrorIs(t, err, ErrInvalidArgument, "a dropped record is the caller's mistake")
	assert.Contains(t, err.Error(), `key "web" version 1 is missing`)

	assert.Empty(t, allKeys(t, dst), "refused restores leave the instance fresh")
	_, err = dst.Restore(ctx, bytes.NewReader(snap))
	require.NoError(t, err, "the untampered snapshot restores")
}

// encodeSnapshot frames and authenticates records as Backup does, apart
// from it: the test's own statement of the format.
func encodeSnapshot(kek []byte, records []Record) []byte {
	b := append([]byte(snapshotMagic), kekIDBytes(kek)...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(records)))
	for _, r := range records {
		b = append(b, byte(r.Kind))
		b = binary.BigEndian.AppendUint32(b, r.Version)
		b = append(append(b, byte(len(r.ID))), r.ID...)
		b = binary.BigEndian.AppendUint32(b, uint32(len(r.Sealed)))
		b = append(b, r.Sealed...)
	}
	mac := hmac.New(sha256.New, snapshotKey(kek))
	mac.Write(b)
	return mac.Sum(b)
}

// TestBackupUnderWriteLoad: a backup taken while keys are being written
// holds every key acknowledged before it started, each signing after the
// restore, and is a consistent state (it restores at all).
func TestBackupUnderWriteLoad(t *testing.T) {
	kek := newKEK(t)
	src, _ := freshVault(t, kek)
	load := testenv.StartWriteLoad(t, 3, "w", func(id string, _ int) error {
		_, err := src.Create(ctx, id, Ed25519, nil)
		return err
	})
	var snaps [][]byte
	var before [][]string
	for range 5 {
		time.Sleep(20 * time.Millisecond)
		before = append(before, load.Acked())
		snaps = append(snaps, backup(t, src))
	}
	load.Stop()
	for i, snap := range snaps {
		dst, _ := freshVault(t, kek)
		_, err := dst.Restore(ctx, bytes.NewReader(snap))
		require.NoError(t, err, "snapshot %d", i)
		for _, id := range before[i] {
			signEd25519(t, dst, id)
		}
		t.Logf("snapshot %d: %d keys acknowledged before it, all restored", i, len(before[i]))
	}
}

// TestBackupDuringKEKRotation: a snapshot taken mid-rotation restores into
// an instance under the new KEK, which then finishes the rotation.
func TestBackupDuringKEKRotation(t *testing.T) {
	defer func(n int) { rewrapBatch = n }(rewrapBatch)
	rewrapBatch = 2
	oldKEK, nextKEK := newKEK(t), newKEK(t)
	src, _ := freshVault(t, oldKEK)
	populate(t, src)
	next, err := newSealKeys(nextKEK)
	require.NoError(t, err)
	require.NoError(t, src.beginRotation(ctx, next))
	_, _, err = src.rewrapStep(ctx)
	require.NoError(t, err)
	snap := backup(t, src)

	old, _ := freshVault(t, oldKEK)
	_, err = old.Restore(ctx, bytes.NewReader(snap))
	assert.ErrorIs(t, err, ErrFailedPrecondition, "a mid-rotation snapshot restores under the new KEK only")
	dst, path := freshVault(t, nextKEK)
	_, err = dst.Restore(ctx, bytes.NewReader(snap))
	require.NoError(t, err)
	assert.Equal(t, KEKID(oldKEK), dst.KEKStatus().Retiring)
	signOK(t, dst, "web", 2)
	st, err := dst.RotateKEK(ctx, nextKEK)
	require.NoError(t, err)
	assert.Empty(t, st.Retiring)
	require.NoError(t, dst.Close())
	requireWrongKEK(t, path, oldKEK, "the restored instance completed the rotation")
	signEd25519(t, openTestVault(t, path, nextKEK), "ed")
}

// FuzzParseSnapshot: a snapshot body of any bytes is parsed or refused,
// never a panic or an allocation sized by an unchecked count.
func FuzzParseSnapshot(f *testing.F) {
	kek := bytes.Repeat([]byte{7}, kekSize)
	good := encodeSnapshot(kek, []Record{
		{RecordRef: checkRef, Sealed: []byte("sealed")},
		{RecordRef: RecordRef{Kind: RecordVersion, ID: "web", Version: 2}, Sealed: make([]byte, 40)},
	})
	f.Add(good[:len(good)-sha256.Size])
	f.Add([]byte(snapshotMagic))
	f.Add(append(append([]byte(snapshotMagic), make([]byte, 8)...), 0xff, 0xff, 0xff, 0xff))
	f.Fuzz(func(t *testing.T, body []byte) {
		records, err := parseSnapshot(body)
		if err == nil {
			seen := map[RecordRef]bool{}
			for _, r := range records {
				assert.False(t, seen[r.RecordRef], "a record twice")
				seen[r.RecordRef] = true
			}
		}
	})
}

// TestRestoreBringsTicketKeys: a session ticket sealed before the snapshot
// opens on the restored instance right away, without a restart (the
// restored vault serves the snapshot's ticket keys, not keys of its own).
func TestRestoreBringsTicketKeys(t *testing.T) {
	kek := newKEK(t)
	clock := testenv.NewClock(time.Now())
	src, _ := freshVault(t, kek)
	populate(t, src)
	ticket, err := newTicketKeys(t, src, "prod", clock, nil).Seal(ctx, "scope", []byte("session state"))
	require.NoError(t, err)
	snap := backup(t, src)

	dst, _ := freshVault(t, kek)
	_, err = dst.Restore(ctx, bytes.NewReader(snap))
	require.NoError(t, err)
	got, err := newTicketKeys(t, dst, "prod", clock, nil).Open(ctx, "scope", ticket)
	require.NoError(t, err, "a ticket sealed before the backup opens after the restore")
	assert.Equal(t, []byte("session state"), got)
}
