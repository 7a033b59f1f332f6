package service

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"net"
	"net/http"
	"strings"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
)

type identityKey struct{}

// withIdentity records the authenticated caller of a call.
func withIdentity(ctx context.Context, identity string) context.Context {
	return context.WithValue(ctx, identityKey{}, identity)
}

// callerIdentity is the authenticated caller of a call; "" in development
// mode, where callers are not authenticated. In production a call without
// an identity is refused before it reaches a handler.
func callerIdentity(ctx context.Context) string {
	id, _ := ctx.Value(identityKey{}).(string)
	return id
}

// identityOf names the holder of a verified client certificate: its URI SAN
// (a SPIFFE ID), else its DNS SAN, else its subject common name; "" if it
// has none of them.
func identityOf(cert *x509.Certificate) string {
	switch {
	case len(cert.URIs) > 0:
		return cert.URIs[0].String()
	case len(cert.DNSNames) > 0:
		return cert.DNSNames[0]
	default:
		return cert.Subject.CommonName
	}
}

// callMeta is what the audit log and the logs say about a call besides its
// caller.
type callMeta struct {
	requestID string
	peer      string // the caller's network address
}

type callMetaKey struct{}

func metaOf(ctx context.Context) callMeta {
	m, _ := ctx.Value(callMetaKey{}).(callMeta)
	return m
}

// requestIDHeader carries a call's request id back to the caller (over
// REST, as the Grpc-Metadata-X-Request-Id header), so a caller can point at
// its line in the audit log.
const requestIDHeader = "x-request-id"

func newRequestID() string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// identify records who is calling: the identity and address of the peer,
// and a fresh request id.
func identify(ctx context.Context) context.Context {
	identity, addr := peerIdentity(ctx)
	ctx = withIdentity(ctx, identity)
	return context.WithValue(ctx, callMetaKey{}, callMeta{requestID: newRequestID(), peer: addr})
}

// Where the identity of a call comes from.
//
// The external gRPC listener speaks mutual TLS: the identity is that of the
// client certificate the TLS layer verified (see tlsSource). REST calls
// reach the gRPC server through the gateway's in-memory pipe; for them the
// gateway, which terminated the caller's TLS connection, puts the caller's
// identity and address into the metadata headers below. Those headers are
// believed only on the pipe's own connections: the pipe listener marks its
// connections with a type of this package (pipeConn), the server's transport
// credentials give such connections a pipeAuthInfo, and nothing an external
// caller sends can produce either. So a gRPC caller who sets the headers
// itself gains nothing, and the gateway drops them from REST requests too
// (gatewayHeaderMatcher).
const (
	mdCaller = "x-handshaked-caller"
	mdPeer   = "x-handshaked-peer"
)

// peerIdentity returns the caller's identity ("" if none) and address.
func peerIdentity(ctx context.Context) (identity, addr string) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return "", ""
	}
	if p.Addr != nil {
		addr = p.Addr.String()
	}
	switch info := p.AuthInfo.(type) {
	case credentials.TLSInfo:
		// Every certificate on a connection passed tlsSource's
		// verification: the TLS layer requests a certificate without
		// verifying it and our VerifyConnection refuses the handshake
		// unless it verifies. No certificate: no identity.
		if certs := info.State.PeerCertificates; len(certs) > 0 {
			identity = identityOf(certs[0])
		}
	case pipeAuthInfo:
		md, _ := metadata.FromIncomingContext(ctx)
		if v := md.Get(mdCaller); len(v) == 1 {
			identity = v[0]
		}
		if v := md.Get(mdPeer); len(v) == 1 {
			addr = v[0]
		}
	}
	return identity, addr
}

// gatewayMetadata passes the identity of a REST caller, from the client
// certificate its TLS connection verified, to the gRPC call the gateway makes.
func gatewayMetadata(_ context.Context, r *http.Request) metadata.MD {
	md := metadata.Pairs(mdPeer, r.RemoteAddr)
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		md.Set(mdCaller, identityOf(r.TLS.PeerCertificates[0]))
	}
	return md
}

// gatewayHeaderMatcher is the gateway's default header forwarding and the W3C
// trace context headers, except that a REST caller cannot send the pipe's
// identity headers itself.
func gatewayHeaderMatcher(key string) (string, bool) {
	// A REST caller's W3C trace context continues its trace in the gRPC
	// server's spans, as a gRPC caller's does.
	if k := strings.ToLower(key); k == "traceparent" || k == "tracestate" {
		return k, true
	}
	name, ok := runtime.DefaultHeaderMatcher(key)
	if !ok || strings.HasPrefix(strings.ToLower(name), "x-handshaked-") {
		return "", false
	}
	return name, true
}

// pipeListener marks the connections of the gateway's in-memory pipe.
type pipeListener struct{ net.Listener }

func (l pipeListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return pipeConn{c}, nil
}

type pipeConn struct{ net.Conn }

// pipeAuthInfo is the AuthInfo of a pipe connection.
type pipeAuthInfo struct{ credentials.CommonAuthInfo }

func (pipeAuthInfo) AuthType() string { return "handshaked-gateway-pipe" }

// serverCredentials run TLS on every connection but the pipe's, which is
// in-memory and carries calls the gateway has authenticated.
type serverCredentials struct {
	credentials.TransportCredentials
}

func (c serverCredentials) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	if _, ok := conn.(pipeConn); ok {
		return conn, pipeAuthInfo{credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}}, nil
	}
	return c.TransportCredentials.ServerHandshake(conn)
}

func (c serverCredentials) Clone() credentials.TransportCredentials {
	return serverCredentials{c.TransportCredentials.Clone()}
}

// identifyUnary and identifyStream run before everything else that wants
// to know the caller: logs, limits, authorization, audit, handlers.
func identifyUnary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	ctx = identify(ctx)
	grpc.SetHeader(ctx, metadata.Pairs(requestIDHeader, metaOf(ctx).requestID))
	return handler(ctx, req)
}

func identifyStream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx := identify(ss.Context())
	ss.SetHeader(metadata.Pairs(requestIDHeader, metaOf(ctx).requestID))
	return handler(srv, &contextStream{ss, ctx})
}

// contextStream is a stream with a context of ours.
type contextStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *contextStream) Context() context.Context { return s.ctx }
