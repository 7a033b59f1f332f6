package service_test

import (
	"bytes"
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/service"
	"github.com/handshaked/handshaked/internal/servicetest"
)

// TestShutdownDrainsCallsInFlight: a handshake stream open when shutdown
// begins is served to its end, and shutdown returns only after it.
func TestShutdownDrainsCallsInFlight(t *testing.T) {
	srv := servicetest.Start(t, service.Options{})
	key := srv.ServerKey(t, "drain", "p256-sec1.pem", "ec.test")
	hc := pb.NewHandshakeClient(srv.Conn)
	stream, err := hc.Stream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// The first byte of a handshake record: the engine waits for more, so
	// the stream's handler is running when shutdown begins.
	start := &pb.StartHandshakeRequest{Config: &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: key.ID}}}, Input: []byte{22}}
	if err := stream.Send(&pb.StreamRequest{Request: &pb.StreamRequest_Start{Start: start}}); err != nil {
		t.Fatal(err)
	}
	if out, err := stream.Recv(); err != nil || out.GetState() != pb.HandshakeState_HANDSHAKE_STATE_NEED_INPUT {
		t.Fatalf("first step: %v %v", out, err)
	}

	shutdown := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		shutdown <- srv.Service.Shutdown(ctx)
	}()
	select {
	case err := <-shutdown:
		t.Fatalf("shutdown returned with a stream in flight: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	// Health checks say NOT_SERVING while draining.
	if resp, err := http.Get(srv.RESTURL + "/healthz"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Error("healthz still OK while shutting down")
		}
	}
	// The stream in flight is still served: garbage ends the handshake
	// with an alert, and the stream closes normally.
	if err := stream.Send(&pb.StreamRequest{Request: &pb.StreamRequest_Input{Input: []byte{3, 3, 0, 4, 'j', 'u', 'n', 'k'}}}); err != nil {
		t.Fatal(err)
	}
	out, err := stream.Recv()
	if err != nil || out.GetState() != pb.HandshakeState_HANDSHAKE_STATE_FAILED {
		t.Fatalf("step during shutdown: %v %v", out, err)
	}
	select {
	case err := <-shutdown:
		if err != nil {
			t.Fatalf("shutdown: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("shutdown did not return after the stream ended")
	}
}

// TestRequestSizeLimits: a request over the size limit is refused before it
// is parsed, over gRPC and REST, and the service goes on serving.
func TestRequestSizeLimits(t *testing.T) {
	s := startServer(t)
	big := bytes.Repeat([]byte{'a'}, service.MaxRequestBytes+1)
	_, err := s.kv.Sign(context.Background(), &pb.SignRequest{Key: "any", Scheme: pb.SignatureScheme_SIGNATURE_SCHEME_ED25519, Input: &pb.SignRequest_Message{Message: big}})
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("gRPC: %v, want RESOURCE_EXHAUSTED", err)
	}
	body := `{"scheme":"SIGNATURE_SCHEME_ED25519","message":"` + strings.Repeat("A", service.MaxRequestBytes) + `"}`
	code, raw := s.restCall(t, "POST", "/v1/keys/any:sign", body, nil)
	if code != http.StatusBadRequest && code != http.StatusRequestEntityTooLarge {
		t.Fatalf("REST: HTTP %d %.200s", code, raw)
	}
	if _, err := s.kv.ListKeys(context.Background(), &pb.ListKeysRequest{}); err != nil {
		t.Fatalf("service after oversized requests: %v", err)
	}
}
