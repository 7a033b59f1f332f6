package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	handshaked "github.com/handshaked/handshaked/clients/go"
	"github.com/handshaked/handshaked/clients/go/edge"
	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/etcdtest"
	"github.com/handshaked/handshaked/internal/servicetest"
	"github.com/handshaked/handshaked/internal/testenv"
)

// fleet is a deployment of handshaked replicas on one etcd cluster, as an
// operator runs it: each replica a process of its own (this test binary as
// handshaked), with its own data directory, on a fixed loopback port (a
// restarted replica comes back where its clients look for it), every one
// with the same key-encryption key file and etcd prefix.
type fleet struct {
	t        *testing.T
	etcd     *etcdtest.Cluster
	dir      string
	kekFile  string
	prefix   string
	replicas []*replica
}

// replica is one handshaked of a fleet; p is its current process (nil
// while it is down).
type replica struct {
	name     string
	dataDir  string
	grpcAddr string
	httpAddr string
	extra    []string
	p        *process
	// kv reaches it across restarts: a connection to its fixed address.
	kv pb.KeyVaultClient
}

// startFleet starts an etcd cluster of members members and n replicas on it.
// extra flags go to every replica.
func startFleet(t *testing.T, members, n int, extra ...string) *fleet {
	t.Helper()
	f := &fleet{t: t, etcd: etcdtest.Start(t, members), dir: t.TempDir(), prefix: "/handshaked/fleet-test"}
	kek := make([]byte, 32)
	_, err := rand.Read(kek)
	require.NoError(t, err)
	f.kekFile = filepath.Join(f.dir, "kek")
	// Every replica gets the same key-encryption key: the store holds
	// only what it sealed.
	require.NoError(t, os.WriteFile(f.kekFile, []byte(hex.EncodeToString(kek)+"\n"), 0o600))
	for i := range n {
		r := &replica{
			name:     fmt.Sprintf("r%d", i),
			dataDir:  filepath.Join(f.dir, fmt.Sprintf("r%d", i)),
			grpcAddr: testenv.FreeAddr(t),
			httpAddr: testenv.FreeAddr(t),
			extra:    extra,
		}
		require.NoError(t, os.MkdirAll(r.dataDir, 0o700))
		conn, err := grpc.NewClient(r.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		require.NoError(t, err)
		t.Cleanup(func() { conn.Close() })
		r.kv = pb.NewKeyVaultClient(conn)
		f.replicas = append(f.replicas, r)
	}
	// The first replica makes the development sample key; the others find
	// it in the store.
	f.start(0)
	var wg sync.WaitGroup
	for i := 1; i < n; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); f.start(i) }()
	}
	wg.Wait()
	return f
}

// start starts replica i (again) and waits until it serves.
func (f *fleet) start(i int) {
	r := f.replicas[i]
	args := append([]string{"-grpc-addr", r.grpcAddr, "-http-addr", r.httpAddr, "-kek-file", f.kekFile,
		"-etcd-endpoints", strings.Join(f.etcd.Endpoints(), ","), "-etcd-prefix", f.prefix}, r.extra...)
	p := startProcess(f.t, r.dataDir, args...)
	if p.grpcAddr == "" {
		f.t.Errorf("replica %s did not start:\n%s", r.name, p.out())
		f.t.FailNow()
	}
	r.p = p
}

// kill ends replica i with SIGKILL, as a crash or an OOM kill would.
func (f *fleet) kill(i int) {
	r := f.replicas[i]
	require.NoError(f.t, r.p.cmd.Process.Kill())
	<-r.p.exited
	r.p = nil
}

// grpcAddrs lists the replicas' gRPC addresses, as the edge is given them.
func (f *fleet) grpcAddrs() string {
	var addrs []string
	for _, r := range f.replicas {
		addrs = append(addrs, r.grpcAddr)
	}
	return strings.Join(addrs, ",")
}

