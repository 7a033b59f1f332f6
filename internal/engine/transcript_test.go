package engine

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/cryptotest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/testenv"
)

// Recorded transcripts, as crypto/tls keeps them: real clients' flights
// against the engine, stored in testdata/transcripts and replayed in every
// test run, so that a change in what the engine sends or accepts shows on a
// machine without those clients.
//
// A recording runs the engine with fixed keys (testdata/keys of the
// repository) and all of its randomness drawn from a seeded stream
// (testing/cryptotest.SetGlobalRandom: hello randoms, ECDHE and ML-KEM
// secrets, signatures). The replay feeds the client's recorded bytes, cut
// as they were read, to a fresh handshake under the same seed: the engine
// must write back exactly the recorded bytes, and then the client's
// recorded second flight, whose Finished covers them, must complete the
// handshake. Re-record after a deliberate change of the server's messages
// or of the order in which it draws randomness (needs openssl, gnutls-cli
// and chromium):
//
//	go test ./internal/engine -run TestTranscripts -record
var recordTranscripts = flag.Bool("record", false, "record testdata/transcripts with the external clients")

// transcriptStep is one Step: what the client's bytes were and what the
// engine wrote back.
type transcriptStep struct {
	In  string `json:"in"`  // hex
	Out string `json:"out"` // hex
}

type recordedTranscript struct {
	Name    string `json:"name"`
	Client  string `json:"client"` // the command line that produced it
	Key     string `json:"key"`    // file in testdata/keys
	KeyHash string `json:"key_sha256"`
	Cert    []byte `json:"certificate"` // DER, the server's self-signed certificate
	Seed    uint64 `json:"seed"`
	// Server configuration.
	Groups     []tls.CurveID `json:"groups,omitempty"`
	NextProtos []string      `json:"next_protos,omitempty"`
	MaxVersion uint16        `json:"max_version,omitempty"`
	// ClientCA, when set, is the client's self-signed certificate, which the
	// server requires and trusts.
	ClientCA []byte `json:"client_ca,omitempty"`
	// Resumed: the recorded connection resumes, with a ticket under
	// transcriptTicketKeys, the session of an unrecorded one before it.
	Resumed bool             `json:"resumed,omitempty"`
	Steps   []transcriptStep `json:"steps"`
	// What the engine negotiated.
	Version     uint16              `json:"version"`
	CipherSuite uint16              `json:"cipher_suite"`
	Group       tls.CurveID         `json:"group"`
	Scheme      tls.SignatureScheme `json:"signature_scheme"`
	HRR         bool                `json:"hello_retry_request"`
	EMS         bool                `json:"extended_master_secret"`
}

// transcriptCase is a recording to make: which client, with which
// arguments, against which server configuration.
type transcriptCase struct {
	name       string
	key        string // in testdata/keys
	groups     []tls.CurveID
	nextProtos []string
	maxVersion uint16
	clientKey  string // in testdata/keys: the client authenticates with it
	// resume: the client (openssl) connects first with -sess_out, then,
	// recorded, with -sess_in.
	resume  bool
	program string
	args    func(port string) []string
}

var transcriptCases = []transcriptCase{
	{name: "openssl-tls13-ed25519", key: "ed25519-pkcs8.pem", program: "openssl",
		args: opensslArgs("-tls1_3", "-groups", "X25519")},
	{name: "openssl-tls13-p256-hrr", key: "p256-pkcs8.pem", groups: []tls.CurveID{tls.CurveP256}, program: "openssl",
		args: opensslArgs("-tls1_3", "-groups", "X25519:P-256")},
	{name: "openssl-tls12-ecdhe-rsa", key: "rsa3072-pkcs8.pem", program: "openssl",
		args: opensslArgs("-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256")},
	{name: "openssl-tls12-rsa-kex", key: "rsa3072-pkcs8.pem", program: "openssl",
		args: opensslArgs("-tls1_2", "-cipher", "AES256-GCM-SHA384")},
	{name: "openssl-tls13-client-auth", key: "p256-pkcs8.pem", clientKey: "ed25519-pkcs8.pem", program: "openssl",
		args: opensslArgs("-tls1_3")},
	{name: "openssl-tls12-client-auth", key: "rsa3072-pkcs8.pem", clientKey: "p256-pkcs8.pem", program: "openssl",
		args: opensslArgs("-tls1_2")},
	{name: "gnutls-tls13-p256", key: "p256-pkcs8.pem", program: "gnutls-cli", args: gnutlsArgs("NORMAL:-VERS-ALL:+VERS-TLS1.3")},
	{name: "gnutls-tls12-ecdhe-ecdsa", key: "p256-pkcs8.pem", program: "gnutls-cli", args: gnutlsArgs("NORMAL:-VERS-ALL:+VERS-TLS1.2")},
	{name: "chromium-tls13-p256", key: "p256-pkcs8.pem", nextProtos: []string{"http/1.1"}, program: "chromium", args: chromiumArgs()},
	{name: "chromium-tls12-rsa", key: "rsa3072-pkcs8.pem", nextProtos: []string{"http/1.1"}, program: "chromium",
		args: chromiumArgs("--ssl-version-max=tls1.2")},
	{name: "openssl-tls12-resumed", key: "p256-pkcs8.pem", resume: true, program: "openssl", args: opensslArgs("-tls1_2")},
	{name: "openssl-tls13-resumed", key: "p256-pkcs8.pem", resume: true, program: "openssl", args: opensslArgs("-tls1_3")},
}

