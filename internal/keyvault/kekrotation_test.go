package keyvault

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/handshaked/handshaked/internal/testenv"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"
)

func newKEK(t testing.TB) []byte {
	t.Helper()
	kek := make([]byte, kekSize)
	_, err := rand.Read(kek)
	require.NoError(t, err)
	return kek
}

// populate gives v keys of several kinds of history: a rotated key, one
// with a destroyed version and a chain-less imported one.
func populate(t *testing.T, v *Vault) {
	t.Helper()
	importTestKey(t, v, "web", ECDSAP256)
	_, err := v.Rotate(ctx, "web")
	require.NoError(t, err)
	importTestKey(t, v, "gone", ECDSAP256)
	_, err = v.Rotate(ctx, "gone")
	require.NoError(t, err)
	_, err = v.SetVersionEnabled(ctx, "gone", 1, false)
	require.NoError(t, err)
	_, err = v.DestroyVersion(ctx, "gone", 1)
	require.NoError(t, err)
	_, err = v.Create(ctx, "ed", Ed25519, map[string]string{"team": "edge"})
	require.NoError(t, err)
}

func signEd25519(t *testing.T, v *Vault, id string) {
	t.Helper()
	sig, err := v.Sign(ctx, id, 0, tls.Ed25519, []byte("m"), false)
	require.NoError(t, err, "key %s signs", id)
	k, err := v.Get(ctx, id)
	require.NoError(t, err)
	require.True(t, ed25519.Verify(k.Versions[k.Primary-1].PublicKey.(ed25519.PublicKey), []byte("m"), sig), "key %s: signature verifies", id)
}

// requireWrongKEK requires the store at path to refuse kek.
func requireWrongKEK(t *testing.T, path string, kek []byte, msg string) {
	t.Helper()
	v, err := openVault(path, kek)
	if err == nil {
		v.Close()
	}
	require.ErrorIs(t, err, ErrWrongKEK, msg)
}

// countKind returns how many of records are of kind k.
func countKind(records []Record, k RecordKind) int {
	n := 0
	for _, r := range records {
		if r.Kind == k {
			n++
		}
	}
	return n
}

// storedRecords returns every record of the bolt file at path.
func storedRecords(t *testing.T, path string) []Record {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	require.NoError(t, err)
	defer db.Close()
	var rs []Record
	require.NoError(t, db.View(func(tx *bolt.Tx) error {
		return forEachRecord(tx, func(r Record) error {
			r.Sealed = bytes.Clone(r.Sealed)
			rs = append(rs, r)
			return nil
		})
	}))
	return rs
}

// TestKEKRotation: RotateKEK rewraps every record (keys, versions, private
// keys, the check record) while the vault keeps signing; afterwards the
// store opens with the new KEK only, the old one is refused, and no byte
// sealed under the old KEK is left anywhere in the file, free pages
// included.
func TestKEKRotation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vault.db")
	oldKEK, nextKEK := newKEK(t), newKEK(t)
	v, err := openVault(path, oldKEK)
	require.NoError(t, err)
	populate(t, v)
	for i := range 40 {
		_, err := v.Create(ctx, fmt.Sprintf("more-%d", i), Ed25519, nil)
		require.NoError(t, err)
	}
	require.NoError(t, v.Close())
	before := storedRecords(t, path)
	file, err := os.ReadFile(path)
	require.NoError(t, err)
	for _, r := range before {
		require.True(t, bytes.Contains(file, r.Sealed[:32]), "%v is in the file before the rotation", r.RecordRef)
	}

	v, err = openVault(path, oldKEK)
	require.NoError(t, err)
	st, err := v.RotateKEK(ctx, nextKEK)
	require.NoError(t, err)
	buckets := countKind(before, RecordManifestBucket)
	require.NotZero(t, buckets)
	assert.Equal(t, KEKStatus{ID: KEKID(nextKEK), Records: len(before) - 1 - buckets}, st, "the status after the rotation")
	signOK(t, v, "web", 1)
	signOK(t, v, "web", 2)
	_, err = v.RotateKEK(ctx, nextKEK)
	assert.ErrorIs(t, err, ErrFailedPrecondition, "rotating to the current KEK")
	require.NoError(t, v.Close())

	requireWrongKEK(t, path, oldKEK, "the old KEK once the rotation completed")
	file, err = os.ReadFile(path)
	require.NoError(t, err)
	for _, r := range before {
		assert.False(t, bytes.Contains(file, r.Sealed[:32]), "%v sealed under the old KEK is still in the file", r.RecordRef)
	}
	old, err := newSealer(oldKEK)
	require.NoError(t, err)
	for _, r := range storedRecords(t, path) {
		_, err := old.open(r)
		assert.Error(t, err, "%v opens under the old KEK", r.RecordRef)
	}

	v = openTestVault(t, path, nextKEK)
	signOK(t, v, "web", 1)
	signOK(t, v, "gone", 2)
	signEd25519(t, v, "ed")
	k, err := v.Get(ctx, "ed")
	require.NoError(t, err)
	assert.Equal(t, map[string]string{"team": "edge"}, k.Labels)
	k, err = v.Get(ctx, "gone")
	require.NoError(t, err)
	assert.Equal(t, StateDestroyed, k.Versions[0].State)
}