// logs is every replica's output, for a failure message.
func (f *fleet) logs() string {
	var b strings.Builder
	for _, r := range f.replicas {
		if r.p != nil {
			fmt.Fprintf(&b, "\n--- %s:\n%s", r.name, r.p.out())
		}
	}
	return b.String()
}

// edgeProcess is a handshake-edge process.
type edgeProcess struct {
	cmd        *exec.Cmd
	addr       string
	out        *testenv.Buffer
	metricsURL string // with -metrics-listen
}

// stepCounts reads the edge's counters of unary steps retried on another
// replica and of failed step attempts.
func (e *edgeProcess) stepCounts(t *testing.T) (retries, failures float64) {
	t.Helper()
	return servicetest.MetricSum(t, http.DefaultClient, e.metricsURL, "handshake_edge_step_retries_total"),
		servicetest.MetricSum(t, http.DefaultClient, e.metricsURL, "handshake_edge_step_failures_total")
}

// startEdge runs the handshake-edge binary bin with args on a loopback
// port of the kernel's choice and waits until it listens; it is killed with
// the test.
func startEdge(t *testing.T, bin string, args ...string) *edgeProcess {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"-listen", "127.0.0.1:0"}, args...)...)
	cmd.Env = os.Environ()
	stderr, err := cmd.StderrPipe()
	require.NoError(t, err)
	e := &edgeProcess{cmd: cmd, out: &testenv.Buffer{}}
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	listening := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			fmt.Fprintln(e.out, sc.Text())
			var rec struct{ Msg, Addr string }
			if json.Unmarshal(sc.Bytes(), &rec) == nil && rec.Msg == "handshake-edge listening" {
				listening <- rec.Addr
			}
		}
		io.Copy(io.Discard, stderr)
		close(listening)
	}()
	select {
	case addr, ok := <-listening:
		require.True(t, ok, "handshake-edge exited:\n%s", e.out)
		e.addr = addr
	case <-time.After(30 * time.Second):
		require.FailNow(t, "handshake-edge did not listen", e.out.String())
	}
	return e
}

// pinnedEdge is an edge terminator in the test process whose handshakes
// all go to one replica, with keys: what a handshake through that replica,
// and only it, does. Each accepted connection gets "ok" and is closed.
func pinnedEdge(t *testing.T, r *replica, keys ...*pb.KeyRef) string {
	t.Helper()
	client, err := handshaked.Dial(r.grpcAddr, handshaked.WithInsecure())
	require.NoError(t, err)
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	l := edge.NewListener(inner, &edge.Config{Client: client, Unary: true,
		Handshake: &pb.HandshakeConfig{Keys: keys, DisableSessionTickets: true}})
	t.Cleanup(func() { l.Close(); client.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.Write([]byte("ok"))
			}()
		}
	}()
	return l.Addr().String()
}

// handshake completes a TLS handshake with the edge at addr as a Go
// crypto/tls client verifying the chain for serverName under cfg, and reads
// the edge's first bytes (proof that the session keys work).
func handshake(ctx context.Context, addr string, cfg *tls.Config) error {
	d := tls.Dialer{Config: cfg}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	b := make([]byte, 2)
	if _, err := io.ReadFull(c, b); err != nil {
		return fmt.Errorf("read after the handshake: %w", err)
	}
	return nil
}

// handshakeLoad runs TLS clients against an edge's echo page in a loop,
// each request on a new connection (a full handshake each, or a resumed
// one when the client's config has a session cache), counting successes
// and failures by phase: a test moves phase when it changes the fleet
// (a replica killed, restarted...).
type handshakeLoad struct {
	load  *servicetest.Load
	phase atomic.Int32
	mu    sync.Mutex
	ok    map[int32]int
	fails map[int32]map[string]int
}

