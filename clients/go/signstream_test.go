package handshaked_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	handshaked "github.com/handshaked/handshaked/clients/go"
	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/service"
	"github.com/handshaked/handshaked/internal/servicetest"
)

// callCounter counts the RPCs a client makes, by method, and can break a
// SignStream after a number of answers, as a lost connection would.
type callCounter struct {
	mu    sync.Mutex
	calls map[string]int
	// breakAfter > 0: each SignStream fails with UNAVAILABLE once it has
	// delivered that many answers.
	breakAfter int
}

func (c *callCounter) count(method string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.calls == nil {
		c.calls = map[string]int{}
	}
	c.calls[method]++
}

func (c *callCounter) get(method string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.calls[method]
}

func (c *callCounter) options() handshaked.Option {
	return handshaked.WithDialOptions(
		grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			c.count(method)
			return invoker(ctx, method, req, reply, cc, opts...)
		}),
		grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			c.count(method)
			cs, err := streamer(ctx, desc, cc, method, opts...)
			if err != nil || c.breakAfter == 0 {
				return cs, err
			}
			return &breakingStream{ClientStream: cs, left: c.breakAfter}, nil
		}),
	)
}

type breakingStream struct {
	grpc.ClientStream
	mu   sync.Mutex
	left int
}

func (s *breakingStream) RecvMsg(m any) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.left == 0 {
		return status.Error(codes.Unavailable, "connection lost (test)")
	}
	s.left--
	return s.ClientStream.RecvMsg(m)
}

type streamFixture struct {
	srv    *servicetest.Server
	ec     *ecdsa.PublicKey
	rsa    *rsa.PublicKey
	digest []byte
	ct     []byte
	pm     []byte
}

func startStreamFixture(t *testing.T, limits service.Limits) streamFixture {
	t.Helper()
	srv := servicetest.Start(t, service.Options{Limits: limits})
	ctx := context.Background()
	f := streamFixture{srv: srv}
	for id, file := range map[string]string{"ec": "p256-sec1.pem", "rsa": "rsa2048-pkcs1.pem"} {
		_, err := srv.Vault.Import(ctx, id, servicetest.Fixture(t, file), nil)
		require.NoError(t, err)
	}
	k, err := srv.Vault.Get(ctx, "ec")
	require.NoError(t, err)
	f.ec = k.Versions[0].PublicKey.(*ecdsa.PublicKey)
	k, err = srv.Vault.Get(ctx, "rsa")
	require.NoError(t, err)
	f.rsa = k.Versions[0].PublicKey.(*rsa.PublicKey)
	d := sha256.Sum256([]byte("streamed"))
	f.digest = d[:]
	f.pm = make([]byte, 48)
	rand.Read(f.pm)
	f.ct, err = rsa.EncryptPKCS1v15(rand.Reader, f.rsa, f.pm)
	require.NoError(t, err)
	return f
}

// signAndDecrypt makes n concurrent signatures and decryptions with c and
// checks every answer.
func (f streamFixture) signAndDecrypt(t *testing.T, c *handshaked.Client, n int) {
	t.Helper()
	ctx := context.Background()
	var wg sync.WaitGroup
	var bad atomic.Int32
	for range n {
		wg.Go(func() {
			sig, _, err := c.Sign(ctx, "ec", 0, pb.SignatureScheme_SIGNATURE_SCHEME_ECDSA_SECP256R1_SHA256, nil, f.digest)
			if !assert.NoError(t, err) || !assert.True(t, ecdsa.VerifyASN1(f.ec, f.digest, sig), "signature") {
				bad.Add(1)
			}
			pt, err := c.Decrypt(ctx, "rsa", 0, pb.DecryptMode_DECRYPT_MODE_RSA_PKCS1_TLS_PREMASTER, f.ct)
			if !assert.NoError(t, err) || !assert.Equal(t, f.pm, pt) {
				bad.Add(1)
			}
		})
	}
	wg.Wait()
	require.Zero(t, bad.Load())
}

