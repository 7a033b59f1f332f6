package engine

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/engine/clientfinished"
	"github.com/handshaked/handshaked/internal/engine/record"
	"github.com/handshaked/handshaked/internal/sigscheme"
)

// Test PKI, generated once per package run: RSA keygen under -race is slow.
type testKey struct {
	name   string // also the KeyRef
	signer crypto.Signer
	cert   Certificate
	x509   *x509.Certificate
}

type testPKI struct {
	rsa, p256, p384, p521, ed *testKey
	serverRoots               *x509.CertPool
	clientCA                  *x509.CertPool
	clientCerts               map[string]tls.Certificate // by key type, signed by the client CA
	rogueClientCert           tls.Certificate            // signed by an unknown CA
	// serverAuthClientCert is from the client CA but for serverAuth only;
	// noEKUClientCert has no extended key usage (valid for any, RFC 5280,
	// Section 4.2.1.12); wrongKeyClientCert pairs a valid client
	// certificate with a private key that is not its own.
	serverAuthClientCert, noEKUClientCert, wrongKeyClientCert tls.Certificate
	keys                                                      *testKeyOps
}

var (
	pkiOnce sync.Once
	pki     *testPKI
)

func getPKI(t testing.TB) *testPKI {
	t.Helper()
	pkiOnce.Do(func() { pki = newTestPKI() })
	return pki
}

var testNotBefore = time.Now().Add(-time.Hour)

func mustCert(template, parent *x509.Certificate, pub crypto.PublicKey, signer crypto.Signer) *x509.Certificate {
	der, err := x509.CreateCertificate(rand.Reader, template, parent, pub, signer)
	if err != nil {
		panic(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		panic(err)
	}
	return c
}

var serial int64

func template(cn string, dns ...string) *x509.Certificate {
	serial++
	return &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: cn},
		DNSNames:     dns,
		NotBefore:    testNotBefore,
		NotAfter:     testNotBefore.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
}

func newTestPKI() *testPKI {
	p := &testPKI{serverRoots: x509.NewCertPool(), clientCA: x509.NewCertPool(), clientCerts: map[string]tls.Certificate{},
		keys: &testKeyOps{signers: map[string]crypto.Signer{}}}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	p521, _ := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	mk := func(name string, s crypto.Signer) *testKey {
		tmpl := template(name+".example.com", name+".example.com", "*."+name+".example.net")
		c := mustCert(tmpl, tmpl, s.Public(), s)
		cert, err := NewCertificate([][]byte{c.Raw}, "key/"+name)
		if err != nil {
			panic(err)
		}
		p.serverRoots.AddCert(c)
		p.keys.signers["key/"+name] = s
		return &testKey{name: name, signer: s, cert: cert, x509: c}
	}
	p.rsa, p.p256, p.p384, p.p521, p.ed = mk("rsa", rsaKey), mk("p256", p256), mk("p384", p384), mk("p521", p521), mk("ed25519", edKey)

	newCA := func(cn string) (*x509.Certificate, crypto.Signer) {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := template(cn)
		tmpl.IsCA, tmpl.BasicConstraintsValid, tmpl.KeyUsage = true, true, x509.KeyUsageCertSign
		tmpl.ExtKeyUsage = nil
		return mustCert(tmpl, tmpl, k.Public(), k), k
	}
	ca, caKey := newCA("client CA")
	p.clientCA.AddCert(ca)
	clientLeafEKU := func(cn string, eku []x509.ExtKeyUsage, s crypto.Signer, parent *x509.Certificate, parentKey crypto.Signer) tls.Certificate {
		tmpl := template(cn)
		tmpl.ExtKeyUsage = eku
		c := mustCert(tmpl, parent, s.Public(), parentKey)
		return tls.Certificate{Certificate: [][]byte{c.Raw}, PrivateKey: s, Leaf: c}
	}
	clientLeaf := func(cn string, s crypto.Signer, parent *x509.Certificate, parentKey crypto.Signer) tls.Certificate {
		return clientLeafEKU(cn, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, s, parent, parentKey)
	}
	p.serverAuthClientCert = clientLeafEKU("client serverAuth", []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, p256, ca, caKey)
	p.noEKUClientCert = clientLeafEKU("client no EKU", nil, p256, ca, caKey)
	otherP256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p.wrongKeyClientCert = clientLeaf("client wrong key", p256, ca, caKey)
	p.wrongKeyClientCert.PrivateKey = otherP256
	p.clientCerts["rsa"] = clientLeaf("client rsa", rsaKey, ca, caKey)
	p.clientCerts["p256"] = clientLeaf("client p256", p256, ca, caKey)
	p.clientCerts["p384"] = clientLeaf("client p384", p384, ca, caKey)
	p.clientCerts["ed25519"] = clientLeaf("client ed25519", edKey, ca, caKey)
	rogue, rogueKey := newCA("rogue CA")
	p.rogueClientCert = clientLeaf("client rogue", p256, rogue, rogueKey)
	return p
}

