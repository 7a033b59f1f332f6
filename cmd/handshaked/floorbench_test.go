package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/procstat"
)

// floorEnv makes the test binary serve runFloor's servers instead of
// running tests.
const floorEnv = "HANDSHAKED_TEST_FLOOR"

// BenchmarkTransportFloor measures what the two transports cost with
// nothing behind them, as BenchmarkRESTvsGRPC measures handshaked: a
// process of its own serving a unary gRPC call that does nothing (the
// health check, on a server with long-lived stream workers as
// handshaked's) and an HTTP/1.1 POST that reads a Sign-sized JSON body
// and answers a Sign-sized JSON response with handshaked's headers,
// called from this process over keep-alive connections, one per caller.
// alternate reports what BenchmarkRESTvsGRPC's "alternating" reports;
// rest/grpc-cpu is the floor's CPU per gRPC call (both processes) over
// its CPU per REST call: what REST/gRPC would be for an operation costing
// nothing in a service costing nothing but its transport. A REST/gRPC
// figure of handshaked near it leaves nothing to cut in the service:
//
//	go test -run '^$' -bench TransportFloor -benchtime 3s ./cmd/handshaked/
func BenchmarkTransportFloor(b *testing.B) {
	pid, httpAddr, grpcAddr := startFloor(b)
	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(b, err)
	b.Cleanup(func() { conn.Close() })
	hc := healthpb.NewHealthClient(conn)
	ctx := context.Background()
	body := []byte(`{"scheme":"SIGNATURE_SCHEME_ED25519","message":"YmVuY2htYXJr"}`)
	for _, callers := range []int{8, 64} {
		client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: callers, MaxConnsPerHost: callers}}
		overGRPC := func() error {
			_, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
			return err
		}
		overREST := func() error { return postJSON(ctx, client, "http://"+httpAddr+"/v1/keys/ed:sign", body) }
		b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) { alternate(b, pid, callers, overGRPC, overREST) })
		client.CloseIdleConnections()
	}
}

// startFloor starts runFloor in a process of its own, ended with b, and
// returns its pid and its servers' addresses.
func startFloor(b *testing.B) (pid int, httpAddr, grpcAddr string) {
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), floorEnv+"=1")
	out, err := cmd.StdoutPipe()
	require.NoError(b, err)
	require.NoError(b, cmd.Start())
	b.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	_, err = fmt.Fscan(bufio.NewReader(out), &httpAddr, &grpcAddr)
	require.NoError(b, err)
	return cmd.Process.Pid, httpAddr, grpcAddr
}

// runFloor serves BenchmarkTransportFloor's two servers on loopback until
// killed, having printed their addresses (HTTP, then gRPC); the gRPC
// server serves BenchmarkStreamFloor's no-op BatchStream too.
func runFloor() int {
	httpLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	grpcLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	answer := []byte(`{"signature":"pqBHcb80vL+n/u/7PKClBT1XAcHNm5UgfmQvLDolFat+yxcMjnpUeEiWaf9WUULt/kLWNB1OHQXuQF5pNd4CDw==","version":1}`)
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.Copy(io.Discard, r.Body); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Grpc-Metadata-X-Request-Id", "2ed59df327401d3a")
		w.Write(bytes.Clone(answer))
	})}
	go srv.Serve(httpLis)
	// The transport as handshaked's (service.New): long-lived stream
	// workers and static flow-control windows, so that the floor pays no
	// bandwidth-measuring PINGs handshaked does not pay either.
	g := grpc.NewServer(grpc.NumStreamWorkers(64), grpc.StaticStreamWindowSize(1<<20), grpc.StaticConnWindowSize(4<<20))
	healthpb.RegisterHealthServer(g, health.NewServer())
	pb.RegisterKeyVaultServer(g, noopBatchStream{})
	go g.Serve(grpcLis)
	fmt.Println(httpLis.Addr(), grpcLis.Addr())
	select {}
}

// noopBatchStream answers each batch of a BatchStream with as many
// signatures of an ECDSA signature's size, signing nothing: the floor of
// a streamed message in grpc-go.
type noopBatchStream struct {
	pb.UnimplementedKeyVaultServer
}

func (noopBatchStream) BatchStream(stream pb.KeyVault_BatchStreamServer) error {
	signature := make([]byte, 72)
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		results := make([]*pb.BatchResult, len(req.GetBatch().GetOperations()))
		for i := range results {
			results[i] = &pb.BatchResult{Result: &pb.BatchResult_Sign{Sign: &pb.SignResponse{Signature: signature, Version: 1}}}
		}
		if err := stream.Send(&pb.BatchStreamResponse{Batch: &pb.BatchResponse{Reference: req.GetBatch().GetReference(), Results: results}}); err != nil {
			return err
		}
	}
}

