package handshaked_test

import (
	"bufio"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	handshaked "github.com/handshaked/handshaked/clients/go"
	"github.com/handshaked/handshaked/clients/go/keyless"
	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/keyvault"
	"github.com/handshaked/handshaked/internal/service"
)

// benchServerEnv makes the test binary a handshaked service for the
// benchmarks, in its own process as every real caller sees it: it serves
// on loopback with the vault in the directory the variable names, prints
// its gRPC address and runs until its standard input closes.
const benchServerEnv = "HANDSHAKED_BENCH_SERVER_DIR"

func init() {
	dir := os.Getenv(benchServerEnv)
	if dir == "" {
		return
	}
	if err := serveBench(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(0)
}

func serveBench(dir string) error {
	ctx := context.Background()
	vault, err := openBenchVault(ctx, dir)
	if err != nil {
		return err
	}
	srv, err := service.New(vault, service.Options{})
	if err != nil {
		return err
	}
	grpcLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	httpLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	go srv.Serve(grpcLis, httpLis)
	fmt.Println(grpcLis.Addr())
	bufio.NewReader(os.Stdin).ReadString('\n')
	return nil
}

// openBenchVault opens a vault in dir holding the benchmark keys.
func openBenchVault(ctx context.Context, dir string) (*keyvault.Vault, error) {
	store, err := keyvault.OpenBolt(filepath.Join(dir, "keys.db"))
	if err != nil {
		return nil, err
	}
	vault, err := keyvault.New(ctx, store, make([]byte, 32))
	if err != nil {
		return nil, err
	}
	for id, file := range map[string]string{"ec": "p256-sec1.pem", "rsa": "rsa2048-pkcs1.pem"} {
		pem, err := os.ReadFile(filepath.Join("..", "..", "testdata", "keys", file))
		if err != nil {
			return nil, err
		}
		if _, err := vault.Import(ctx, id, pem, nil); err != nil {
			return nil, err
		}
	}
	return vault, nil
}

// startBenchServer runs the service in a child process.
func startBenchServer(b *testing.B) string {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run", "^$")
	cmd.Env = append(os.Environ(), benchServerEnv+"="+b.TempDir())
	stdin, err := cmd.StdinPipe()
	require.NoError(b, err)
	stdout, err := cmd.StdoutPipe()
	require.NoError(b, err)
	cmd.Stderr = os.Stderr
	require.NoError(b, cmd.Start())
	b.Cleanup(func() {
		stdin.Close()
		cmd.Wait()
	})
	addr, err := bufio.NewReader(stdout).ReadString('\n')
	require.NoError(b, err, "bench server did not start")
	return addr[:len(addr)-1]
}

// BenchmarkKeyless signs ECDSA P-256 and decrypts RSA-2048 TLS premasters
// through the keyless crypto.Signer/crypto.Decrypter against a service in
// another process, over unary RPCs, over SignStreams, coalesced into
// batches on a BatchStream (the default) and in batches of 16, with the same vault operation in-process as the baseline,
// in one run, at 8 and 64 concurrent callers (SetParallelism × 2 cores):
//
//	go test -run '^$' -bench Keyless -benchtime 2s ./clients/go/
func BenchmarkKeyless(b *testing.B) {
	ctx := context.Background()
	addr := startBenchServer(b)
	local, err := openBenchVault(ctx, b.TempDir())
	require.NoError(b, err)
	b.Cleanup(func() { local.Close() })
	digest := sha256.Sum256([]byte("benchmark"))
	pub, _, err := dialBench(b, addr).PublicKey(ctx, "rsa", 0)
	require.NoError(b, err)
	pm := make([]byte, 48)
	rand.Read(pm)
	ct, err := rsa.EncryptPKCS1v15(rand.Reader, pub.(*rsa.PublicKey), pm)
	require.NoError(b, err)
	pmOpts := &rsa.PKCS1v15DecryptOptions{SessionKeyLen: 48}

	signers := map[string]crypto.Signer{}
	// watch sees the batches the coalescing client forms.
	var watch batchWatch
	for name, opts := range map[string][]handshaked.Option{
		"unary":     {handshaked.WithSignStreams(0)},
		"stream":    {handshaked.WithoutCoalescing()},
		"coalesced": {watch.option()},
	} {
		c := dialBench(b, addr, opts...)
		for _, id := range []string{"ec", "rsa"} {
			s, err := keyless.New(ctx, c, id, 0)
			require.NoError(b, err)
			signers[name+"/"+id] = s
		}
	}
	batcher := dialBench(b, addr).KeyVault()
	const batchSize = 16
	batchOf := func(op *pb.BatchOperation) *pb.BatchRequest {
		r := &pb.BatchRequest{}
		for range batchSize {
			r.Operations = append(r.Operations, op)
		}
		return r
	}
	signBatch := batchOf(&pb.BatchOperation{Operation: &pb.BatchOperation_Sign{Sign: &pb.SignRequest{Key: "ec", Scheme: pb.SignatureScheme_SIGNATURE_SCHEME_ECDSA_SECP256R1_SHA256, Input: &pb.SignRequest_Digest{Digest: digest[:]}}}})
	decryptBatch := batchOf(&pb.BatchOperation{Operation: &pb.BatchOperation_Decrypt{Decrypt: &pb.DecryptRequest{Key: "rsa", Mode: pb.DecryptMode_DECRYPT_MODE_RSA_PKCS1_TLS_PREMASTER, Ciphertext: ct}}})

	type op struct {
		name  string
		par   []int
		local func() error
		key   string
		call  func(s crypto.Signer) error
		batch *pb.BatchRequest
	}
	for _, o := range []op{
		{"sign-ecdsa-p256", []int{4, 32}, func() error {
			_, err := local.Sign(ctx, "ec", 1, tls.ECDSAWithP256AndSHA256, digest[:], true)
			return err
		}, "ec", func(s crypto.Signer) error {
			_, err := s.Sign(nil, digest[:], crypto.SHA256)
			return err
		}, signBatch},
		{"decrypt-rsa2048-premaster", []int{4}, func() error {
			_, err := local.Decrypt(ctx, "rsa", 1, keyvault.DecryptRSAPKCS1TLSPremaster, ct, 0)
			return err
		}, "rsa", func(s crypto.Signer) error {
			_, err := s.(crypto.Decrypter).Decrypt(nil, ct, pmOpts)
			return err
		}, decryptBatch},
	} {
		for _, par := range o.par {
			prefix := fmt.Sprintf("%s/c%d/", o.name, par*2)
			b.Run(prefix+"in-process", func(b *testing.B) { runParallel(b, par, o.local) })
			for _, via := range []string{"unary", "stream", "coalesced"} {
				s := signers[via+"/"+o.key]
				b.Run(prefix+via, func(b *testing.B) {
					before := len(watch.batches())
					runParallel(b, par, func() error { return o.call(s) })
					if n := len(watch.batches()) - before; via == "coalesced" && n > 0 {
						b.ReportMetric(float64(b.N)/float64(n), "ops/batch")
					}
				})
			}
			// ns/op is per operation: each call carries batchSize.
			b.Run(prefix+"batch16", func(b *testing.B) {
				b.SetParallelism(par)
				b.RunParallel(func(p *testing.PB) {
					for p.Next() {
						resp, err := batcher.Batch(ctx, o.batch)
						if err != nil || resp.GetResults()[0].GetError() != nil {
							b.Error(err, resp.GetResults()[0].GetError())
							return
						}
						for range batchSize - 1 {
							if !p.Next() {
								return
							}
						}
					}
				})
			})
		}
	}
}

func runParallel(b *testing.B, par int, op func() error) {
	b.SetParallelism(par)
	b.RunParallel(func(p *testing.PB) {
		for p.Next() {
			if err := op(); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func dialBench(b *testing.B, addr string, opts ...handshaked.Option) *handshaked.Client {
	b.Helper()
	c, err := handshaked.Dial(addr, append(opts, handshaked.WithInsecure())...)
	require.NoError(b, err)
	b.Cleanup(func() { c.Close() })
	return c
}
