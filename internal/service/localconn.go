package service

import (
	"context"
	"io"
	"net"
	"net/http"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// The REST gateway calls the service's handlers in this process: localConn
// is the grpc.ClientConnInterface the gateway's generated clients call
// through, and it runs each call through the interceptor chain the gRPC
// server runs (calls), so a REST call is authenticated, limited,
// authorized, audited, logged, counted, traced and its errors mapped as a
// gRPC call is, without a second HTTP/2 round trip inside the process
// (issue 12: that hop cost REST twice the server CPU of gRPC).
//
// What a gRPC server takes from its transport, localConn takes from the
// HTTP request: the caller's address and verified client certificate
// (withConnPeer and withHTTPPeer put them in the context of the request's
// connection as a peer.Peer, which is where the gRPC transport puts them)
// and the metadata the gateway derives from the request's headers (its
// outgoing metadata becomes the call's incoming metadata). Nothing a REST
// caller sends can set the peer.
type localConn struct {
	unary   map[string]localMethod
	streams map[string]localStreamDesc
	calls   *calls
}

type localMethod struct {
	impl    any
	handler grpc.MethodHandler
}

type localStreamDesc struct {
	impl any
	desc grpc.StreamDesc
}

func newLocalConn(c *calls) *localConn {
	return &localConn{unary: map[string]localMethod{}, streams: map[string]localStreamDesc{}, calls: c}
}

// RegisterService makes sd's methods callable through c, as
// grpc.Server.RegisterService makes them callable remotely.
func (c *localConn) RegisterService(sd *grpc.ServiceDesc, impl any) {
	for _, m := range sd.Methods {
		c.unary["/"+sd.ServiceName+"/"+m.MethodName] = localMethod{impl, m.Handler}
	}
	for _, s := range sd.Streams {
		c.streams["/"+sd.ServiceName+"/"+s.StreamName] = localStreamDesc{impl, s}
	}
}

// registrars register a service with each of them: the gRPC server and the
// gateway's localConn serve the same handlers.
type registrars []grpc.ServiceRegistrar

func (rs registrars) RegisterService(sd *grpc.ServiceDesc, impl any) {
	for _, r := range rs {
		r.RegisterService(sd, impl)
	}
}

// Transports, the transport label of the call metrics and attribute of the
// call spans.
const (
	transportGRPC = "grpc"
	transportREST = "rest"
)

// transportOf is the transport a call came by: a local call's context
// holds one of localConn's transport streams.
func transportOf(ctx context.Context) string {
	switch grpc.ServerTransportStreamFromContext(ctx).(type) {
	case *localTransportStream, localStreamTransport:
		return transportREST
	}
	return transportGRPC
}

// incoming turns the gateway's context into the one a handler sees: the
// gateway's outgoing metadata (the forwarded headers) as the incoming
// metadata, and st to collect the headers and trailers the call sets.
func incoming(ctx context.Context, st grpc.ServerTransportStream) context.Context {
	md, _ := metadata.FromOutgoingContext(ctx)
	return grpc.NewContextWithServerTransportStream(metadata.NewIncomingContext(ctx, md), st)
}

// Invoke runs a unary call.
func (c *localConn) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	m, ok := c.unary[method]
	if !ok {
		return status.Errorf(codes.Unimplemented, "unknown method %s", method)
	}
	st := &localTransportStream{method: method}
	resp, err := m.handler(m.impl, incoming(ctx, st), func(in any) error { return copyMessage(in, args) }, c.calls.unary)
	st.deliver(opts)
	if err != nil {
		// What the gRPC server sends for an error that is not a status.
		return status.Convert(err).Err()
	}
	return copyMessage(reply, resp)
}

// copyMessage copies src into dst, a new message of the same type: the
// caller and the handler each keep their own message, as they would with
// a transport between them.
func copyMessage(dst, src any) error {
	d, ok := dst.(proto.Message)
	s, ok2 := src.(proto.Message)
	if !ok || !ok2 {
		return status.Errorf(codes.Internal, "local call: %T or %T is not a proto message", dst, src)
	}
	proto.Merge(d, s)
	return nil
}

// localTransportStream collects the headers and trailers a call sets
// (grpc.SetHeader, grpc.SetTrailer) for the gateway, which sends them as
// HTTP headers (Grpc-Metadata-*).
type localTransportStream struct {
	method string

	mu              sync.Mutex
	header, trailer metadata.MD
}

func (s *localTransportStream) Method() string { return s.method }

func (s *localTransportStream) SetHeader(md metadata.MD) error {
	s.mu.Lock()
	if s.header == nil {
		s.header = md // the request id's, the only header a call sets
	} else {
		s.header = metadata.Join(s.header, md)
	}
	s.mu.Unlock()
	return nil
}

func (s *localTransportStream) SendHeader(md metadata.MD) error { return s.SetHeader(md) }

