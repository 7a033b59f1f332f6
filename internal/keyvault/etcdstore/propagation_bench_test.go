package etcdstore_test

import (
	"crypto/rand"
	"runtime"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/etcdtest"
	"github.com/handshaked/handshaked/internal/keyvault"
	"github.com/handshaked/handshaked/internal/keyvault/etcdstore"
)

// BenchmarkPropagation: a rotation on replica A (a vault on its own etcd
// store), alone ("commit") and until replica B's view serves the new
// version ("commit+follow"), on a three-member cluster. The difference is
// how long a change takes to reach another replica.
func BenchmarkPropagation(b *testing.B) {
	c := etcdtest.Start(b, 3)
	ctx := b.Context()
	kek := make([]byte, 32)
	rand.Read(kek)
	openStore := func() *etcdstore.Store {
		s, err := etcdstore.Open(ctx, etcdstore.Config{Endpoints: c.Endpoints(), Prefix: "/bench"})
		require.NoError(b, err)
		return s
	}
	va, err := keyvault.New(ctx, openStore(), kek)
	require.NoError(b, err)
	defer va.Close()
	vb, err := keyvault.Open(ctx, openStore(), kek)
	require.NoError(b, err)
	defer vb.Close()
	_, err = va.Create(ctx, "web", keyvault.ECDSAP256, nil)
	require.NoError(b, err)

	rotate := func() uint32 {
		k, err := va.Rotate(ctx, "web")
		require.NoError(b, err)
		return k.Primary
	}
	b.Run("commit", func(b *testing.B) {
		for b.Loop() {
			rotate()
		}
	})
	b.Run("commit+follow", func(b *testing.B) {
		for b.Loop() {
			n := rotate()
			for {
				if k, err := vb.Get(ctx, "web"); err == nil && k.Primary >= n {
					break
				}
				runtime.Gosched()
			}
		}
	})
}
