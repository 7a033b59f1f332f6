package record

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	mathrand "math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"
	_ "unsafe" // for go:linkname

	"github.com/handshaked/handshaked/internal/testenv"
)

// These tests run Go's crypto/tls as both peers over loopback TCP, tap the
// bytes each side writes, and check this package against them in both
// directions: it must open what crypto/tls sealed (keys from the key log),
// and crypto/tls must accept what it sealed (records injected into the
// client's socket after the handshake).

// crypto/tls has no knob for the TLS 1.3 cipher suite; its suite lists are
// exported to linkname by design (go.dev/issue/67401), so the TLS 1.3 tests
// narrow them to the suite under test.
//
//go:linkname defaultCipherSuitesTLS13 crypto/tls.defaultCipherSuitesTLS13
var defaultCipherSuitesTLS13 []uint16

//go:linkname defaultCipherSuitesTLS13NoAES crypto/tls.defaultCipherSuitesTLS13NoAES
var defaultCipherSuitesTLS13NoAES []uint16

func forceTLS13Suite(t *testing.T, id uint16) {
	saved, savedNoAES := defaultCipherSuitesTLS13, defaultCipherSuitesTLS13NoAES
	defaultCipherSuitesTLS13, defaultCipherSuitesTLS13NoAES = []uint16{id}, []uint16{id}
	t.Cleanup(func() { defaultCipherSuitesTLS13, defaultCipherSuitesTLS13NoAES = saved, savedNoAES })
}

const testServerName = "record.test"

// testCertificates are generated once per test binary: RSA key generation is
// slow under the race detector.
var testCertificates = sync.OnceValues(func() ([]tls.Certificate, *x509.CertPool) {
	roots := x509.NewCertPool()
	var certs []tls.Certificate
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	for i, key := range []crypto.Signer{rsaKey, ecKey} {
		tmpl := &x509.Certificate{
			SerialNumber:          big.NewInt(int64(i + 1)),
			Subject:               pkix.Name{CommonName: testServerName},
			DNSNames:              []string{testServerName},
			NotBefore:             time.Now().Add(-time.Hour),
			NotAfter:              time.Now().Add(time.Hour),
			KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageCertSign,
			ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			BasicConstraintsValid: true,
			IsCA:                  true,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
		if err != nil {
			panic(err)
		}
		leaf, err := x509.ParseCertificate(der)
		if err != nil {
			panic(err)
		}
		roots.AddCert(leaf)
		certs = append(certs, tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf})
	}
	return certs, roots
})

// tapConn records everything written through it.
type tapConn struct {
	net.Conn
	mu      sync.Mutex
	written []byte
}

func (c *tapConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.written = append(c.written, p...)
	c.mu.Unlock()
	return c.Conn.Write(p)
}

func (c *tapConn) captured() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return bytes.Clone(c.written)
}

// session is a completed crypto/tls handshake over tapped loopback TCP.
type session struct {
	client, server       *tls.Conn
	clientTap, serverTap *tapConn // what the client and the server wrote
	keyLog               *testenv.Buffer
}

func dial(t *testing.T, clientConf, serverConf *tls.Config) *session {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	deadline := time.Now().Add(20 * time.Second)

	type accepted struct {
		conn *tls.Conn
		tap  *tapConn
		err  error
	}
	acceptc := make(chan accepted, 1)
	go func() {
		raw, err := ln.Accept()
		if err != nil {
			acceptc <- accepted{err: err}
			return
		}
		raw.SetDeadline(deadline)
		tap := &tapConn{Conn: raw}
		conn := tls.Server(tap, serverConf)
		acceptc <- accepted{conn, tap, conn.Handshake()}
	}()

	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	raw.SetDeadline(deadline)
	s := &session{clientTap: &tapConn{Conn: raw}, keyLog: &testenv.Buffer{}}
	clientConf.KeyLogWriter = s.keyLog
	s.client = tls.Client(s.clientTap, clientConf)
	t.Cleanup(func() { s.client.Close() })
	clientErr := s.client.Handshake()
	a := <-acceptc
	if a.conn != nil {
		t.Cleanup(func() { a.conn.Close() })
	}
	if clientErr != nil || a.err != nil {
		t.Fatalf("handshake: client: %v, server: %v", clientErr, a.err)
	}
	s.server, s.serverTap = a.conn, a.tap
	return s
}

