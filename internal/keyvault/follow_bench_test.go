package keyvault_test

import (
	"bytes"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/etcdtest"
	"github.com/handshaked/handshaked/internal/keyvault"
	"github.com/handshaked/handshaked/internal/keyvault/etcdstore"
)

// BenchmarkFollowOneChange measures what one change (a key created, a
// version rotated) costs a replica that follows it, in a store of n keys
// on etcd (one member on loopback, in this process): the CPU of the
// process per change with no follower (alone) and with one (followed),
// whose difference is what following costs (the follower, and etcd's
// watch sending it the commit); and the size of the sealed manifest, which
// every commit rewrites and the watch carries, and of its largest bucket
// (store format 2: a change rewrites its key's bucket). etcd takes up to
// 8 MiB per request here, past its default 1.5 MiB: at 10,000 keys a flat
// manifest is larger than that, and so is the commit of 300 keys that
// fills the store.
func BenchmarkFollowOneChange(b *testing.B) {
	const maxBytes = 8 << 20
	kek := bytes.Repeat([]byte{0x42}, 32)
	for _, n := range []int{100, 1000, 10000} {
		b.Run(fmt.Sprintf("keys=%d", n), func(b *testing.B) {
			c := etcdtest.Start(b, 1, etcdtest.WithMaxTxnOps(1024), etcdtest.WithMaxRequestBytes(maxBytes))
			open := func() *keyvault.Vault {
				s, err := etcdstore.Open(b.Context(), etcdstore.Config{Endpoints: c.Endpoints(), Prefix: "/bench", MaxTxnOps: 1024, MaxRequestBytes: maxBytes})
				require.NoError(b, err)
				v, err := keyvault.New(b.Context(), s, kek)
				require.NoError(b, err)
				b.Cleanup(func() { v.Close() })
				return v
			}
			fill := open()
			keyvault.BulkCreate(b, fill, n, 300, func(i int) string { return fmt.Sprintf("key-%05d", i) })
			require.NoError(b, fill.Close())
			leader := open()
			manifest, bucket := manifestBytes(b, c)
			b.Logf("keys=%d: manifest %d bytes (%.0f per key), largest bucket %d bytes", n, manifest, float64(manifest)/float64(n), bucket)

			created := 0
			change := map[string]func(){
				"create": func() {
					_, err := leader.Create(b.Context(), fmt.Sprintf("new-%05d", created), keyvault.Ed25519, nil)
					require.NoError(b, err)
					created++
				},
				"rotate": func() {
					_, err := leader.Rotate(b.Context(), fmt.Sprintf("key-%05d", created%n))
					require.NoError(b, err)
					created++
				},
			}
			measure := func(b *testing.B, do func(), wait func()) {
				cpu := processCPU(b)
				for b.Loop() {
					do()
					wait()
				}
				b.ReportMetric(float64((processCPU(b)-cpu).Nanoseconds())/float64(b.N), "cpu-ns/change")
				manifest, bucket := manifestBytes(b, c)
				b.ReportMetric(float64(manifest), "manifest-bytes")
				b.ReportMetric(float64(bucket), "bucket-bytes")
			}
			for _, kind := range []string{"create", "rotate"} {
				b.Run(kind+"/alone", func(b *testing.B) { measure(b, change[kind], func() {}) })
			}
			follower := open()
			changed := make(chan string, 1024)
			defer follower.Subscribe(func(id string) { changed <- id })()
			wait := func() {
				select {
				case <-changed:
				case <-time.After(time.Minute):
					b.Fatal("the follower did not follow the change")
				}
			}
			for _, kind := range []string{"create", "rotate"} {
				b.Run(kind+"/followed", func(b *testing.B) { measure(b, change[kind], wait) })
			}
		})
	}
}

// manifestBytes is the size of the sealed manifest in the store and of its
// largest bucket.
func manifestBytes(b *testing.B, c *etcdtest.Cluster) (manifest, bucket int) {
	s, err := etcdstore.Open(b.Context(), etcdstore.Config{Endpoints: c.Endpoints(), Prefix: "/bench"})
	require.NoError(b, err)
	defer s.Close()
	_, err = s.Scan(b.Context(), func(r keyvault.Record) error {
		switch r.Kind {
		case keyvault.RecordManifest:
			manifest = len(r.Sealed)
		case keyvault.RecordManifestBucket:
			bucket = max(bucket, len(r.Sealed))
		}
		return nil
	})
	require.NoError(b, err)
	return manifest, bucket
}

// processCPU is the CPU time the process has used, user and system.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	require.NoError(b, syscall.Getrusage(syscall.RUSAGE_SELF, &ru))
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
