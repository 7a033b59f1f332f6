package service_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
)

// TestCreateKeyBackend: CreateKey names the backend, GetKey shows it, and a
// backend the instance has not configured is the caller's
// FAILED_PRECONDITION, an unknown one INVALID_ARGUMENT, over gRPC and REST.
func TestCreateKeyBackend(t *testing.T) {
	s := startServer(t)
	for _, b := range []pb.KeyBackend{pb.KeyBackend_KEY_BACKEND_UNSPECIFIED, pb.KeyBackend_KEY_BACKEND_SOFTWARE} {
		id := uniqueID("backend")
		_, err := s.kv.CreateKey(t.Context(), &pb.CreateKeyRequest{Id: id, Algorithm: pb.Algorithm_ALGORITHM_ECDSA_P256, Backend: b})
		require.NoError(t, err, b)
		k, err := s.kv.GetKey(t.Context(), &pb.GetKeyRequest{Key: id})
		require.NoError(t, err)
		assert.Equal(t, pb.KeyBackend_KEY_BACKEND_SOFTWARE, k.GetVersions()[0].GetBackend(), "created with %v", b)
	}

	_, err := s.kv.CreateKey(t.Context(), &pb.CreateKeyRequest{Id: uniqueID("hsm"), Algorithm: pb.Algorithm_ALGORITHM_ECDSA_P256, Backend: pb.KeyBackend_KEY_BACKEND_PKCS11})
	assert.Equal(t, codes.FailedPrecondition, status.Code(err), "no PKCS#11 backend configured: %v", err)
	_, err = s.kv.CreateKey(t.Context(), &pb.CreateKeyRequest{Id: uniqueID("bad"), Algorithm: pb.Algorithm_ALGORITHM_ECDSA_P256, Backend: 99})
	assert.Equal(t, codes.InvalidArgument, status.Code(err), "%v", err)

	checkRESTStatus(t, s, "POST", "/v1/keys", map[string]any{"id": uniqueID("hsm"), "algorithm": "ALGORITHM_ECDSA_P256", "backend": "KEY_BACKEND_PKCS11"}, codes.FailedPrecondition)
	id := uniqueID("rest")
	var k struct{ Versions []struct{ Backend string } }
	mustRest(t, s, "POST", "/v1/keys", map[string]any{"id": id, "algorithm": "ALGORITHM_ECDSA_P256"}, &k)
	require.Len(t, k.Versions, 1)
	assert.Equal(t, "KEY_BACKEND_SOFTWARE", k.Versions[0].Backend)
}
