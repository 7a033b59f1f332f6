package main

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/etcdtest"
	"github.com/handshaked/handshaked/internal/keyvault/etcdstore"
)

// etcdFiles is an etcd member serving mutual TLS and handshaked's client
// certificate for it, in files.
type etcdFiles struct {
	cluster                *etcdtest.Cluster
	ca, cert, key, keyOpen string
}

func startEtcd(t *testing.T) *etcdFiles {
	t.Helper()
	newProdSetup(t) // issues the test PKI
	server, err := pkiCA.Server()
	require.NoError(t, err)
	client, err := pkiCA.Client("handshaked", false, time.Now().Add(time.Hour))
	require.NoError(t, err)
	dir := t.TempDir()
	f := &etcdFiles{
		cluster: etcdtest.Start(t, 1, etcdtest.WithServerTLS(etcdtest.ServerTLS{CertPEM: server.CertPEM, KeyPEM: server.KeyPEM, ClientCAPEM: pkiCA.PEM})),
		ca:      filepath.Join(dir, "etcd-ca.pem"), cert: filepath.Join(dir, "etcd.crt"), key: filepath.Join(dir, "etcd.key"),
		keyOpen: filepath.Join(dir, "etcd-readable.key"),
	}
	for path, data := range map[string][]byte{f.ca: pkiCA.PEM, f.cert: client.CertPEM, f.key: client.KeyPEM} {
		require.NoError(t, os.WriteFile(path, data, 0o600))
	}
	require.NoError(t, os.WriteFile(f.keyOpen, client.KeyPEM, 0o644))
	return f
}

// args are the flags of a production instance on the etcd store under
// prefix (mutual TLS to etcd), without -init.
func (f *etcdFiles) args(s *prodSetup, prefix string) []string {
	args := slices.DeleteFunc(s.args(), func(a string) bool { return a == "-init" })
	return append(args, "-etcd-endpoints", f.cluster.Endpoint(0), "-etcd-prefix", prefix,
		"-etcd-ca-file", f.ca, "-etcd-cert-file", f.cert, "-etcd-key-file", f.key, "-etcd-dial-timeout", "2s")
}

// TestEtcdStore: with -etcd-endpoints the vault lives on etcd (client TLS,
// a prefix per deployment); production creates one there only with -init;
// a second replica with the same KEK opens it and serves its keys (the
// bolt store refuses a second process); a wrong KEK, a missing client
// certificate, a readable client key and an etcd without quorum stop the
// start with a message saying which.
func TestEtcdStore(t *testing.T) {
	f := startEtcd(t)
	s := newProdSetup(t)
	ctx := context.Background()

	out := waitExit(t, startProcess(t, s.dataDir, f.args(s, "/prod")...))
	assert.Contains(t, out, "holds no vault: start with -init")
	assert.Contains(t, out, "prefix /prod/")

	a := startProcess(t, s.dataDir, append(f.args(s, "/prod"), "-init")...)
	require.NotEmpty(t, a.grpcAddr, "did not start with -init:\n%s", a.out())
	assert.NoFileExists(t, filepath.Join(s.dataDir, "keys.db"), "the bolt store is not used")
	_, err := s.kv(t, a.grpcAddr, s.admin).CreateKey(ctx, &pb.CreateKeyRequest{Id: "shared", Algorithm: pb.Algorithm_ALGORITHM_ECDSA_P256})
	require.NoError(t, err)

	// A second replica, its own data directory, the same store and KEK.
	b := startProcess(t, t.TempDir(), f.args(s, "/prod")...)
	require.NotEmpty(t, b.grpcAddr, "a second replica did not start:\n%s", b.out())
	k, err := s.kv(t, b.grpcAddr, s.admin).GetKey(ctx, &pb.GetKeyRequest{Key: "shared"})
	require.NoError(t, err)
	assert.Len(t, k.GetVersions(), 1)
	b.stop(t)

	// Another prefix is another deployment's store.
	out = waitExit(t, startProcess(t, t.TempDir(), f.args(s, "/staging")...))
	assert.Contains(t, out, "holds no vault")

	other := newProdSetup(t)
	out = waitExit(t, startProcess(t, t.TempDir(), f.args(other, "/prod")...))
	assert.Contains(t, out, "wrong key-encryption key")

	noCert := slices.DeleteFunc(f.args(s, "/prod"), func(a string) bool {
		return a == "-etcd-cert-file" || a == f.cert || a == "-etcd-key-file" || a == f.key
	})
	out = waitExit(t, startProcess(t, t.TempDir(), noCert...))
	assert.Contains(t, out, "tls: certificate required", "etcd refuses a client without a certificate, and the start says so")
	assert.Contains(t, out, f.cluster.Endpoint(0))

	readable := append(f.args(s, "/prod"), "-etcd-key-file", f.keyOpen)
	out = waitExit(t, startProcess(t, t.TempDir(), readable...))
	assert.Contains(t, out, "etcd client key")

	a.stop(t)
	f.cluster.Stop(0)
	out = waitExit(t, startProcess(t, t.TempDir(), f.args(s, "/prod")...))
	assert.Contains(t, out, "a majority of its members must be running and reachable")
	assert.NotContains(t, out, "panic")
}

