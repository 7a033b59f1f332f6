package service_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	reflectionalphapb "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/reflect/protoreflect"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
)

// rawCodec sends and receives messages as the bytes they are, so a test
// can send what no generated client would.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return *v.(*[]byte), nil }
func (rawCodec) Unmarshal(b []byte, v any) error {
	*v.(*[]byte) = append([]byte(nil), b...)
	return nil
}
func (rawCodec) Name() string { return "proto" }

// hostileMessage is a request's wire bytes and whether they decode.
type hostileMessage struct {
	name   string
	bytes  []byte
	decode bool // false: no proto decoder accepts them
}

// hostileMessages are, for a request type, bytes that do not decode
// (truncations, bad varints, group and field-0 tags, invalid UTF-8 in
// each string field) and bytes that do but hold what no client sends
// (each field with the wrong wire type, unknown enum numbers, huge
// repeated fields, unknown fields).
func hostileMessages(md protoreflect.MessageDescriptor) []hostileMessage {
	tag := protowire.AppendTag
	out := []hostileMessage{
		{"truncated length", tag(nil, 1, protowire.BytesType), false},
		{"length past the end", protowire.AppendVarint(tag(nil, 1, protowire.BytesType), 1<<30), false},
		{"varint of 11 bytes", append(tag(nil, 1, protowire.VarintType), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01), false},
		{"field 0", tag(nil, 0, protowire.VarintType), false},
		{"unterminated group", tag(nil, 1, protowire.StartGroupType), false},
		{"end group alone", tag(nil, 1, protowire.EndGroupType), false},
		{"unknown fields", protowire.AppendBytes(tag(protowire.AppendVarint(tag(nil, 9999, protowire.VarintType), 7), 10000, protowire.BytesType), []byte("x")), true},
	}
	fields := md.Fields()
	for i := range fields.Len() {
		f := fields.Get(i)
		n := f.Number()
		// The wrong wire type: a proto decoder keeps it as an unknown field.
		wrong := protowire.AppendBytes(tag(nil, n, protowire.BytesType), []byte("x"))
		if f.Kind() == protoreflect.StringKind || f.Kind() == protoreflect.BytesKind || f.Kind() == protoreflect.MessageKind {
			wrong = protowire.AppendVarint(tag(nil, n, protowire.VarintType), 1)
		}
		if !f.IsList() { // a packed list takes both
			out = append(out, hostileMessage{fmt.Sprintf("%s: wrong wire type", f.Name()), wrong, true})
		}
		switch f.Kind() {
		case protoreflect.StringKind:
			out = append(out, hostileMessage{fmt.Sprintf("%s: invalid UTF-8", f.Name()), protowire.AppendBytes(tag(nil, n, protowire.BytesType), []byte{0xc3, 0x28}), false})
		case protoreflect.EnumKind:
			for _, v := range []int64{99999, -1} {
				out = append(out, hostileMessage{fmt.Sprintf("%s: enum number %d", f.Name(), v), protowire.AppendVarint(tag(nil, n, protowire.VarintType), uint64(v)), true})
			}
		case protoreflect.MessageKind:
			if sub := f.Message(); sub.FullName().Parent() == md.FullName().Parent() {
				for _, inner := range hostileMessages(sub) {
					if !inner.decode || inner.name == "unknown fields" {
						out = append(out, hostileMessage{fmt.Sprintf("%s: %s", f.Name(), inner.name), protowire.AppendBytes(tag(nil, n, protowire.BytesType), inner.bytes), inner.decode})
					}
				}
			}
		}
		if f.IsList() {
			var b []byte
			for range 100_000 {
				b = protowire.AppendBytes(tag(b, n, protowire.BytesType), nil)
			}
			if f.Kind() != protoreflect.StringKind && f.Kind() != protoreflect.BytesKind && f.Kind() != protoreflect.MessageKind {
				b = protowire.AppendBytes(tag(nil, n, protowire.BytesType), make([]byte, 100_000))
			}
			out = append(out, hostileMessage{fmt.Sprintf("%s: 100,000 items", f.Name()), b, true})
		}
	}
	return out
}

