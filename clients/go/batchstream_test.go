package handshaked_test

import (
	"cmp"
	"context"
	"sync"
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
)

// batchWatch sees the batches a client sends on its BatchStreams (how many
// operations each carries) and can hold back the answers of the first
// stream until released, as a slow service would (the tests that hold
// answers use one stream, WithSignStreams(1)). With method set, it watches
// the streams of that method instead (a SignStream's messages carry one
// operation each).
type batchWatch struct {
	mu      sync.Mutex
	sizes   []int
	held    chan struct{} // nil: answers are not held
	opened  int
	renamed bool   // open BatchStream as a method the service does not have
	method  string // zero: BatchStream
}

func (w *batchWatch) batches() []int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]int(nil), w.sizes...)
}

func (w *batchWatch) option() handshaked.Option {
	return handshaked.WithDialOptions(grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		if watched := cmp.Or(w.method, pb.KeyVault_BatchStream_FullMethodName); method != watched {
			return streamer(ctx, desc, cc, method, opts...)
		}
		w.mu.Lock()
		w.opened++
		first := w.opened == 1
		w.mu.Unlock()
		if w.renamed {
			// What a service that predates BatchStream answers.
			method = "/handshake.v1.KeyVault/NoSuchMethod"
		}
		cs, err := streamer(ctx, desc, cc, method, opts...)
		if err != nil {
			return nil, err
		}
		ws := &watchedStream{ClientStream: cs, w: w}
		if first {
			ws.held = w.held
		}
		return ws, nil
	}))
}

type watchedStream struct {
	grpc.ClientStream
	w    *batchWatch
	held chan struct{}
}

func (s *watchedStream) SendMsg(m any) error {
	n := 1
	if r, ok := m.(*pb.BatchStreamRequest); ok {
		n = len(r.GetBatch().GetOperations())
	}
	s.w.mu.Lock()
	s.w.sizes = append(s.w.sizes, n)
	s.w.mu.Unlock()
	return s.ClientStream.SendMsg(m)
}

func (s *watchedStream) RecvMsg(m any) error {
	if s.held != nil {
		<-s.held
	}
	return s.ClientStream.RecvMsg(m)
}

// TestCoalescedCallsCarryKeyOperations: by default, concurrent ECDSA and
// Ed25519 Sign calls of the SDK (and so of the keyless Signer) travel in
// batches on a long-lived BatchStream (one here), and RSA decryptions (an
// RSA operation costs ~30 messages: see coalesced) one message each on a
// SignStream, none as a unary RPC; each caller gets its own answer; a
// failed operation is its call's error and the stream goes on.
func TestCoalescedCallsCarryKeyOperations(t *testing.T) {
	f := startStreamFixture(t, service.Limits{})
	var cc callCounter
	var w batchWatch
	c, err := handshaked.Dial(f.srv.GRPCAddr, handshaked.WithInsecure(), handshaked.WithSignStreams(1), cc.options(), w.option())
	require.NoError(t, err)
	defer c.Close()
	f.signAndDecrypt(t, c, 64)
	assert.Zero(t, cc.get(pb.KeyVault_Sign_FullMethodName)+cc.get(pb.KeyVault_Decrypt_FullMethodName), "unary calls")
	assert.Positive(t, cc.get(pb.KeyVault_SignStream_FullMethodName), "sign streams, for the decryptions")
	assert.Equal(t, 1, cc.get(pb.KeyVault_BatchStream_FullMethodName), "batch streams opened")
	total := 0
	for _, n := range w.batches() {
		total += n
	}
	assert.Equal(t, 64, total, "signatures sent in batches")
	batches := len(w.batches())
	_, _, err = c.Sign(context.Background(), "rsa", 0, pb.SignatureScheme_SIGNATURE_SCHEME_RSA_PSS_RSAE_SHA256, nil, f.digest)
	require.NoError(t, err)
	assert.Len(t, w.batches(), batches, "an RSA signature goes on a SignStream, not in a batch")

	_, _, err = c.Sign(context.Background(), "ec", 0, pb.SignatureScheme_SIGNATURE_SCHEME_ED25519, []byte("m"), nil)
	assert.Equal(t, codes.InvalidArgument, status.Code(err), "an Ed25519 scheme with a P-256 key: %v", err)
	_, err = c.Decrypt(context.Background(), "no-such-key", 0, pb.DecryptMode_DECRYPT_MODE_RSA_PKCS1_TLS_PREMASTER, f.ct)
	assert.Equal(t, codes.NotFound, status.Code(err), "%v", err)
	f.signAndDecrypt(t, c, 4)
	assert.Equal(t, 1, cc.get(pb.KeyVault_BatchStream_FullMethodName), "failed operations keep the stream")
	assert.Zero(t, cc.get(pb.KeyVault_Sign_FullMethodName)+cc.get(pb.KeyVault_Decrypt_FullMethodName), "unary calls")
}