func configs(version uint16, suite uint16) (client, server *tls.Config) {
	certs, roots := testCertificates()
	client = &tls.Config{
		ServerName:                  testServerName,
		RootCAs:                     roots,
		MinVersion:                  version,
		MaxVersion:                  version,
		DynamicRecordSizingDisabled: true, // full-size records from the start
	}
	server = &tls.Config{
		Certificates:                certs,
		MinVersion:                  version,
		MaxVersion:                  version,
		DynamicRecordSizingDisabled: true,
	}
	if version == tls.VersionTLS12 {
		client.CipherSuites = []uint16{suite}
		server.CipherSuites = []uint16{suite}
	}
	return client, server
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// exchange sends request from client to server and reply back, through
// crypto/tls on both ends.
func exchange(t *testing.T, s *session, request, reply []byte) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		got := make([]byte, len(request))
		if _, err := io.ReadFull(s.server, got); err != nil {
			errc <- err
			return
		}
		if !bytes.Equal(got, request) {
			errc <- errors.New("server read a different request")
			return
		}
		_, err := s.server.Write(reply)
		errc <- err
	}()
	if _, err := s.client.Write(request); err != nil {
		t.Fatalf("client write: %v", err)
	}
	got := make([]byte, len(reply))
	if _, err := io.ReadFull(s.client, got); err != nil {
		t.Fatalf("client read: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("server: %v", err)
	}
	if !bytes.Equal(got, reply) {
		t.Fatal("client read a different reply")
	}
}

