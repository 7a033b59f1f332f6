package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
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
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), floorEnv+"=1")
	out, err := cmd.StdoutPipe()
	require.NoError(b, err)
	require.NoError(b, cmd.Start())
	b.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	var httpAddr, grpcAddr string
	_, err = fmt.Fscan(bufio.NewReader(out), &httpAddr, &grpcAddr)
	require.NoError(b, err)
	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(b, err)
	b.Cleanup(func() { conn.Close() })
	hc := healthpb.NewHealthClient(conn)
	ctx := context.Background()
	body := []byte(`{"scheme":"SIGNATURE_SCHEME_ED25519","message":"YmVuY2htYXJr"}`)
	pid := cmd.Process.Pid
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

// runFloor serves BenchmarkTransportFloor's two servers on loopback until
// killed, having printed their addresses (HTTP, then gRPC).
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
	g := grpc.NewServer(grpc.NumStreamWorkers(64))
	healthpb.RegisterHealthServer(g, health.NewServer())
	go g.Serve(grpcLis)
	fmt.Println(httpLis.Addr(), grpcLis.Addr())
	select {}
}