func (p *testPKI) key(name string) *testKey {
	switch name {
	case "rsa":
		return p.rsa
	case "p256":
		return p.p256
	case "p384":
		return p.p384
	case "p521":
		return p.p521
	}
	return p.ed
}

// testKeyOps satisfies KeyOps over in-process keys, as the key vault does
// over its stored ones.
type testKeyOps struct {
	signers map[string]crypto.Signer
	schemes map[string][]tls.SignatureScheme // what a key says it can do, if not all its type allows
	// failWith, when set, is the error of every private-key operation;
	// schemesErr of SignatureSchemes.
	failWith, schemesErr error
}

func (k *testKeyOps) Sign(_ context.Context, keyRef string, scheme tls.SignatureScheme, message []byte) ([]byte, error) {
	s, ok := k.signers[keyRef]
	if k.failWith != nil {
		return nil, k.failWith
	}
	if !ok {
		return nil, fmt.Errorf("no key %q", keyRef)
	}
	ss, ok := sigscheme.Lookup(scheme)
	if !ok || !sigscheme.Fits(scheme, s.Public(), tls.VersionTLS12) {
		return nil, fmt.Errorf("scheme %v does not fit key %q", scheme, keyRef)
	}
	return s.Sign(rand.Reader, ss.Digest(message), ss.SignerOpts())
}

// SignatureSchemes answers as the vault does: what the table says the key
// can produce at vers, or schemes[keyRef] when a test limits a key.
func (k *testKeyOps) SignatureSchemes(_ context.Context, keyRef string, vers uint16) ([]tls.SignatureScheme, error) {
	s, ok := k.signers[keyRef]
	if k.schemesErr != nil {
		return nil, k.schemesErr
	}
	if !ok {
		return nil, fmt.Errorf("no key %q", keyRef)
	}
	if limited, ok := k.schemes[keyRef]; ok {
		return limited, nil
	}
	return sigscheme.ForKey(s.Public(), vers), nil
}

func (k *testKeyOps) DecryptPremaster(_ context.Context, keyRef string, ciphertext []byte, clientVersion uint16) ([]byte, error) {
	priv, ok := k.signers[keyRef].(*rsa.PrivateKey)
	if k.failWith != nil {
		return nil, k.failWith
	}
	if !ok {
		return nil, fmt.Errorf("no RSA key %q", keyRef)
	}
	// Implicit rejection: the random key stands in for a bad padding or
	// version, and nothing tells the two cases apart.
	key := make([]byte, 48)
	rand.Read(key)
	if err := rsa.DecryptPKCS1v15SessionKey(nil, priv, ciphertext, key); err != nil {
		return nil, err
	}
	if key[0] != byte(clientVersion>>8) || key[1] != byte(clientVersion) {
		rand.Read(key)
	}
	return key, nil
}

// splitMode says how the relay cuts the client's bytes before Step.
type splitMode int

const (
	splitWhole   splitMode = iota // each read as it came
	splitRandom                   // random pieces
	splitBytes                    // byte by byte
	splitRecords                  // record by record, through the tamper hook
)

func (m splitMode) String() string {
	return [...]string{"whole", "random", "bytes", "records"}[m]
}

