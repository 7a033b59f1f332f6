package service

import (
	"bytes"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
)

// TestUndecodableMessageBounded: a caller may send the marker field
// itself; its bytes are not echoed back whole in the status message (a
// header of the answer).
func TestUndecodableMessageBounded(t *testing.T) {
	m := &pb.GetKeyRequest{}
	m.ProtoReflect().SetUnknown(protowire.AppendBytes(bytes.Clone(undecodableTag), []byte(strings.Repeat("x", 64<<10))))
	err := undecodable(m)
	require.Error(t, err)
	assert.Equal(t, codes.InvalidArgument, status.Code(err))
	assert.LessOrEqual(t, len(status.Convert(err).Message()), 300)
}