// TestSignStreamsCarryKeyOperations: without coalescing, concurrent Sign
// and Decrypt calls of the SDK (and so of the keyless Signer and
// Decrypter) all travel over a few long-lived SignStreams, none as a unary
// RPC, and each caller gets its own answer; an error answer is the call's
// error.
func TestSignStreamsCarryKeyOperations(t *testing.T) {
	f := startStreamFixture(t, service.Limits{})
	var cc callCounter
	c, err := handshaked.Dial(f.srv.GRPCAddr, handshaked.WithInsecure(), handshaked.WithoutCoalescing(), cc.options())
	require.NoError(t, err)
	defer c.Close()
	f.signAndDecrypt(t, c, 64)
	assert.Zero(t, cc.get(pb.KeyVault_Sign_FullMethodName), "unary Sign calls")
	assert.Zero(t, cc.get(pb.KeyVault_Decrypt_FullMethodName), "unary Decrypt calls")
	assert.LessOrEqual(t, cc.get(pb.KeyVault_SignStream_FullMethodName), handshaked.DefaultSignStreams, "streams opened")
	assert.Zero(t, cc.get(pb.KeyVault_BatchStream_FullMethodName), "batch streams opened")

	_, _, err = c.Sign(context.Background(), "ec", 0, pb.SignatureScheme_SIGNATURE_SCHEME_ED25519, []byte("m"), nil)
	assert.Equal(t, codes.InvalidArgument, status.Code(err), "an Ed25519 scheme with a P-256 key: %v", err)
	_, _, err = c.Sign(context.Background(), "no-such-key", 0, pb.SignatureScheme_SIGNATURE_SCHEME_ED25519, []byte("m"), nil)
	assert.Equal(t, codes.NotFound, status.Code(err), "%v", err)
	f.signAndDecrypt(t, c, 4)
	assert.Zero(t, cc.get(pb.KeyVault_Sign_FullMethodName), "error answers keep the stream")
}

// TestSignStreamsReopenAfterIdle: the service ends a stream left idle; the
// next call opens a new one, and the caller sees nothing of it.
func TestSignStreamsReopenAfterIdle(t *testing.T) {
	f := startStreamFixture(t, service.Limits{StreamIdleTimeout: 100 * time.Millisecond})
	var cc callCounter
	c, err := handshaked.Dial(f.srv.GRPCAddr, handshaked.WithInsecure(), handshaked.WithoutCoalescing(), handshaked.WithSignStreams(1), cc.options())
	require.NoError(t, err)
	defer c.Close()
	f.signAndDecrypt(t, c, 1)
	time.Sleep(400 * time.Millisecond) // the service closes the idle stream
	f.signAndDecrypt(t, c, 1)
	assert.Equal(t, 2, cc.get(pb.KeyVault_SignStream_FullMethodName), "streams opened")
	assert.Zero(t, cc.get(pb.KeyVault_Sign_FullMethodName)+cc.get(pb.KeyVault_Decrypt_FullMethodName), "unary calls")
}

// TestSignStreamsFallBackToUnary: calls waiting on a stream that breaks
// are answered over unary RPCs, and later calls use a new stream.
func TestSignStreamsFallBackToUnary(t *testing.T) {
	f := startStreamFixture(t, service.Limits{})
	cc := callCounter{breakAfter: 3}
	c, err := handshaked.Dial(f.srv.GRPCAddr, handshaked.WithInsecure(), handshaked.WithoutCoalescing(), handshaked.WithSignStreams(1), cc.options())
	require.NoError(t, err)
	defer c.Close()
	f.signAndDecrypt(t, c, 32)
	assert.Positive(t, cc.get(pb.KeyVault_Sign_FullMethodName)+cc.get(pb.KeyVault_Decrypt_FullMethodName), "unary fallbacks")
	assert.Greater(t, cc.get(pb.KeyVault_SignStream_FullMethodName), 1, "streams reopened after a break")

	var unary callCounter
	c0, err := handshaked.Dial(f.srv.GRPCAddr, handshaked.WithInsecure(), handshaked.WithSignStreams(0), unary.options())
	require.NoError(t, err)
	defer c0.Close()
	f.signAndDecrypt(t, c0, 2)
	assert.Equal(t, 2, unary.get(pb.KeyVault_Sign_FullMethodName), "WithSignStreams(0) signs unary")
	assert.Zero(t, unary.get(pb.KeyVault_SignStream_FullMethodName))
}