// relay plays the edge server: it reads the client's bytes from conn,
// steps the engine and writes back its output.
type relay struct {
	h      *Handshake
	keys   KeyOps
	mode   splitMode
	rng    *mrand.Rand
	tamper func(h *Handshake, rec []byte) []byte
	// hop saves the handshake after every Step and restores it into a new
	// Handshake, as a service moving it between replicas would.
	hop bool
	// tamperFinished changes the client's records after the server flight
	// when the relay verifies the client Finished (CallerVerifiesFinished).
	tamperFinished func(s *Session, in []byte) []byte
	// omitTrace: every Step omits its trace (Handshake.OmitTrace), also
	// after a hop.
	omitTrace bool
}

type relayOutcome struct {
	last     StepResult
	session  *Session
	leftover []byte
	trace    []TraceEvent
	err      error
	steps    int // Steps taken
	// finishErr: the relay refused the client's Finished.
	finishErr *clientfinished.Error
}

func (r *relay) run(conn net.Conn) (out relayOutcome) {
	buf := make([]byte, 1<<17)
	var pendingRecs []byte
	for {
		n, err := conn.Read(buf)
		if err != nil {
			out.err = fmt.Errorf("relay read: %w", err)
			return out
		}
		var pieces [][]byte
		data := buf[:n]
		switch r.mode {
		case splitWhole:
			pieces = [][]byte{data}
		case splitRandom:
			for len(data) > 0 {
				k := 1 + r.rng.IntN(min(len(data), 700))
				pieces, data = append(pieces, data[:k]), data[k:]
			}
		case splitBytes:
			for i := range data {
				pieces = append(pieces, data[i:i+1])
			}
		case splitRecords:
			pendingRecs = append(pendingRecs, data...)
			for {
				_, _, _, rn, err := record.Parse(pendingRecs, 1<<16-1)
				if rn == 0 || err != nil {
					if err != nil {
						pieces = append(pieces, pendingRecs)
						pendingRecs = nil
					}
					break
				}
				pieces = append(pieces, pendingRecs[:rn:rn])
				pendingRecs = pendingRecs[rn:]
			}
		}
		for i, p := range pieces {
			if r.tamper != nil {
				p = r.tamper(r.h, p)
			}
			r.h.OmitTrace(r.omitTrace)
			res := r.h.Step(context.Background(), r.keys, p)
			out.steps++
			out.trace = append(out.trace, res.Trace...)
			out.last = res
			// On NeedInput everything is consumed; on Complete and Failed,
			// up to the record that ended the handshake.
			if res.Consumed > len(p) || (res.State == NeedInput && res.Consumed != len(p)) {
				out.err = fmt.Errorf("consumed %d of %d bytes in state %v", res.Consumed, len(p), res.State)
				return out
			}
			if len(res.Output) > 0 {
				if _, err := conn.Write(res.Output); err != nil {
					out.err = fmt.Errorf("relay write: %w", err)
					return out
				}
			}
			if r.hop && res.State == NeedInput {
				saved, err := r.h.MarshalBinary()
				if err == nil {
					r.h, err = RestoreHandshake(r.h.cfg, saved)
				}
				if err != nil {
					out.err = fmt.Errorf("save/restore: %w", err)
					return out
				}
			}
			switch res.State {
			case Failed:
				if res.Alert != nil {
					conn.Write(res.Alert)
				}
				drainAfterAlert(conn)
				return out
			case Complete:
				out.session, _ = r.h.Session()
				out.leftover = append([]byte(nil), p[res.Consumed:]...)
				for _, rest := range pieces[i+1:] {
					out.leftover = append(out.leftover, rest...)
				}
				if out.session.PendingFinished != nil {
					r.verifyFinished(conn, &out) // finished_at_caller_test.go
				}
				return out
			}
		}
	}
}

// drainAfterAlert half-closes conn and reads what the client still sends
// until it closes: closing with unread input would make the kernel answer
// with a reset, which can reach the client before it has read the alert.
func drainAfterAlert(conn net.Conn) {
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	io.Copy(io.Discard, conn)
}

// recordConn is the edge's record layer after the handshake: it protects
// application data with the session keys the engine returned.
type recordConn struct {
	conn    net.Conn
	buf     []byte
	in, out *record.Cipher
	scratch []byte
}