// TestKEKRotationInterrupted: a rotation stopped half-way leaves a store
// that opens with either KEK, takes writes under the new one, refuses a
// rotation to a third KEK, and completes when RotateKEK is called again
// with the new KEK, even from a vault opened with the old one.
func TestKEKRotationInterrupted(t *testing.T) {
	defer func(n int) { rewrapBatch = n }(rewrapBatch)
	rewrapBatch = 2
	path := filepath.Join(t.TempDir(), "vault.db")
	oldKEK, nextKEK := newKEK(t), newKEK(t)
	v, err := openVault(path, oldKEK)
	require.NoError(t, err)
	populate(t, v)
	next, err := newSealKeys(nextKEK)
	require.NoError(t, err)
	require.NoError(t, v.beginRotation(ctx, next))
	_, done, err := v.rewrapStep(ctx)
	require.NoError(t, err)
	require.False(t, done)
	st := v.KEKStatus()
	assert.Equal(t, KEKID(nextKEK), st.ID)
	assert.Equal(t, KEKID(oldKEK), st.Retiring)
	assert.Equal(t, st.Records-1-rewrapBatch, st.Stale, "all but the rotation record and one batch are stale")
	require.NoError(t, v.Close())

	for name, kek := range map[string][]byte{"old": oldKEK, "new": nextKEK} {
		v, err := openVault(path, kek)
		require.NoError(t, err, "mid-rotation the store opens with the %s KEK", name)
		assert.Equal(t, st, v.KEKStatus(), "opened with the %s KEK", name)
		signOK(t, v, "web", 2)
		signOK(t, v, "gone", 2)
		signEd25519(t, v, "ed")
		require.NoError(t, v.Close())
	}
	requireWrongKEK(t, path, newKEK(t), "a third KEK mid-rotation")

	v, err = openVault(path, oldKEK)
	require.NoError(t, err)
	_, err = v.Create(ctx, "during", Ed25519, nil)
	require.NoError(t, err)
	_, err = v.RotateKEK(ctx, newKEK(t))
	assert.ErrorIs(t, err, ErrFailedPrecondition, "a rotation to another KEK while one is under way")
	_, err = v.RotateKEK(ctx, oldKEK)
	assert.ErrorIs(t, err, ErrFailedPrecondition, "a rotation back to the retiring KEK")
	st, err = v.RotateKEK(ctx, nextKEK)
	require.NoError(t, err)
	assert.Empty(t, st.Retiring)
	require.NoError(t, v.Close())

	requireWrongKEK(t, path, oldKEK, "the old KEK once the rotation completed")
	v = openTestVault(t, path, nextKEK)
	signEd25519(t, v, "during")
	signOK(t, v, "web", 1)
}

// TestKEKRotationUnderWrites: keys created, rotated and destroyed while the
// rotation runs are all there, under the new KEK, afterwards.
func TestKEKRotationUnderWrites(t *testing.T) {
	defer func(n int) { rewrapBatch = n }(rewrapBatch)
	rewrapBatch = 3
	path := filepath.Join(t.TempDir(), "vault.db")
	oldKEK, nextKEK := newKEK(t), newKEK(t)
	v, err := openVault(path, oldKEK)
	require.NoError(t, err)
	for i := range 20 {
		_, err := v.Create(ctx, fmt.Sprintf("pre-%d", i), Ed25519, nil)
		require.NoError(t, err)
	}
	load := testenv.StartWriteLoad(t, 3, "w", func(id string, n int) error {
		if _, err := v.Create(ctx, id, Ed25519, nil); err != nil {
			return err
		}
		if n%3 == 0 {
			_, err := v.Rotate(ctx, id)
			assert.NoError(t, err)
			_, err = v.SetVersionEnabled(ctx, id, 1, false)
			assert.NoError(t, err)
			_, err = v.DestroyVersion(ctx, id, 1)
			assert.NoError(t, err)
		}
		return nil
	})
	_, err = v.RotateKEK(ctx, nextKEK)
	acked := load.Stop()
	require.NoError(t, err)
	require.NoError(t, v.Close())
	requireWrongKEK(t, path, oldKEK, "the old KEK once the rotation completed")
	v = openTestVault(t, path, nextKEK)
	for i := range 20 {
		signEd25519(t, v, fmt.Sprintf("pre-%d", i))
	}
	for _, id := range acked {
		signEd25519(t, v, id)
	}
	t.Logf("%d keys written during the rotation", len(acked))
}

