package service

import (
	"context"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"

	"github.com/handshaked/handshaked/internal/keyvault"
	"github.com/handshaked/handshaked/internal/testenv"
)

// TestREADMEErrorCodes: the README's table of what an error means gives
// each code the HTTP status the gateway answers it with, and has a row for
// every code a domain error maps to (codeOf), Internal included.
func TestREADMEErrorCodes(t *testing.T) {
	table := testenv.DocBlock(t, filepath.Join("..", "..", "README.md"), "errors")
	rows := regexp.MustCompile("(?m)^\\| `([A-Z_]+)` \\| ([0-9]{3}) \\|").FindAllStringSubmatch(table, -1)
	require.NotEmpty(t, rows, "the README's error table has no rows")
	listed := map[codes.Code]bool{}
	for _, row := range rows {
		var code codes.Code
		require.NoError(t, code.UnmarshalJSON([]byte(strconv.Quote(row[1]))), "the README's error table names %s", row[1])
		assert.Equal(t, strconv.Itoa(runtime.HTTPStatusFromCode(code)), row[2], "the HTTP status of %s", row[1])
		listed[code] = true
	}
	for _, err := range []error{keyvault.ErrInvalidArgument, keyvault.ErrNotFound, keyvault.ErrAlreadyExists, keyvault.ErrFailedPrecondition,
		keyvault.ErrUnavailable, keyvault.ErrAborted, context.DeadlineExceeded, assert.AnError} {
		assert.True(t, listed[codeOf(err)], "the README's error table has no row for %v (%v)", codeOf(err), err)
	}
	for _, code := range []codes.Code{codes.Unauthenticated, codes.PermissionDenied, codes.ResourceExhausted} { // the service's own refusals
		assert.True(t, listed[code], "the README's error table has no row for %v", code)
	}
}