func newRecordConn(conn net.Conn, s *Session, leftover []byte) (*recordConn, error) {
	rc := &recordConn{conn: conn, buf: leftover}
	var err error
	if s.Version == tls.VersionTLS13 {
		if rc.in, err = record.NewTLS13Cipher(s.CipherSuite, s.ClientTrafficSecret, s.ClientSeq); err != nil {
			return nil, err
		}
		rc.out, err = record.NewTLS13Cipher(s.CipherSuite, s.ServerTrafficSecret, s.ServerSeq)
	} else {
		if rc.in, err = record.NewTLS12Cipher(s.CipherSuite, s.ClientKey, s.ClientIV, s.ClientSeq); err != nil {
			return nil, err
		}
		rc.out, err = record.NewTLS12Cipher(s.CipherSuite, s.ServerKey, s.ServerIV, s.ServerSeq)
	}
	return rc, err
}

// readAppData returns the next application data record's plaintext.
func (rc *recordConn) readAppData() ([]byte, error) {
	tmp := make([]byte, 1<<15)
	for {
		typ, vers, body, n, err := record.Parse(rc.buf, record.MaxCiphertextTLS12)
		if err != nil {
			return nil, err
		}
		if n == 0 {
			m, err := rc.conn.Read(tmp)
			if err != nil {
				return nil, err
			}
			rc.buf = append(rc.buf, tmp[:m]...)
			continue
		}
		body = append([]byte(nil), body...)
		rc.buf = rc.buf[n:]
		inner, pt, err := rc.in.Open(typ, vers, body)
		if err != nil {
			return nil, err
		}
		if inner == record.ApplicationData {
			return pt, nil
		}
		if inner == record.Alert {
			return nil, fmt.Errorf("client alert %v", Alert(pt[1]))
		}
	}
}

func (rc *recordConn) writeAppData(p []byte) error {
	rec, err := rc.out.Seal(nil, record.ApplicationData, p, 0)
	if err != nil {
		return err
	}
	_, err = rc.conn.Write(rec)
	return err
}

// closeNotify sends the close_notify alert (RFC 8446, Section 6.1).
func (rc *recordConn) closeNotify() error {
	rec, err := rc.out.Seal(nil, record.Alert, []byte{alertLevelWarning, byte(alertCloseNotify)}, 0)
	if err != nil {
		return err
	}
	_, err = rc.conn.Write(rec)
	return err
}

// flushOnReadConn holds the client's writes until it reads, so that each
// flight (and application data written right after the handshake) reaches
// the relay in one piece: the coalesced case.
type flushOnReadConn struct {
	net.Conn
	pending []byte
}

func (c *flushOnReadConn) Write(p []byte) (int, error) {
	c.pending = append(c.pending, p...)
	return len(p), nil
}

func (c *flushOnReadConn) Read(p []byte) (int, error) {
	if len(c.pending) > 0 {
		pending := c.pending
		c.pending = nil
		if _, err := c.Conn.Write(pending); err != nil {
			return 0, err
		}
	}
	return c.Conn.Read(p)
}

// interopCase is one handshake between crypto/tls's client and the engine.
type interopCase struct {
	server   Config
	client   *tls.Config
	mode     splitMode
	coalesce bool
	tamper   func(h *Handshake, rec []byte) []byte
	hop      bool
	keys     KeyOps
	skipData bool // do not exchange application data
	// tamperFinished, omitTrace: see relay.
	tamperFinished func(s *Session, in []byte) []byte
	omitTrace      bool
}

type interopResult struct {
	relay     relayOutcome
	clientErr error
	state     tls.ConnectionState
}

var (
	ping = []byte("ping from the client")
	pong = []byte("pong from the engine")
)

