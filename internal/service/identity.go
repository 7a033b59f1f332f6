package service

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"strings"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
)

// withIdentity records the authenticated caller of a call.
func withIdentity(ctx context.Context, identity string) context.Context {
	return context.WithValue(ctx, callMetaKey{}, &callMeta{identity: identity})
}

// callerIdentity is the authenticated caller of a call; "" in development
// mode, where callers are not authenticated. In production a call without
// an identity is refused before it reaches a handler.
func callerIdentity(ctx context.Context) string { return metaOf(ctx).identity }

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

// callMeta is who makes a call and what the audit log and the logs say
// about it: one context value (a pointer: no copy into an interface), as
// every call sets it.
type callMeta struct {
	identity  string
	requestID string
	peer      string // the caller's network address
}

type callMetaKey struct{}

func metaOf(ctx context.Context) callMeta {
	if m, ok := ctx.Value(callMetaKey{}).(*callMeta); ok {
		return *m
	}
	return callMeta{}
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
	return context.WithValue(ctx, callMetaKey{}, &callMeta{identity: identity, requestID: newRequestID(), peer: addr})
}

// Where the identity of a call comes from: the client certificate the TLS
// layer verified (see tlsSource), on the gRPC listener's connection or on
// the REST listener's (withConnPeer puts that connection's state where the
// gRPC transport puts its own). No header of the request names a caller.

// peerIdentity returns the caller's identity ("" if none) and address.
func peerIdentity(ctx context.Context) (identity, addr string) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return "", ""
	}
	if p.Addr != nil {
		addr = p.Addr.String()
	}
	// Every certificate on a connection passed tlsSource's verification:
	// the TLS layer requests a certificate without verifying it and our
	// VerifyConnection refuses the handshake unless it verifies. No
	// certificate: no identity.
	if info, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(info.State.PeerCertificates) > 0 {
		identity = identityOf(info.State.PeerCertificates[0])
	}
	return identity, addr
}

// gatewayHeaderMatcher makes the W3C trace context headers of a REST
// request, and no other header, metadata of its call: a REST caller's trace
// continues in the call's span as a gRPC caller's does, and nothing else in
// the chain or the handlers reads metadata (the gateway's own, such as
// x-forwarded-for, it adds itself). Fewer headers, less work per call; the
// gateway asks about every header of every call, so the answer allocates
// nothing.
func gatewayHeaderMatcher(key string) (string, bool) {
	for _, k := range [...]string{"traceparent", "tracestate"} {
		if strings.EqualFold(key, k) {
			return k, true
		}
	}
	return "", false
}

// gatewayOutgoingHeader names the HTTP header of a call's header metadata
// as the gateway's default does (Grpc-Metadata-<key>), already in the
// canonical form the header map gives it: the default formats every name
// with fmt and the map canonicalizes it again, on every call (issue 12).
func gatewayOutgoingHeader(key string) (string, bool) {
	if key == requestIDHeader { // the header of every call
		return "Grpc-Metadata-X-Request-Id", true
	}
	return runtime.MetadataHeaderPrefix + key, true
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