func (s *localTransportStream) SetTrailer(md metadata.MD) error {
	s.mu.Lock()
	s.trailer = metadata.Join(s.trailer, md)
	s.mu.Unlock()
	return nil
}

// deliver hands the headers and trailers to the call options that asked
// for them.
func (s *localTransportStream) deliver(opts []grpc.CallOption) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, o := range opts {
		switch o := o.(type) {
		case grpc.HeaderCallOption:
			*o.HeaderAddr = s.header
		case grpc.TrailerCallOption:
			*o.TrailerAddr = s.trailer
		}
	}
}

// NewStream runs a streaming call: its handler runs on a goroutine of its
// own, as on a gRPC server, and the two sides exchange copies of the
// messages over channels of at most one message, so a side that stops
// reading holds the other one back (flow control) and the end of ctx, the
// HTTP request's, ends both. The one message of the caller's side is
// buffered, as a gRPC client buffers what it sends: a request is sent even
// when the handler refuses the call before reading it, and the refusal
// comes from RecvMsg.
func (c *localConn) NewStream(ctx context.Context, _ *grpc.StreamDesc, method string, _ ...grpc.CallOption) (grpc.ClientStream, error) {
	sd, ok := c.streams[method]
	if !ok {
		return nil, status.Errorf(codes.Unimplemented, "unknown method %s", method)
	}
	s := &localStream{
		method:     method,
		desc:       sd.desc,
		toServer:   make(chan proto.Message, 1),
		toClient:   make(chan proto.Message),
		headerSent: make(chan struct{}),
		done:       make(chan struct{}),
	}
	s.ctx = ctx
	hctx, end := context.WithCancel(ctx)
	s.hctx = incoming(hctx, localStreamTransport{(*localServerStream)(s)})
	go func() {
		info := &grpc.StreamServerInfo{FullMethod: method, IsClientStream: sd.desc.ClientStreams, IsServerStream: sd.desc.ServerStreams}
		err := c.calls.stream(sd.impl, (*localServerStream)(s), info, sd.desc.Handler)
		s.finish(err)
		end()
	}()
	return (*localClientStream)(s), nil
}

// localStream is both ends of a local streaming call: localClientStream
// is the gateway's, localServerStream the handler's.
type localStream struct {
	method string
	desc   grpc.StreamDesc
	ctx    context.Context // the gateway's, which ends with the HTTP request
	// hctx is the handler's: ctx's, ended also once the call has (as a
	// gRPC server stream's), which releases a handler goroutine still
	// waiting in SendMsg or RecvMsg after the guard ended an idle stream.
	hctx     context.Context
	toServer chan proto.Message
	toClient chan proto.Message
	closeTx  sync.Once
	closed   bool // CloseSend was called (by the caller's goroutine, as SendMsg)

	mu              sync.Mutex
	header, trailer metadata.MD
	headerSent      chan struct{} // closed once the header is final
	headerOnce      sync.Once
	done            chan struct{} // closed when the handler has returned
	err             error         // the handler's status, once done
}

func (s *localStream) sendHeader() { s.headerOnce.Do(func() { close(s.headerSent) }) }

func (s *localStream) finish(err error) {
	s.mu.Lock()
	if err != nil {
		s.err = status.Convert(err).Err()
	}
	s.mu.Unlock()
	s.sendHeader()
	close(s.done)
}

// ctxErr is the status of a call whose context ended.
func ctxErr(ctx context.Context) error { return status.FromContextError(ctx.Err()).Err() }

type localServerStream localStream

func (s *localServerStream) Context() context.Context { return s.hctx }

func (s *localServerStream) SetHeader(md metadata.MD) error {
	select {
	case <-s.headerSent:
		return status.Error(codes.Internal, "header already sent")
	default:
	}
	s.mu.Lock()
	s.header = metadata.Join(s.header, md)
	s.mu.Unlock()
	return nil
}

func (s *localServerStream) SendHeader(md metadata.MD) error {
	if err := s.SetHeader(md); err != nil {
		return err
	}
	(*localStream)(s).sendHeader()
	return nil
}

func (s *localServerStream) SetTrailer(md metadata.MD) {
	s.mu.Lock()
	s.trailer = metadata.Join(s.trailer, md)
	s.mu.Unlock()
}

func (s *localServerStream) SendMsg(m any) error {
	(*localStream)(s).sendHeader()
	msg, ok := m.(proto.Message)
	if !ok {
		return status.Errorf(codes.Internal, "local stream: %T is not a proto message", m)
	}
	select {
	case s.toClient <- proto.Clone(msg):
		return nil
	case <-s.hctx.Done():
		return ctxErr(s.hctx)
	}
}

func (s *localServerStream) RecvMsg(m any) error {
	select {
	case msg, ok := <-s.toServer:
		if !ok {
			return io.EOF
		}
		return copyMessage(m, msg)
	case <-s.hctx.Done():
		return ctxErr(s.hctx)
	}
}

