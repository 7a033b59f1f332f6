package service

import (
	"bytes"
	"context"
	"crypto/rand"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/keyvault"
)

// BenchmarkRESTHandler runs a REST Ed25519 Sign through the server's HTTP
// handler in process, without a connection: what the gateway, the JSON
// codec, the HTTP middleware and the local call add to the signature, with
// allocations per call (cmd/handshaked's BenchmarkRESTvsGRPC measures the
// whole of it, net/http included, from another process):
//
//	go test -run '^$' -bench RESTHandler -benchmem ./internal/service/
func BenchmarkRESTHandler(b *testing.B) {
	ctx := context.Background()
	store, err := keyvault.OpenBolt(filepath.Join(b.TempDir(), "keys.db"))
	require.NoError(b, err)
	kek := make([]byte, 32)
	rand.Read(kek)
	vault, err := keyvault.New(ctx, store, kek)
	require.NoError(b, err)
	b.Cleanup(func() { vault.Close() })
	_, err = vault.Create(ctx, "ed", keyvault.Ed25519, nil)
	require.NoError(b, err)
	s, err := New(vault, Options{})
	require.NoError(b, err)
	body := []byte(`{"scheme":"SIGNATURE_SCHEME_ED25519","message":"YmVuY2htYXJr"}`)
	b.ReportAllocs()
	before := processCPUTime()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			req := httptest.NewRequest(http.MethodPost, "http://127.0.0.1:8080/v1/keys/ed:sign", bytes.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			w := httptest.NewRecorder()
			s.http.Handler.ServeHTTP(w, req)
			if w.Code != http.StatusOK {
				b.Errorf("%d %s", w.Code, w.Body)
				return
			}
		}
	})
	b.ReportMetric(float64(processCPUTime()-before)/float64(b.N), "cpu-ns/op")
}

// processCPUTime is the CPU time this process has used (user and system).
func processCPUTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
