package service_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/service"
	"github.com/handshaked/handshaked/internal/servicetest"
)

// TestServeHealth: the plain-text health listener answers gRPC health
// checks as the API listener does, SERVING and then NOT_SERVING once
// shutdown begins, and serves nothing else.
func TestServeHealth(t *testing.T) {
	srv := servicetest.Start(t, service.Options{})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	served := make(chan error, 1)
	go func() { served <- srv.Service.ServeHealth(lis) }()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	require.NoError(t, err)
	assert.Equal(t, healthpb.HealthCheckResponse_SERVING, resp.GetStatus())
	_, err = pb.NewKeyVaultClient(conn).ListKeys(ctx, &pb.ListKeysRequest{})
	assert.Equal(t, codes.Unimplemented, status.Code(err), "the health listener serves the API: %v", err)

	// A handshake stream in flight holds the shutdown in its drain.
	key := srv.ServerKey(t, "health", "p256-sec1.pem", "ec.test")
	stream, err := pb.NewHandshakeClient(srv.Conn).Stream(ctx)
	require.NoError(t, err)
	start := &pb.StartHandshakeRequest{Config: &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: key.ID}}}, Input: []byte{22}}
	require.NoError(t, stream.Send(&pb.StreamRequest{Request: &pb.StreamRequest_Start{Start: start}}))
	_, err = stream.Recv()
	require.NoError(t, err)
	go srv.Service.Shutdown(ctx)
	require.Eventually(t, func() bool {
		resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
		return err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_NOT_SERVING
	}, 5*time.Second, 20*time.Millisecond, "the health listener says SERVING while calls drain")
	require.NoError(t, stream.CloseSend())
	stream.Recv()
	select {
	case err := <-served:
		assert.NoError(t, err)
	case <-ctx.Done():
		t.Fatal("ServeHealth still serving after Shutdown")
	}
}