// serverReads has crypto/tls read exactly len(want) bytes on the server side.
func serverReads(t *testing.T, s *session, want []byte) {
	t.Helper()
	got := make([]byte, len(want))
	if _, err := io.ReadFull(s.server, got); err != nil {
		t.Fatalf("crypto/tls server could not read injected records: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("crypto/tls server read different bytes from the injected records")
	}
}

type wireRecord struct {
	typ     ContentType
	version uint16
	body    []byte
}

// splitRecords parses stream as a network reader would see it: delivered in
// random small pieces, so that Parse meets every kind of partial record.
func splitRecords(t *testing.T, stream []byte, maxLen int) []wireRecord {
	t.Helper()
	rng := mathrand.New(mathrand.NewPCG(1, uint64(len(stream))))
	var recs []wireRecord
	var buf []byte
	for len(stream) > 0 || len(buf) > 0 {
		typ, version, body, n, err := Parse(buf, maxLen)
		if err != nil {
			t.Fatalf("Parse: %v", err)
		}
		if n == 0 {
			if len(stream) == 0 {
				t.Fatalf("stream ends inside a record (%d bytes left)", len(buf))
			}
			k := min(len(stream), 1+rng.IntN(3000))
			buf = append(buf, stream[:k]...)
			stream = stream[k:]
			continue
		}
		recs = append(recs, wireRecord{typ, version, bytes.Clone(body)})
		buf = buf[n:]
	}
	return recs
}

// transcript is what one direction of a connection carried, decrypted with
// this package.
type transcript struct {
	handshakeTypes []uint8 // protected handshake messages, in order
	appData        []byte
	protected      int     // records opened
	out            *Cipher // the direction's Cipher after the last record
}

// handshakeMessages splits complete messages off buf (RFC 8446 §4: type,
// uint24 length, body), calling fn for each, and returns the remainder.
func handshakeMessages(buf []byte, fn func(typ uint8)) []byte {
	for len(buf) >= 4 {
		n := 4 + (int(buf[1])<<16 | int(buf[2])<<8 | int(buf[3]))
		if len(buf) < n {
			break
		}
		fn(buf[0])
		buf = buf[n:]
	}
	return buf
}

const (
	typeFinished  = 20
	typeKeyUpdate = 24
)

// decodeTLS13 decrypts one direction of a TLS 1.3 connection: handshake
// keys after the hello, application keys after this side's Finished, and a
// KeyUpdate whenever one goes by.
func decodeTLS13(t *testing.T, stream []byte, suite uint16, handshakeSecret, appSecret []byte) transcript {
	t.Helper()
	var tr transcript
	var c *Cipher
	var pending []byte
	for _, r := range splitRecords(t, stream, MaxCiphertextTLS13) {
		switch {
		case r.typ == ChangeCipherSpec: // middlebox compatibility, never protected
			continue
		case r.typ == Handshake && c == nil: // ClientHello, ServerHello
			continue
		case r.typ != ApplicationData:
			t.Fatalf("unprotected %v record after the handshake keys", r.typ)
		}
		if c == nil {
			var err error
			if c, err = NewTLS13Cipher(suite, handshakeSecret, 0); err != nil {
				t.Fatal(err)
			}
		}
		typ, plaintext, err := c.Open(r.typ, r.version, r.body)
		if err != nil {
			t.Fatalf("Open record %d (seq %d): %v", tr.protected, c.Seq(), err)
		}
		tr.protected++
		switch typ {
		case ApplicationData:
			tr.appData = append(tr.appData, plaintext...)
		case Handshake:
			pending = handshakeMessages(append(pending, plaintext...), func(typ uint8) {
				tr.handshakeTypes = append(tr.handshakeTypes, typ)
				switch typ {
				case typeFinished:
					if c, err = NewTLS13Cipher(suite, appSecret, 0); err != nil {
						t.Fatal(err)
					}
				case typeKeyUpdate:
					if err := c.Update(); err != nil {
						t.Fatal(err)
					}
				}
			})
		default:
			t.Fatalf("unexpected protected %v record", typ)
		}
	}
	tr.out = c
	return tr
}

// decodeTLS12 decrypts one direction of a TLS 1.2 connection, protected
// from its ChangeCipherSpec on with sequence numbers from 0.
func decodeTLS12(t *testing.T, stream []byte, suite uint16, key, iv []byte) transcript {
	t.Helper()
	var tr transcript
	var c *Cipher
	for _, r := range splitRecords(t, stream, MaxCiphertextTLS12) {
		if c == nil {
			if r.typ == ChangeCipherSpec {
				var err error
				if c, err = NewTLS12Cipher(suite, key, iv, 0); err != nil {
					t.Fatal(err)
				}
			}
			continue
		}
		typ, plaintext, err := c.Open(r.typ, r.version, r.body)
		if err != nil {
			t.Fatalf("Open record %d (seq %d): %v", tr.protected, c.Seq(), err)
		}
		tr.protected++
		switch typ {
		case ApplicationData:
			tr.appData = append(tr.appData, plaintext...)
		case Handshake:
			// TLS 1.2 protects only the Finished; it fits one record.
			handshakeMessages(plaintext, func(typ uint8) { tr.handshakeTypes = append(tr.handshakeTypes, typ) })
		default:
			t.Fatalf("unexpected protected %v record", typ)
		}
	}
	tr.out = c
	return tr
}

// inject seals records with c and writes them to the client's socket behind
// crypto/tls's back. It returns the application data they carry.
func inject(t *testing.T, s *session, c *Cipher, records []injected) []byte {
	t.Helper()
	var wire, want []byte
	for _, r := range records {
		var err error
		if wire, err = c.Seal(wire, r.typ, r.data, r.padding); err != nil {
			t.Fatalf("Seal: %v", err)
		}
		if r.typ == ApplicationData {
			want = append(want, r.data...)
		}
		if r.typ == Handshake && r.data[0] == typeKeyUpdate {
			// RFC 8446 §4.6.3: the sender updates right after sending.
			if err := c.Update(); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := s.clientTap.Write(wire); err != nil {
		t.Fatal(err)
	}
	return want
}

type injected struct {
	typ     ContentType
	data    []byte
	padding int
}

func suiteName(id uint16) string { return tls.CipherSuiteName(id) }

func TestInteropTLS13(t *testing.T) {
	for _, id := range []uint16{tls.TLS_AES_128_GCM_SHA256, tls.TLS_AES_256_GCM_SHA384, tls.TLS_CHACHA20_POLY1305_SHA256} {
		t.Run(suiteName(id), func(t *testing.T) {
			forceTLS13Suite(t, id)
			clientConf, serverConf := configs(tls.VersionTLS13, id)
			s := dial(t, clientConf, serverConf)
			if got := s.client.ConnectionState().CipherSuite; got != id {
				t.Fatalf("negotiated %s", suiteName(got))
			}
			request := append(randomBytes(2*MaxPlaintext+1000), "ping"...) // several full-size records
			reply := randomBytes(MaxPlaintext + 1)
			exchange(t, s, request, reply)

			keys := testenv.KeyLog(t, s.keyLog)
			secret := func(label string) []byte {
				v, ok := keys[label]
				if !ok {
					t.Fatalf("no %s in the key log", label)
				}
				return v[1]
			}
			clientHS, serverHS := secret("CLIENT_HANDSHAKE_TRAFFIC_SECRET"), secret("SERVER_HANDSHAKE_TRAFFIC_SECRET")
			clientApp, serverApp := secret("CLIENT_TRAFFIC_SECRET_0"), secret("SERVER_TRAFFIC_SECRET_0")

			// crypto/tls -> this package, both directions.
			c2s := decodeTLS13(t, s.clientTap.captured(), id, clientHS, clientApp)
			if !bytes.Equal(c2s.appData, request) {
				t.Fatalf("client records decrypt to %d bytes, not the %d-byte request", len(c2s.appData), len(request))
			}

			// This package -> crypto/tls: continue the client's stream.
			full := randomBytes(MaxPlaintext)
			want := inject(t, s, c2s.out, []injected{
				{typ: ApplicationData}, // empty record
				{typ: ApplicationData, data: []byte("padded"), padding: 200},         // padding
				{typ: ApplicationData, data: full},                                   // 2^14 bytes
				{typ: ApplicationData, data: []byte("x"), padding: MaxPlaintext - 1}, // 2^14+1 inner plaintext
				{typ: Handshake, data: []byte{typeKeyUpdate, 0, 0, 1, 1}},            // KeyUpdate, update_requested
				{typ: ApplicationData, data: []byte("after key update")},
			})
			serverReads(t, s, want)

			// crypto/tls answered update_requested with its own KeyUpdate
			// and switched keys (RFC 8446 §4.6.3); what it writes now must
			// decrypt after this package's Update.
			final := []byte("server data after key update")
			if _, err := s.server.Write(final); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, len(final))
			if _, err := io.ReadFull(s.client, got); err != nil {
				t.Fatalf("client read after key update: %v", err)
			}

			s2c := decodeTLS13(t, s.serverTap.captured(), id, serverHS, serverApp)
			if want := append(bytes.Clone(reply), final...); !bytes.Equal(s2c.appData, want) {
				t.Fatalf("server records decrypt to %d bytes, want %d", len(s2c.appData), len(want))
			}
			// EncryptedExtensions, Certificate, CertificateVerify,
			// Finished, NewSessionTicket..., KeyUpdate.
			types := s2c.handshakeTypes
			if len(types) < 5 || !bytes.Equal(types[:4], []byte{8, 11, 15, typeFinished}) || types[len(types)-1] != typeKeyUpdate {
				t.Errorf("server handshake messages %v", types)
			}
			// The whole client direction again, injected records included.
			c2s = decodeTLS13(t, s.clientTap.captured(), id, clientHS, clientApp)
			if want := append(bytes.Clone(request), want...); !bytes.Equal(c2s.appData, want) {
				t.Errorf("client direction decrypts to %d bytes, want %d", len(c2s.appData), len(want))
			}
			if !bytes.Equal(c2s.handshakeTypes, []byte{typeFinished, typeKeyUpdate}) {
				t.Errorf("client handshake messages %v", c2s.handshakeTypes)
			}
		})
	}
}

func TestInteropTLS12(t *testing.T) {
	for _, s := range suites {
		if s.TLS13 {
			continue
		}
		id := s.ID
		t.Run(suiteName(id), func(t *testing.T) {
			suite, _ := SuiteByID(id)
			clientConf, serverConf := configs(tls.VersionTLS12, id)
			sess := dial(t, clientConf, serverConf)
			if got := sess.client.ConnectionState().CipherSuite; got != id {
				t.Fatalf("negotiated %s", suiteName(got))
			}
			request := append(randomBytes(2*MaxPlaintext+1000), "ping"...)
			reply := randomBytes(MaxPlaintext + 1)
			exchange(t, sess, request, reply)

			// RFC 5246 §6.3: key_block = PRF(master_secret, "key expansion",
			// server_random + client_random), cut into the write keys and
			// IVs (AEAD suites have no MAC keys).
			entry, ok := testenv.KeyLog(t, sess.keyLog)["CLIENT_RANDOM"]
			if !ok {
				t.Fatal("no CLIENT_RANDOM in the key log")
			}
			clientRandom, master := entry[0], entry[1]
			serverHello := splitRecords(t, sess.serverTap.captured(), MaxCiphertextTLS12)[0].body
			if serverHello[0] != 2 {
				t.Fatalf("first server record is not a ServerHello")
			}
			serverRandom := serverHello[6:38]
			clientKey, serverKey, clientIV, serverIV := NewSecret12(suite.Hash, master).KeyBlock(clientRandom, serverRandom, suite.KeyLen, suite.FixedIVLen)

			c2s := decodeTLS12(t, sess.clientTap.captured(), id, clientKey, clientIV)
			if !bytes.Equal(c2s.appData, request) {
				t.Fatalf("client records decrypt to %d bytes, not the %d-byte request", len(c2s.appData), len(request))
			}
			s2c := decodeTLS12(t, sess.serverTap.captured(), id, serverKey, serverIV)
			if !bytes.Equal(s2c.appData, reply) {
				t.Fatalf("server records decrypt to %d bytes, not the %d-byte reply", len(s2c.appData), len(reply))
			}
			for _, tr := range []transcript{c2s, s2c} {
				if !bytes.Equal(tr.handshakeTypes, []byte{typeFinished}) {
					t.Errorf("protected handshake messages %v, want one Finished", tr.handshakeTypes)
				}
			}

			want := inject(t, sess, c2s.out, []injected{
				{typ: ApplicationData},
				{typ: ApplicationData, data: randomBytes(MaxPlaintext)},
				{typ: ApplicationData, data: []byte("sealed by package record")},
			})
			serverReads(t, sess, want)
		})
	}
}
