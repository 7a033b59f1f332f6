package edge

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	handshaked "github.com/handshaked/handshaked/clients/go"
	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/engine/record"
)

// failingService answers the first unary step with first (nil: fails it)
// and fails every later one, as a service that goes away mid-handshake.
type failingService struct {
	Service
	first *pb.HandshakeStep
}

var errServiceGone = status.Error(codes.Unavailable, "service gone")

func (s failingService) StartStatelessHandshake(context.Context, *pb.HandshakeConfig, []byte) (*pb.HandshakeStep, error) {
	if s.first == nil {
		return nil, errServiceGone
	}
	return s.first, nil
}

func (s failingService) StepStatelessHandshake(context.Context, string, []byte, []byte) (*pb.HandshakeStep, error) {
	return nil, errServiceGone
}

// The compile-time check that failingService is a Service uses the real
// client's methods for the rest.
var _ Service = failingService{Service: (*handshaked.Client)(nil)}

// TestServiceFailureAlert: when the service fails a step, the client is
// told so with a fatal internal_error (RFC 8446, Section 6.2) while it
// still reads the edge's records in the clear; once the service's output
// has switched them to protection (a change_cipher_spec, or a TLS 1.3
// protected record), the edge has no key to protect an alert with and
// just closes.
func TestServiceFailureAlert(t *testing.T) {
	hello := []byte{byte(record.Handshake), 3, 3, 0, 4, 2, 0, 0, 0} // a (truncated) ServerHello: plaintext
	for _, tc := range []struct {
		name  string
		first *pb.HandshakeStep
		want  []byte // what the client reads before the close
	}{
		{"first step fails", nil, internalErrorAlert},
		{"second step fails, output in the clear so far", &pb.HandshakeStep{Id: "h", State: pb.HandshakeState_HANDSHAKE_STATE_NEED_INPUT, Output: hello},
			append(append([]byte(nil), hello...), internalErrorAlert...)},
		{"second step fails after a change_cipher_spec", &pb.HandshakeStep{Id: "h", State: pb.HandshakeState_HANDSHAKE_STATE_NEED_INPUT,
			Output: append(append([]byte(nil), hello...), ccsRecord...)}, append(append([]byte(nil), hello...), ccsRecord...)},
		{"second step fails after a protected record", &pb.HandshakeStep{Id: "h", State: pb.HandshakeState_HANDSHAKE_STATE_NEED_INPUT,
			Output: append(append([]byte(nil), hello...), 23, 3, 3, 0, 1, 0)}, append(append([]byte(nil), hello...), 23, 3, 3, 0, 1, 0)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hello := goClientHello(t)
			server, client := net.Pipe()
			errc := make(chan error, 1)
			go func() {
				_, err := Server(context.Background(), server, &Config{Client: failingService{first: tc.first}, Unary: true, Handshake: &pb.HandshakeConfig{}})
				errc <- err
			}()
			go func() {
				// A ClientHello, then what a client's next flight would
				// be; its content does not matter to the fake service.
				client.Write(hello)
				client.Write([]byte{byte(record.Handshake), 3, 3, 0, 4, 16, 0, 0, 0})
			}()
			client.SetReadDeadline(time.Now().Add(10 * time.Second))
			got, err := io.ReadAll(client)
			require.NoError(t, err, "the edge did not close")
			assert.Equal(t, tc.want, got)
			assert.ErrorIs(t, <-errc, errServiceGone)
		})
	}
}