// localStreamTransport is the handler's end as grpc.SetHeader and
// grpc.SetTrailer find it in the handler's context.
type localStreamTransport struct{ *localServerStream }

func (t localStreamTransport) Method() string { return t.method }

func (t localStreamTransport) SetTrailer(md metadata.MD) error {
	t.localServerStream.SetTrailer(md)
	return nil
}

type localClientStream localStream

func (s *localClientStream) Context() context.Context { return s.ctx }

// Header waits for the handler's header: sent, or final when the handler
// returned.
func (s *localClientStream) Header() (metadata.MD, error) {
	select {
	case <-s.headerSent:
	case <-s.ctx.Done():
		return nil, ctxErr(s.ctx)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.header.Copy(), nil
}

// Trailer is valid once RecvMsg has returned an error (io.EOF included).
func (s *localClientStream) Trailer() metadata.MD {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.trailer.Copy()
}

func (s *localClientStream) CloseSend() error {
	s.closeTx.Do(func() {
		s.closed = true
		close(s.toServer)
	})
	return nil
}

// SendMsg returns io.EOF once the handler has returned, as a gRPC client
// stream does; RecvMsg then says how the call ended.
func (s *localClientStream) SendMsg(m any) error {
	msg, ok := m.(proto.Message)
	if !ok {
		return status.Errorf(codes.Internal, "local stream: %T is not a proto message", m)
	}
	if s.closed {
		return status.Error(codes.Internal, "local stream: SendMsg after CloseSend")
	}
	msg = proto.Clone(msg)
	select {
	case s.toServer <- msg:
		return nil
	default:
	}
	select {
	case s.toServer <- msg:
		return nil
	case <-s.done:
		return io.EOF
	case <-s.ctx.Done():
		return ctxErr(s.ctx)
	}
}

// RecvMsg receives the handler's next message; past the last one it
// returns io.EOF or the handler's error. A call whose server does not
// stream sends one message and its status: RecvMsg returns the message
// only if the status is OK, as on gRPC.
func (s *localClientStream) RecvMsg(m any) error {
	select {
	case msg := <-s.toClient:
		if err := copyMessage(m, msg); err != nil {
			return err
		}
		if s.desc.ServerStreams {
			return nil
		}
		<-s.done
		return s.status()
	case <-s.done:
		// Each send of the handler waits for this side to take it, and
		// fails once the call has ended (hctx): nothing is left to
		// receive. (A handler the guard left waiting in a send when it
		// ended an idle stream may, as the call ends, still have that one
		// message taken by a RecvMsg racing with the end.)
		if err := s.status(); err != nil {
			return err
		}
		return io.EOF
	}
}

func (s *localClientStream) status() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// The peer of a REST call is its connection's: withConnPeer makes it once
// per connection (http.Server.ConnContext), so that a call does not pay for
// a new peer, a new context and a copy of its request (issue 12); over
// TLS the connection's state, known only once the handshake is done, is
// added by the first request (withHTTPPeer), the same for every request
// of the connection (Go's server does not renegotiate).
type connPeer struct {
	once sync.Once
	peer peer.Peer
}

type connPeerKey struct{}

// withConnPeer is the REST server's ConnContext: the connection's context
// holds its peer where the gRPC transport puts a call's (peer.NewContext),
// and withHTTPPeer completes it.
func withConnPeer(ctx context.Context, c net.Conn) context.Context {
	cp := &connPeer{peer: peer.Peer{Addr: connAddrOf(c.RemoteAddr()), LocalAddr: c.LocalAddr()}}
	return context.WithValue(peer.NewContext(ctx, &cp.peer), connPeerKey{}, cp)
}

// withHTTPPeer adds to a request's peer what the gRPC transport puts into
// a call's and is known only once the connection's TLS handshake is done:
// the connection's state with the client certificate the TLS layer
// verified. A request that came by no connection of the server's has no
// peer: that is the server's fault (500), and no call is made.
func withHTTPPeer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cp, ok := r.Context().Value(connPeerKey{}).(*connPeer)
		if !ok {
			httpError(w, http.StatusInternalServerError, codes.Internal, "request without a connection")
			return
		}
		// Every request passes here before anything reads the peer, so
		// the once orders the write before every read, HTTP/2's
		// concurrent requests of one connection included.
		cp.once.Do(func() {
			if r.TLS != nil {
				cp.peer.AuthInfo = credentials.TLSInfo{State: *r.TLS, CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}}
			}
		})
		next.ServeHTTP(w, r)
	})
}

// connAddr is the address of a REST connection's peer, written once: every
// call asks for it (its caller's address in logs, limits and audit).
type connAddr struct{ network, addr string }

func connAddrOf(a net.Addr) net.Addr {
	if a == nil { // a listener's connection without a peer address
		return nil
	}
	return connAddr{a.Network(), a.String()}
}

func (a connAddr) Network() string { return a.network }
func (a connAddr) String() string  { return a.addr }
