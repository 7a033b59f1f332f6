package service

import (
	"bytes"
	"context"
	"slices"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// A request the gRPC server cannot decode (truncated, a bad varint, a
// string that is not UTF-8) is the caller's mistake, INVALID_ARGUMENT. But
// grpc-go sends INTERNAL, the service's fault, as soon as its codec fails,
// before any handler or interceptor runs. So the server's codec
// (callerCodec) does not fail: it leaves the message empty but for an
// unknown field, undecodableField, holding the error, and the handlers,
// wrapped at registration (callerDecoding), refuse a message holding it.
// A client may send that field itself: it is refused the same way.

// undecodableField is the largest field number protobuf allows, which no
// message of the API uses.
const undecodableField = protowire.MaxValidNumber

var undecodableTag = protowire.AppendTag(nil, undecodableField, protowire.BytesType)

// callerCodec is gRPC's proto codec, which marks what it cannot decode.
type callerCodec struct{ encoding.CodecV2 }

func newCallerCodec() callerCodec { return callerCodec{encoding.GetCodecV2(grpcproto.Name)} }

func (c callerCodec) Unmarshal(data mem.BufferSlice, v any) error {
	err := c.CodecV2.Unmarshal(data, v)
	m, ok := v.(proto.Message)
	if err == nil || !ok {
		return err
	}
	proto.Reset(m)
	m.ProtoReflect().SetUnknown(protowire.AppendBytes(bytes.Clone(undecodableTag), []byte(err.Error())))
	return nil
}

// undecodable is INVALID_ARGUMENT, with the decoder's error, for a
// message callerCodec marked, nil for any other.
func undecodable(v any) error {
	m, ok := v.(proto.Message)
	if !ok {
		return nil
	}
	u := m.ProtoReflect().GetUnknown()
	if !bytes.HasPrefix(u, undecodableTag) {
		return nil
	}
	msg, _ := protowire.ConsumeBytes(u[len(undecodableTag):])
	return status.Errorf(codes.InvalidArgument, "request: %.256s", msg)
}

// callerDecoding registers services with a gRPC server that decodes with
// callerCodec, their handlers refusing what it could not decode.
type callerDecoding struct{ *grpc.Server }

func (r callerDecoding) RegisterService(sd *grpc.ServiceDesc, impl any) {
	wrapped := *sd
	wrapped.Methods = slices.Clone(sd.Methods)
	for i, m := range wrapped.Methods {
		h := m.Handler
		wrapped.Methods[i].Handler = func(srv any, ctx context.Context, dec func(any) error, ic grpc.UnaryServerInterceptor) (any, error) {
			return h(srv, ctx, func(v any) error {
				if err := dec(v); err != nil {
					return err
				}
				return undecodable(v)
			}, ic)
		}
	}
	wrapped.Streams = slices.Clone(sd.Streams)
	for i, s := range wrapped.Streams {
		h := s.Handler
		wrapped.Streams[i].Handler = func(srv any, st grpc.ServerStream) error { return h(srv, decodingStream{st}) }
	}
	r.Server.RegisterService(&wrapped, impl)
}

type decodingStream struct{ grpc.ServerStream }

func (s decodingStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	return undecodable(m)
}