const transcriptHost = "transcript.example.com"

// transcriptTime is the clock of the servers that check a client
// certificate, within the validity of transcriptCert's certificates.
var transcriptTime = time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)

// transcriptCert makes a self-signed certificate for key.
func transcriptCert(t *testing.T, key crypto.Signer, cn string, eku x509.ExtKeyUsage) []byte {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: cn},
		DNSNames:     []string{cn},
		NotBefore:    time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
		NotAfter:     time.Date(2036, 1, 1, 0, 0, 0, 0, time.UTC),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{eku},
	}
	der, err := x509.CreateCertificate(nil, tmpl, tmpl, key.Public(), key)
	require.NoError(t, err)
	return der
}

func opensslArgs(extra ...string) func(string) []string {
	return func(port string) []string {
		return append([]string{"s_client", "-connect", "127.0.0.1:" + port, "-servername", transcriptHost, "-quiet"}, extra...)
	}
}

func gnutlsArgs(priority string) func(string) []string {
	return func(port string) []string {
		return []string{"--insecure", "--priority", priority, "--sni-hostname", transcriptHost, "-p", port, "127.0.0.1"}
	}
}

func chromiumArgs(extra ...string) func(string) []string {
	return func(port string) []string {
		args := []string{"--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
			"--disable-component-update", "--disable-sync", "--ignore-certificate-errors",
			"--host-resolver-rules=MAP " + transcriptHost + " 127.0.0.1"}
		return append(append(args, extra...), "--dump-dom", "https://"+transcriptHost+":"+port+"/")
	}
}

// transcriptKey loads a fixed test key of the repository (a PKCS#8 one)
// and the SHA-256 of its public key.
func transcriptKey(t *testing.T, name string) (crypto.Signer, string) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "testdata", "keys", name))
	require.NoError(t, err)
	block, _ := pem.Decode(data)
	require.NotNil(t, block, name)
	require.Equal(t, "PRIVATE KEY", block.Type, "%s: PKCS#8 keys only", name)
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	require.NoError(t, err, name)
	signer := key.(crypto.Signer)
	pub, err := x509.MarshalPKIXPublicKey(signer.Public())
	require.NoError(t, err)
	return signer, fmt.Sprintf("%x", sha256.Sum256(pub))
}

// transcriptConfig builds the server of a transcript.
func (tr *recordedTranscript) config(t *testing.T) (*Config, KeyOps) {
	t.Helper()
	signer, keyHash := transcriptKey(t, tr.Key)
	require.Equal(t, tr.KeyHash, keyHash, "testdata/keys/%s changed since the recording: re-record", tr.Key)
	cert, err := NewCertificate([][]byte{tr.Cert}, "key")
	require.NoError(t, err)
	cfg := &Config{Certificates: []Certificate{cert}, Groups: tr.Groups, NextProtos: tr.NextProtos, MaxVersion: tr.MaxVersion,
		CallerHonorsRecordSizeLimit: true}
	if tr.Resumed {
		// The ticket's creation time and its nonce (drawn from the seeded
		// randomness) make the new ticket the same bytes on every replay.
		cfg.Tickets, cfg.Time = transcriptTicketKeys(), func() time.Time { return transcriptTime }
	}
	if tr.ClientCA != nil {
		ca, err := x509.ParseCertificate(tr.ClientCA)
		require.NoError(t, err)
		cfg.ClientAuth, cfg.ClientCAs, cfg.Time = ClientAuthRequired, x509.NewCertPool(), func() time.Time { return transcriptTime }
		cfg.ClientCAs.AddCert(ca)
	}
	return cfg, &testKeyOps{signers: map[string]crypto.Signer{"key": signer}}
}

