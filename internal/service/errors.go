package service

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/handshaked/handshaked/internal/keyvault"
)

// toStatus maps a domain error to a gRPC status. The vault's sentinel errors
// carry caller mistakes; their messages are safe to return (the vault never
// puts secrets in errors). Anything else is the service's fault: the caller
// gets a generic INTERNAL and the detail goes to the log only.
func toStatus(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	code := codeOf(err)
	if code == codes.Internal {
		slog.ErrorContext(ctx, "internal error", "err", err)
		return status.Error(codes.Internal, "internal error")
	}
	return status.Error(code, err.Error())
}

// codeOf is the gRPC code a domain error maps to: OK for nil, the status's
// own code for a status error, Internal for what is not a caller's mistake.
func codeOf(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	if st, ok := status.FromError(err); ok {
		return st.Code()
	}
	switch {
	case errors.Is(err, keyvault.ErrInvalidArgument):
		return codes.InvalidArgument
	case errors.Is(err, keyvault.ErrNotFound):
		return codes.NotFound
	case errors.Is(err, keyvault.ErrAlreadyExists):
		return codes.AlreadyExists
	case errors.Is(err, keyvault.ErrFailedPrecondition):
		return codes.FailedPrecondition
	case errors.Is(err, keyvault.ErrClosed), errors.Is(err, keyvault.ErrUnavailable):
		return codes.Unavailable
	case errors.Is(err, keyvault.ErrAborted):
		return codes.Aborted
	case errors.Is(err, context.Canceled):
		return codes.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		return codes.DeadlineExceeded
	}
	return codes.Internal
}

// invalid is a caller mistake found by the service's own validation.
func invalid(format string, args ...any) error {
	return status.Errorf(codes.InvalidArgument, format, args...)
}

// restError is the gateway's error handler: grpc-gateway's own, plus a
// Retry-After header (RFC 9110 §10.2.3) when the status says, in a
// google.rpc.RetryInfo detail, how long the caller should wait: in whole
// seconds, rounded up, at least 1.
func restError(ctx context.Context, mux *runtime.ServeMux, m runtime.Marshaler, w http.ResponseWriter, r *http.Request, err error) {
	if st, ok := status.FromError(err); ok {
		if d, ok := retryDelay(st); ok {
			w.Header().Set("Retry-After", strconv.FormatInt(retryAfterSeconds(d), 10))
		}
	}
	runtime.DefaultHTTPErrorHandler(ctx, mux, m, w, r, err)
}

func retryAfterSeconds(d time.Duration) int64 {
	return max(1, int64((d+time.Second-1)/time.Second))
}
