package service_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/service"
	"github.com/handshaked/handshaked/internal/servicetest"
)

// idleEnd checks that err is the end of a stream the service found idle
// for timeout, for the reason why, as the caller reads it.
func idleEnd(t *testing.T, err error, timeout time.Duration, why string) {
	t.Helper()
	assert.Equal(t, codes.DeadlineExceeded, status.Code(err), "%v", err)
	assert.Equal(t, fmt.Sprintf("stream idle for longer than the service's stream idle timeout (%v): %s", timeout, why), status.Convert(err).Message())
}

// streamGoroutines are the stacks of the goroutines serving the API's
// streams in this process: their handlers and the workers they start.
func streamGoroutines() []string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var out []string
	for g := range strings.SplitSeq(string(buf), "\n\n") {
		for _, fn := range []string{"service.(*KeyVault).SignStream", "service.(*KeyVault).BatchStream", "service.pipeline", "service.(*Handshake).Stream", "service.(*Handshake).Multiplex", "service.(*muxStream)", "service.(*Admin).Restore", "service.(*Admin).Backup", "service.(*guardedStream).serve"} {
			if strings.Contains(g, fn) {
				out = append(out, g)
				break
			}
		}
	}
	return out
}

// noStreamGoroutines checks that the streams of the test, all ended, left
// no goroutine behind.
func noStreamGoroutines(t *testing.T) {
	t.Helper()
	var left []string
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if left = streamGoroutines(); len(left) == 0 {
			return
		}
	}
	assert.Empty(t, left, "goroutines of ended streams still running")
}

// TestStreamIdleTimeout: a stream whose caller sends within the idle
// timeout each time stays open however long it lives; one whose caller
// stops sending ends with DEADLINE_EXCEEDED once it has waited the
// timeout, on every kind of stream, with a message that says so, and
// leaves no goroutine behind.
func TestStreamIdleTimeout(t *testing.T) {
	const timeout = 400 * time.Millisecond
	srv := servicetest.Start(t, service.Options{Limits: service.Limits{StreamIdleTimeout: timeout}})
	kv := pb.NewKeyVaultClient(srv.Conn)
	ctx := context.Background()
	_, err := kv.ImportKey(ctx, &pb.ImportKeyRequest{Id: "key-a", PrivateKeyPem: fixture(t, "p256-sec1.pem")})
	require.NoError(t, err)
	req := &pb.SignStreamRequest{Request: signReq("key-a", p256Scheme)}
	// The callers' own deadline, far past the timeout: a stream the
	// service does not end fails the test instead of hanging it.
	const callerDeadline = 50 * timeout
	ctx, cancel := context.WithTimeout(ctx, callerDeadline)
	defer cancel()

	t.Run("busy", func(t *testing.T) {
		stream, err := kv.SignStream(ctx)
		require.NoError(t, err)
		// Four timeouts long, a message every tenth of one: the wait for
		// each (the answer's way back, the sleep, the next message's way
		// there) must stay under the timeout, and a sleep on a loaded
		// machine overruns.
		for end := time.Now().Add(4 * timeout); time.Now().Before(end); {
			require.NoError(t, stream.Send(req))
			resp, err := stream.Recv()
			require.NoError(t, err, "a stream used every %v ended", timeout/10)
			require.NotNil(t, resp.GetResponse(), "%v", resp.GetError())
			time.Sleep(timeout / 10)
		}
		require.NoError(t, stream.CloseSend())
		_, err = stream.Recv()
		assert.ErrorIs(t, err, io.EOF)
	})
	t.Run("idle after use", func(t *testing.T) {
		stream, err := kv.SignStream(ctx)
		require.NoError(t, err)
		// A quarter of a timeout in: the wait for the next message starts
		// after the stream's first timeout began. (Not more: the stream
		// must not find this first wait idle, though the sleep overruns.)
		time.Sleep(timeout / 4)
		// The service waits for the next message from when it has this
		// one, before it answers it.
		sent := time.Now()
		require.NoError(t, stream.Send(req))
		_, err = stream.Recv()
		require.NoError(t, err)
		_, err = stream.Recv()
		idleEnd(t, err, timeout, "the caller sent no message")
		assert.GreaterOrEqual(t, time.Since(sent), timeout, "ended before the caller was idle for the timeout")
		assert.Less(t, time.Since(sent), callerDeadline/2, "ended by the caller's deadline, not the service")
	})
	hs := pb.NewHandshakeClient(srv.Conn)
	for name, open := range map[string]func() (grpc.ClientStream, error){
		"SignStream":  func() (grpc.ClientStream, error) { return kv.SignStream(ctx) },
		"BatchStream": func() (grpc.ClientStream, error) { return kv.BatchStream(ctx) },
		"Stream":      func() (grpc.ClientStream, error) { return hs.Stream(ctx) },
		"Multiplex":   func() (grpc.ClientStream, error) { return hs.Multiplex(ctx) },
	} {
		t.Run(name+", never used", func(t *testing.T) {
			opened := time.Now()
			stream, err := open()
			require.NoError(t, err)
			err = stream.RecvMsg(new(emptypb.Empty))
			idleEnd(t, err, timeout, "the caller sent no message")
			assert.GreaterOrEqual(t, time.Since(opened), timeout)
			assert.Less(t, time.Since(opened), callerDeadline/2, "ended by the caller's deadline, not the service")
		})
	}
	noStreamGoroutines(t)
}