// TestSignStreamsRetireWithAge: a stream older than WithSignStreamAge
// takes no new call, which opens another in its place (the balancer places
// it: a replica that came back gets its share), and what was in flight on
// the old one is answered there, none falling back to a unary call.
func TestSignStreamsRetireWithAge(t *testing.T) {
	f := startStreamFixture(t, service.Limits{})
	var cc callCounter
	c, err := handshaked.Dial(f.srv.GRPCAddr, handshaked.WithInsecure(), handshaked.WithoutCoalescing(), handshaked.WithSignStreams(1), handshaked.WithSignStreamAge(50*time.Millisecond), cc.options())
	require.NoError(t, err)
	defer c.Close()
	_, _, err = c.Sign(context.Background(), "ec", 0, pb.SignatureScheme_SIGNATURE_SCHEME_ECDSA_SECP256R1_SHA256, nil, f.digest)
	require.NoError(t, err)
	require.Equal(t, 1, cc.get(pb.KeyVault_SignStream_FullMethodName), "streams opened")
	time.Sleep(100 * time.Millisecond)
	// Concurrent calls: those sent after the stream retired go on a new
	// one (a slow machine may retire that one too) while the old one still
	// answers those it has.
	f.signAndDecrypt(t, c, 32)
	assert.GreaterOrEqual(t, cc.get(pb.KeyVault_SignStream_FullMethodName), 2, "streams opened")
	assert.Zero(t, cc.get(pb.KeyVault_Sign_FullMethodName)+cc.get(pb.KeyVault_Decrypt_FullMethodName), "unary calls")
}

// crossedVault answers every streamed operation with the result of the
// other kind: a Decrypt result to a Sign, a signature to a Decrypt.
type crossedVault struct {
	pb.UnimplementedKeyVaultServer
}

func (crossedVault) SignStream(stream pb.KeyVault_SignStreamServer) error {
	for {
		req, err := stream.Recv()
		if err != nil {
			return nil
		}
		resp := &pb.SignStreamResponse{Result: &pb.SignStreamResponse_Decrypt{Decrypt: &pb.DecryptResponse{Plaintext: []byte("crossed")}}}
		if req.GetDecrypt() != nil {
			resp.Result = &pb.SignStreamResponse_Response{Response: &pb.SignResponse{Signature: []byte("crossed")}}
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
}

func (crossedVault) BatchStream(stream pb.KeyVault_BatchStreamServer) error {
	for {
		req, err := stream.Recv()
		if err != nil {
			return nil
		}
		resp := &pb.BatchResponse{}
		for range req.GetBatch().GetOperations() {
			resp.Results = append(resp.Results, &pb.BatchResult{Result: &pb.BatchResult_Decrypt{Decrypt: &pb.DecryptResponse{Plaintext: []byte("crossed")}}})
		}
		if err := stream.Send(&pb.BatchStreamResponse{Batch: resp}); err != nil {
			return err
		}
	}
}

// TestStreamedAnswerOfAnotherKind: a streamed answer that is not the
// result its call asked for is an INTERNAL error, not an empty signature
// or plaintext with no error.
func TestStreamedAnswerOfAnotherKind(t *testing.T) {
	s := grpc.NewServer()
	pb.RegisterKeyVaultServer(s, crossedVault{})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go s.Serve(l)
	t.Cleanup(s.Stop)
	ctx := context.Background()
	for _, path := range streamedPaths {
		t.Run(path.name, func(t *testing.T) {
			c, err := handshaked.Dial(l.Addr().String(), append(path.opts, handshaked.WithInsecure())...)
			require.NoError(t, err)
			defer c.Close()
			sig, _, err := c.Sign(ctx, "ec", 0, pb.SignatureScheme_SIGNATURE_SCHEME_ECDSA_SECP256R1_SHA256, nil, make([]byte, 32))
			assert.Equal(t, codes.Internal, status.Code(err), "%v", err)
			assert.Nil(t, sig)
			pt, err := c.Decrypt(ctx, "rsa", 0, pb.DecryptMode_DECRYPT_MODE_RSA_PKCS1_TLS_PREMASTER, make([]byte, 256))
			assert.Equal(t, codes.Internal, status.Code(err), "%v", err)
			assert.Nil(t, pt)
		})
	}
}
