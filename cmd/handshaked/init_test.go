package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/etcdtest"
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

// TestReplicasOfAnotherDeployment: a replica started on a key store whose
// live replicas are of another -deployment (a copied flag set, a typo) is
// refused at start, naming both: it could open none of their step tokens,
// page tokens or tickets, and every unary step or listing page balanced
// onto it would fail. One of the same deployment starts.
func TestReplicasOfAnotherDeployment(t *testing.T) {
	c := etcdtest.Start(t, 1)
	dataDir := t.TempDir() // the development KEK file, shared
	flags := []string{"-etcd-endpoints", c.Endpoint(0), "-etcd-prefix", "/dep"}
	first := startProcess(t, dataDir, append(flags, "-deployment", "eu")...)
	require.NotEmpty(t, first.grpcAddr, first.out())
	raw := c.Client(t, nil)
	require.Eventually(t, func() bool {
		resp, err := raw.Get(context.Background(), "/dep/deployments/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		return err == nil && resp.Count == 1
	}, time.Minute, 10*time.Millisecond, "the first replica announces its deployment")

	out := waitExit(t, startProcess(t, dataDir, append(flags, "-deployment", "us")...))
	assert.Contains(t, out, `are of deployment \"eu\", and this one is started as \"us\"`)
	assert.Contains(t, out, "give every replica of a key store the same -deployment")

	second := startProcess(t, dataDir, append(flags, "-deployment", "eu")...)
	require.NotEmpty(t, second.grpcAddr, "a replica of the same deployment:\n%s", second.out())

	// A rename after every replica stopped, but not cleanly: a killed
	// replica's announcement outlives it, until its lease ends, and the
	// refusal says so (not only "stop every replica first", which the
	// operator did).
	for _, p := range []*process{first, second} {
		require.NoError(t, p.cmd.Process.Kill())
		<-p.waited
	}
	out = waitExit(t, startProcess(t, dataDir, append(flags, "-deployment", "us")...))
	assert.Contains(t, out, "a replica that did not stop cleanly (killed, or cut off from etcd) is announced until its lease ends")
}

// TestReplicasOfTwoDeploymentsStartingAtOnce: of two replicas of different
// -deployment starting at once on one key store, exactly one starts and
// the other is refused. Each used to read the announced deployments first
// and announce its own only later, once its vault was open: both saw none,
// and both started.
func TestReplicasOfTwoDeploymentsStartingAtOnce(t *testing.T) {
	c := etcdtest.Start(t, 1)
	none := func(string) (string, bool) { return "", false }
	for round := range 5 {
		prefix := fmt.Sprintf("/at-once-%d/", round)
		errs := make(chan error, 2)
		start := make(chan struct{})
		for _, deployment := range []string{"eu", "us"} {
			cfg, err := parseConfig([]string{"-etcd-endpoints", c.Endpoint(0), "-etcd-prefix", prefix, "-deployment", deployment}, none, io.Discard)
			require.NoError(t, err)
			go func() {
				<-start
				store, _, err := openEtcdStore(t.Context(), cfg)
				if err == nil {
					t.Cleanup(func() { store.Close() })
				}
				errs <- err
			}()
		}
		close(start)
		var refused []error
		for range 2 {
			if err := <-errs; err != nil {
				refused = append(refused, err)
			}
		}
		require.Len(t, refused, 1, "round %d: one replica starts, the other is refused", round)
		assert.ErrorContains(t, refused[0], "give every replica of a key store the same -deployment")
	}
}