// TestStreamIdleNotWhileWorking: a stream whose caller waits for the
// answer to what it sent is not idle, however long the service works on
// it (here a batch that takes several idle timeouts); once answered, the
// service waits for the caller, and the stream ends the idle timeout
// after the answer.
func TestStreamIdleNotWhileWorking(t *testing.T) {
	// Long enough that the answer's way to the caller on a loaded machine
	// (tens of milliseconds seen) stays well under the half of it the
	// last assertion allows.
	const timeout = 250 * time.Millisecond
	srv := servicetest.Start(t, service.Options{Limits: service.Limits{StreamIdleTimeout: timeout}})
	kv := pb.NewKeyVaultClient(srv.Conn)
	_, err := kv.ImportKey(context.Background(), &pb.ImportKeyRequest{Id: "key-rsa", PrivateKeyPem: fixture(t, "rsa4096-pkcs1.pem")})
	require.NoError(t, err)
	// The largest batch of the slowest signatures the vault makes.
	ops := make([]*pb.BatchOperation, 256)
	for i := range ops {
		ops[i] = batchSign("key-rsa", pb.SignatureScheme_SIGNATURE_SCHEME_RSA_PSS_RSAE_SHA256, "slow")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	stream, err := kv.BatchStream(ctx)
	require.NoError(t, err)
	sent := time.Now()
	require.NoError(t, stream.Send(streamBatch("slow", ops...)))
	resp, err := stream.Recv()
	answered := time.Now()
	require.NoError(t, err, "the stream ended %v after its batch was sent, before its answer", answered.Sub(sent))
	require.Len(t, resp.GetBatch().GetResults(), len(ops))
	for _, r := range resp.GetBatch().GetResults() {
		require.NotEmpty(t, r.GetSign().GetSignature(), "%v", r.GetError())
	}
	t.Logf("batch answered in %v", answered.Sub(sent))
	require.Greater(t, answered.Sub(sent), timeout+timeout/2, "the batch took less than the idle timeout: the test shows nothing")
	_, err = stream.Recv()
	idleEnd(t, err, timeout, "the caller sent no message")
	// The service counts from when it sent the answer, a little before
	// the caller had it: not at once, in any case.
	assert.GreaterOrEqual(t, time.Since(answered), timeout/2, "ended before the caller was idle for the timeout")
	noStreamGoroutines(t)
}

// TestStreamUnreadEnds: a SignStream whose caller keeps sending and stops
// reading (its flow-control windows full, an answer waiting in Send, the
// service no longer reading it) ends with DEADLINE_EXCEEDED once that
// answer has waited the idle timeout, and its place is freed; one whose
// caller reads, in bursts that keep answers waiting less than the timeout
// each time, goes on.
func TestStreamUnreadEnds(t *testing.T) {
	const timeout = 500 * time.Millisecond
	srv := servicetest.Start(t, service.Options{Limits: service.Limits{MaxStreams: 1, StreamIdleTimeout: timeout}})
	_, err := pb.NewKeyVaultClient(srv.Conn).ImportKey(context.Background(), &pb.ImportKeyRequest{Id: "key-a", PrivateKeyPem: fixture(t, "p256-sec1.pem")})
	require.NoError(t, err)
	req := &pb.SignStreamRequest{Request: signReq("key-a", p256Scheme)}
	// Windows of 64 KiB that do not grow (static windows turn grpc-go's
	// BDP estimation off): a thousand or two unread answers fill them.
	conn, err := grpc.NewClient(srv.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	kv := pb.NewKeyVaultClient(conn)
	idled := func() float64 {
		return servicetest.Metric(t, http.DefaultClient, srv.RESTURL, `handshaked_calls_refused_total{reason="stream_idle"}`)
	}
	// flood sends req on stream until a Send fails or until is past.
	flood := func(stream pb.KeyVault_SignStreamClient, until time.Time) *atomic.Int64 {
		var sent atomic.Int64
		go func() {
			for time.Now().Before(until) && stream.Send(req) == nil {
				sent.Add(1)
			}
			stream.CloseSend()
		}()
		return &sent
	}

	t.Run("read in bursts", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 50*timeout)
		defer cancel()
		stream, err := kv.SignStream(ctx)
		require.NoError(t, err)
		sent := flood(stream, time.Now().Add(3*timeout))
		var read, pauses int64
		for {
			resp, err := stream.Recv()
			if err != nil {
				require.ErrorIs(t, err, io.EOF, "a stream read in bursts ended after %d answers", read)
				break
			}
			require.NotNil(t, resp.GetResponse(), "%v", resp.GetError())
			if read++; read%1000 == 0 {
				// Answers wait in Send meanwhile, a fifth of a timeout each
				// time (more than the timeout together). Not more: the
				// wait must stay under the timeout, though the sleep
				// overruns.
				pauses++
				time.Sleep(timeout / 5)
			}
		}
		assert.Equal(t, sent.Load(), read, "every request answered")
		assert.Zero(t, idled(), "stream_idle counted")
		t.Logf("%d answers read, %d pauses of %v", read, pauses, timeout/5)
	})
	t.Run("unread", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 50*timeout)
		defer cancel()
		stream, err := kv.SignStream(ctx)
		require.NoError(t, err)
		sent := flood(stream, time.Now().Add(50*timeout))
		// One answer read: the stream holds the one place.
		_, err = stream.Recv()
		require.NoError(t, err)
		flooded := time.Now()
		require.Equal(t, codes.ResourceExhausted, signServed(t, srv.Conn, req), "a second stream under a cap of one")
		require.Eventually(t, func() bool { return signServed(t, srv.Conn, req) == codes.OK }, 20*timeout, timeout/10,
			"the unread stream keeps its place")
		assert.GreaterOrEqual(t, time.Since(flooded), timeout, "ended before an answer waited the timeout")
		assert.Equal(t, 1.0, idled(), "stream_idle count")
		// The answers sent before the end are there to read, then the end.
		read := 1
		for ; err == nil; read++ {
			_, err = stream.Recv()
		}
		idleEnd(t, err, timeout, "the caller read nothing sent to it")
		t.Logf("%d requests sent, %d answers read before the end", sent.Load(), read-1)
	})
}

