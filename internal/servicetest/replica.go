package servicetest

import (
	"context"
	"crypto/rand"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/handshaked/handshaked/internal/keyvault"
	"github.com/handshaked/handshaked/internal/service"
)

// Replica is one of several services that hold the same keys, which a test
// can kill and restart on its address.
type Replica struct {
	t        testing.TB
	opts     service.Options
	path     string // its store
	kek      []byte
	GRPCAddr string

	mu  sync.Mutex
	run *replicaRun // nil while killed
}

type replicaRun struct {
	*Server
	lis  *CutListener
	stop func(context.Context)
}

// StartReplicas starts n services, each on its own copy of one store under
// one KEK, after setup has run on a service of that store (to create keys):
// every replica holds the same keys, ticket keys and step-token keys, as
// replicas on a shared store do, but a change one of them makes later stays
// its own. Everything stops with the test.
func StartReplicas(t testing.TB, n int, opts service.Options, setup func(*Server)) []*Replica {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	kek := make([]byte, 32)
	rand.Read(kek)
	first := filepath.Join(dir, "keys.db")
	store, err := keyvault.OpenBolt(first)
	if err != nil {
		t.Fatal(err)
	}
	vault, err := keyvault.New(ctx, store, kek)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s, stop := serve(t, vault, opts, lis)
	// Stopped even when setup fails the test (runtime.Goexit runs the
	// deferred call), so no setup server outlives it.
	func() {
		defer func() {
			stop(ctx)
			if err := vault.Close(); err != nil {
				t.Error(err)
			}
		}()
		setup(s)
	}()
	replicas := make([]*Replica, n)
	for i := range replicas {
		path := filepath.Join(dir, "replica"+strconv.Itoa(i)+".db")
		copyFile(t, first, path)
		r := &Replica{t: t, opts: opts, path: path, kek: kek, GRPCAddr: "127.0.0.1:0"}
		r.Restart()
		replicas[i] = r
		t.Cleanup(func() { r.stop(10 * time.Second) })
	}
	return replicas
}

// ListTarget is the replicas' gRPC addresses as the list target a client
// dials, "127.0.0.1:1,127.0.0.1:2": each replica keeps its address across
// restarts.
func ListTarget(replicas []*Replica) string {
	addrs := make([]string, len(replicas))
	for i, r := range replicas {
		addrs[i] = r.GRPCAddr
	}
	return strings.Join(addrs, ",")
}

func copyFile(t testing.TB, from, to string) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(to)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// Server is the running service, nil while the replica is killed.
func (r *Replica) Server() *Server {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.run == nil {
		return nil
	}
	return r.run.Server
}

// Kill stops the replica as a crash does: every connection is cut at once,
// calls in flight included, and nothing more is accepted.
func (r *Replica) Kill() {
	r.mu.Lock()
	run := r.run
	r.mu.Unlock()
	if run == nil {
		return
	}
	run.lis.Cut()
	r.stop(0)
}

// stop shuts the running service down, waiting up to grace for calls in
// flight, and closes its vault.
func (r *Replica) stop(grace time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.run == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	r.run.stop(ctx)
	if err := r.run.Vault.Close(); err != nil {
		r.t.Errorf("close vault: %v", err)
	}
	r.run = nil
}

// Restart starts a killed replica again, on its address and its store.
func (r *Replica) Restart() {
	r.t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.run != nil {
		r.t.Fatal("servicetest: restart of a running replica")
	}
	store, err := keyvault.OpenBolt(r.path)
	if err != nil {
		r.t.Fatal(err)
	}
	vault, err := keyvault.Open(context.Background(), store, r.kek)
	if err != nil {
		r.t.Fatal(err)
	}
	lis, err := net.Listen("tcp", r.GRPCAddr)
	if err != nil {
		r.t.Fatal(err)
	}
	r.GRPCAddr = lis.Addr().String()
	cl := NewCutListener(lis)
	s, stop := serve(r.t, vault, r.opts, cl)
	r.run = &replicaRun{Server: s, lis: cl, stop: stop}
}

// CutListener is a listener whose connections can all be cut at once, as
// a crash of the process serving them does.
type CutListener struct {
	net.Listener
	mu    sync.Mutex
	conns []net.Conn
	done  bool
}

// NewCutListener wraps l.
func NewCutListener(l net.Listener) *CutListener { return &CutListener{Listener: l} }

func (l *CutListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done {
		c.Close()
	} else {
		l.conns = append(l.conns, c)
	}
	return c, nil
}

// Cut closes every connection, and each one accepted from now on.
func (l *CutListener) Cut() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.done = true
	for _, c := range l.conns {
		c.Close()
	}
	l.conns = nil
}
