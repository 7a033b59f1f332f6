package main

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"slices"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	handshaked "github.com/handshaked/handshaked/clients/go"
	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/keyvault"
)

// batchSize is how many operations one Batch call carries.
const batchSize = 16

// keyOp is one operation as each transport sends it.
type keyOp struct {
	name    string
	index   int                // in vaultOps' order: the bare server's name for it
	sign    *pb.SignRequest    // or
	decrypt *pb.DecryptRequest // one of the two
	local   func(ctx context.Context, v *keyvault.Vault) error
}

// The inputs a TLS server has: a SHA-256 digest to sign (the message for
// Ed25519) and an RSA-encrypted 48-byte premaster.
var (
	benchDigest    = sha256.Sum256([]byte("handshaked-bench"))
	benchMessage   = make([]byte, 100) // about what a TLS 1.3 CertificateVerify signs
	benchPremaster = func() []byte { p := make([]byte, 48); rand.Read(p); return p }()
)

// encryptPremaster is benchPremaster encrypted for an RSA key. Each vault
// decrypts one for its own key: one under another key would measure the
// countermeasure's substitute, not a decryption (and cost no RSA
// operation at all when it is not below the other modulus).
func encryptPremaster(pub crypto.PublicKey) ([]byte, error) {
	return rsa.EncryptPKCS1v15(rand.Reader, pub.(*rsa.PublicKey), benchPremaster)
}

// signOp is a signature measured, after the premaster decryption.
type signOp struct {
	name, key string
	scheme    pb.SignatureScheme
	tlsScheme tls.SignatureScheme
}

// ed25519 says whether the operation signs the message itself, not its
// digest.
func (s signOp) ed25519() bool { return s.tlsScheme == tls.Ed25519 }

var signOps = []signOp{
	{"RSA-2048 PSS sign", "rsa", pb.SignatureScheme_SIGNATURE_SCHEME_RSA_PSS_RSAE_SHA256, tls.PSSWithSHA256},
	{"ECDSA P-256 sign", "ec", pb.SignatureScheme_SIGNATURE_SCHEME_ECDSA_SECP256R1_SHA256, tls.ECDSAWithP256AndSHA256},
	{"Ed25519 sign", "ed", pb.SignatureScheme_SIGNATURE_SCHEME_ED25519, tls.Ed25519},
}

// vaultOps are the operations measured on vault v itself, what the
// in-process baseline and the bare server run, without the requests of
// the service's transports.
func vaultOps(ctx context.Context, v *keyvault.Vault) ([]keyOp, error) {
	k, err := v.Get(ctx, "rsa")
	if err != nil {
		return nil, err
	}
	ct, err := encryptPremaster(k.Versions[0].PublicKey)
	if err != nil {
		return nil, err
	}
	ops := []keyOp{{name: "RSA-2048 PKCS#1 premaster decrypt", local: func(ctx context.Context, v *keyvault.Vault) error {
		got, err := v.Decrypt(ctx, "rsa", 1, keyvault.DecryptRSAPKCS1TLSPremaster, ct, 0)
		if err == nil && !bytes.Equal(got, benchPremaster) {
			err = errors.New("the in-process premaster decryption is not the premaster")
		}
		return err
	}}}
	for _, s := range signOps {
		input := benchDigest[:]
		if s.ed25519() {
			input = benchMessage
		}
		ops = append(ops, keyOp{name: s.name, local: func(ctx context.Context, v *keyvault.Vault) error {
			_, err := v.Sign(ctx, s.key, 1, s.tlsScheme, input, !s.ed25519())
			return err
		}})
	}
	for i := range ops {
		ops[i].index = i
	}
	return ops, nil
}

// keyOps are vaultOps on local with the requests of the service's
// transports, for the service's keys.
func keyOps(ctx context.Context, c *handshaked.Client, local *keyvault.Vault) ([]keyOp, error) {
	ops, err := vaultOps(ctx, local)
	if err != nil {
		return nil, err
	}
	pub, _, err := c.PublicKey(ctx, "rsa", 0)
	if err != nil {
		return nil, err
	}
	ct, err := encryptPremaster(pub)
	if err != nil {
		return nil, err
	}
	ops[0].decrypt = &pb.DecryptRequest{Key: "rsa", Version: 1, Mode: pb.DecryptMode_DECRYPT_MODE_RSA_PKCS1_TLS_PREMASTER, Ciphertext: ct}
	for i, s := range signOps {
		req := &pb.SignRequest{Key: s.key, Version: 1, Scheme: s.scheme, Input: &pb.SignRequest_Digest{Digest: benchDigest[:]}}
		if s.ed25519() {
			req.Input = &pb.SignRequest_Message{Message: benchMessage}
		}
		ops[i+1].sign = req
	}
	return ops, nil
}

