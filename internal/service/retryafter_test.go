package service_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/service"
	"github.com/handshaked/handshaked/internal/servicetest"
)

// TestRetryAfter: a call past the rate limit is refused RESOURCE_EXHAUSTED
// with a google.rpc.RetryInfo saying when the caller's bucket holds a token
// again; over REST the 429 carries it as Retry-After, in whole seconds
// rounded up.
func TestRetryAfter(t *testing.T) {
	// One call per 100 s: the wait told is (90 s, 100 s] unless this test
	// stalls for ten seconds.
	const perToken = 100 * time.Second
	srv := servicetest.Start(t, service.Options{Limits: service.Limits{Rate: 1 / perToken.Seconds(), Burst: 1}})
	kv := pb.NewKeyVaultClient(srv.Conn)
	ctx := context.Background()
	_, err := kv.ListKeys(ctx, &pb.ListKeysRequest{})
	require.NoError(t, err, "the burst's one call")

	_, err = kv.ListKeys(ctx, &pb.ListKeysRequest{})
	st := status.Convert(err)
	require.Equal(t, codes.ResourceExhausted, st.Code(), "%v", err)
	var info *errdetails.RetryInfo
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			info = ri
		}
	}
	require.NotNil(t, info, "no RetryInfo in %v", st.Details())
	wait := info.GetRetryDelay().AsDuration()
	assert.Greater(t, wait, perToken-10*time.Second)
	assert.LessOrEqual(t, wait, perToken)

	resp, err := http.Get(srv.RESTURL + "/v1/keys")
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusTooManyRequests, resp.StatusCode)
	seconds, err := strconv.Atoi(resp.Header.Get("Retry-After"))
	require.NoError(t, err, "Retry-After %q", resp.Header.Get("Retry-After"))
	assert.Greater(t, seconds, int((perToken - 10*time.Second).Seconds()))
	assert.LessOrEqual(t, seconds, int(perToken.Seconds()))
	var body struct {
		Code    int
		Details []map[string]any
	}
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&body))
	assert.Equal(t, int(codes.ResourceExhausted), body.Code)
	require.Len(t, body.Details, 1)
	assert.Equal(t, "type.googleapis.com/google.rpc.RetryInfo", body.Details[0]["@type"])

	// Other errors carry no Retry-After.
	ok := servicetest.Start(t, service.Options{})
	resp, err = http.Get(ok.RESTURL + "/v1/keys/no-such-key")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusNotFound, resp.StatusCode)
	assert.Empty(t, resp.Header.Get("Retry-After"))
}
