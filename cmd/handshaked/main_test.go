package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/pprof"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/testenv"
)

// TestMain lets the test binary act as the handshaked binary: a test starts
// it again with HANDSHAKED_RUN_MAIN=1 and gets a real server process it can
// SIGKILL. With HANDSHAKED_TEST_CPUPROFILE=file too, the process writes a
// CPU profile there when it exits after a signal (for the benchmarks).
func TestMain(m *testing.M) {
	if os.Getenv("HANDSHAKED_RUN_MAIN") == "1" {
		os.Exit(runMain())
	}
	if os.Getenv(floorEnv) == "1" {
		os.Exit(runFloor())
	}
	os.Exit(testenv.Main(m))
}

func runMain() int {
	if path := os.Getenv("HANDSHAKED_TEST_CPUPROFILE"); path != "" {
		f, err := os.Create(path)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "cpu profile:", err)
			return 2
		}
		defer f.Close()
		defer pprof.StopCPUProfile()
	}
	main()
	return 0
}

type process struct {
	cmd      *exec.Cmd
	grpcAddr string
	restURL  string
	output   *strings.Builder
	mu       *sync.Mutex
	exited   chan error
	waited   chan struct{} // closed once the process is reaped
}

var servingLine = regexp.MustCompile(`grpc_addr=(\S+) rest_url=(\S+)`)

// servingAddrs finds the addresses in the serving line, logged as text
// (development) or JSON (production).
func servingAddrs(line string) (grpcAddr, restURL string, ok bool) {
	var rec struct {
		Msg      string `json:"msg"`
		GRPCAddr string `json:"grpc_addr"`
		RESTURL  string `json:"rest_url"`
	}
	if json.Unmarshal([]byte(line), &rec) == nil {
		return rec.GRPCAddr, rec.RESTURL, rec.Msg == "handshaked serving"
	}
	if m := servingLine.FindStringSubmatch(line); m != nil {
		return m[1], m[2], true
	}
	return "", "", false
}

// startProcess runs handshaked on dataDir with loopback ports picked by the
// kernel and waits until it serves, or until it exits.
func startProcess(t testing.TB, dataDir string, extra ...string) *process {
	t.Helper()
	return startProcessEnv(t, dataDir, nil, extra...)
}

// startProcessEnv is startProcess with environment variables added.
func startProcessEnv(t testing.TB, dataDir string, env []string, extra ...string) *process {
	t.Helper()
	args := append([]string{"-data-dir", dataDir, "-grpc-addr", "127.0.0.1:0", "-http-addr", "127.0.0.1:0"}, extra...)
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(append(os.Environ(), "HANDSHAKED_RUN_MAIN=1"), env...)
	stderr, err := cmd.StderrPipe()
	require.NoError(t, err)
	p := &process{cmd: cmd, output: &strings.Builder{}, mu: &sync.Mutex{}, exited: make(chan error, 1), waited: make(chan struct{})}
	// It dies with the test binary too, not only at the test's end: one
	// killed, or ended at its -timeout, skips the cleanup below, and left
	// handshaked serving on its ports, its data in a temporary directory.
	testenv.StartGroup(t, cmd)
	serving := make(chan [2]string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			p.mu.Lock()
			p.output.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
			if g, r, ok := servingAddrs(sc.Text()); ok {
				select {
				case serving <- [2]string{g, r}:
				default: // a second such line: the reading goes on
				}
			}
		}
		io.Copy(io.Discard, stderr)
		p.exited <- cmd.Wait()
		close(p.waited)
	}()
	// Reaped before the test's directories are removed: a process still
	// dying must not write into them, nor outlive the test.
	t.Cleanup(func() { cmd.Process.Kill(); <-p.waited })
	select {
	case addrs := <-serving:
		p.grpcAddr, p.restURL = addrs[0], addrs[1]
		return p
	case err := <-p.exited:
		p.exited <- err
		return p // did not serve: the caller inspects exited and output
	case <-time.After(60 * time.Second):
		require.FailNow(t, "handshaked did not start", p.out())
	}
	return nil
}

// TestStartProcessEndsWithTheBinary: the handshaked a test started ends
// when the test binary is killed (kill -9, which runs no cleanup), not
// only at the end of the test.
func TestStartProcessEndsWithTheBinary(t *testing.T) {
	testenv.EndsWithTheBinary(t, "^TestStartProcessLeavesAServer$", nil, (*os.Process).Kill)
}

// TestStartProcessLeavesAServer is TestStartProcessEndsWithTheBinary's
// test binary's: a handshaked serving, which it waits for.
func TestStartProcessLeavesAServer(t *testing.T) {
	pidFile := testenv.PIDFile(t)
	p := startProcess(t, t.TempDir())
	require.NotEmpty(t, p.grpcAddr, "handshaked did not serve:\n%s", p.out())
	require.NoError(t, os.WriteFile(pidFile, []byte(fmt.Sprint(p.cmd.Process.Pid)), 0o600))
	<-p.waited
	t.Fatalf("handshaked ended:\n%s", p.out())
}

