package service

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"flag"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/engine"
	"github.com/handshaked/handshaked/internal/keyvault"
)

var updateStepTokens = flag.Bool("update-step-tokens", false, "write testdata/steptoken-v<current>.json anew")

// goldenStepToken is a step token of one encoding version, opened, with
// what restores it: the key version's chain and the client's next flight.
type goldenStepToken struct {
	Chain        string `json:"chain"`         // hex DER of the certificate of key "golden" version 1
	Token        string `json:"token"`         // hex of the opened token
	ClientFlight string `json:"client_flight"` // hex of the client's bytes that complete the handshake
}

// goldenHandshake is a service over a vault holding key "golden" (the P-256
// test key) with chain attached to version 1, or a new self-signed one.
func goldenHandshake(t *testing.T, chain []byte) (*Handshake, []byte) {
	t.Helper()
	ctx := context.Background()
	store, err := keyvault.OpenBolt(filepath.Join(t.TempDir(), "keys.db"))
	require.NoError(t, err)
	kek := make([]byte, 32)
	rand.Read(kek)
	vault, err := keyvault.New(ctx, store, kek)
	require.NoError(t, err)
	t.Cleanup(func() { vault.Close() })
	pemKey, err := os.ReadFile(filepath.Join("..", "..", "testdata", "keys", "p256-sec1.pem"))
	require.NoError(t, err)
	_, err = vault.Import(ctx, "golden", pemKey, nil)
	require.NoError(t, err)
	if chain == nil {
		chain, err = vault.CreateSelfSignedCertificate(ctx, "golden", 1, &x509.Certificate{
			SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "golden.test"}, DNSNames: []string{"golden.test"},
			NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
		})
		require.NoError(t, err)
	}
	_, err = vault.AttachChain(ctx, "golden", 1, [][]byte{chain})
	require.NoError(t, err)
	return NewHandshake(vault, HandshakeOptions{Deployment: "golden"}, newHandshakeMetrics(prometheus.NewRegistry())), chain
}

// readRecord reads one TLS record.
func readRecord(t *testing.T, r io.Reader) []byte {
	t.Helper()
	hdr := make([]byte, 5)
	_, err := io.ReadFull(r, hdr)
	require.NoError(t, err)
	body := make([]byte, int(hdr[3])<<8|int(hdr[4]))
	_, err = io.ReadFull(r, body)
	require.NoError(t, err)
	return append(hdr, body...)
}

// writeGoldenStepToken records a TLS 1.3 handshake of a Go client, stopped
// before the client's Finished: the token of that state and the flight.
func writeGoldenStepToken(t *testing.T, path string) {
	ctx := context.Background()
	h, chain := goldenHandshake(t, nil)
	client, server := net.Pipe()
	defer server.Close()
	go tls.Client(client, &tls.Config{InsecureSkipVerify: true, ServerName: "golden.test", MinVersion: tls.VersionTLS13}).Handshake()
	defer client.Close()
	out, err := h.StartHandshake(ctx, &pb.StartHandshakeRequest{
		Config: &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: "golden"}}}, Input: readRecord(t, server), Stateless: true})
	require.NoError(t, err)
	require.Equal(t, pb.HandshakeState_HANDSHAKE_STATE_NEED_INPUT, out.GetState())
	go server.Write(out.GetOutput())
	var flight []byte
	for { // change_cipher_spec (compatibility mode), then the protected Finished
		rec := readRecord(t, server)
		flight = append(flight, rec...)
		if rec[0] == 23 {
			break
		}
	}
	plain, err := h.tokens.Open(ctx, stepTokenScope, out.GetStateToken())
	require.NoError(t, err)
	b, err := json.MarshalIndent(goldenStepToken{Chain: hex.EncodeToString(chain), Token: hex.EncodeToString(plain), ClientFlight: hex.EncodeToString(flight)}, "", "  ")
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(path, append(b, '\n'), 0o644))
}

// TestStepTokenEncodingsRestore: a replica restores a token of every
// encoding version written before (a rolling upgrade meets tokens of the
// replicas not yet upgraded), down to the engine state inside, and the
// restored handshake completes with the client's recorded flight.
func TestStepTokenEncodingsRestore(t *testing.T) {
	if *updateStepTokens {
		writeGoldenStepToken(t, filepath.Join("testdata", "steptoken-v1.json"))
	}
	files, err := filepath.Glob(filepath.Join("testdata", "steptoken-v*.json"))
	require.NoError(t, err)
	require.NotEmpty(t, files)
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			raw, err := os.ReadFile(file)
			require.NoError(t, err)
			var g goldenStepToken
			require.NoError(t, json.Unmarshal(raw, &g))
			chain, err1 := hex.DecodeString(g.Chain)
			plain, err2 := hex.DecodeString(g.Token)
			flight, err3 := hex.DecodeString(g.ClientFlight)
			require.NoError(t, err1)
			require.NoError(t, err2)
			require.NoError(t, err3)
			h, _ := goldenHandshake(t, chain)
			tok, err := unmarshalStepToken(plain)
			require.NoError(t, err)
			config := &pb.HandshakeConfig{}
			require.NoError(t, proto.Unmarshal(tok.config, config))
			hs, err := h.restoreStepToken(context.Background(), tok, config)
			require.NoError(t, err)
			res := hs.Step(context.Background(), h.keys, flight)
			require.Equal(t, engine.Complete, res.State, "%v %s", res.AlertDescription, res.Reason)
			sess, _ := hs.Session()
			assert.Equal(t, "golden.test", sess.ServerName)
			assert.Equal(t, "golden/1", sess.KeyRef)

			// Re-encoded by this version, it decodes to the same.
			again, err := tok.marshal()
			require.NoError(t, err)
			back, err := unmarshalStepToken(again)
			require.NoError(t, err)
			assert.Equal(t, tok, back)
		})
	}
}

// FuzzStepTokenDecode: the decoder runs only on what the AEAD opened, but
// a replica of another version may have sealed it: it never panics, and
// what it accepts encodes back to the same bytes.
func FuzzStepTokenDecode(f *testing.F) {
	tok := &stepToken{id: "0123", expires: time.UnixMilli(1764590000000), versions: []uint32{1, 2}, config: []byte{1}, state: []byte{4, 0}}
	b, err := tok.marshal()
	require.NoError(f, err)
	f.Add(b)
	f.Add([]byte{stepTokenVersion})
	f.Add([]byte{2, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		tok, err := unmarshalStepToken(b)
		if err != nil {
			return
		}
		again, err := tok.marshal()
		require.NoError(t, err)
		assert.Equal(t, b, again)
	})
}
