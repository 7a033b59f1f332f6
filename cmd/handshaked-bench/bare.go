package main

import (
	"context"
	"fmt"
	"net"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// The bare server does the benchmark's vault operations behind one gRPC
// stream method with nothing around them: no API, no authentication or
// authorization, no interceptors, limits, metrics or audit, no protobuf
// (a request is one byte, the operation's index in keyOps' order, and
// the answer the same byte). Its column is the ceiling of any transport
// of these operations over gRPC on the machine, one message per operation
// on a stream of its own per caller: what the service's transports fall
// short of it is theirs, what it falls short of in-process is gRPC's and
// the two processes' (issue 12).
const bareMethod = "/handshaked.bench.Bare/Stream"

// rawCodec carries a message's bytes as they are.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return *v.(*[]byte), nil }
func (rawCodec) Unmarshal(b []byte, v any) error {
	*v.(*[]byte) = append((*v.(*[]byte))[:0], b...)
	return nil
}
func (rawCodec) Name() string { return "handshaked-bench-raw" }

// serveBare serves the bare stream on loopback, with the service's
// static flow-control windows (internal/service: a PING per few messages
// otherwise) and grpc's stream workers, so that it is what the service's
// gRPC transport could be at best.
func serveBare(ctx context.Context, dir string) (childInfo, func(), error) {
	v, _, err := openVault(ctx, dir)
	if err != nil {
		return childInfo{}, nil, err
	}
	ops, err := vaultOps(ctx, v)
	if err != nil {
		v.Close()
		return childInfo{}, nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		v.Close()
		return childInfo{}, nil, err
	}
	s := grpc.NewServer(
		grpc.ForceServerCodec(rawCodec{}),
		grpc.StaticStreamWindowSize(1<<20), grpc.StaticConnWindowSize(1<<22),
		grpc.NumStreamWorkers(64),
		grpc.UnknownServiceHandler(func(_ any, ss grpc.ServerStream) error {
			var msg []byte
			for {
				if err := ss.RecvMsg(&msg); err != nil {
					return nil // the caller closed the stream
				}
				if len(msg) != 1 || int(msg[0]) >= len(ops) {
					return status.Errorf(codes.InvalidArgument, "no operation %x", msg)
				}
				if err := ops[msg[0]].local(ss.Context(), v); err != nil {
					return err
				}
				if err := ss.SendMsg(&msg); err != nil {
					return err
				}
			}
		}))
	go s.Serve(l)
	return childInfo{GRPC: l.Addr().String()}, func() { s.Stop(); v.Close() }, nil
}

// bareStreams are streams to the bare server, one per caller in flight.
type bareStreams struct {
	conn *grpc.ClientConn
	free chan grpc.ClientStream
}

func dialBare(addr string, maxConc int) (*bareStreams, error) {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithInitialWindowSize(1<<20), grpc.WithInitialConnWindowSize(1<<22))
	if err != nil {
		return nil, err
	}
	return &bareStreams{conn: conn, free: make(chan grpc.ClientStream, maxConc)}, nil
}

// call runs operation i on a stream no other caller is using.
func (b *bareStreams) call(ctx context.Context, i int) error {
	var cs grpc.ClientStream
	select {
	case cs = <-b.free:
	default:
		var err error
		cs, err = b.conn.NewStream(context.Background(), &grpc.StreamDesc{ClientStreams: true, ServerStreams: true}, bareMethod, grpc.ForceCodec(rawCodec{}))
		if err != nil {
			return err
		}
	}
	msg := []byte{byte(i)}
	if err := cs.SendMsg(&msg); err != nil {
		return err
	}
	if err := cs.RecvMsg(&msg); err != nil {
		return fmt.Errorf("bare stream: %w", err)
	}
	b.free <- cs
	return nil
}

func (b *bareStreams) close() { b.conn.Close() }