// TestCoalescingWaitsOnlyForAnswers: a call goes at once, alone, while
// fewer than two operations are in flight (no timer: a lone caller waits
// for nothing); calls that come while answers are awaited wait, and go
// together in one batch when an answer comes.
func TestCoalescingWaitsOnlyForAnswers(t *testing.T) {
	f := startStreamFixture(t, service.Limits{})
	w := batchWatch{held: make(chan struct{})}
	c, err := handshaked.Dial(f.srv.GRPCAddr, handshaked.WithInsecure(), handshaked.WithSignStreams(1), w.option())
	require.NoError(t, err)
	defer c.Close()
	ctx := context.Background()
	sign := func() {
		_, _, err := c.Sign(ctx, "ec", 0, pb.SignatureScheme_SIGNATURE_SCHEME_ECDSA_SECP256R1_SHA256, nil, f.digest)
		assert.NoError(t, err)
	}
	var wg sync.WaitGroup
	wg.Go(sign)
	require.Eventually(t, func() bool { return len(w.batches()) == 1 }, 5*time.Second, time.Millisecond, "the first call goes at once")
	wg.Go(sign)
	require.Eventually(t, func() bool { return len(w.batches()) == 2 }, 5*time.Second, time.Millisecond, "the second goes at once too")
	const waiting = 20
	for range waiting {
		wg.Go(sign)
	}
	// The answers are held: the calls can only wait.
	time.Sleep(200 * time.Millisecond)
	assert.Equal(t, []int{1, 1}, w.batches(), "calls sent while two operations are in flight")
	close(w.held)
	wg.Wait()
	// One batch, unless a call was so late (a loaded machine) that it
	// came after the answer.
	batches := w.batches()
	total := 0
	for _, n := range batches[2:] {
		total += n
	}
	assert.Equal(t, waiting, total, "calls sent after the answer")
	assert.LessOrEqual(t, len(batches), 4, "the waiting calls go together: %v", batches)
	assert.GreaterOrEqual(t, batches[2], waiting/2, "the waiting calls go together: %v", batches)

	// Calls one after the other: each goes alone, at once.
	for range 3 {
		sign()
	}
	assert.Equal(t, []int{1, 1, 1}, w.batches()[len(batches):])
}

