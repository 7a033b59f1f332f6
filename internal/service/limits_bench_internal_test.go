package service

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/authz"
	"github.com/handshaked/handshaked/internal/keyvault"
)

// BenchmarkLimitsAndStepAuthorization measures, in one run and in process
// (no transport to hide the cost in), what the per-identity limits add to a
// Sign through the guard, and what per-step authorization and the session
// caps add to a handshake step that signs:
//
//	go test -run '^$' -bench LimitsAndStepAuthorization -benchtime 2s ./internal/service/
//
// Compare each "on" to its "off", and the mechanisms alone to the
// operations: the target is at most 1.05x.
func BenchmarkLimitsAndStepAuthorization(b *testing.B) {
	ctx := context.Background()
	dir := b.TempDir()
	store, err := keyvault.OpenBolt(filepath.Join(dir, "keys.db"))
	require.NoError(b, err)
	kek := make([]byte, 32)
	rand.Read(kek)
	vault, err := keyvault.New(ctx, store, kek)
	require.NoError(b, err)
	b.Cleanup(func() { vault.Close() })
	pemKey, err := os.ReadFile(filepath.Join("..", "..", "testdata", "keys", "p256-pkcs8.pem"))
	require.NoError(b, err)
	_, err = vault.Import(ctx, "key-a", pemKey, map[string]string{"team": "a"})
	require.NoError(b, err)
	pool := AttachSelfSigned(b, vault, "key-a")
	policyFile := filepath.Join(dir, "policy.json")
	// A label grant: authorization looks the key's labels up, its dearer path.
	require.NoError(b, os.WriteFile(policyFile, []byte(`{"grants":[{"identities":["edge"],"rights":["use"],"labels":{"team":"a"}}]}`), 0o600))
	policy, err := authz.Open(policyFile)
	require.NoError(b, err)
	caller := withIdentity(ctx, "edge")

	kv, err := newKeyVault(vault, func(context.Context, *keyvault.Key) bool { return true }, "", nil)
	require.NoError(b, err)
	digest := sha256.Sum256([]byte("benchmark"))
	sign := &pb.SignRequest{Key: "key-a", Version: 1, Scheme: pb.SignatureScheme_SIGNATURE_SCHEME_ECDSA_SECP256R1_SHA256, Input: &pb.SignRequest_Digest{Digest: digest[:]}}
	info := &grpc.UnaryServerInfo{FullMethod: pb.KeyVault_Sign_FullMethodName}
	handler := func(ctx context.Context, req any) (any, error) { return kv.Sign(ctx, req.(*pb.SignRequest)) }
	for _, c := range []struct {
		name   string
		limits Limits
	}{
		{"sign/limits-off", Limits{}},
		{"sign/limits-on", Limits{Rate: 1e9, Burst: 1e9, MaxInFlight: 1024, MaxStreams: 4096}},
	} {
		g := newGuard(vault, Options{Policy: policy, Limits: c.limits}, prometheus.NewRegistry())
		b.Run(c.name, func(b *testing.B) {
			cpu(b, func() error { _, err := g.unary(caller, sign, info, handler); return err })
		})
	}

	hello := GoClientHello(b, pool)
	start := &pb.StartHandshakeRequest{Config: &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: "key-a"}}}}
	g := newGuard(vault, Options{Policy: policy}, prometheus.NewRegistry())
	for _, c := range []struct {
		name string
		on   bool
	}{{"step/authorization-and-caps-off", false}, {"step/authorization-and-caps-on", true}} {
		h := NewHandshake(vault, HandshakeOptions{}, newHandshakeMetrics(prometheus.NewRegistry()))
		if c.on {
			h.authorize = func(ctx context.Context, keys []target) error { return g.allowed(ctx, authz.Use, keys) }
		} else {
			h.sessions.slots, h.sessions.input = nil, nil
		}
		b.Run(c.name, func(b *testing.B) {
			cpu(b, func() error {
				s, err := h.StartHandshake(caller, start)
				if err == nil {
					_, err = h.StepHandshake(caller, &pb.StepHandshakeRequest{Id: s.GetId(), Input: hello})
				}
				if err == nil {
					_, err = h.AbortHandshake(caller, &pb.AbortHandshakeRequest{Id: s.GetId()})
				}
				return err
			})
		})
	}

	// The mechanisms alone, to set against the operations above: what one
	// call costs the limits (rate, in-flight cap) and a step its
	// authorization.
	on := newGuard(vault, Options{Policy: policy, Limits: Limits{Rate: 1e9, Burst: 1e9, MaxInFlight: 1024}}, prometheus.NewRegistry())
	b.Run("limits-alone", func(b *testing.B) {
		cpu(b, func() error {
			if err := on.admit(caller, info.FullMethod, sign); err != nil {
				return err
			}
			if !on.inFlight.acquire("edge", 1) {
				return errTooBusy
			}
			on.inFlight.release("edge", 1)
			return nil
		})
	})
	keys := handshakeKeys(start)
	b.Run("step-authorization-alone", func(b *testing.B) {
		cpu(b, func() error { return on.allowed(caller, authz.Use, keys) })
	})
}

// cpu runs op b.N times on one goroutine and reports the process's CPU
// time per op (cpu-ns/op): on a shared machine it is steadier than ns/op.
func cpu(b *testing.B, op func() error) {
	var before, after syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &before)
	for b.Loop() {
		if err := op(); err != nil {
			b.Fatal(err)
		}
	}
	syscall.Getrusage(syscall.RUSAGE_SELF, &after)
	ns := after.Utime.Nano() + after.Stime.Nano() - before.Utime.Nano() - before.Stime.Nano()
	b.ReportMetric(float64(ns)/float64(b.N), "cpu-ns/op")
}