// signServed opens a SignStream on conn and reports how req on it went.
func signServed(t *testing.T, conn grpc.ClientConnInterface, req *pb.SignStreamRequest) codes.Code {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	stream, err := pb.NewKeyVaultClient(conn).SignStream(ctx)
	require.NoError(t, err)
	if err := stream.Send(req); err != nil {
		_, err = stream.Recv()
		return status.Code(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		return status.Code(err)
	}
	require.NotNil(t, resp.GetResponse(), "%v", resp.GetError())
	return codes.OK
}

// TestRESTStreamIdle: over REST the same: a restore whose body stops
// coming (the caller sent part of a snapshot, then nothing for the idle
// timeout) is answered 504 with the message, once the gateway reads on.
func TestRESTStreamIdle(t *testing.T) {
	const timeout = 300 * time.Millisecond
	srv := servicetest.Start(t, service.Options{Limits: service.Limits{StreamIdleTimeout: timeout}})
	ctx := context.Background()
	_, err := pb.NewKeyVaultClient(srv.Conn).ImportKey(ctx, &pb.ImportKeyRequest{Id: "key-a", PrivateKeyPem: fixture(t, "p256-sec1.pem")})
	require.NoError(t, err)
	backup, err := pb.NewAdminClient(srv.Conn).Backup(ctx, &pb.BackupRequest{})
	require.NoError(t, err)
	var snap []byte
	for {
		chunk, err := backup.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err)
		snap = append(snap, chunk.GetData()...)
	}
	require.Greater(t, len(snap), 64)

	body, w := io.Pipe()
	answered := make(chan *http.Response, 1)
	go func() {
		resp, err := http.Post(srv.RESTURL+"/v1/admin:restore", "application/json", body)
		assert.NoError(t, err)
		answered <- resp
	}()
	chunk := func(b []byte) {
		line, err := json.Marshal(map[string][]byte{"data": b})
		require.NoError(t, err)
		_, err = w.Write(append(line, '\n'))
		require.NoError(t, err)
	}
	chunk(snap[:32])
	time.Sleep(3 * timeout)
	// The gateway reads the body on: the next chunk finds the call ended.
	chunk(snap[32:64])
	require.NoError(t, w.Close())
	resp := <-answered
	require.NotNil(t, resp)
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	assert.Equal(t, http.StatusGatewayTimeout, resp.StatusCode, "%s", got)
	assert.Contains(t, string(got), fmt.Sprintf("stream idle for longer than the service's stream idle timeout (%v): the caller sent no message", timeout))
	noStreamGoroutines(t)
}