// TestCoalescingFallsBack: against a service without BatchStream (it
// answers UNIMPLEMENTED), calls go over SignStreams, and BatchStream is
// tried again only a stream's age later; calls whose BatchStream breaks
// are answered over another transport, and later calls open a new one.
func TestCoalescingFallsBack(t *testing.T) {
	f := startStreamFixture(t, service.Limits{})
	t.Run("no BatchStream", func(t *testing.T) {
		var cc callCounter
		w := batchWatch{renamed: true}
		// Age 0: streams are kept until they end, and a service without
		// BatchStream is not asked again. One stream: calls that come
		// before the first answer do not open another.
		c, err := handshaked.Dial(f.srv.GRPCAddr, handshaked.WithInsecure(), handshaked.WithSignStreams(1), cc.options(), w.option(), handshaked.WithSignStreamAge(0))
		require.NoError(t, err)
		defer c.Close()
		f.signAndDecrypt(t, c, 4)
		f.signAndDecrypt(t, c, 4)
		assert.Equal(t, 1, cc.get(pb.KeyVault_BatchStream_FullMethodName), "BatchStream tried once")
		assert.Positive(t, cc.get(pb.KeyVault_SignStream_FullMethodName), "sign streams")
	})
	t.Run("no BatchStream, then again", func(t *testing.T) {
		var cc callCounter
		w := batchWatch{renamed: true}
		const age = 100 * time.Millisecond
		c, err := handshaked.Dial(f.srv.GRPCAddr, handshaked.WithInsecure(), cc.options(), w.option(), handshaked.WithSignStreamAge(age))
		require.NoError(t, err)
		defer c.Close()
		f.signAndDecrypt(t, c, 1)
		time.Sleep(2 * age)
		f.signAndDecrypt(t, c, 1)
		assert.GreaterOrEqual(t, cc.get(pb.KeyVault_BatchStream_FullMethodName), 2, "BatchStream tried again a stream's age later")
	})
	t.Run("broken stream", func(t *testing.T) {
		cc := callCounter{breakAfter: 2}
		c, err := handshaked.Dial(f.srv.GRPCAddr, handshaked.WithInsecure(), cc.options())
		require.NoError(t, err)
		defer c.Close()
		// One call after the other, one batch each: the third finds its
		// stream broken.
		for range 4 {
			f.signAndDecrypt(t, c, 1)
		}
		assert.Greater(t, cc.get(pb.KeyVault_BatchStream_FullMethodName), 1, "batch streams reopened after a break")
		f.signAndDecrypt(t, c, 32)
	})
}

// TestCoalescingReopens: the service ends an idle BatchStream, and a
// stream older than WithSignStreamAge takes no new call; either way the
// next call opens another, what was in flight on a retired one is
// answered there, and the caller sees nothing of it.
func TestCoalescingReopens(t *testing.T) {
	t.Run("idle", func(t *testing.T) {
		f := startStreamFixture(t, service.Limits{StreamIdleTimeout: 100 * time.Millisecond})
		var cc callCounter
		c, err := handshaked.Dial(f.srv.GRPCAddr, handshaked.WithInsecure(), handshaked.WithSignStreams(1), cc.options())
		require.NoError(t, err)
		defer c.Close()
		f.signAndDecrypt(t, c, 1)
		time.Sleep(400 * time.Millisecond) // the service closes the idle stream
		f.signAndDecrypt(t, c, 1)
		assert.Equal(t, 2, cc.get(pb.KeyVault_BatchStream_FullMethodName), "streams opened")
		assert.Zero(t, cc.get(pb.KeyVault_Sign_FullMethodName)+cc.get(pb.KeyVault_Decrypt_FullMethodName), "unary calls")
	})
	t.Run("age", func(t *testing.T) {
		f := startStreamFixture(t, service.Limits{})
		var cc callCounter
		c, err := handshaked.Dial(f.srv.GRPCAddr, handshaked.WithInsecure(), handshaked.WithSignStreamAge(50*time.Millisecond), cc.options())
		require.NoError(t, err)
		defer c.Close()
		_, _, err = c.Sign(context.Background(), "ec", 0, pb.SignatureScheme_SIGNATURE_SCHEME_ECDSA_SECP256R1_SHA256, nil, f.digest)
		require.NoError(t, err)
		require.Equal(t, 1, cc.get(pb.KeyVault_BatchStream_FullMethodName), "streams opened")
		time.Sleep(100 * time.Millisecond)
		f.signAndDecrypt(t, c, 32)
		assert.GreaterOrEqual(t, cc.get(pb.KeyVault_BatchStream_FullMethodName), 2, "streams opened")
		assert.Zero(t, cc.get(pb.KeyVault_Sign_FullMethodName)+cc.get(pb.KeyVault_Decrypt_FullMethodName), "unary calls")
	})
}

