package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
)

// TestInitOnAnExistingStore: -init left in a service's flags after the
// first start (a unit file, a manifest) only ever creates a vault where
// there is none: on an existing store, bolt or etcd, it opens the vault
// with its keys; with another KEK (another deployment's, sharing the etcd
// prefix by mistake) the start is refused as a wrong KEK and the store is
// left as it was, still opening with its own KEK.
func TestInitOnAnExistingStore(t *testing.T) {
	f := startEtcd(t)
	for _, store := range []string{"bolt", "etcd"} {
		t.Run(store, func(t *testing.T) {
			s := newProdSetup(t)
			args := func(extra ...string) []string {
				a := s.args() // with -init
				if store == "etcd" {
					a = append(f.args(s, "/init"), "-init")
				}
				return append(a, extra...)
			}
			ctx := context.Background()
			p := startProcess(t, s.dataDir, args()...)
			require.NotEmpty(t, p.grpcAddr, "did not start with -init:\n%s", p.out())
			_, err := s.kv(t, p.grpcAddr, s.admin).CreateKey(ctx, &pb.CreateKeyRequest{Id: "kept", Algorithm: pb.Algorithm_ALGORITHM_ED25519})
			require.NoError(t, err)
			p.stop(t)

			otherKEK := filepath.Join(t.TempDir(), "other-kek")
			kek := make([]byte, 32)
			rand.Read(kek)
			require.NoError(t, os.WriteFile(otherKEK, []byte(hex.EncodeToString(kek)+"\n"), 0o600))
			dataDir := s.dataDir
			if store == "etcd" {
				dataDir = t.TempDir() // another deployment's replica, on the same prefix
			}
			out := waitExit(t, startProcess(t, dataDir, args("-kek-file", otherKEK)...))
			assert.Contains(t, out, "wrong key-encryption key")

			p = startProcess(t, s.dataDir, args()...)
			require.NotEmpty(t, p.grpcAddr, "did not start again with -init:\n%s", p.out())
			k, err := s.kv(t, p.grpcAddr, s.admin).GetKey(ctx, &pb.GetKeyRequest{Key: "kept"})
			require.NoError(t, err, "-init on an existing store keeps its keys")
			assert.Len(t, k.GetVersions(), 1)
			p.stop(t)
		})
	}
}
