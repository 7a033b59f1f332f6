package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"

	"golang.org/x/sync/errgroup"

	handshaked "github.com/handshaked/handshaked/clients/go"
	pb "github.com/handshaked/handshaked/gen/handshake/v1"
)

// memoryTarget is issue 12's bound on the service's resident memory at
// 50,000 pending sessions.
const memoryTarget = 1 << 30

// benchMemory starts a fresh service, reads its resident memory idle,
// then holds more and more pending handshake sessions (each started by a
// TLS 1.3 ClientHello, its server flight built, waiting for the client's
// Finished) and reads it again at each count.
func benchMemory(ctx context.Context, w io.Writer, o options, dir string) error {
	svc, err := startChild(ctx, o, "service", dir, nil)
	if err != nil {
		return err
	}
	defer svc.stop()
	c, err := handshaked.Dial(svc.info.GRPC, handshaked.WithInsecure())
	if err != nil {
		return err
	}
	defer c.Close()
	hello, err := clientHello()
	if err != nil {
		return err
	}
	start := &pb.StartHandshakeRequest{Config: &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: "ec"}}}, Input: hello}
	// One session first, so the idle figure includes what the first
	// handshake loads once (certificates, engine tables).
	if _, err := c.Handshake().StartHandshake(ctx, start); err != nil {
		return err
	}
	idle, err := residentBytes(svc.pid())
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "Memory: the service's resident set (VmRSS) holding pending TLS 1.3 sessions (ECDSA P-256, server flight sent, waiting for the client), against the same process with one session: %.0f MiB.\n\n", mib(idle))
	fmt.Fprintln(w, "| pending sessions | resident | above idle | per session | of the 1 GiB target |")
	fmt.Fprintln(w, "|---:|---:|---:|---:|---:|")
	held := 1
	for _, n := range o.sessions {
		if err := startSessions(ctx, c, start, n-held); err != nil {
			return fmt.Errorf("%d sessions: %w", n, err)
		}
		held = max(held, n)
		// The service's own count, so the figure is for the sessions it
		// says it holds.
		if got, err := sessionsHeld(ctx, svc.info.HTTP); err != nil || got != held {
			return fmt.Errorf("the service holds %d sessions, want %d (%v)", got, held, err)
		}
		rss, err := residentBytes(svc.pid())
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "| %d | %.0f MiB | %.0f MiB | %.1f KiB | %.2f× |\n", n, mib(rss), mib(rss-idle), float64(rss-idle)/1024/float64(n), float64(rss)/memoryTarget)
	}
	fmt.Fprintln(w)
	return nil
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

// startSessions starts n handshakes and leaves them pending, from 16
// callers at once.
func startSessions(ctx context.Context, c *handshaked.Client, req *pb.StartHandshakeRequest, n int) error {
	var left atomic.Int64
	left.Store(int64(n))
	g, ctx := errgroup.WithContext(ctx)
	for range 16 {
		g.Go(func() error {
			for left.Add(-1) >= 0 {
				if _, err := c.Handshake().StartHandshake(ctx, req); err != nil {
					return err
				}
			}
			return nil
		})
	}
	return g.Wait()
}

// clientHello is the first record a crypto/tls client sends for TLS 1.3.
func clientHello() ([]byte, error) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	go tls.Client(a, &tls.Config{ServerName: serverName, MinVersion: tls.VersionTLS13}).Handshake()
	hdr := make([]byte, 5)
	if _, err := io.ReadFull(b, hdr); err != nil {
		return nil, err
	}
	rec := make([]byte, 5+int(hdr[3])<<8|int(hdr[4]))
	copy(rec, hdr)
	_, err := io.ReadFull(b, rec[5:])
	return rec, err
}

// sessionsHeld reads the service's handshaked_handshake_sessions gauge.
func sessionsHeld(ctx context.Context, httpAddr string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+httpAddr+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	s := bufio.NewScanner(resp.Body)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "handshaked_handshake_sessions "); ok {
			f, err := strconv.ParseFloat(v, 64)
			return int(f), err
		}
	}
	return 0, fmt.Errorf("no handshaked_handshake_sessions on /metrics")
}

// residentBytes reads a process's resident set size from /proc.
func residentBytes(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("resident memory (Linux /proc only): %w", err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}