// signLater returns a function that starts an ECDSA signature with c and
// returns the channel its error will come on.
func (f streamFixture) signLater(c *handshaked.Client) func(ctx context.Context) chan error {
	return func(ctx context.Context) chan error {
		done := make(chan error, 1)
		go func() {
			_, _, err := c.Sign(ctx, "ec", 0, pb.SignatureScheme_SIGNATURE_SCHEME_ECDSA_SECP256R1_SHA256, nil, f.digest)
			done <- err
		}()
		return done
	}
}

// streamedPaths are the two ways a Sign call goes on a stream: coalesced
// on a BatchStream (ECDSA, by default) or one message on a SignStream.
var streamedPaths = []struct {
	name   string
	method string
	opts   []handshaked.Option
}{
	{"coalesced", pb.KeyVault_BatchStream_FullMethodName, nil},
	{"SignStream", pb.KeyVault_SignStream_FullMethodName, []handshaked.Option{handshaked.WithoutCoalescing()}},
}

// TestStreamedCallsTimeOut: a call without a deadline of its own gives up
// with DEADLINE_EXCEEDED at the client's timeout while its answer does
// not come; one with a later deadline of its own waits until then.
func TestStreamedCallsTimeOut(t *testing.T) {
	f := startStreamFixture(t, service.Limits{})
	for _, path := range streamedPaths {
		t.Run(path.name, func(t *testing.T) {
			w := batchWatch{held: make(chan struct{}), method: path.method}
			const timeout = 150 * time.Millisecond
			c, err := handshaked.Dial(f.srv.GRPCAddr, append(path.opts, handshaked.WithInsecure(), handshaked.WithSignStreams(1), handshaked.WithTimeout(timeout), w.option())...)
			require.NoError(t, err)
			defer c.Close()
			sign := f.signLater(c)
			start := time.Now()
			bounded := sign(context.Background())
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			own := sign(ctx)
			select {
			case err := <-bounded:
				assert.Equal(t, codes.DeadlineExceeded, status.Code(err), "%v", err)
				assert.GreaterOrEqual(t, time.Since(start), timeout)
			case <-time.After(10 * time.Second):
				require.Fail(t, "a call held past the client's timeout did not give up")
			}
			time.Sleep(2 * timeout)
			select {
			case err := <-own:
				require.Fail(t, "a call with its own deadline gave up at the client's timeout", "%v", err)
			default:
			}
			close(w.held)
			assert.NoError(t, <-own)
		})
	}
}

// TestStreamedCallsTimeOutOnRetiredStream: a call in flight on a stream
// that has been retired since (past its age, replaced in its slot) still
// gives up at the client's timeout while its answer does not come.
func TestStreamedCallsTimeOutOnRetiredStream(t *testing.T) {
	f := startStreamFixture(t, service.Limits{})
	for _, path := range streamedPaths {
		t.Run(path.name, func(t *testing.T) {
			w := batchWatch{held: make(chan struct{}), method: path.method}
			defer close(w.held)
			const timeout, age = 300 * time.Millisecond, 50 * time.Millisecond
			c, err := handshaked.Dial(f.srv.GRPCAddr, append(path.opts, handshaked.WithInsecure(), handshaked.WithSignStreams(1), handshaked.WithTimeout(timeout),
				handshaked.WithSignStreamAge(age), w.option())...)
			require.NoError(t, err)
			defer c.Close()
			sign := f.signLater(c)
			bounded := sign(context.Background()) // on the first stream, whose answers are held
			require.Eventually(t, func() bool { return len(w.batches()) == 1 }, 10*time.Second, time.Millisecond, "the first call sent")
			time.Sleep(2 * age)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			require.NoError(t, <-sign(ctx), "a call on the stream that replaced the first")
			select {
			case err := <-bounded:
				assert.Equal(t, codes.DeadlineExceeded, status.Code(err), "%v", err)
			case <-time.After(10 * time.Second):
				require.Fail(t, "a call held on a retired stream did not give up at the client's timeout")
			}
		})
	}
}
