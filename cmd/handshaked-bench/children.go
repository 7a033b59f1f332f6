package main

import (
	"bufio"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"time"

	handshaked "github.com/handshaked/handshaked/clients/go"
	"github.com/handshaked/handshaked/clients/go/edge"
	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/heapfloor"
	"github.com/handshaked/handshaked/internal/keyvault"
	"github.com/handshaked/handshaked/internal/service"
	"github.com/handshaked/handshaked/internal/testpki"
)

// Environment of a child process: its working directory and, for the
// edge, the service's gRPC address.
const (
	dirEnv     = "HANDSHAKED_BENCH_DIR"
	serviceEnv = "HANDSHAKED_BENCH_SERVICE"
	profileEnv = "HANDSHAKED_BENCH_CPUPROFILE"
)

// children counts the child processes started, to name their profiles in
// the order they ran.
var children int

// serverName is the DNS name of every certificate of the benchmark.
const serverName = "bench.handshaked.test"

// The benchmark's keys, the same in the service and in the in-process
// baseline's vault; the RSA and ECDSA ones serve TLS too.
var benchKeys = []struct {
	id  string
	alg keyvault.Algorithm
	tls bool
}{{"rsa", keyvault.RSA2048, true}, {"ec", keyvault.ECDSAP256, true}, {"ed", keyvault.Ed25519, false}}

// maxSessions is the service's session cap: above the largest memory
// measurement.
const maxSessions = 1 << 17

// childInfo is what a child prints, as one JSON line, once it serves.
type childInfo struct {
	GRPC, HTTP string
	// Listeners are the TLS servers of the edge and the local-key
	// server, by key id.
	Listeners map[string]string
	// CertsPEM are the certificates they present.
	CertsPEM []string
}

type child struct {
	cmd   *exec.Cmd
	stdin interface{ Close() error }
	info  childInfo
}

// startChild runs this program again in role, in dir, and waits for it to
// serve. It ends when stop closes its standard input. With -cpuprofile it
// profiles its whole life into N-role.pprof, N counting the children.
func startChild(ctx context.Context, o options, role, dir string, env []string) (*child, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, exe)
	children++
	if o.profileDir != "" {
		env = append(env, profileEnv+"="+filepath.Join(o.profileDir, fmt.Sprintf("%d-%s.pprof", children, role)))
	}
	cmd.Env = append(os.Environ(), append(env, roleEnv+"="+role, dirEnv+"="+dir)...)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := &child{cmd: cmd, stdin: stdin}
	line, err := bufio.NewReader(stdout).ReadBytes('\n')
	if err == nil {
		err = json.Unmarshal(line, &c.info)
	}
	if err != nil {
		c.stop()
		return nil, fmt.Errorf("%s did not start: %w", role, err)
	}
	return c, nil
}

func (c *child) stop() {
	if c.stdin.Close() == nil {
		c.cmd.Wait()
	}
}

// startProfile writes a CPU profile to path until stop is called.
func startProfile(path string) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}

func (c *child) pid() int { return c.cmd.Process.Pid }

// runChild serves in role until standard input closes.
func runChild(role string) error {
	ctx := context.Background()
	// The children's routine logs (ticket keys created) would interleave
	// with the tables; warnings and errors still show.
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	dir := os.Getenv(dirEnv)
	var (
		info    childInfo
		cleanup func()
		err     error
	)
	switch role {
	case "service":
		info, cleanup, err = serveService(ctx, dir)
	case "edge":
		info, cleanup, err = serveEdge(os.Getenv(serviceEnv))
	case "local":
		info, cleanup, err = serveLocal()
	case "bare":
		info, cleanup, err = serveBare(ctx, dir)
	default:
		err = fmt.Errorf("unknown role %q", role)
	}
	if err != nil {
		return err
	}
	defer cleanup()
	if path := os.Getenv(profileEnv); path != "" {
		stop, err := startProfile(path)
		if err != nil {
			return err
		}
		defer stop()
	}
	line, err := json.Marshal(info)
	if err != nil {
		return err
	}
	fmt.Printf("%s\n", line)
	// Any byte or the end of standard input stops the child.
	bufio.NewReader(os.Stdin).ReadByte()
	return nil
}

// openVault opens a vault in a new directory under dir holding the
// benchmark's keys, with self-signed certificates on those serving TLS.
func openVault(ctx context.Context, dir string) (*keyvault.Vault, []string, error) {
	d, err := os.MkdirTemp(dir, "vault-")
	if err != nil {
		return nil, nil, err
	}
	store, err := keyvault.OpenBolt(filepath.Join(d, "keys.db"))
	if err != nil {
		return nil, nil, err
	}
	kek := make([]byte, 32)
	rand.Read(kek)
	v, err := keyvault.New(ctx, store, kek)
	if err != nil {
		return nil, nil, err
	}
	var certs []string
	for _, k := range benchKeys {
		if _, err := v.Create(ctx, k.id, k.alg, nil); err != nil {
			v.Close()
			return nil, nil, err
		}
		if !k.tls {
			continue
		}
		der, err := v.CreateSelfSignedCertificate(ctx, k.id, 1, testpki.SelfSignedServerTemplate(serverName))
		if err == nil {
			_, err = v.AttachChain(ctx, k.id, 1, [][]byte{der})
		}
		if err != nil {
			v.Close()
			return nil, nil, err
		}
		certs = append(certs, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})))
	}
	return v, certs, nil
}