func (p *process) out() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.output.String()
}

func (p *process) client(t testing.TB) pb.KeyVaultClient {
	t.Helper()
	conn, err := grpc.NewClient(p.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	return pb.NewKeyVaultClient(conn)
}

// TestDurabilityUnderSIGKILL creates and imports keys concurrently, SIGKILLs
// the server while writes are still in flight, restarts it on the same data,
// and requires every acknowledged key to be there and to sign verifiably.
// Many rounds. (A SIGKILL keeps the page cache, so this cannot see a missing
// fsync; keyvault's power-loss test does.)
func TestDurabilityUnderSIGKILL(t *testing.T) {
	dataDir := t.TempDir()
	importPEM, err := os.ReadFile(filepath.Join("..", "..", "testdata", "keys", "p256-pkcs8.pem"))
	require.NoError(t, err)
	var acked []string
	const rounds, writers, perWriter = 20, 4, 6
	for round := 0; round < rounds; round++ {
		p := startProcess(t, dataDir)
		require.NotEmpty(t, p.grpcAddr, "round %d: server did not start:\n%s", round, p.out())
		kv := p.client(t)
		verifyKeys(t, kv, acked)

		// Writers keep writing; the kill lands once every writer has had a
		// few acknowledgements, so some writes are in flight at that moment.
		var mu sync.Mutex
		var wg sync.WaitGroup
		done := make(chan struct{}, writers*perWriter)
		for w := 0; w < writers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ; i++ {
					id := fmt.Sprintf("r%d-w%d-%d", round, w, i)
					var err error
					if i%2 == 0 {
						_, err = kv.CreateKey(context.Background(), &pb.CreateKeyRequest{Id: id, Algorithm: pb.Algorithm_ALGORITHM_ED25519})
					} else {
						_, err = kv.ImportKey(context.Background(), &pb.ImportKeyRequest{Id: id, PrivateKeyPem: importPEM})
					}
					if err != nil {
						return // the server is gone
					}
					mu.Lock()
					acked = append(acked, id)
					mu.Unlock()
					done <- struct{}{}
				}
			}()
		}
		for i := 0; i < writers*perWriter/2; i++ {
			<-done
		}
		require.NoError(t, p.cmd.Process.Kill())
		go func() {
			for range done {
			}
		}()
		wg.Wait()
		close(done)
		<-p.exited
	}
	p := startProcess(t, dataDir)
	require.NotEmpty(t, p.grpcAddr, "final start failed:\n%s", p.out())
	verifyKeys(t, p.client(t), acked)
	t.Logf("%d acknowledged keys survived %d SIGKILLs", len(acked), rounds)
}

// verifyKeys requires each key to exist and to sign a message so that its
// public key verifies the signature.
func verifyKeys(t *testing.T, kv pb.KeyVaultClient, ids []string) {
	t.Helper()
	msg := []byte("still here")
	digest := sha256.Sum256(msg)
	for _, id := range ids {
		k, err := kv.GetKey(context.Background(), &pb.GetKeyRequest{Key: id})
		require.NoError(t, err, "acknowledged key %s lost", id)
		scheme := pb.SignatureScheme_SIGNATURE_SCHEME_ED25519
		if k.GetVersions()[0].GetAlgorithm() == pb.Algorithm_ALGORITHM_ECDSA_P256 {
			scheme = pb.SignatureScheme_SIGNATURE_SCHEME_ECDSA_SECP256R1_SHA256
		}
		resp, err := kv.Sign(context.Background(), &pb.SignRequest{Key: id, Scheme: scheme, Input: &pb.SignRequest_Message{Message: msg}})
		require.NoError(t, err, "acknowledged key %s unusable", id)
		pubPEM, err := kv.GetPublicKey(context.Background(), &pb.GetPublicKeyRequest{Key: id})
		require.NoError(t, err)
		var ok bool
		switch pub := parsePublicKeyPEM(t, pubPEM.GetPem()).(type) {
		case ed25519.PublicKey:
			ok = scheme == pb.SignatureScheme_SIGNATURE_SCHEME_ED25519 && ed25519.Verify(pub, msg, resp.GetSignature())
		case *ecdsa.PublicKey:
			ok = scheme == pb.SignatureScheme_SIGNATURE_SCHEME_ECDSA_SECP256R1_SHA256 && ecdsa.VerifyASN1(pub, digest[:], resp.GetSignature())
		}
		require.True(t, ok, "key %s: signature does not verify with its public key after restart", id)
	}
}
