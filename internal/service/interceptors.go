package service

import (
	"context"
	"log/slog"
	"runtime/debug"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// recoverUnary turns a handler panic into INTERNAL for that call only, so one
// bad request cannot take the process (and every other caller) down.
func recoverUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
	defer func() {
		if r := recover(); r != nil {
			slog.ErrorContext(ctx, "panic in handler", "method", info.FullMethod, "panic", r, "stack", string(debug.Stack()))
			err = status.Error(codes.Internal, "internal error")
		}
	}()
	return handler(ctx, req)
}

func recoverStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
	defer func() {
		if r := recover(); r != nil {
			slog.ErrorContext(ss.Context(), "panic in handler", "method", info.FullMethod, "panic", r, "stack", string(debug.Stack()))
			err = status.Error(codes.Internal, "internal error")
		}
	}()
	return handler(srv, ss)
}

// logUnary logs each call's method, caller, code and duration; never its
// payload. Refusals for load (RESOURCE_EXHAUSTED) log at debug level, so an
// overload does not turn into a flood of log lines; a metric counts them.
func logUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := handler(ctx, req)
	code := status.Code(err)
	level := slog.LevelDebug
	switch code {
	case codes.OK, codes.ResourceExhausted:
	case codes.Internal, codes.Unknown, codes.DataLoss:
		level = slog.LevelError
	default:
		level = slog.LevelInfo
	}
	// The attributes cost allocations on every call: only for a line
	// that is written.
	if !slog.Default().Enabled(ctx, level) {
		return resp, err
	}
	m := metaOf(ctx)
	slog.Log(ctx, level, "rpc", "method", info.FullMethod, "transport", transportOf(ctx), "code", code.String(), "duration", time.Since(start),
		"caller", m.identity, "request_id", m.requestID)
	return resp, err
}
