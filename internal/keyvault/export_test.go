package keyvault

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// BulkCreate makes n Ed25519 keys named by id(i) in v, batch keys per
// commit: a store of n keys without the n commits of a manifest of every
// record that n Creates make (quadratic in n). v's view does not hold
// them: the caller closes v and opens the store again.
func BulkCreate(tb testing.TB, v *Vault, n, batch int, id func(int) string) {
	v.writeMu.Lock()
	defer v.writeMu.Unlock()
	now := time.Now().UTC()
	for i := 0; i < n; i += batch {
		var w Write
		for j := i; j < min(n, i+batch); j++ {
			signer, err := generateKey(Ed25519)
			require.NoError(tb, err)
			handle, err := softwareHandle(signer)
			require.NoError(tb, err)
			ver, err := newVersion(1, BackendSoftware, signer, Ed25519, false, now)
			require.NoError(tb, err)
			k := &keyState{id: id(j), createTime: now, versions: []*versionState{ver}}
			kr, err := v.sealKey(k)
			require.NoError(tb, err)
			vr, err := v.sealVersion(k.id, ver)
			require.NoError(tb, err)
			w.Create = append(w.Create, kr, vr, v.sealer.seal(RecordRef{Kind: RecordMaterial, ID: k.id, Version: 1}, handle))
		}
		require.NoError(tb, v.commit(context.Background(), w), fmt.Sprintf("keys %d to %d", i, i+batch))
	}
}

// BeginKEKRotation begins a rotation to newKEK and rewraps nothing yet:
// the store holds records under both KEKs until ResumeKEKRotation.
func BeginKEKRotation(ctx context.Context, v *Vault, newKEK []byte) error {
	next, err := newSealKeys(newKEK)
	if err != nil {
		return err
	}
	return v.beginRotation(ctx, next)
}
