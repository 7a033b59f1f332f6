package service

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"

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
//
// A compressed request that does not inflate is the caller's mistake too,
// and grpc-go sends INTERNAL for it as well, whatever error the
// decompressor gives. So gzip requests are inflated by callerGzip, which
// gives a body that does not inflate to the codec as a message holding
// undecodableField.

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
	m.ProtoReflect().SetUnknown(undecodableMessage(err))
	return nil
}

// undecodableMessage is the wire form of a message holding only
// undecodableField, with err.
func undecodableMessage(err error) []byte {
	return protowire.AppendBytes(bytes.Clone(undecodableTag), []byte(err.Error()))
}

// callerGzip inflates the gzip requests of one gRPC server, whose largest
// request is max bytes. It is that server's grpc.RPCDecompressor, which
// grpc-go prefers to the process-wide compressor registry (where
// encoding/gzip is, and whose Decompress errors grpc-go turns into
// INTERNAL): its Do returns the whole message, so a body that does not
// inflate can be a message holding undecodableField, refused as
// INVALID_ARGUMENT. grpc.RPCDecompressor is deprecated, but the registry
// has no per-server entry and no way to make an error the caller's.
type callerGzip struct {
	max     int
	readers sync.Pool // *gzip.Reader: each holds a 32 KiB window
}

func newCallerGzip(max int) *callerGzip { return &callerGzip{max: max} }

func (*callerGzip) Type() string { return "gzip" }

// Do inflates at most max+1 bytes: grpc-go refuses a message larger than
// max (RESOURCE_EXHAUSTED, as an uncompressed one) and a small body must
// not inflate to gigabytes first.
func (d *callerGzip) Do(r io.Reader) ([]byte, error) {
	b, err := d.inflate(r)
	if err != nil {
		if errors.Is(err, io.EOF) { // no gzip member at all (RFC 1952, section 2.2)
			err = io.ErrUnexpectedEOF
		}
		return undecodableMessage(fmt.Errorf("grpc-encoding gzip: %w", err)), nil
	}
	return b, nil
}

func (d *callerGzip) inflate(r io.Reader) ([]byte, error) {
	z, _ := d.readers.Get().(*gzip.Reader)
	if z == nil {
		var err error
		if z, err = gzip.NewReader(r); err != nil {
			return nil, err
		}
	} else if err := z.Reset(r); err != nil {
		d.readers.Put(z)
		return nil, err
	}
	defer d.readers.Put(z)
	return io.ReadAll(io.LimitReader(z, int64(d.max)+1))
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

// callerDecodingOptions are the options of a gRPC server that takes
// requests of at most max bytes, inflated or not, decoding them as the
// handlers callerDecoding registers expect.
func callerDecodingOptions(max int) []grpc.ServerOption {
	return []grpc.ServerOption{grpc.MaxRecvMsgSize(max), grpc.ForceServerCodecV2(newCallerCodec()), grpc.RPCDecompressor(newCallerGzip(max))}
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