// transport runs one operation of its kind; n is how many operations the
// call carried.
type transport struct {
	name string
	// call runs one call for one of c concurrent callers.
	call func(ctx context.Context, op keyOp, c int) (n int, err error)
	// callers is how many goroutines carry c operations in flight
	// (nil: c).
	callers func(c int) int
}

// transports connects every transport and prepares the operations for
// them.
func transports(ctx context.Context, dir, grpcAddr, httpAddr, bareAddr string, maxConc int) ([]transport, []keyOp, func(), error) {
	local, _, err := openVault(ctx, dir)
	if err != nil {
		return nil, nil, nil, err
	}
	bare, err := dialBare(bareAddr, maxConc)
	if err != nil {
		local.Close()
		return nil, nil, nil, err
	}
	unary, err := handshaked.Dial(grpcAddr, handshaked.WithInsecure(), handshaked.WithSignStreams(0))
	if err != nil {
		local.Close()
		bare.close()
		return nil, nil, nil, err
	}
	streamed, err := handshaked.Dial(grpcAddr, handshaked.WithInsecure(), handshaked.WithoutCoalescing())
	if err != nil {
		local.Close()
		bare.close()
		unary.Close()
		return nil, nil, nil, err
	}
	coalesced, err := handshaked.Dial(grpcAddr, handshaked.WithInsecure())
	if err != nil {
		local.Close()
		bare.close()
		unary.Close()
		streamed.Close()
		return nil, nil, nil, err
	}
	httpClient := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: maxConc, MaxConnsPerHost: maxConc}, Timeout: 30 * time.Second}
	cleanup := func() {
		local.Close()
		bare.close()
		unary.Close()
		streamed.Close()
		coalesced.Close()
		httpClient.CloseIdleConnections()
	}
	viaClient := func(c *handshaked.Client) func(context.Context, keyOp, int) (int, error) {
		return func(ctx context.Context, op keyOp, _ int) (int, error) {
			if d := op.decrypt; d != nil {
				_, err := c.Decrypt(ctx, d.Key, d.Version, d.Mode, d.Ciphertext)
				return 1, err
			}
			s := op.sign
			_, _, err := c.Sign(ctx, s.Key, s.Version, s.Scheme, s.GetMessage(), s.GetDigest())
			return 1, err
		}
	}
	batches := map[string]*pb.BatchRequest{}
	rest := map[string][]byte{}
	// c operations in flight are batches of up to batchSize, as a caller
	// collecting the work of c others sends them.
	batch := func(ctx context.Context, op keyOp, c int) (int, error) {
		full := batches[op.name]
		req := &pb.BatchRequest{Reference: full.GetReference(), Operations: full.GetOperations()[:min(c, batchSize)]}
		resp, err := unary.KeyVault().Batch(ctx, req)
		if err != nil {
			return 0, err
		}
		for _, r := range resp.GetResults() {
			if e := r.GetError(); e != nil {
				return 0, fmt.Errorf("batch item: %s", e.GetMessage())
			}
		}
		return len(resp.GetResults()), nil
	}
	restCall := func(ctx context.Context, op keyOp, _ int) (int, error) {
		path := "/v1/keys/" + op.sign.GetKey() + ":sign"
		if op.decrypt != nil {
			path = "/v1/keys/" + op.decrypt.GetKey() + ":decrypt"
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+httpAddr+path, bytes.NewReader(rest[op.name]))
		if err != nil {
			return 0, err
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := httpClient.Do(req)
		if err != nil {
			return 0, err
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return 0, fmt.Errorf("REST %s: %s: %s", path, resp.Status, body)
		}
		return 1, nil
	}
	// prepare fills in an operation's batch and REST body once.
	prepare := func(op keyOp) error {
		item := &pb.BatchOperation{Operation: &pb.BatchOperation_Sign{Sign: op.sign}}
		var body proto.Message = op.sign
		if op.decrypt != nil {
			item = &pb.BatchOperation{Operation: &pb.BatchOperation_Decrypt{Decrypt: op.decrypt}}
			body = op.decrypt
		}
		b := &pb.BatchRequest{Reference: "handshaked-bench"}
		for range batchSize {
			b.Operations = append(b.Operations, item)
		}
		batches[op.name] = b
		// The key is in the path.
		body = proto.Clone(body)
		switch m := body.(type) {
		case *pb.SignRequest:
			m.Key = ""
		case *pb.DecryptRequest:
			m.Key = ""
		}
		j, err := protojson.Marshal(body)
		rest[op.name] = j
		return err
	}
	ts := []transport{
		{"in-process", func(ctx context.Context, op keyOp, _ int) (int, error) { return 1, op.local(ctx, local) }, nil},
		{"unary gRPC", viaClient(unary), nil},
		{"SignStream", viaClient(streamed), nil},
		{fmt.Sprintf("Batch (≤%d)", batchSize), batch, func(c int) int { return (c + batchSize - 1) / batchSize }},
		{"REST", restCall, nil},
		{"coalesced", viaClient(coalesced), nil},
		{"bare gRPC", func(ctx context.Context, op keyOp, _ int) (int, error) { return 1, bare.call(ctx, op.index) }, nil},
	}
	ops, err := keyOps(ctx, unary, local)
	for i := 0; err == nil && i < len(ops); i++ {
		err = prepare(ops[i])
	}
	if err != nil {
		cleanup()
		return nil, nil, nil, err
	}
	return ts, ops, cleanup, nil
}