func transcriptPath(name string) string {
	return filepath.Join("testdata", "transcripts", name+".json")
}

// TestTranscripts replays the recorded transcripts (or, with -record,
// records them anew).
func TestTranscripts(t *testing.T) {
	for i, tc := range transcriptCases {
		t.Run(tc.name, func(t *testing.T) {
			if *recordTranscripts {
				recordTranscript(t, tc, uint64(i+1))
			}
			data, err := os.ReadFile(transcriptPath(tc.name))
			require.NoError(t, err)
			var tr recordedTranscript
			require.NoError(t, json.Unmarshal(data, &tr))
			replayTranscript(t, &tr)
		})
	}
}

func replayTranscript(t *testing.T, tr *recordedTranscript) {
	cfg, keys := tr.config(t)
	cryptotest.SetGlobalRandom(t, tr.Seed)
	h, err := NewHandshake(cfg)
	require.NoError(t, err)
	require.NotEmpty(t, tr.Steps)
	// The recorded ClientHello parses, whatever the rest does.
	first, err := hex.DecodeString(tr.Steps[0].In)
	require.NoError(t, err)
	parseHello(t, first)
	var res StepResult
	for i, step := range tr.Steps {
		in, err := hex.DecodeString(step.In)
		require.NoError(t, err)
		res = h.Step(context.Background(), keys, in)
		require.NotEqual(t, Failed, res.State, "step %d: %v %s", i, res.AlertDescription, res.Reason)
		require.Equal(t, step.Out, hex.EncodeToString(res.Output), "step %d: the server's bytes differ from the recording", i)
	}
	require.Equal(t, Complete, res.State, "the client's recorded Finished completes the handshake")
	s, _ := h.Session()
	assert.Equal(t, tr.Version, s.Version)
	assert.Equal(t, tr.CipherSuite, s.CipherSuite)
	assert.Equal(t, tr.Group, s.Group)
	assert.Equal(t, tr.Scheme, s.SignatureScheme)
	assert.Equal(t, tr.HRR, s.DidHelloRetryRequest)
	assert.Equal(t, tr.EMS, s.ExtendedMasterSecret)
	assert.Equal(t, tr.Resumed, s.Resumed)
	if tr.ClientCA != nil {
		assert.Equal(t, [][]byte{tr.ClientCA}, s.PeerCertificates, "the client's certificate")
	}
}

// recordTranscript runs tc's client against the engine and writes what
// passed between them.
func recordTranscript(t *testing.T, tc transcriptCase, seed uint64) {
	testenv.LookPath(t, tc.program)
	signer, keyHash := transcriptKey(t, tc.key)
	tr := &recordedTranscript{Name: tc.name, Key: tc.key, KeyHash: keyHash, Cert: transcriptCert(t, signer, transcriptHost, x509.ExtKeyUsageServerAuth),
		Seed: seed, Groups: tc.groups, NextProtos: tc.nextProtos, MaxVersion: tc.maxVersion, Resumed: tc.resume}
	var clientArgs []string
	if tc.clientKey != "" {
		clientKey, _ := transcriptKey(t, tc.clientKey)
		tr.ClientCA = transcriptCert(t, clientKey, "transcript client", x509.ExtKeyUsageClientAuth)
		clientArgs = []string{"-cert", writePEM(t, "client.pem", "CERTIFICATE", tr.ClientCA),
			"-key", filepath.Join("..", "..", "testdata", "keys", tc.clientKey)}
	}
	cfg, keys := tr.config(t)
	tr.Client = tc.program + " " + strings.Join(tc.args("PORT"), " ")
	if tc.clientKey != "" {
		tr.Client += " -cert CLIENT.pem -key testdata/keys/" + tc.clientKey
	}
	if tc.resume {
		tr.Client += " -sess_in SESSION.pem (from a connection before it with -sess_out SESSION.pem)"
	}
	// A browser may spread its attempts over several connections, of which
	// only the first is recorded and served; it may then fail on another.
	// Another run usually succeeds.
	for attempt := 1; ; attempt++ {
		tr.Steps = nil
		out, err := recordAttempt(t, tc, cfg, keys, tr, clientArgs)
		if err == nil {
			break
		}
		require.Less(t, attempt, 3, "%v\n%s", err, out)
	}
	data, err := json.MarshalIndent(tr, "", "  ")
	require.NoError(t, err)
	require.NoError(t, os.MkdirAll(filepath.Dir(transcriptPath(tc.name)), 0o755))
	require.NoError(t, os.WriteFile(transcriptPath(tc.name), append(data, '\n'), 0o644))
}

