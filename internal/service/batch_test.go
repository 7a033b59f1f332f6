package service_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
)

func batchSign(key string, scheme pb.SignatureScheme, msg string) *pb.BatchOperation {
	return &pb.BatchOperation{Operation: &pb.BatchOperation_Sign{Sign: &pb.SignRequest{Key: key, Scheme: scheme, Input: &pb.SignRequest_Message{Message: []byte(msg)}}}}
}

// TestBatchProduction: over mutual TLS, a batch mixing an allowed
// signature, a signature with a key the caller may not use, a premaster
// decryption and a failing operation answers each in order with its own
// outcome; every operation has its own audit entry carrying the batch's
// reference, and the batch one more.
func TestBatchProduction(t *testing.T) {
	s := startSecure(t, secureOptions{})
	ctx := context.Background()
	m := newMixedBatch(t, s)

	var rid requestID
	resp, err := s.kv(t, "edge").Batch(ctx, &pb.BatchRequest{Reference: "collect-42", Operations: m.ops}, rid.opt())
	require.NoError(t, err)
	assert.Equal(t, "collect-42", resp.GetReference())
	m.check(t, resp.GetResults())
	pubA := m.pubA
	digest := sha256.Sum256([]byte("one"))

	entries := s.auditFor(t, rid.String())
	var ops []string
	for _, e := range entries {
		assert.Equal(t, "collect-42", e.Reference, "entry %+v", e)
		assert.Equal(t, idEdge, e.Caller)
		ops = append(ops, e.Operation+" "+e.Key+" "+e.Outcome)
	}
	assert.ElementsMatch(t, []string{
		"KeyVault.Batch  OK",
		"KeyVault.Batch.Sign key-a OK",
		"KeyVault.Batch.Sign key-b PERMISSION_DENIED",
		"KeyVault.Batch.Decrypt key-rsa OK",
		"KeyVault.Batch.Sign key-a INVALID_ARGUMENT",
	}, ops)

	t.Run("REST", func(t *testing.T) {
		r := s.rest(t, "edge", http.MethodPost, "/v1/keys:batch", map[string]any{
			"reference":  "rest-1",
			"operations": []any{map[string]any{"sign": map[string]any{"key": "key-a", "scheme": p256Scheme.String(), "message": []byte("one")}}, map[string]any{"sign": map[string]any{"key": "key-b", "scheme": edScheme.String(), "message": []byte("two")}}},
		}, nil)
		require.NoError(t, r.err)
		require.Equal(t, http.StatusOK, r.status, string(r.body))
		var out struct {
			Reference string
			Results   []struct {
				Sign  *struct{ Signature []byte }
				Error *struct{ Code int32 }
			}
		}
		require.NoError(t, json.Unmarshal(r.body, &out))
		assert.Equal(t, "rest-1", out.Reference)
		require.Len(t, out.Results, 2)
		require.NotNil(t, out.Results[0].Sign)
		assert.True(t, ecdsa.VerifyASN1(pubA, digest[:], out.Results[0].Sign.Signature))
		require.NotNil(t, out.Results[1].Error)
		assert.Equal(t, int32(codes.PermissionDenied), out.Results[1].Error.Code)
	})
}

// TestBatchLimits: an empty batch, one over the operation limit, an
// oversized reference, an operation with neither sign nor decrypt and an
// oversized key id are the caller's mistakes: INVALID_ARGUMENT over gRPC,
// 400 over REST.
func TestBatchLimits(t *testing.T) {
	s := startServer(t)
	ctx := context.Background()
	importFixture(t, s, "key-a", "p256-sec1.pem")
	many := make([]*pb.BatchOperation, 257)
	for i := range many {
		many[i] = batchSign("key-a", p256Scheme, "m")
	}
	for name, req := range map[string]*pb.BatchRequest{
		"empty":        {},
		"too many":     {Operations: many},
		"reference":    {Reference: strings.Repeat("r", 65), Operations: many[:1]},
		"no operation": {Operations: []*pb.BatchOperation{{}}},
		"key id":       {Operations: []*pb.BatchOperation{batchSign(strings.Repeat("k", 65), p256Scheme, "m")}},
	} {
		_, err := s.kv.Batch(ctx, req)
		assert.Equal(t, codes.InvalidArgument, status.Code(err), "%s: %v", name, err)
	}
	resp, err := s.kv.Batch(ctx, &pb.BatchRequest{Operations: many[:256]})
	require.NoError(t, err, "256 operations are allowed")
	for i, r := range resp.GetResults() {
		require.NotEmpty(t, r.GetSign().GetSignature(), "result %d", i)
	}
	code, body := s.restCall(t, http.MethodPost, "/v1/keys:batch", map[string]any{"operations": []any{}}, nil)
	assert.Equal(t, http.StatusBadRequest, code, string(body))
}

func vaultPublicKey(t *testing.T, s *secureServer, id string) crypto.PublicKey {
	t.Helper()
	k, err := s.vault.Get(context.Background(), id)
	require.NoError(t, err)
	return k.Versions[0].PublicKey
}

// mixedBatch is a batch of four operations by the edge: a signature with
// key-a, one with key-b (which the edge may not use), a premaster
// decryption with key-rsa and a signature with a scheme key-a cannot make.
type mixedBatch struct {
	ops       []*pb.BatchOperation
	pubA      *ecdsa.PublicKey
	premaster []byte
}

// newMixedBatch imports the batch's keys into s and makes the batch.
func newMixedBatch(t *testing.T, s *secureServer) mixedBatch {
	t.Helper()
	s.adminImport(t, "key-a", "p256-pkcs8.pem", nil)
	s.adminImport(t, "key-b", "ed25519-pkcs8.pem", nil)
	s.adminImport(t, "key-rsa", "rsa2048-pkcs1.pem", nil)
	m := mixedBatch{pubA: vaultPublicKey(t, s, "key-a").(*ecdsa.PublicKey), premaster: make([]byte, 48)}
	m.premaster[0], m.premaster[1] = 3, 3
	rand.Read(m.premaster[2:])
	ct, err := rsa.EncryptPKCS1v15(rand.Reader, vaultPublicKey(t, s, "key-rsa").(*rsa.PublicKey), m.premaster)
	require.NoError(t, err)
	m.ops = []*pb.BatchOperation{
		batchSign("key-a", p256Scheme, "one"),
		batchSign("key-b", edScheme, "two"),
		{Operation: &pb.BatchOperation_Decrypt{Decrypt: &pb.DecryptRequest{Key: "key-rsa", Mode: pb.DecryptMode_DECRYPT_MODE_RSA_PKCS1_TLS_PREMASTER, Ciphertext: ct}}},
		batchSign("key-a", edScheme, "wrong scheme for the key"),
	}
	return m
}

// check checks that results answer the batch's operations, in order.
func (m mixedBatch) check(t *testing.T, results []*pb.BatchResult) {
	t.Helper()
	require.Len(t, results, 4)
	digest := sha256.Sum256([]byte("one"))
	assert.True(t, ecdsa.VerifyASN1(m.pubA, digest[:], results[0].GetSign().GetSignature()), "first result is key-a's signature of its message")
	assert.Equal(t, int32(codes.PermissionDenied), results[1].GetError().GetCode(), "edge has no use on key-b")
	assert.Equal(t, m.premaster, results[2].GetDecrypt().GetPlaintext())
	assert.Equal(t, int32(codes.InvalidArgument), results[3].GetError().GetCode(), "Ed25519 scheme with a P-256 key")
}
