package service

import (
	"context"
	"fmt"
	"net/http"
	"testing"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/stretchr/testify/assert"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/handshaked/handshaked/internal/keyvault"
)

// TestSharedStoreErrorCodes: a change aborted by concurrent changes of
// other replicas is ABORTED (HTTP 409), a store that cannot be reached or
// a replica that could not confirm its view UNAVAILABLE (503), each with
// the vault's message, which says what to do.
func TestSharedStoreErrorCodes(t *testing.T) {
	for _, tc := range []struct {
		err  error
		code codes.Code
		http int
	}{
		{fmt.Errorf("keyvault: rotate key \"k\": retry it: %w", keyvault.ErrAborted), codes.Aborted, http.StatusConflict},
		{fmt.Errorf("keyvault: check that etcd is reachable: %w", keyvault.ErrUnavailable), codes.Unavailable, http.StatusServiceUnavailable},
	} {
		st := status.Convert(toStatus(context.Background(), tc.err))
		assert.Equal(t, tc.code, st.Code(), "%v", tc.err)
		assert.Equal(t, tc.err.Error(), st.Message())
		assert.Equal(t, tc.http, runtime.HTTPStatusFromCode(st.Code()))
	}
}
