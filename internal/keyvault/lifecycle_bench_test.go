package keyvault

import (
	"fmt"
	"io"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// benchVault is a vault of n Ed25519 keys (3 records each).
func benchVault(b *testing.B, n int) *Vault {
	b.Helper()
	v := openTestVault(b, filepath.Join(b.TempDir(), "vault.db"), testKEK)
	for i := range n {
		_, err := v.Create(ctx, fmt.Sprintf("k%d", i), Ed25519, nil)
		require.NoError(b, err)
	}
	return v
}

// BenchmarkRotateKEK rewraps a store of 300 keys under a new KEK per
// iteration: every step committed and fsynced, the last one rewriting the
// file.
func BenchmarkRotateKEK(b *testing.B) {
	v := benchVault(b, 300)
	keks := make([][]byte, b.N)
	for i := range keks {
		keks[i] = newKEK(b)
	}
	b.ResetTimer()
	for i := range b.N {
		st, err := v.RotateKEK(ctx, keks[i])
		require.NoError(b, err)
		b.ReportMetric(float64(st.Records), "records/op")
	}
}

// BenchmarkBackup writes a snapshot of a store of 300 keys per iteration.
func BenchmarkBackup(b *testing.B) {
	v := benchVault(b, 300)
	b.ResetTimer()
	for range b.N {
		info, err := v.Backup(ctx, io.Discard)
		require.NoError(b, err)
		b.SetBytes(info.Bytes)
	}
}