// recordAttempt runs tc's client once, recording its first connection.
func recordAttempt(t *testing.T, tc transcriptCase, cfg *Config, keys KeyOps, tr *recordedTranscript, clientArgs []string) (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	args := append(tc.args(port), clientArgs...)
	if tc.resume {
		sess := filepath.Join(t.TempDir(), "session.pem")
		firstPort, first := externalServerKeys(t, *cfg, keys, pingPong)
		out, err := runClient(t, string(ping)+"\n", string(pong), tc.program, append(tc.args(firstPort), "-sess_out", sess)...)
		if res := <-first; res.err != nil || err != nil {
			return out, fmt.Errorf("the connection before: server %v, client %v", res.err, err)
		}
		args = append(args, "-sess_in", sess)
	}
	if tc.program == "chromium" {
		args = append([]string{"--user-data-dir=" + t.TempDir()}, args...)
	}
	done := make(chan error, 1)
	recorded := make(chan struct{})
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		// A browser may send its request on another connection. Those are
		// served once the recorded handshake is complete: one beside it
		// would draw from the same seeded randomness.
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					c.SetDeadline(time.Now().Add(20 * time.Second))
					select {
					case <-recorded:
					case <-time.After(20 * time.Second):
						return
					}
					h, _ := NewHandshake(cfg)
					if out := (&relay{h: h, keys: keys}).run(c); out.session != nil {
						if rc, err := newRecordConn(c, out.session, out.leftover); err == nil {
							httpPong(rc)
						}
					}
				}()
			}
		}()
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(20 * time.Second))
		done <- recordSteps(t, conn, cfg, keys, tr, func() { close(recorded) })
	}()
	out, err := runClient(t, string(ping)+"\n", string(pong), tc.program, args...)
	ln.Close()
	// The recorded connection's own request may have gone elsewhere; its
	// handshake must have completed.
	if serveErr := <-done; serveErr != nil && (err != nil || tr.Version == 0) {
		return out, serveErr
	}
	return out, err
}

// recordSteps runs the handshake on conn under the transcript's seed,
// noting every Step, calls completed when it is complete and answers the
// client's request afterwards.
func recordSteps(t *testing.T, conn net.Conn, cfg *Config, keys KeyOps, tr *recordedTranscript, completed func()) error {
	cryptotest.SetGlobalRandom(t, tr.Seed)
	h, err := NewHandshake(cfg)
	if err != nil {
		return err
	}
	buf := make([]byte, 1<<17)
	for {
		n, err := conn.Read(buf)
		if err != nil {
			return fmt.Errorf("read: %w", err)
		}
		res := h.Step(context.Background(), keys, buf[:n])
		if res.State == Failed {
			return fmt.Errorf("engine: %v %s", res.AlertDescription, res.Reason)
		}
		tr.Steps = append(tr.Steps, transcriptStep{In: hex.EncodeToString(buf[:res.Consumed]), Out: hex.EncodeToString(res.Output)})
		if _, err := conn.Write(res.Output); err != nil {
			return err
		}
		if res.State != Complete {
			continue
		}
		s, _ := h.Session()
		tr.Version, tr.CipherSuite, tr.Group, tr.Scheme = s.Version, s.CipherSuite, s.Group, s.SignatureScheme
		tr.HRR, tr.EMS = s.DidHelloRetryRequest, s.ExtendedMasterSecret
		completed()
		rc, err := newRecordConn(conn, s, append([]byte(nil), buf[res.Consumed:n]...))
		if err != nil {
			return err
		}
		if strings.HasPrefix(tr.Name, "chromium") {
			return httpPong(rc)
		}
		return pingPong(rc)
	}
}