// startHandshakeLoad starts clients GETting the edge's echo page at addr,
// each request on a new connection: goClients Go clients (crypto/tls,
// TLS 1.3 and 1.2 alternately) and, with curl, a curl client.
func startHandshakeLoad(t *testing.T, addr string, tlsCfg *tls.Config, caFile string, goClients int, curl bool) *handshakeLoad {
	t.Helper()
	l := &handshakeLoad{ok: map[int32]int{}, fails: map[int32]map[string]int{}}
	var clients []func(ctx context.Context) error
	for i := range goClients {
		cfg := tlsCfg.Clone()
		if i%2 == 1 {
			cfg.MaxVersion = tls.VersionTLS12
		}
		clients = append(clients, func(ctx context.Context) error {
			_, err := getEcho(ctx, addr, cfg)
			return err
		})
	}
	if curl {
		curlPath := testenv.LookPath(t, "curl")
		resolve := tlsCfg.ServerName + ":" + portOf(t, addr) + ":127.0.0.1"
		url := "https://" + net.JoinHostPort(tlsCfg.ServerName, portOf(t, addr)) + "/"
		clients = append(clients, func(ctx context.Context) error {
			out, err := exec.CommandContext(ctx, curlPath, "-fsS", "--max-time", "15", "--cacert", caFile, "--resolve", resolve, url).CombinedOutput()
			if err != nil {
				return fmt.Errorf("curl: %v: %s", err, strings.TrimSpace(string(out)))
			}
			if !strings.Contains(string(out), "TLS version") {
				return fmt.Errorf("curl: not the echo page: %q", out)
			}
			return nil
		})
	}
	l.load = servicetest.StartLoad(t, len(clients), func(ctx context.Context, g int) error {
		phase := l.phase.Load()
		err := clients[g](ctx)
		if ctx.Err() != nil {
			return nil // cut short by Stop
		}
		l.mu.Lock()
		if err == nil {
			l.ok[phase]++
		} else {
			if l.fails[phase] == nil {
				l.fails[phase] = map[string]int{}
			}
			l.fails[phase][err.Error()]++
		}
		l.mu.Unlock()
		if err != nil {
			time.Sleep(10 * time.Millisecond) // a failing client does not spin
		}
		return nil // counted here, by phase
	})
	return l
}

// setPhase makes the requests that start from now count under phase.
func (l *handshakeLoad) setPhase(phase int32) { l.phase.Store(phase) }

// Stop stops the clients and waits for them.
func (l *handshakeLoad) Stop() { l.load.Stop() }

// counts returns the successes and failures of a phase, and the failures'
// errors, most frequent first.
func (l *handshakeLoad) counts(phase int32) (ok, failed int, errs []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for msg, n := range l.fails[phase] {
		failed += n
		errs = append(errs, fmt.Sprintf("%dx %s", n, msg))
	}
	sort.Slice(errs, func(i, j int) bool { return errs[i] > errs[j] })
	return l.ok[phase], failed, errs
}

// waitOK waits until the phase has had n successful requests.
func (l *handshakeLoad) waitOK(t *testing.T, phase int32, n int) {
	t.Helper()
	require.Eventually(t, func() bool {
		ok, _, _ := l.counts(phase)
		return ok >= n
	}, 60*time.Second, 20*time.Millisecond, "load phase %d: fewer than %d successful requests", phase, n)
}

func portOf(t *testing.T, addr string) string {
	_, port, err := net.SplitHostPort(addr)
	require.NoError(t, err)
	return port
}

// getEcho GETs the echo page of the edge at addr on a new connection, a
// TLS client with cfg (whose ServerName names the key), and says whether
// the handshake resumed a session.
func getEcho(ctx context.Context, addr string, cfg *tls.Config) (resumed bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	c, err := (&tls.Dialer{Config: cfg}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return false, err
	}
	defer c.Close()
	tc := c.(*tls.Conn)
	tc.SetDeadline(time.Now().Add(15 * time.Second))
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+cfg.ServerName+"/?close", nil)
	if err != nil {
		return false, err
	}
	if err := req.Write(c); err != nil {
		return false, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), req)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return false, err
	}
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "TLS version") {
		return false, fmt.Errorf("not the echo page: %s %q", resp.Status, body)
	}
	return tc.ConnectionState().DidResume, nil
}
