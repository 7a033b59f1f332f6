package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
)

// BenchmarkRESTvsGRPC signs an ECDSA P-256 digest on a handshaked process
// (development mode) from this process, the load generator, over unary
// gRPC and over REST (JSON over HTTP/1.1 keep-alive connections), with 8
// callers, in one run: issue 12's target is REST at 0.8x gRPC or better.
// server-cpu-ns/op is the server process's CPU time per call, read from
// /proc: on a shared machine it says more than ns/op. The last line logs
// both ratios. HANDSHAKED_TEST_CPUPROFILE=file has the server write a CPU
// profile (of one transport with -bench RESTvsGRPC/rest):
//
//	go test -run '^$' -bench RESTvsGRPC -benchtime 3s -v ./cmd/handshaked/
func BenchmarkRESTvsGRPC(b *testing.B) {
	const callers = 8
	p := startProcess(b, b.TempDir())
	if p.grpcAddr == "" {
		b.Fatalf("handshaked did not start:\n%s", p.out())
	}
	kv := p.client(b)
	ctx := context.Background()
	if _, err := kv.CreateKey(ctx, &pb.CreateKeyRequest{Id: "bench-p256", Algorithm: pb.Algorithm_ALGORITHM_ECDSA_P256}); err != nil {
		b.Fatal(err)
	}
	digest := sha256.Sum256([]byte("benchmark"))
	grpcReq := &pb.SignRequest{Key: "bench-p256", Scheme: pb.SignatureScheme_SIGNATURE_SCHEME_ECDSA_SECP256R1_SHA256,
		Input: &pb.SignRequest_Digest{Digest: digest[:]}}
	restBody := []byte(fmt.Sprintf(`{"scheme":"SIGNATURE_SCHEME_ECDSA_SECP256R1_SHA256","digest":%q}`, base64.StdEncoding.EncodeToString(digest[:])))
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: callers}}
	defer client.CloseIdleConnections()

	results := map[string]benchResult{}
	for _, tc := range []struct {
		name string
		call func() error
	}{
		{"grpc", func() error {
			_, err := kv.Sign(ctx, grpcReq)
			return err
		}},
		{"rest", func() error {
			resp, err := client.Post(p.restURL+"/v1/keys/bench-p256:sign", "application/json", bytes.NewReader(restBody))
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			if err == nil && resp.StatusCode != http.StatusOK {
				err = fmt.Errorf("REST sign: %s: %s", resp.Status, body)
			}
			return err
		}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			results[tc.name] = runCallers(b, p.cmd.Process.Pid, callers, tc.call)
		})
	}
	// A graceful stop: a CPU profile of the server is complete only then.
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		b.Fatal(err)
	}
	if err := <-p.exited; err != nil {
		b.Fatalf("handshaked: %v\n%s", err, p.out())
	}
	g, r := results["grpc"], results["rest"]
	if g.n > 0 && r.n > 0 {
		b.Logf("REST/gRPC: throughput %.2fx, server CPU per call %.2fx", g.perOp.Seconds()/r.perOp.Seconds(), r.serverCPU.Seconds()/g.serverCPU.Seconds())
	}
}

// benchResult is what the last round of a sub-benchmark measured: wall
// time and server CPU time per call.
type benchResult struct {
	n                int
	perOp, serverCPU time.Duration
}

// runCallers runs b.N calls from callers goroutines and reports the CPU
// time process pid spent per call.
func runCallers(b *testing.B, pid, callers int, call func() error) benchResult {
	var next atomic.Int64
	var wg sync.WaitGroup
	before := processCPU(b, pid)
	b.ResetTimer()
	start := time.Now()
	for range callers {
		wg.Go(func() {
			for next.Add(1) <= int64(b.N) {
				if err := call(); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu := processCPU(b, pid) - before
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "server-cpu-ns/op")
	return benchResult{n: b.N, perOp: elapsed / time.Duration(b.N), serverCPU: cpu / time.Duration(b.N)}
}

// processCPU is the user and system CPU time of process pid so far, from
// /proc/pid/stat (fields 14 and 15, in clock ticks of 1/100 s on Linux).
func processCPU(b *testing.B, pid int) time.Duration {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// The command name (field 2) is in parentheses and may hold spaces.
	fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
	var ticks int64
	for _, f := range fields[11:13] { // fields 14 and 15 of the whole line
		n, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			b.Fatal(err)
		}
		ticks += n
	}
	return time.Duration(ticks) * 10 * time.Millisecond
}