// measuredTransports are the in-process baseline, ts[0], which every
// ratio is over, and the transports of ts[1:] whose name re matches.
func measuredTransports(ts []transport, re *regexp.Regexp) []transport {
	return append(ts[:1:1], slices.DeleteFunc(slices.Clone(ts[1:]), func(t transport) bool { return !re.MatchString(t.name) })...)
}

// benchKeyOps measures every operation over every transport at every
// concurrency, the in-process baseline first in each row.
func benchKeyOps(ctx context.Context, w io.Writer, o options, dir string, svc, bare childInfo, pids []int) error {
	ts, ops, cleanup, err := transports(ctx, dir, svc.GRPC, svc.HTTP, bare.GRPC, slices.Max(o.concurrency))
	if err != nil {
		return err
	}
	defer cleanup()
	ts = measuredTransports(ts, o.transports)
	fmt.Fprintf(w, "Key operations: operations per second from concurrent callers in this process, and the CPU time each took (in-process) in this process and the service's together; × is the rate over the in-process rate (the same vault operation, no service) at the same concurrency, CPU × the in-process CPU time per operation over this one's (what the rate ratio is on a machine doing nothing else, once the cores are saturated). Every transport has the same number of operations in flight: Batch sends them in batches of up to %d; SignStream is the Go SDK's Sign without coalescing, one message per operation; coalesced is its default: concurrent ECDSA and Ed25519 signatures coalesced into batches on BatchStreams, each batch on the next in turn, RSA operations one message each as on SignStream; bare gRPC is the ceiling of any gRPC transport: the same vault operations in a process of their own behind a bare gRPC stream per caller, one message per operation, with nothing of the service around them (no API, authentication, interceptors, limits, metrics, audit or protobuf).\n\n", batchSize)
	header := "| operation | callers |"
	rule := "|---|---:|"
	for _, t := range ts {
		header += " " + t.name + " |"
		rule += "---:|"
	}
	fmt.Fprintln(w, header)
	fmt.Fprintln(w, rule)
	var details []string // -cpu-detail's rows
	for _, op := range ops {
		if !o.keyOps.MatchString(op.name) {
			continue
		}
		for _, c := range o.concurrency {
			row := fmt.Sprintf("| %s | %d |", op.name, c)
			loads := make([]load, len(ts))
			for i, t := range ts {
				loads[i] = func(d time.Duration) (int, time.Duration, error) {
					callers := c
					if t.callers != nil {
						callers = t.callers(c)
					}
					n, el, err := measure(ctx, callers, d, func(ctx context.Context) (int, error) { return t.call(ctx, op, c) })
					if err != nil {
						err = fmt.Errorf("%s over %s: %w", op.name, t.name, err)
					}
					return n, el, err
				}
			}
			res, err := interleaved(o.rounds, o.duration, pids, loads)
			if err != nil {
				return err
			}
			detail := fmt.Sprintf("| %s | %d |", op.name, c)
			for i, r := range res {
				if i == 0 {
					row += fmt.Sprintf(" %s/s %s |", si(r.rate), cpuCell(r.cpu))
				} else {
					row += fmt.Sprintf(" %s/s %.2f× (CPU %.2f×) |", si(r.rate), r.rate/res[0].rate, res[0].cpu/r.cpu)
				}
				detail += " " + perProcessCell(r) + " |"
			}
			fmt.Fprintln(w, row)
			details = append(details, detail)
		}
	}
	fmt.Fprintln(w)
	if o.cpuDetail {
		detailTable(w, "CPU time per operation in each process (-cpu-detail), µs: this process (the callers) + the service + the bare gRPC server.", header, rule, details)
	}
	return nil
}

// si writes a rate with three significant figures.
func si(v float64) string {
	switch {
	case v >= 10000:
		return fmt.Sprintf("%.1fk", v/1000)
	case v >= 1000:
		return fmt.Sprintf("%.2fk", v/1000)
	default:
		return fmt.Sprintf("%.0f", v)
	}
}
