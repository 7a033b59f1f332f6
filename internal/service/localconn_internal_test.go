package service

import (
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"net/http/httptest"
	"net/textproto"
	"testing"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
)

// localStreams is a localConn serving one server-streaming and one
// client-streaming method with the given handlers, behind the recover
// interceptor of the real chain.
func localStreams(serverStream, clientStream grpc.StreamHandler) *localConn {
	c := newLocalConn(&calls{stream: chainStream([]grpc.StreamServerInterceptor{recoverStream})})
	c.RegisterService(&grpc.ServiceDesc{ServiceName: "test.Local", HandlerType: (*any)(nil), Streams: []grpc.StreamDesc{
		{StreamName: "Down", Handler: serverStream, ServerStreams: true},
		{StreamName: "Up", Handler: clientStream, ClientStreams: true},
	}}, struct{}{})
	return c
}

var (
	downDesc = &grpc.StreamDesc{ServerStreams: true}
	upDesc   = &grpc.StreamDesc{ClientStreams: true}
)

// A local server stream delivers every message in order, then the
// handler's header, trailer and status, as a gRPC stream does.
func TestLocalStreamDeliversMessagesThenStatus(t *testing.T) {
	c := localStreams(func(_ any, ss grpc.ServerStream) error {
		var req pb.BackupRequest
		if err := ss.RecvMsg(&req); err != nil {
			return err
		}
		require.NoError(t, ss.SetHeader(metadata.Pairs("h", "1")))
		for _, b := range []string{"a", "b", "c"} {
			if err := ss.SendMsg(&pb.BackupChunk{Data: []byte(b)}); err != nil {
				return err
			}
		}
		ss.SetTrailer(metadata.Pairs("t", "2"))
		return status.Error(codes.FailedPrecondition, "after three")
	}, nil)
	cs, err := c.NewStream(context.Background(), downDesc, "/test.Local/Down")
	require.NoError(t, err)
	require.NoError(t, cs.SendMsg(&pb.BackupRequest{}))
	require.NoError(t, cs.CloseSend())
	header, err := cs.Header()
	require.NoError(t, err)
	assert.Equal(t, []string{"1"}, header.Get("h"))
	var got []string
	for {
		var chunk pb.BackupChunk
		if err := cs.RecvMsg(&chunk); err != nil {
			assert.Equal(t, codes.FailedPrecondition, status.Code(err), "%v", err)
			break
		}
		got = append(got, string(chunk.GetData()))
	}
	assert.Equal(t, []string{"a", "b", "c"}, got)
	assert.Equal(t, []string{"2"}, cs.Trailer().Get("t"))
}

