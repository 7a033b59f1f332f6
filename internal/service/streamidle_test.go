package service_test

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/service"
	"github.com/handshaked/handshaked/internal/servicetest"
)

// TestStreamIdleTimeout: a stream whose caller sends within the idle
// timeout each time stays open however long it lives; one whose caller
// stops sending ends with DEADLINE_EXCEEDED once it has waited the
// timeout, on every kind of stream.
func TestStreamIdleTimeout(t *testing.T) {
	const timeout = 400 * time.Millisecond
	srv := servicetest.Start(t, service.Options{Limits: service.Limits{StreamIdleTimeout: timeout}})
	kv := pb.NewKeyVaultClient(srv.Conn)
	ctx := context.Background()
	_, err := kv.ImportKey(ctx, &pb.ImportKeyRequest{Id: "key-a", PrivateKeyPem: fixture(t, "p256-sec1.pem")})
	require.NoError(t, err)
	req := &pb.SignStreamRequest{Request: signReq("key-a", p256Scheme)}
	// The callers' own deadline, far past the timeout: a stream the
	// service does not end fails the test instead of hanging it.
	const callerDeadline = 50 * timeout
	ctx, cancel := context.WithTimeout(ctx, callerDeadline)
	defer cancel()

	t.Run("busy", func(t *testing.T) {
		stream, err := kv.SignStream(ctx)
		require.NoError(t, err)
		// Four timeouts long, a message every third of one.
		for end := time.Now().Add(4 * timeout); time.Now().Before(end); {
			require.NoError(t, stream.Send(req))
			resp, err := stream.Recv()
			require.NoError(t, err, "a stream used every %v ended", timeout/3)
			require.NotNil(t, resp.GetResponse(), "%v", resp.GetError())
			time.Sleep(timeout / 3)
		}
		require.NoError(t, stream.CloseSend())
		_, err = stream.Recv()
		assert.ErrorIs(t, err, io.EOF)
	})
	t.Run("idle after use", func(t *testing.T) {
		stream, err := kv.SignStream(ctx)
		require.NoError(t, err)
		// Half a timeout in: the wait for the next message starts after
		// the stream's first timeout began.
		time.Sleep(timeout / 2)
		// The service waits for the next message from when it has this
		// one, before it answers it.
		sent := time.Now()
		require.NoError(t, stream.Send(req))
		_, err = stream.Recv()
		require.NoError(t, err)
		_, err = stream.Recv()
		assert.Equal(t, codes.DeadlineExceeded, status.Code(err), "%v", err)
		assert.GreaterOrEqual(t, time.Since(sent), timeout, "ended before the caller was idle for the timeout")
		assert.Less(t, time.Since(sent), callerDeadline/2, "ended by the caller's deadline, not the service")
	})
	t.Run("multiplex, never used", func(t *testing.T) {
		opened := time.Now()
		stream, err := pb.NewHandshakeClient(srv.Conn).Multiplex(ctx)
		require.NoError(t, err)
		_, err = stream.Recv()
		assert.Equal(t, codes.DeadlineExceeded, status.Code(err), "%v", err)
		assert.GreaterOrEqual(t, time.Since(opened), timeout)
		assert.Less(t, time.Since(opened), callerDeadline/2, "ended by the caller's deadline, not the service")
	})
}
