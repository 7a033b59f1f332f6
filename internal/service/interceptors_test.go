package service

import (
	"context"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// A panicking handler costs its caller an INTERNAL, not the process.
func TestRecoverTurnsPanicIntoInternal(t *testing.T) {
	info := &grpc.UnaryServerInfo{FullMethod: "/test/Panic"}
	_, err := recoverUnary(context.Background(), nil, info, func(context.Context, any) (any, error) {
		var m map[string]int
		m["boom"]++ // nil map write: a real runtime panic
		return nil, nil
	})
	if status.Code(err) != codes.Internal || status.Convert(err).Message() != "internal error" {
		t.Fatalf("got %v, want a bare INTERNAL", err)
	}
	resp, err := recoverUnary(context.Background(), nil, info, func(context.Context, any) (any, error) { return "ok", nil })
	if err != nil || resp != "ok" {
		t.Fatalf("a handler that does not panic: %v %v", resp, err)
	}
}