// When the caller goes away (the HTTP request ends), a handler blocked
// sending to it is released with CANCELED and its goroutine ends.
func TestLocalStreamCallerGoneEndsHandler(t *testing.T) {
	ended := make(chan error, 1)
	c := localStreams(func(_ any, ss grpc.ServerStream) error {
		for {
			if err := ss.SendMsg(&pb.BackupChunk{Data: []byte("x")}); err != nil {
				ended <- err
				return err
			}
		}
	}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	cs, err := c.NewStream(ctx, downDesc, "/test.Local/Down")
	require.NoError(t, err)
	require.NoError(t, cs.RecvMsg(&pb.BackupChunk{}))
	cancel()
	select {
	case err := <-ended:
		assert.Equal(t, codes.Canceled, status.Code(err), "%v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("the handler still runs after its caller went away")
	}
}

// A handler that refuses a client stream before reading it: the caller's
// request is taken anyway (as a gRPC client buffers it) and the refusal
// comes from RecvMsg, not as a broken send.
func TestLocalStreamRefusalBeforeRead(t *testing.T) {
	c := localStreams(nil, func(any, grpc.ServerStream) error {
		return status.Error(codes.PermissionDenied, "no")
	})
	cs, err := c.NewStream(context.Background(), upDesc, "/test.Local/Up")
	require.NoError(t, err)
	require.NoError(t, cs.SendMsg(&pb.RestoreRequest{Data: []byte("x")}))
	err = cs.RecvMsg(&pb.RestoreResponse{})
	assert.Equal(t, codes.PermissionDenied, status.Code(err), "%v", err)
	assert.ErrorIs(t, cs.SendMsg(&pb.RestoreRequest{}), io.EOF, "a send after the handler returned")
	require.NoError(t, cs.CloseSend())
	assert.Error(t, cs.SendMsg(&pb.RestoreRequest{}), "a send after CloseSend")
}

// A client stream's one answer is delivered only with an OK status, as on
// gRPC; a panic in the handler fails the call INTERNAL through the chain's
// recover, not the process.
func TestLocalStreamClientStreamAnswerAndPanic(t *testing.T) {
	answer := localStreams(nil, func(_ any, ss grpc.ServerStream) error {
		var n int
		for {
			var req pb.RestoreRequest
			if err := ss.RecvMsg(&req); err == io.EOF {
				break
			} else if err != nil {
				return err
			}
			n++
		}
		require.Equal(t, 2, n)
		return ss.SendMsg(&pb.RestoreResponse{})
	})
	cs, err := answer.NewStream(context.Background(), upDesc, "/test.Local/Up")
	require.NoError(t, err)
	require.NoError(t, cs.SendMsg(&pb.RestoreRequest{Data: []byte("1")}))
	require.NoError(t, cs.SendMsg(&pb.RestoreRequest{Data: []byte("2")}))
	require.NoError(t, cs.CloseSend())
	require.NoError(t, cs.RecvMsg(&pb.RestoreResponse{}))

	// An answer followed by an error status: the caller gets the error.
	answerThenFail := localStreams(nil, func(_ any, ss grpc.ServerStream) error {
		if err := ss.SendMsg(&pb.RestoreResponse{}); err != nil {
			return err
		}
		return status.Error(codes.Aborted, "after the answer")
	})
	cs, err = answerThenFail.NewStream(context.Background(), upDesc, "/test.Local/Up")
	require.NoError(t, err)
	require.NoError(t, cs.CloseSend())
	assert.Equal(t, codes.Aborted, status.Code(cs.RecvMsg(&pb.RestoreResponse{})))

	panics := localStreams(nil, func(any, grpc.ServerStream) error { panic("handler bug") })
	cs, err = panics.NewStream(context.Background(), upDesc, "/test.Local/Up")
	require.NoError(t, err)
	require.NoError(t, cs.CloseSend())
	assert.Equal(t, codes.Internal, status.Code(cs.RecvMsg(&pb.RestoreResponse{})))
}

// The peer of a REST call is its connection's (withConnPeer), with the TLS
// state added by the connection's first request; a request that came by
// no connection of the server's makes no call.
func TestHTTPPeerOfConnection(t *testing.T) {
	var got []*peer.Peer
	h := withHTTPPeer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		p, ok := peer.FromContext(r.Context())
		require.True(t, ok)
		got = append(got, p)
	}))
	conn := withConnPeer(context.Background(), loopbackConn{})
	state := &tls.ConnectionState{Version: tls.VersionTLS13, HandshakeComplete: true}
	for range 2 {
		r := httptest.NewRequestWithContext(conn, http.MethodGet, "https://127.0.0.1:8080/v1/keys", nil)
		r.TLS = state
		h.ServeHTTP(httptest.NewRecorder(), r)
	}
	require.Len(t, got, 2)
	assert.Same(t, got[0], got[1], "one peer per connection")
	assert.Equal(t, "127.0.0.1:40000", got[0].Addr.String())
	assert.Equal(t, "127.0.0.1:8080", got[0].LocalAddr.String())
	info, ok := got[0].AuthInfo.(credentials.TLSInfo)
	require.True(t, ok, "TLS state of the connection")
	assert.Equal(t, *state, info.State)
	assert.Equal(t, credentials.PrivacyAndIntegrity, info.SecurityLevel)

	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "http://127.0.0.1:8080/v1/keys", nil))
	assert.Equal(t, http.StatusInternalServerError, w.Code)
	assert.Len(t, got, 2, "no call without a connection")
}

// The gateway's response headers for a call's header metadata keep the
// names its default matcher gives them.
func TestGatewayOutgoingHeader(t *testing.T) {
	for _, key := range []string{requestIDHeader, "x-other", "trace-bin"} {
		got, ok := gatewayOutgoingHeader(key)
		require.True(t, ok)
		assert.Equal(t, textproto.CanonicalMIMEHeaderKey(runtime.MetadataHeaderPrefix+key), textproto.CanonicalMIMEHeaderKey(got))
	}
	got, _ := gatewayOutgoingHeader(requestIDHeader)
	assert.Equal(t, textproto.CanonicalMIMEHeaderKey(got), got, "the request id's is canonical already")
}