// runInterop runs the handshake and, on success, exchanges application data
// both ways with the session keys, which proves them right.
func runInterop(t *testing.T, c interopCase) interopResult {
	t.Helper()
	h, err := NewHandshake(&c.server)
	require.NoError(t, err)
	keys := c.keys
	if keys == nil {
		keys = getPKI(t).keys
	}
	serverConn, clientConn := tcpPair(t)
	deadline := time.Now().Add(30 * time.Second)
	serverConn.SetDeadline(deadline)
	clientConn.SetDeadline(deadline)
	defer serverConn.Close()
	defer clientConn.Close()

	r := &relay{h: h, keys: keys, mode: c.mode, rng: mrand.New(mrand.NewPCG(uint64(time.Now().UnixNano()), 1)), tamper: c.tamper, hop: c.hop, tamperFinished: c.tamperFinished, omitTrace: c.omitTrace}
	done := make(chan relayOutcome, 1)
	go func() {
		out := r.run(serverConn)
		if out.err == nil && out.session != nil && !c.skipData {
			out.err = serveData(serverConn, out.session, out.leftover)
		}
		if out.session == nil || out.err != nil {
			serverConn.Close()
		}
		done <- out
	}()

	var res interopResult
	var cc net.Conn = clientConn
	if c.coalesce {
		cc = &flushOnReadConn{Conn: clientConn}
	}
	client := tls.Client(cc, c.client)
	res.clientErr = client.Handshake()
	if res.clientErr == nil && !c.skipData {
		res.clientErr = exchangeClient(client)
	}
	res.state = client.ConnectionState()
	if res.clientErr != nil {
		clientConn.Close()
	}
	res.relay = <-done
	return res
}

// tcpPair returns both ends of a loopback TCP connection. Unlike net.Pipe,
// TCP buffers writes, so a side that fails can send its alert while the
// other is still writing, as on a real network.
func tcpPair(t *testing.T) (server, client net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	client, err = net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	server = <-accepted
	require.NotNil(t, server, "accept failed")
	return server, client
}

func serveData(conn net.Conn, s *Session, leftover []byte) error {
	rc, err := newRecordConn(conn, s, leftover)
	if err != nil {
		return err
	}
	got, err := rc.readAppData()
	if err != nil {
		return fmt.Errorf("reading client data: %w", err)
	}
	if !bytes.Equal(got, ping) {
		return fmt.Errorf("client data = %q, want %q", got, ping)
	}
	return rc.writeAppData(pong)
}

func exchangeClient(c *tls.Conn) error {
	if _, err := c.Write(ping); err != nil {
		return fmt.Errorf("client write: %w", err)
	}
	got := make([]byte, len(pong))
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("client read: %w", err)
	}
	if !bytes.Equal(got, pong) {
		return errors.New("client got wrong data")
	}
	return nil
}

// expectSuccess checks a successful handshake on both sides.
func expectSuccess(t *testing.T, res interopResult) *Session {
	t.Helper()
	require.Truef(t, res.clientErr == nil && res.relay.err == nil && res.relay.session != nil,
		"client error: %v; relay error: %v; engine: %v %s (%v)\ntrace:\n%s",
		res.clientErr, res.relay.err, res.relay.last.State, res.relay.last.Reason, res.relay.last.AlertDescription, traceText(res.relay.trace))
	s := res.relay.session
	require.Equal(t, res.state.Version, s.Version, "engine and client versions")
	require.Equal(t, res.state.CipherSuite, s.CipherSuite, "engine and client cipher suites")
	require.Equal(t, res.state.NegotiatedProtocol, s.ALPN, "engine and client ALPN")
	if res.state.CurveID != 0 {
		require.Equal(t, res.state.CurveID, s.Group, "engine and client groups")
	}
	return s
}

// expectFailure checks that the engine failed with want and sent it.
func expectFailure(t *testing.T, res interopResult, want Alert) {
	t.Helper()
	last := res.relay.last
	require.Truef(t, last.State == Failed && last.AlertDescription == want,
		"engine state %v alert %v (%s), want Failed with %v; relay err %v; client err %v\ntrace:\n%s",
		last.State, last.AlertDescription, last.Reason, want, res.relay.err, res.clientErr, traceText(res.relay.trace))
	require.Error(t, res.clientErr, "client handshake succeeded")
}

func traceText(tr []TraceEvent) string {
	var b bytes.Buffer
	for _, e := range tr {
		b.WriteString("  " + e.String() + "\n")
	}
	return b.String()
}
