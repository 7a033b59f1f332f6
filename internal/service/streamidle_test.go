package service_test

import (
	"context"
	"io"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
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

// TestStreamUnreadEnds: a SignStream whose caller keeps sending and stops
// reading (its flow-control windows full, an answer waiting in Send, the
// service no longer reading it) ends with DEADLINE_EXCEEDED once that
// answer has waited the idle timeout, and its place is freed; one whose
// caller reads, in bursts that keep answers waiting less than the timeout
// each time, goes on.
func TestStreamUnreadEnds(t *testing.T) {
	const timeout = 500 * time.Millisecond
	srv := servicetest.Start(t, service.Options{Limits: service.Limits{MaxStreams: 1, StreamIdleTimeout: timeout}})
	_, err := pb.NewKeyVaultClient(srv.Conn).ImportKey(context.Background(), &pb.ImportKeyRequest{Id: "key-a", PrivateKeyPem: fixture(t, "p256-sec1.pem")})
	require.NoError(t, err)
	req := &pb.SignStreamRequest{Request: signReq("key-a", p256Scheme)}
	// Windows of 64 KiB that do not grow (static windows turn grpc-go's
	// BDP estimation off): a thousand or two unread answers fill them.
	conn, err := grpc.NewClient(srv.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	kv := pb.NewKeyVaultClient(conn)
	idled := func() float64 {
		return servicetest.Metric(t, http.DefaultClient, srv.RESTURL, `handshaked_calls_refused_total{reason="stream_idle"}`)
	}
	// flood sends req on stream until a Send fails or until is past.
	flood := func(stream pb.KeyVault_SignStreamClient, until time.Time) *atomic.Int64 {
		var sent atomic.Int64
		go func() {
			for time.Now().Before(until) && stream.Send(req) == nil {
				sent.Add(1)
			}
			stream.CloseSend()
		}()
		return &sent
	}

	t.Run("read in bursts", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 50*timeout)
		defer cancel()
		stream, err := kv.SignStream(ctx)
		require.NoError(t, err)
		sent := flood(stream, time.Now().Add(3*timeout))
		var read, pauses int64
		for {
			resp, err := stream.Recv()
			if err != nil {
				require.ErrorIs(t, err, io.EOF, "a stream read in bursts ended after %d answers", read)
				break
			}
			require.NotNil(t, resp.GetResponse(), "%v", resp.GetError())
			if read++; read%1000 == 0 {
				// Answers wait in Send meanwhile, half a timeout each time.
				pauses++
				time.Sleep(timeout / 2)
			}
		}
		assert.Equal(t, sent.Load(), read, "every request answered")
		assert.Zero(t, idled(), "stream_idle counted")
		t.Logf("%d answers read, %d pauses of %v", read, pauses, timeout/2)
	})
	t.Run("unread", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 50*timeout)
		defer cancel()
		stream, err := kv.SignStream(ctx)
		require.NoError(t, err)
		sent := flood(stream, time.Now().Add(50*timeout))
		// One answer read: the stream holds the one place.
		_, err = stream.Recv()
		require.NoError(t, err)
		flooded := time.Now()
		require.Equal(t, codes.ResourceExhausted, signServed(t, srv.Conn, req), "a second stream under a cap of one")
		require.Eventually(t, func() bool { return signServed(t, srv.Conn, req) == codes.OK }, 20*timeout, timeout/10,
			"the unread stream keeps its place")
		assert.GreaterOrEqual(t, time.Since(flooded), timeout, "ended before an answer waited the timeout")
		assert.Equal(t, 1.0, idled(), "stream_idle count")
		// The answers sent before the end are there to read, then the end.
		read := 1
		for ; err == nil; read++ {
			_, err = stream.Recv()
		}
		assert.Equal(t, codes.DeadlineExceeded, status.Code(err), "%v", err)
		t.Logf("%d requests sent, %d answers read before the end", sent.Load(), read-1)
	})
}

// signServed opens a SignStream on conn and reports how req on it went.
func signServed(t *testing.T, conn grpc.ClientConnInterface, req *pb.SignStreamRequest) codes.Code {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	stream, err := pb.NewKeyVaultClient(conn).SignStream(ctx)
	require.NoError(t, err)
	if err := stream.Send(req); err != nil {
		_, err = stream.Recv()
		return status.Code(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		return status.Code(err)
	}
	require.NotNil(t, resp.GetResponse(), "%v", resp.GetError())
	return codes.OK
}