// endless are the streams that never end by design: the health Watch
// sends each change of the status until the caller leaves (grpc.health.v1).
var endless = map[protoreflect.FullName]bool{"grpc.health.v1.Health.Watch": true}

// callRaw sends msg to method as its one request (streams: then closes
// its side) and returns the first error, nil if every answer came (an
// endless stream: its first answer).
func callRaw(ctx context.Context, conn *grpc.ClientConn, sd protoreflect.ServiceDescriptor, m protoreflect.MethodDescriptor, msg []byte) error {
	name := fmt.Sprintf("/%s/%s", sd.FullName(), m.Name())
	if !m.IsStreamingClient() && !m.IsStreamingServer() {
		var reply []byte
		return conn.Invoke(ctx, name, &msg, &reply, grpc.ForceCodec(rawCodec{}))
	}
	st, err := conn.NewStream(ctx, &grpc.StreamDesc{ClientStreams: m.IsStreamingClient(), ServerStreams: m.IsStreamingServer()}, name, grpc.ForceCodec(rawCodec{}))
	if err != nil {
		return err
	}
	if err := st.SendMsg(&msg); err != nil && err != io.EOF {
		return err
	}
	if err := st.CloseSend(); err != nil {
		return err
	}
	for {
		var reply []byte
		if err := st.RecvMsg(&reply); err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
		if endless[m.FullName()] {
			return nil
		}
	}
}

// TestGRPCHostileInputSweep sends every method of the API, and of the
// health and reflection services it serves beside (and of the health
// listener's), as described by their descriptors, each hostile message
// of its request type: bytes that do not decode are INVALID_ARGUMENT,
// never INTERNAL; nothing a caller sends is INTERNAL or UNKNOWN; and no
// refused call changes what is stored.
func TestGRPCHostileInputSweep(t *testing.T) {
	s := startServer(t)
	importFixture(t, s, "sweep-ec", "p256-sec1.pem")
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go s.Service.ServeHealth(lis)
	healthConn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer healthConn.Close()
	before := storeSnapshot(t, s)
	methods := 0
	for _, l := range []struct {
		name string
		conn *grpc.ClientConn
		fds  []protoreflect.FileDescriptor
	}{
		{"api", s.Conn, []protoreflect.FileDescriptor{
			pb.File_handshake_v1_keyvault_proto, pb.File_handshake_v1_handshake_proto, pb.File_handshake_v1_admin_proto,
			healthpb.File_grpc_health_v1_health_proto, reflectionpb.File_grpc_reflection_v1_reflection_proto, reflectionalphapb.File_grpc_reflection_v1alpha_reflection_proto,
		}},
		{"health listener", healthConn, []protoreflect.FileDescriptor{healthpb.File_grpc_health_v1_health_proto}},
	} {
		for _, fd := range l.fds {
			for i := range fd.Services().Len() {
				sd := fd.Services().Get(i)
				for j := range sd.Methods().Len() {
					m := sd.Methods().Get(j)
					methods++
					for _, msg := range hostileMessages(m.Input()) {
						t.Run(fmt.Sprintf("%s/%s/%s", l.name, m.FullName(), msg.name), func(t *testing.T) {
							ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
							defer cancel()
							err := callRaw(ctx, l.conn, sd, m, msg.bytes)
							code := status.Code(err)
							assert.NotContains(t, []codes.Code{codes.Internal, codes.Unknown, codes.DeadlineExceeded}, code, "%v", err)
							if !msg.decode {
								assert.Equal(t, codes.InvalidArgument, code, "bytes that do not decode: %v", err)
							}
							after := storeSnapshot(t, s)
							if err != nil {
								assert.Equal(t, before, after, "a refused call changed what is stored")
							}
							before = after
						})
					}
				}
			}
		}
	}
	require.Greater(t, methods, 20, "too few methods in the descriptors")
}