// TestEtcdFlags: the -etcd-* settings that only make sense together.
func TestEtcdFlags(t *testing.T) {
	none := func(string) (string, bool) { return "", false }
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-etcd-prefix", "/p"}, "-etcd-prefix needs -etcd-endpoints"},
		{[]string{"-etcd-ca-file", "ca.pem"}, "-etcd-ca-file needs -etcd-endpoints"},
		{[]string{"-etcd-endpoints", "https://e:2379", "-etcd-cert-file", "c.pem"}, "go together"},
		{[]string{"-etcd-endpoints", "https://e:2379", "-etcd-dial-timeout", "0s"}, "must be positive"},
		{[]string{"-etcd-endpoints", "https://e:2379", "-etcd-max-txn-ops", "1"}, "at least 2"},
	} {
		_, err := parseConfig(tc.args, none, io.Discard)
		assert.ErrorContains(t, err, tc.want, "%q", tc.args)
	}
	cfg, err := parseConfig([]string{"-etcd-endpoints", "http://a:2379, http://b:2379", "-deployment", "eu", "-etcd-max-txn-ops", "1024"}, none, io.Discard)
	require.NoError(t, err)
	sc, err := cfg.etcd.storeConfig(cfg.deployment)
	require.NoError(t, err)
	assert.Equal(t, 1024, sc.MaxTxnOps)
	assert.Equal(t, etcdstore.DefaultLeaseTTL, sc.LeaseTTL)
	cfg.etcd.stalenessBound = 10 * time.Second
	sc, err = cfg.etcd.storeConfig(cfg.deployment)
	require.NoError(t, err)
	assert.Equal(t, 20*time.Second, sc.LeaseTTL, "a replica's lease outlives the staleness bound")
	assert.Equal(t, []string{"http://a:2379", "http://b:2379"}, sc.Endpoints)
	assert.Equal(t, "/handshaked/eu/", sc.Prefix, "the default prefix is the deployment's")
	assert.Nil(t, sc.TLS, "plain http endpoints")
	cfg, err = parseConfig([]string{"-etcd-endpoints", "https://a:2379"}, none, io.Discard)
	require.NoError(t, err)
	sc, err = cfg.etcd.storeConfig(cfg.deployment)
	require.NoError(t, err)
	require.NotNil(t, sc.TLS, "https endpoints use TLS with the system's roots")
	assert.Nil(t, sc.TLS.RootCAs)
}

// TestEtcdStalenessBound: -staleness-bound reaches the vault. With etcd
// gone, the replica with a short bound refuses to sign (UNAVAILABLE) while
// the one with a long bound still signs; etcd back, both sign. Replicas on
// one etcd store follow each other: a key created on one is soon on the
// other.
func TestEtcdStalenessBound(t *testing.T) {
	c := etcdtest.Start(t, 1)
	dataDir := t.TempDir() // the development KEK file, shared
	flags := []string{"-etcd-endpoints", c.Endpoint(0), "-etcd-prefix", "/dev", "-etcd-request-timeout", "1s"}
	short := startProcess(t, dataDir, append(flags, "-staleness-bound", "500ms")...)
	require.NotEmpty(t, short.grpcAddr, short.out())
	long := startProcess(t, dataDir, append(flags, "-staleness-bound", "1h")...)
	require.NotEmpty(t, long.grpcAddr, long.out())
	ctx := context.Background()
	// One connection each, for the polls below.
	shortKV, longKV := short.client(t), long.client(t)
	sign := func(kv pb.KeyVaultClient) error {
		_, err := kv.Sign(ctx, &pb.SignRequest{Key: sampleKeyID, Scheme: pb.SignatureScheme_SIGNATURE_SCHEME_RSA_PSS_RSAE_SHA256,
			Input: &pb.SignRequest_Message{Message: []byte("m")}})
		return err
	}
	require.NoError(t, sign(shortKV))
	require.NoError(t, sign(longKV))

	_, err := shortKV.CreateKey(ctx, &pb.CreateKeyRequest{Id: "followed", Algorithm: pb.Algorithm_ALGORITHM_ED25519})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		_, err := longKV.GetKey(ctx, &pb.GetKeyRequest{Key: "followed"})
		return err == nil
	}, 30*time.Second, 50*time.Millisecond, "a key created on one replica never reached the other")

	c.Stop(0)
	require.Eventually(t, func() bool { return status.Code(sign(shortKV)) == codes.Unavailable }, 30*time.Second, 100*time.Millisecond)
	assert.NoError(t, sign(longKV), "a bound of 1h still trusts its view")
	_, err = longKV.CreateKey(ctx, &pb.CreateKeyRequest{Id: "not-now", Algorithm: pb.Algorithm_ALGORITHM_ED25519})
	assert.Equal(t, codes.Unavailable, status.Code(err), "no key change without etcd: %v", err)

	c.Restart(0)
	require.Eventually(t, func() bool { return sign(shortKV) == nil }, 30*time.Second, 100*time.Millisecond)
	assert.NoError(t, sign(longKV))
}