// BenchmarkStreamFloor measures what a streamed message costs above
// grpc-go: from callers each with a BatchStream of its own and one
// message in flight, batches of 1 and 7 ECDSA P-256 signatures go to
// handshaked (development mode, another process) and, in turns, to a
// process of its own whose BatchStream answers as many signatures without
// signing (runFloor). cpu-ns/msg counts both processes' CPU per message;
// sign-cpu-ns/msg is what the message's signatures cost signed in this
// process by 8 goroutines, measured in the same turns; above-floor-ns/msg
// is handshaked's cpu-ns/msg less the floor's and the signing: what the
// service's own hand-offs and logic cost per message (the guard, the
// pipeline, the batch's helpers), nothing of which a no-op stream pays.
// 8 callers of 1 operation are SignStream's 8 callers; 1 caller of 7 is
// what the SDK's coalescing makes of them (a batch in flight, its callers
// waiting), where the cores idle between messages; 8 of 7 keep the
// service's cores busy.
// server-wakeups/msg and floor-wakeups/msg count the times the threads of
// either server slept and were woken, per message (each goroutine
// hand-off finding no thread awake is one; they are what costs here):
//
//	go test -run '^$' -bench StreamFloor -benchtime 2s ./cmd/handshaked/
func BenchmarkStreamFloor(b *testing.B) {
	floorPid, _, floorAddr := startFloor(b)
	p := startProcess(b, b.TempDir())
	require.NotEmpty(b, p.grpcAddr, "handshaked did not start:\n%s", p.out())
	ctx := context.Background()
	keyPEM, err := os.ReadFile(filepath.Join("..", "..", "testdata", "keys", "p256-pkcs8.pem"))
	require.NoError(b, err)
	_, err = p.client(b).ImportKey(ctx, &pb.ImportKeyRequest{Id: "ecdsa-p256", PrivateKeyPem: keyPEM})
	require.NoError(b, err)
	block, _ := pem.Decode(keyPEM)
	require.NotNil(b, block)
	parsed, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	require.NoError(b, err)
	key := parsed.(*ecdsa.PrivateKey)
	digest := sha256.Sum256([]byte("benchmark"))
	for _, tc := range []struct{ items, callers int }{{1, 8}, {7, 1}, {7, 8}} {
		items, callers := tc.items, tc.callers
		ops := make([]*pb.BatchOperation, items)
		for i := range ops {
			ops[i] = &pb.BatchOperation{Operation: &pb.BatchOperation_Sign{Sign: &pb.SignRequest{
				Key: "ecdsa-p256", Scheme: pb.SignatureScheme_SIGNATURE_SCHEME_ECDSA_SECP256R1_SHA256, Input: &pb.SignRequest_Digest{Digest: digest[:]}}}}
		}
		req := &pb.BatchStreamRequest{Batch: &pb.BatchRequest{Operations: ops}}
		overFloor := streamCaller(b, floorAddr, callers, req)
		overService := streamCaller(b, p.grpcAddr, callers, req)
		sign := func() error {
			for range items {
				if _, err := ecdsa.SignASN1(rand.Reader, key, digest[:]); err != nil {
					return err
				}
			}
			return nil
		}
		b.Run(fmt.Sprintf("items=%d/callers=%d", items, callers), func(b *testing.B) {
			var f, s, local benchResult
			var floorWakeups, serviceWakeups int64
			turn := callsPerTurn * callers
			for done := 0; done < b.N; done += turn {
				n := min(turn, b.N-done)
				floorWakeups += wakeups(b, floorPid, func() { f.add(runCallers(b, floorPid, callers, n, overFloor)) })
				serviceWakeups += wakeups(b, p.cmd.Process.Pid, func() { s.add(runCallers(b, p.cmd.Process.Pid, callers, n, overService)) })
				local.add(runCallers(b, os.Getpid(), callers, n, sign))
			}
			perMsg := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / float64(b.N) }
			floorCPU, serviceCPU := perMsg(f.serverCPU+f.ownCPU), perMsg(s.serverCPU+s.ownCPU)
			// local ran in this process: its "server" is this process too.
			signCPU := perMsg(local.ownCPU)
			b.ReportMetric(floorCPU, "floor-cpu-ns/msg")
			b.ReportMetric(serviceCPU, "cpu-ns/msg")
			b.ReportMetric(perMsg(s.serverCPU), "server-cpu-ns/msg")
			b.ReportMetric(signCPU, "sign-cpu-ns/msg")
			b.ReportMetric(serviceCPU-floorCPU-signCPU, "above-floor-ns/msg")
			b.ReportMetric(signCPU/serviceCPU, "cpu-x")
			b.ReportMetric(float64(floorWakeups)/float64(b.N), "floor-wakeups/msg")
			b.ReportMetric(float64(serviceWakeups)/float64(b.N), "server-wakeups/msg")
		})
	}
}

// wakeups runs f and counts the times process pid's threads slept and
// were woken meanwhile: each goroutine hand-off that finds no thread
// awake costs one.
func wakeups(b *testing.B, pid int, f func()) int64 {
	before, err := procstat.SchedulingOf(pid)
	require.NoError(b, err)
	f()
	after, err := procstat.SchedulingOf(pid)
	require.NoError(b, err)
	return after.Sub(before).Wakeups
}

// streamCaller opens callers BatchStreams to addr and returns a call that
// sends req on one of them not in use and waits for its answer.
func streamCaller(b *testing.B, addr string, callers int, req *pb.BatchStreamRequest) func() error {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(b, err)
	b.Cleanup(func() { conn.Close() })
	kv := pb.NewKeyVaultClient(conn)
	free := make(chan grpc.BidiStreamingClient[pb.BatchStreamRequest, pb.BatchStreamResponse], callers)
	for range callers {
		stream, err := kv.BatchStream(context.Background())
		require.NoError(b, err)
		free <- stream
	}
	want := len(req.GetBatch().GetOperations())
	return func() error {
		stream := <-free
		defer func() { free <- stream }()
		if err := stream.Send(req); err != nil {
			return err
		}
		resp, err := stream.Recv()
		if err != nil {
			return err
		}
		for _, r := range resp.GetBatch().GetResults() {
			if r.GetSign() == nil {
				return fmt.Errorf("not signed: %v", r)
			}
		}
		if got := len(resp.GetBatch().GetResults()); got != want {
			return fmt.Errorf("%d results for %d operations", got, want)
		}
		return nil
	}
}