// serveService serves the API in development mode (no authentication:
// the benchmark measures the operations, not mutual TLS) with session
// tickets on and the session caps above what the memory measurement
// holds.
func serveService(ctx context.Context, dir string) (childInfo, func(), error) {
	v, certs, err := openVault(ctx, dir)
	if err != nil {
		return childInfo{}, nil, err
	}
	srv, err := service.New(v, service.Options{
		Handshake: service.HandshakeOptions{MaxSessions: maxSessions, MaxSessionsPerCaller: maxSessions, SessionTTL: time.Hour, MaxInput: 1 << 40},
		Tickets:   &service.TicketOptions{Deployment: "bench"},
	})
	if err != nil {
		v.Close()
		return childInfo{}, nil, err
	}
	grpcLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return childInfo{}, nil, err
	}
	httpLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return childInfo{}, nil, err
	}
	go srv.Serve(grpcLis, httpLis)
	return childInfo{GRPC: grpcLis.Addr().String(), HTTP: httpLis.Addr().String(), CertsPEM: certs}, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		v.Close()
	}, nil
}

// listenerName names in childInfo.Listeners the edge's listener for key
// in one mode: with oneRoundTrip, the service completes a TLS 1.3
// handshake or a TLS 1.2 resumption in its first step and the edge verifies the client's Finished
// (handshake-edge -one-round-trip); without, the edge steps it twice, the
// default. The local-key server's listeners are named by key alone.
func listenerName(key string, oneRoundTrip bool) string {
	if oneRoundTrip {
		return key + " one-round-trip"
	}
	return key
}

// serveEdge serves TLS through the service at addr, one listener per
// TLS key and mode, each connection answered as serveOneByte does with
// the number of service round trips the handshake took.
func serveEdge(addr string) (childInfo, func(), error) {
	heapfloor.Start(heapfloor.Serving) // as handshake-edge's main does
	c, err := handshaked.Dial(addr, handshaked.WithInsecure())
	if err != nil {
		return childInfo{}, nil, err
	}
	info := childInfo{Listeners: map[string]string{}}
	var closers []func() error
	roundTrips := func(c net.Conn) byte { return byte(len(c.(*edge.Conn).ConnectionState().Steps)) }
	for _, k := range benchKeys {
		if !k.tls {
			continue
		}
		for _, oneRoundTrip := range []bool{false, true} {
			inner, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				return childInfo{}, nil, err
			}
			l := edge.NewListener(inner, &edge.Config{Client: c, Handshake: &pb.HandshakeConfig{
				Keys: []*pb.KeyRef{{Key: k.id}}, CallerVerifiesFinished: oneRoundTrip}})
			go serveOneByte(l, roundTrips)
			info.Listeners[listenerName(k.id, oneRoundTrip)] = l.Addr().String()
			closers = append(closers, l.Close)
		}
	}
	return info, func() {
		for _, f := range closers {
			f()
		}
		c.Close()
	}, nil
}

// serveLocal serves TLS with crypto/tls and keys of its own, the
// baseline: the same key types and certificates as the service's, session
// tickets on (crypto/tls's default), RSA key exchange allowed as the
// engine allows it.
func serveLocal() (childInfo, func(), error) {
	info := childInfo{Listeners: map[string]string{}}
	var closers []func() error
	suites := []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, tls.TLS_RSA_WITH_AES_128_GCM_SHA256}
	for _, k := range benchKeys {
		if !k.tls {
			continue
		}
		var key crypto.Signer
		var err error
		if k.alg == keyvault.RSA2048 {
			key, err = rsa.GenerateKey(rand.Reader, 2048)
		} else {
			key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		}
		if err != nil {
			return childInfo{}, nil, err
		}
		der, err := x509.CreateCertificate(rand.Reader, testpki.SelfSignedServerTemplate(serverName), testpki.SelfSignedServerTemplate(serverName), key.Public(), key)
		if err != nil {
			return childInfo{}, nil, err
		}
		l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
			Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}},
			CipherSuites: suites,
		})
		if err != nil {
			return childInfo{}, nil, err
		}
		go serveOneByte(l, func(net.Conn) byte { return 0 })
		info.Listeners[k.id] = l.Addr().String()
		info.CertsPEM = append(info.CertsPEM, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})))
		closers = append(closers, l.Close)
	}
	return info, func() {
		for _, f := range closers {
			f()
		}
	}, nil
}

// serveOneByte writes a byte on every connection l accepts and closes it:
// once a client has read it, the server has completed the handshake and
// the client has taken in a TLS 1.3 NewSessionTicket sent before it. The
// byte is what roundTrips says of the connection (the calls to the service
// its handshake took, 0 for the local-key server), so that the client
// checks each server ran the handshake in the mode its row says.
func serveOneByte(l net.Listener, roundTrips func(net.Conn) byte) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			c.SetDeadline(time.Now().Add(10 * time.Second))
			c.Write([]byte{roundTrips(c)})
			c.Close()
		}()
	}
}