// TestKEKRotationSurvivesPowerLoss: a completed rotation is durable when
// RotateKEK returns: after a power loss right then the store opens with the
// new KEK and refuses the old one (the rewrite that erased the rotation
// record was made durable, its rename included).
func TestKEKRotationSurvivesPowerLoss(t *testing.T) {
	dir := t.TempDir()
	requireCachestat(t, dir)
	path := filepath.Join(dir, "vault.db")
	fsys := &powerLossFS{}
	open := func(kek []byte) (*Vault, error) {
		store, err := openBolt(path, fsys)
		require.NoError(t, err)
		v, err := New(ctx, store, kek)
		if err != nil {
			store.Close()
		}
		return v, err
	}
	oldKEK, nextKEK := newKEK(t), newKEK(t)
	v, err := open(oldKEK)
	require.NoError(t, err)
	populate(t, v)
	_, err = v.RotateKEK(ctx, nextKEK)
	require.NoError(t, err)
	require.NoError(t, v.Close())
	fsys.powerLoss(t, path)

	v, err = open(oldKEK)
	if err == nil {
		v.Close()
	}
	require.ErrorIs(t, err, ErrWrongKEK, "after a power loss the old KEK opens the store again")
	v, err = open(nextKEK)
	require.NoError(t, err)
	defer v.Close()
	signOK(t, v, "web", 2)
	signEd25519(t, v, "ed")
}

// TestCommitRefusesRecordsUnderAnotherKEK: a record sealed under any KEK
// but the current one (the one a rotation retired, say) never reaches the
// store.
func TestCommitRefusesRecordsUnderAnotherKEK(t *testing.T) {
	v, path := freshVault(t, newKEK(t))
	other, err := newSealer(newKEK(t))
	require.NoError(t, err)
	v.writeMu.Lock()
	err = v.commit(ctx, Write{Put: []Record{other.seal(RecordRef{Kind: RecordKey, ID: "stray"}, []byte("{}"))}})
	v.writeMu.Unlock()
	require.ErrorContains(t, err, "not sealed under the current key-encryption key")
	require.NoError(t, v.Close())
	for _, r := range storedRecords(t, path) {
		assert.NotEqual(t, "stray", r.ID, "the refused record is in the store")
	}
}

// TestKEKRotationAfterAnotherReplicaChangedARecord: a rewrap step of a
// replica whose view is behind the store (another replica rotated a key
// since) reads records other than the view's. That is a conflict, retried
// on the store's state, not ErrCorrupted: only a record other than the
// manifest lists in the state the view holds is corrupted.
func TestKEKRotationAfterAnotherReplicaChangedARecord(t *testing.T) {
	s := newMemShared()
	// Bounds long enough that only the watch would make a follow the store.
	a, ac := newSharedVault(t, s, WithStalenessBound(time.Hour))
	b, _ := newSharedVault(t, s, WithStalenessBound(time.Hour))
	_, err := a.Create(ctx, "web", ECDSAP256, nil)
	require.NoError(t, err)
	newKEK := bytes.Repeat([]byte{0x17}, kekSize)
	next, err := newSealKeys(newKEK)
	require.NoError(t, err)
	require.NoError(t, a.beginRotation(ctx, next))
	require.NoError(t, b.Sync(ctx))

	ac.watchHeld.Store(true) // a's view stays behind b's rotation
	_, err = b.Rotate(ctx, "web")
	require.NoError(t, err)
	st, err := a.ResumeKEKRotation(ctx)
	require.NoError(t, err, "a record another replica changed is no corruption")
	assert.Equal(t, KEKID(newKEK), st.ID)
	assert.Empty(t, st.Retiring)
	ac.watchHeld.Store(false)
	require.NoError(t, b.Sync(ctx))
	signOK(t, b, "web", 2)
}
