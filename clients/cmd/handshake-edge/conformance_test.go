package main

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/chacha20poly1305"
	"golang.org/x/crypto/cryptobyte"

	"github.com/handshaked/handshaked/internal/engine/record"
	"github.com/handshaked/handshaked/internal/testenv"
)

// The probes here play an outside conformance suite (in the manner of
// tlsfuzzer's scripts) against handshake-edge in front of handshaked: a
// client on a plain TCP connection writes records of its own making and
// reads what comes back. Before the handshake the bytes are hand-made from
// crypto/tls's ClientHello; after it, crypto/tls runs the handshake and
// the probe writes records under the client's keys from the key log. Each
// probe is named after the requirement it checks.

// edgeModes are the ways handshake-edge steps a handshake: every probe
// must get the same answer from each.
var edgeModes = []struct {
	name string
	args []string
}{
	{"multiplex", nil},
	{"unary", []string{"-unary"}},
	{"one round trip", []string{"-one-round-trip"}},
}

// probeEdges starts handshake-edge in each mode, proxying to an echo
// backend, and runs probe against each.
func probeEdges(t *testing.T, f *fixture, probe func(t *testing.T, addr string)) {
	probeEdgesWith(t, f, nil, probe)
}

// probeEdgesWith is probeEdges with handshake-edge started with args too.
func probeEdgesWith(t *testing.T, f *fixture, args []string, probe func(t *testing.T, addr string)) {
	backend, _ := echoBackend(t)
	for _, m := range edgeModes {
		addr, _ := f.start(t, slices.Concat([]string{"-backend", backend}, m.args, args)...)
		t.Run(m.name, func(t *testing.T) { probe(t, addr) })
	}
}

// clientHello is the ClientHello message crypto/tls sends with cfg.
func clientHello(t *testing.T, cfg *tls.Config) []byte {
	t.Helper()
	c, s := net.Pipe()
	defer s.Close()
	go tls.Client(c, cfg).Handshake()
	s.SetReadDeadline(time.Now().Add(10 * time.Second))
	var hdr [record.HeaderLen]byte
	_, err := io.ReadFull(s, hdr[:])
	require.NoError(t, err)
	body := make([]byte, int(hdr[3])<<8|int(hdr[4]))
	_, err = io.ReadFull(s, body)
	require.NoError(t, err)
	c.Close()
	require.Equal(t, byte(1), body[0], "crypto/tls's first record is not a ClientHello")
	return body
}

// withPadding returns the ClientHello msg with a padding extension (RFC
// 7685) of n zero bytes first in its extensions.
func withPadding(t *testing.T, msg []byte, n int) []byte {
	t.Helper()
	ext := append([]byte{0, 21, byte(n >> 8), byte(n)}, make([]byte, n)...)
	return editHello(t, msg, nil, ext)
}

// withSuite returns the ClientHello msg with suite last in its
// cipher_suites.
func withSuite(t *testing.T, msg []byte, suite uint16) []byte {
	t.Helper()
	return editHello(t, msg, []byte{byte(suite >> 8), byte(suite)}, nil)
}

// editHello returns the ClientHello msg with suites added after its cipher
// suites and exts (encoded extensions) before its extensions.
func editHello(t *testing.T, msg, suites, exts []byte) []byte {
	t.Helper()
	s := cryptobyte.String(msg[4:])
	var sid, oldSuites, comp, oldExts cryptobyte.String
	require.True(t, s.Skip(2+32) && s.ReadUint8LengthPrefixed(&sid) && s.ReadUint16LengthPrefixed(&oldSuites) &&
		s.ReadUint8LengthPrefixed(&comp) && s.ReadUint16LengthPrefixed(&oldExts) && s.Empty(), "ClientHello")
	var b cryptobyte.Builder
	b.AddUint8(1)
	b.AddUint24LengthPrefixed(func(b *cryptobyte.Builder) {
		b.AddBytes(msg[4 : 4+2+32])
		b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(sid) })
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(slices.Concat(oldSuites, suites)) })
		b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(comp) })
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(slices.Concat(exts, oldExts)) })
	})
	return b.BytesOrPanic()
}

// unknownExtensions is n empty extensions of code points no one
// registered, as they go into an extensions block.
func unknownExtensions(n int) []byte {
	var b []byte
	for i := range n {
		b = append(b, byte(0xa0+(i>>8)), byte(i), 0, 0)
	}
	return b
}

// fragments is msg in handshake records of at most size bytes each.
func fragments(msg []byte, size int) []byte {
	var out []byte
	for len(msg) > 0 {
		n := min(size, len(msg))
		out = record.Append(out, record.Handshake, 0x0301, msg[:n])
		msg = msg[n:]
	}
	return out
}

// serverRecord is a record as the client read it.
type serverRecord struct {
	typ  record.ContentType
	body []byte
}

// readRecords reads records from c until it has got n or the edge closes
// the connection (or the read deadline passes, which fails the probe). It
// returns the records and whether the edge closed.
func readRecords(t *testing.T, c net.Conn, n int) (recs []serverRecord, closed bool) {
	t.Helper()
	require.NoError(t, c.SetReadDeadline(time.Now().Add(20*time.Second)))
	for len(recs) < n {
		var hdr [record.HeaderLen]byte
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			var ne net.Error
			require.False(t, errors.As(err, &ne) && ne.Timeout(), "the edge neither answered nor closed")
			return recs, true
		}
		body := make([]byte, int(hdr[3])<<8|int(hdr[4]))
		_, err := io.ReadFull(c, body)
		require.NoError(t, err, "a record cut short")
		recs = append(recs, serverRecord{record.ContentType(hdr[0]), body})
	}
	return recs, false
}

// expectPlainAlert checks that the edge answered with the fatal alert
// want in a plaintext record and closed the connection.
func expectPlainAlert(t *testing.T, c net.Conn, want uint8) {
	t.Helper()
	recs, _ := readRecords(t, c, 1)
	require.Len(t, recs, 1, "the edge closed without an alert, want %s", record.AlertName(want))
	r := recs[0]
	require.Equal(t, record.Alert, r.typ, "the edge sent a %v record, want alert %s", r.typ, record.AlertName(want))
	require.Len(t, r.body, 2)
	assert.Equal(t, record.AlertName(want), record.AlertName(r.body[1]), "alert")
	assert.Equal(t, byte(2), r.body[0], "alert level")
	_, closed := readRecords(t, c, 1)
	assert.True(t, closed, "the edge sent more after its fatal alert")
}

// expectServerHello checks that the edge's first record is a ServerHello.
func expectServerHello(t *testing.T, c net.Conn) {
	t.Helper()
	recs, _ := readRecords(t, c, 1)
	require.Len(t, recs, 1, "the edge closed without a ServerHello")
	r := recs[0]
	require.Equal(t, record.Handshake, r.typ, "the edge sent % x, want a ServerHello", r.body)
	assert.Equal(t, byte(2), r.body[0], "handshake message type")
}

// TestProbeEdgeClientHello sends the edge first flights that stress how it
// reads a ClientHello before anything reaches the service: fragmented,
// large, or not a ClientHello at all. The engine's own probes
// (internal/engine/rfc_probes_test.go) check the same rules without the
// edge in between.
func TestProbeEdgeClientHello(t *testing.T) {
	f := newFixture(t)
	cfg := &tls.Config{ServerName: f.ecdsa.Name, RootCAs: f.ecdsa.Pool}
	hello := clientHello(t, cfg)
	// A ClientHello of 2^16 bytes.
	maxHello := withPadding(t, hello, 1<<16-(len(hello)-4)-4)
	cfg12 := cfg.Clone()
	cfg12.MaxVersion = tls.VersionTLS12
	hello12 := clientHello(t, cfg12)
	largest := largestHello(t, hello12)

	accepted := []struct {
		name  string
		first []byte
	}{
		{"RFC 8446 5.1 ClientHello in one-byte records", fragments(hello, 1)},
		{"RFC 5246 6.2.1 TLS 1.2 ClientHello in one-byte records", fragments(hello12, 1)},
		{"RFC 8446 5.1 ClientHello whose message header spans records", slices.Concat(fragments(hello[:3], 3), fragments(hello[3:], 1<<14))},
		{"RFC 8446 5.1 ClientHello over 2^14 bytes across two records", fragments(withPadding(t, hello, 1<<14), 1<<14)},
		{"RFC 7685 ClientHello of 2^16 bytes in full records", fragments(maxHello, 1<<14)},
		{"RFC 7685 ClientHello of 2^16 bytes in 100-byte records", fragments(maxHello, 100)},
		// More record bytes than the edge holds before it opens a session
		// in the service (six a byte): the rest follows in steps.
		{"RFC 8446 5.1 ClientHello of 2^16 bytes in one-byte records", fragments(maxHello, 1)},
		{"RFC 5246 7.4.1.2 the largest ClientHello in full records", fragments(largest, 1<<14)},
		{"RFC 5246 7.4.1.2 the largest ClientHello in 1000-byte records", fragments(largest, 1000)},
		// tlsfuzzer's test-large-number-of-extensions.py: unknown
		// extensions are ignored (RFC 8446, Section 4.2), however many.
		{"RFC 8446 4.2 ClientHello with 4000 unknown extensions", fragments(editHello(t, hello, nil, unknownExtensions(4000)), 1<<14)},
		// RFC 5246, Section 7.4.1.2: a ClientHello may end after its
		// compression methods; RSA key exchange needs no extension.
		{"RFC 5246 7.4.1.2 TLS 1.2 ClientHello without extensions", fragments(hsMsg(1, slices.Concat([]byte{3, 3}, make([]byte, 32), []byte{0, 0, 2, 0x00, 0x9c, 1, 0})...), 1<<14)},
	}
	refused := []struct {
		name  string
		first []byte
		alert uint8
	}{
		// RFC 8446, Appendix D.5; RFC 5246, Appendix E.2.
		{"RFC 8446 D.5 SSL 2.0 compatible ClientHello", sslv2Hello(), alertUnexpectedMessage},
		{"RFC 8446 5 change_cipher_spec before the ClientHello", []byte{20, 3, 3, 0, 1, 1}, alertUnexpectedMessage},
		{"RFC 8446 5.1 zero-length handshake record", []byte{22, 3, 1, 0, 0}, alertUnexpectedMessage},
		{"RFC 8446 5 application_data before the ClientHello", []byte{23, 3, 3, 0, 3, 1, 2, 3}, alertUnexpectedMessage},
		{"RFC 8446 5 heartbeat record", []byte{24, 3, 3, 0, 3, 1, 0, 0}, alertUnexpectedMessage},
		{"RFC 8446 5 an HTTP request", []byte("GET / HTTP/1.1\r\nHost: ec.test\r\n\r\n"), alertUnexpectedMessage},
		{"RFC 8446 5.1 plaintext record over 2^14 bytes", append([]byte{22, 3, 1, 0x40, 0x01}, make([]byte, 1<<14+1)...), alertRecordOverflow},
		{"RFC 8446 4 another handshake message first", fragments([]byte{24, 0, 0, 1, 0}, 16), alertUnexpectedMessage},
		// RFC 8446, Section 5.1: "Handshake messages MUST NOT be
		// interleaved with other record types."
		{"RFC 8446 5.1 alert inside a fragmented ClientHello", slices.Concat(fragments(hello[:40], 40), []byte{21, 3, 3, 0, 2, 1, 0}, fragments(hello[40:], 1<<14)), alertUnexpectedMessage},
		{"RFC 8446 5.1 change_cipher_spec inside a fragmented ClientHello", slices.Concat(fragments(hello[:40], 40), []byte{20, 3, 3, 0, 1, 1}, fragments(hello[40:], 1<<14)), alertUnexpectedMessage},
		// RFC 8446, Section 6: an alert is two bytes.
		{"RFC 8446 6 alert of one byte first", []byte{21, 3, 3, 0, 1, 2}, alertDecodeError},
		{"RFC 8446 6 alert of three bytes first", []byte{21, 3, 3, 0, 3, 2, 40, 0}, alertDecodeError},
		// Longer than any ClientHello can be: refused on its header, as a
		// message whose length is incorrect (RFC 8446, Section 6.2's
		// decode_error, which tlsfuzzer expects; OpenSSL says
		// illegal_parameter).
		{"RFC 8446 6.2 ClientHello over 131396 bytes is decode_error", fragments(append([]byte{1, 0x02, 0x01, 0x45}, hello[4:]...), 1<<14), alertDecodeError},
	}
	probeEdges(t, f, func(t *testing.T, addr string) {
		for _, tc := range accepted {
			t.Run(tc.name, func(t *testing.T) {
				c := dialRaw(t, addr)
				_, err := c.Write(tc.first)
				require.NoError(t, err)
				expectServerHello(t, c)
			})
		}
		for _, tc := range refused {
			t.Run(tc.name, func(t *testing.T) {
				c := dialRaw(t, addr)
				c.Write(tc.first)
				expectPlainAlert(t, c, tc.alert)
			})
		}
	})
}

// sslv2Hello is an SSL 2.0 compatible CLIENT-HELLO offering TLS 1.2 (RFC
// 5246, Appendix E.2).
func sslv2Hello() []byte {
	body := []byte{1, 3, 3, 0, 6, 0, 0, 0, 16, 0x00, 0xc0, 0x2f, 0x00, 0x00, 0xff}
	body = append(body, bytes.Repeat([]byte{0x11}, 16)...)
	return append([]byte{0x80 | byte(len(body)>>8), byte(len(body))}, body...)
}

// dialRaw is a TCP connection to addr, closed when the test ends.
func dialRaw(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

// tapConn is the client's TCP connection: it keeps what the client read
// and lets a probe change what it writes. It reads one record at a time,
// so that crypto/tls never takes in records past its handshake (the edge
// may send the first right after its Finished) that a probe means to read.
type tapConn struct {
	net.Conn
	write   func(b []byte) []byte // nil: b as it is
	pending []byte                // the rest of the record being read
	mu      sync.Mutex
	read    []byte
}

func (c *tapConn) Read(b []byte) (int, error) {
	if len(c.pending) == 0 {
		hdr := make([]byte, record.HeaderLen)
		if _, err := io.ReadFull(c.Conn, hdr); err != nil {
			return 0, err
		}
		rec := append(hdr, make([]byte, int(hdr[3])<<8|int(hdr[4]))...)
		if _, err := io.ReadFull(c.Conn, rec[record.HeaderLen:]); err != nil {
			return 0, err
		}
		c.mu.Lock()
		c.read = append(c.read, rec...)
		c.mu.Unlock()
		c.pending = rec
	}
	n := copy(b, c.pending)
	c.pending = c.pending[n:]
	return n, nil
}

func (c *tapConn) Write(b []byte) (int, error) {
	out := b
	if c.write != nil {
		out = c.write(slices.Clone(b))
	}
	if _, err := c.Conn.Write(out); err != nil {
		return 0, err
	}
	return len(b), nil
}

// readSoFar is what the client has read.
func (c *tapConn) readSoFar() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.read)
}

// peer is a client whose handshake with the edge crypto/tls completed and
// which then writes and reads records itself on the TCP connection, under
// the session keys from crypto/tls's key log.
type peer struct {
	raw     net.Conn
	tls13   bool
	suite   uint16
	key, iv []byte // the client's write key and IV, for sendRaw
	out, in *record.Cipher
	logs    *testenv.Buffer // crypto/tls's key log
}

// dialPeer completes a handshake of version with the edge at addr.
func dialPeer(t *testing.T, f *fixture, addr string, version uint16) *peer {
	t.Helper()
	return dialPeerWith(t, f, addr, version, peerHooks{})
}

// peerHooks change what dialPeerWith's client writes.
type peerHooks struct {
	// earlier returns what to write in place of the client's write i
	// (from 0) before its last flight.
	earlier func(i int, b []byte) []byte
	// last returns what to write in place of the client's last flight
	// (ChangeCipherSpec and Finished, and in TLS 1.2 the
	// ClientKeyExchange first), in one TCP segment, with the peer's keys
	// ready: to send application data with it (TLS 1.3; TLS 1.2 False
	// Start, RFC 7918), or another Finished.
	last func(p *peer, flight []byte) []byte
}

// tappedPeer is a peer of version on a new tapConn to addr, before
// crypto/tls runs its handshake on it, and the key log label crypto/tls
// writes just before the client's last flight.
func tappedPeer(t *testing.T, addr string, version uint16) (*tapConn, *peer, string) {
	t.Helper()
	tap := &tapConn{Conn: dialRaw(t, addr)}
	p := &peer{raw: tap, tls13: version == tls.VersionTLS13, logs: &testenv.Buffer{}}
	if p.tls13 {
		return tap, p, "CLIENT_TRAFFIC_SECRET_0"
	}
	return tap, p, "CLIENT_RANDOM"
}

// dialPeerWith is dialPeer whose client writes what hooks say.
func dialPeerWith(t *testing.T, f *fixture, addr string, version uint16, hooks peerHooks) *peer {
	t.Helper()
	tap, p, label := tappedPeer(t, addr, version)
	logs := p.logs
	writes := 0
	tap.write = func(b []byte) []byte {
		switch {
		case p.out != nil:
			return b
		case !bytes.Contains(logs.Bytes(), []byte(label)):
			// crypto/tls logs the session secrets before it writes its
			// last flight, which it writes at once.
			if writes++; hooks.earlier != nil {
				return hooks.earlier(writes-1, b)
			}
			return b
		case hooks.last != nil:
			p.keys(t, tap.readSoFar())
			return hooks.last(p, b)
		}
		return b
	}
	c := tls.Client(tap, &tls.Config{ServerName: f.ecdsa.Name, RootCAs: f.ecdsa.Pool, MinVersion: version, MaxVersion: version, KeyLogWriter: logs,
		CipherSuites:       []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256}, // TLS 1.2 only
		ClientSessionCache: tls.NewLRUClientSessionCache(1)})                      // so as to take tickets: psk_key_exchange_modes
	require.NoError(t, c.Handshake())
	if p.out == nil {
		p.keys(t, tap.readSoFar())
	}
	require.Equal(t, c.ConnectionState().CipherSuite, p.suite)
	return p
}

// keys sets up the peer's session keys from its key log and the server's
// first bytes, which begin with its ServerHello.
func (p *peer) keys(t *testing.T, server []byte) {
	t.Helper()
	logs := p.logs
	hello := cryptobyte.String(server[record.HeaderLen:])
	var random []byte
	require.True(t, hello.Skip(4+2) && hello.ReadBytes(&random, 32) && hello.Skip(1+int(hello[0])) && hello.ReadUint16(&p.suite),
		"the first record is not a ServerHello")
	s, ok := record.SuiteByID(p.suite)
	require.True(t, ok)
	var err error
	if p.tls13 {
		secret := testenv.KeyLogSecret(t, logs, "CLIENT_TRAFFIC_SECRET_0")
		p.key, p.iv = record.TrafficKeys(s, secret)
		p.out, err = record.NewTLS13Cipher(p.suite, secret, 0)
		require.NoError(t, err)
		p.in, err = record.NewTLS13Cipher(p.suite, testenv.KeyLogSecret(t, logs, "SERVER_TRAFFIC_SECRET_0"), 0)
		require.NoError(t, err)
		return
	}
	entry := testenv.KeyLog(t, logs)["CLIENT_RANDOM"]
	var sk, siv []byte
	p.key, sk, p.iv, siv = record.NewSecret12(s.Hash, entry[1]).KeyBlock(entry[0], random, s.KeyLen, s.FixedIVLen)
	// Each side's Finished is the first record under its keys.
	p.out, err = record.NewTLS12Cipher(p.suite, p.key, p.iv, 1)
	require.NoError(t, err)
	p.in, err = record.NewTLS12Cipher(p.suite, sk, siv, 1)
	require.NoError(t, err)
}

// send writes records of typ, one per body, protected under the client's
// keys.
func (p *peer) send(t *testing.T, typ record.ContentType, bodies ...[]byte) {
	t.Helper()
	var w []byte
	for _, b := range bodies {
		var err error
		w, err = p.out.Seal(w, typ, b, 0)
		require.NoError(t, err)
	}
	_, err := p.raw.Write(w)
	require.NoError(t, err)
}

// sendRaw writes plaintext as the client's next record of type typ,
// protected by hand, since record.Cipher refuses to build the malformed
// ones: in TLS 1.3 plaintext is the whole TLSInnerPlaintext (RFC 8446,
// Section 5.2) and typ is left out; TLS 1.2 records are AES-GCM (RFC
// 5288), the suite dialPeer asks for. The connection is not expected to
// go on after it.
func (p *peer) sendRaw(t *testing.T, typ record.ContentType, plaintext []byte) {
	t.Helper()
	p.sendRawAs(t, typ, 0x0303, plaintext)
}

// sendRawAs is sendRaw with version as the record's legacy_record_version,
// which the additional data covers (RFC 8446, Section 5.2; RFC 5246,
// Section 6.2.3.3).
func (p *peer) sendRawAs(t *testing.T, typ record.ContentType, version uint16, plaintext []byte) {
	t.Helper()
	var aead cipher.AEAD
	var err error
	if p.suite == tls.TLS_CHACHA20_POLY1305_SHA256 {
		aead, err = chacha20poly1305.New(p.key)
	} else {
		var block cipher.Block
		block, err = aes.NewCipher(p.key)
		require.NoError(t, err)
		aead, err = cipher.NewGCM(block)
	}
	require.NoError(t, err)
	seq := binary.BigEndian.AppendUint64(nil, p.out.Seq())
	var header, nonce, aad []byte
	if p.tls13 {
		// RFC 8446, Section 5.3: the IV XORed with the sequence number.
		nonce = slices.Clone(p.iv)
		for i := range seq {
			nonce[len(nonce)-8+i] ^= seq[i]
		}
		n := len(plaintext) + aead.Overhead()
		header = []byte{byte(record.ApplicationData), byte(version >> 8), byte(version), byte(n >> 8), byte(n)}
		aad = header
	} else {
		// RFC 5288, Section 3: salt and explicit nonce; RFC 5246, Section
		// 6.2.3.3: seq_num, type, version and length as additional data.
		nonce = slices.Concat(p.iv, seq)
		n := len(seq) + len(plaintext) + aead.Overhead()
		header = append([]byte{byte(typ), byte(version >> 8), byte(version), byte(n >> 8), byte(n)}, seq...)
		aad = slices.Concat(seq, []byte{byte(typ), byte(version >> 8), byte(version), byte(len(plaintext) >> 8), byte(len(plaintext))})
	}
	_, err = p.raw.Write(aead.Seal(header, nonce, plaintext, aad))
	require.NoError(t, err)
}

// opened is what the client read after the handshake, opened under the
// server's keys.
type opened struct {
	data       []byte   // application data
	alerts     [][]byte // alert bodies, in order
	closed     bool     // the edge closed the connection
	keyUpdates int      // KeyUpdates from the edge
	tickets    int      // NewSessionTickets from the edge
}

// readUntil reads and opens the edge's records until it has got want bytes
// of application data and the alerts, or the edge closes.
func (p *peer) readUntil(t *testing.T, want int, alerts int) opened {
	t.Helper()
	var o opened
	var hs []byte // handshake messages, which may span records (RFC 8449)
	for len(o.data) < want || len(o.alerts) < alerts {
		recs, closed := readRecords(t, p.raw, 1)
		if closed {
			o.closed = true
			return o
		}
		typ, plain, err := p.in.Open(recs[0].typ, 0x0303, recs[0].body)
		require.NoError(t, err, "the edge's record does not open under the server's keys")
		switch typ {
		case record.ApplicationData:
			o.data = append(o.data, plain...)
		case record.Alert:
			o.alerts = append(o.alerts, plain)
		case record.Handshake:
			hs = append(hs, plain...)
			for len(hs) >= 4 {
				n := 4 + (int(hs[1])<<16 | int(hs[2])<<8 | int(hs[3]))
				if len(hs) < n {
					break
				}
				msg := hs[:n]
				hs = hs[n:]
				switch {
				case msg[0] == 4: // NewSessionTicket (RFC 8446, Section 4.6.1)
					o.tickets++
				default: // KeyUpdate (RFC 8446, Section 4.6.3)
					require.Equal(t, []byte{24, 0, 0, 1, 0}, msg, "the edge sent a handshake message")
					require.NoError(t, p.in.Update())
					o.keyUpdates++
				}
			}
		default:
			require.Failf(t, "unexpected record", "the edge sent a %v record", typ)
		}
	}
	return o
}

// expectAlert checks that the edge answered with the fatal alert want,
// protected, and closed the connection.
func (p *peer) expectAlert(t *testing.T, want uint8) {
	t.Helper()
	o := p.readUntil(t, 0, 1)
	require.Len(t, o.alerts, 1, "the edge closed without an alert, want %s", record.AlertName(want))
	assert.Equal(t, []byte{2, want}, o.alerts[0], "want fatal %s, got %s", record.AlertName(want), record.AlertName(o.alerts[0][1]))
	_, closed := readRecords(t, p.raw, 1)
	assert.True(t, closed, "the edge sent more after its fatal alert")
}

// expectEcho checks that what the client sent came back from the backend,
// the connection still open.
func (p *peer) expectEcho(t *testing.T, want string) {
	t.Helper()
	o := p.readUntil(t, len(want), 0)
	require.False(t, o.closed, "the edge closed the connection; alerts % x", o.alerts)
	assert.Equal(t, want, string(o.data))
}

// expectServes checks that the connection carries data after the
// handshake: application data sent comes back from the backend.
func (p *peer) expectServes(t *testing.T) {
	t.Helper()
	p.send(t, record.ApplicationData, []byte("after"))
	p.expectEcho(t, "after")
}

// Alert levels and descriptions the probes expect (RFC 8446, Section 6;
// RFC 5246, Section 7.2).
const (
	alertWarning               = 1
	alertUnexpectedMessage     = 10
	alertBadRecordMAC          = 20
	alertRecordOverflow        = 22
	alertHandshakeFailure      = 40
	alertIllegalParameter      = 47
	alertProtocolVersion       = 70
	alertInternalError         = 80
	alertInappropriateFallback = 86
	alertDecodeError           = 50
	alertDecryptError          = 51
	alertNoRenegotiation       = 100
	alertMissingExtension      = 109
)

// appDataRecord is an application_data record of n zero bytes, in one
// record whatever n (record.Append would split it).
func appDataRecord(n int) []byte {
	return append([]byte{byte(record.ApplicationData), 3, 3, byte(n >> 8), byte(n)}, make([]byte, n)...)
}

func hsMsg(typ uint8, body ...byte) []byte {
	return append([]byte{typ, byte(len(body) >> 16), byte(len(body) >> 8), byte(len(body))}, body...)
}

// refusedRecords is what a client sends after the handshake, and the
// fatal alert the edge must answer with.
type refusedRecords struct {
	name  string
	send  func(t *testing.T, p *peer)
	alert uint8
}

// expectRefused runs each of probes on a new connection of version.
func expectRefused(t *testing.T, f *fixture, addr string, version uint16, probes []refusedRecords) {
	for _, tc := range probes {
		t.Run(tc.name, func(t *testing.T) {
			p := dialPeer(t, f, addr, version)
			tc.send(t, p)
			p.expectAlert(t, tc.alert)
		})
	}
}

// TestProbeEdgeTLS13Records sends the edge's record layer what crypto/tls
// never sends after a TLS 1.3 handshake.
func TestProbeEdgeTLS13Records(t *testing.T) {
	f := newFixture(t)
	refused := []refusedRecords{
		// RFC 8446, Section 5.4: "Implementations MUST NOT send Handshake
		// and Alert records that have a zero-length
		// TLSInnerPlaintext.content; if such a message is received, the
		// receiving implementation MUST terminate the connection with an
		// "unexpected_message" alert."
		{"5.4 zero-length handshake record is unexpected_message", func(t *testing.T, p *peer) { p.sendRaw(t, 0, []byte{22}) }, alertUnexpectedMessage},
		{"5.4 zero-length alert is unexpected_message", func(t *testing.T, p *peer) { p.sendRaw(t, 0, []byte{21, 0, 0}) }, alertUnexpectedMessage},
		// RFC 8446, Section 5: a change_cipher_spec after the peer's
		// Finished is an unexpected record type; a protected one is
		// unexpected_message.
		{"5 change_cipher_spec after Finished is unexpected_message", func(t *testing.T, p *peer) { p.raw.Write([]byte{20, 3, 3, 0, 1, 1}) }, alertUnexpectedMessage},
		{"5 protected change_cipher_spec is unexpected_message", func(t *testing.T, p *peer) { p.sendRaw(t, 0, []byte{1, 20}) }, alertUnexpectedMessage},
		{"5 heartbeat record is unexpected_message", func(t *testing.T, p *peer) { p.raw.Write([]byte{24, 3, 3, 0, 3, 1, 0, 0}) }, alertUnexpectedMessage},
		{"5 protected heartbeat is unexpected_message", func(t *testing.T, p *peer) { p.sendRaw(t, 0, []byte{1, 0, 0, 24}) }, alertUnexpectedMessage},
		{"5.4 inner plaintext without a content type is unexpected_message", func(t *testing.T, p *peer) { p.sendRaw(t, 0, make([]byte, 20)) }, alertUnexpectedMessage},
		{"5 plaintext handshake record is unexpected_message", func(t *testing.T, p *peer) { p.raw.Write(fragments(hsMsg(24, 0), 16)) }, alertUnexpectedMessage},
		// RFC 8446, Section 5.1: "Handshake messages MUST NOT be
		// interleaved with other record types."
		{"5.1 application data between fragments of a KeyUpdate is unexpected_message", func(t *testing.T, p *peer) {
			p.send(t, record.Handshake, []byte{24, 0})
			p.send(t, record.ApplicationData, []byte("x"))
		}, alertUnexpectedMessage},
		// RFC 8446, Section 4: after the handshake a client sends only
		// KeyUpdate (and the post-handshake authentication it was not
		// asked for).
		{"4 ClientHello after the handshake is unexpected_message", func(t *testing.T, p *peer) { p.send(t, record.Handshake, hsMsg(1, 3, 3)) }, alertUnexpectedMessage},
		{"4.6.1 NewSessionTicket from the client is unexpected_message", func(t *testing.T, p *peer) { p.send(t, record.Handshake, hsMsg(4, 0)) }, alertUnexpectedMessage},
		{"4.5 EndOfEarlyData after the handshake is unexpected_message", func(t *testing.T, p *peer) { p.send(t, record.Handshake, hsMsg(5)) }, alertUnexpectedMessage},
		{"4.4.2 unrequested Certificate is unexpected_message", func(t *testing.T, p *peer) { p.send(t, record.Handshake, hsMsg(11, 0, 0, 0, 0)) }, alertUnexpectedMessage},
		{"4.4.4 second Finished is unexpected_message", func(t *testing.T, p *peer) { p.send(t, record.Handshake, hsMsg(20, make([]byte, 32)...)) }, alertUnexpectedMessage},
		// RFC 8446, Section 5.4: the inner plaintext is at most 2^14 + 1
		// bytes.
		{"5.4 inner plaintext of 2^14+2 bytes is record_overflow", func(t *testing.T, p *peer) {
			p.sendRaw(t, 0, append(make([]byte, record.MaxPlaintext), 23, 0))
		}, alertRecordOverflow},
		{"5.2 protected record over 2^14+256 bytes is record_overflow", func(t *testing.T, p *peer) {
			p.raw.Write(appDataRecord(record.MaxCiphertextTLS13 + 1))
		}, alertRecordOverflow},
		// RFC 8446, Section 4.6.3: request_update is 0 or 1.
		{"4.6.3 KeyUpdate with request_update 2 is illegal_parameter", func(t *testing.T, p *peer) { p.send(t, record.Handshake, hsMsg(24, 2)) }, alertIllegalParameter},
		{"4.6.3 KeyUpdate of two bytes is decode_error", func(t *testing.T, p *peer) { p.send(t, record.Handshake, hsMsg(24, 0, 0)) }, alertDecodeError},
		{"4.6.3 empty KeyUpdate is decode_error", func(t *testing.T, p *peer) { p.send(t, record.Handshake, hsMsg(24)) }, alertDecodeError},
		// RFC 8446, Section 5.1: a message before a key change ends its
		// record.
		{"5.1 two KeyUpdates in one record is unexpected_message", func(t *testing.T, p *peer) {
			p.send(t, record.Handshake, slices.Concat(hsMsg(24, 0), hsMsg(24, 0)))
		}, alertUnexpectedMessage},
		{"4 unknown handshake message type is unexpected_message", func(t *testing.T, p *peer) { p.send(t, record.Handshake, hsMsg(99, 1)) }, alertUnexpectedMessage},
		// RFC 8446, Section 6 and 5.1: an alert is two bytes, never
		// fragmented.
		{"6 alert of three bytes is decode_error", func(t *testing.T, p *peer) { p.send(t, record.Alert, []byte{1, 0, 0}) }, alertDecodeError},
		{"5.1 alert of one byte is decode_error", func(t *testing.T, p *peer) { p.send(t, record.Alert, []byte{1}) }, alertDecodeError},
	}
	probeEdges(t, f, func(t *testing.T, addr string) {
		expectRefused(t, f, addr, tls.VersionTLS13, refused)
		t.Run("5.4 zero-length and padded application_data is accepted", func(t *testing.T) {
			p := dialPeer(t, f, addr, tls.VersionTLS13)
			p.send(t, record.ApplicationData, nil, []byte("ping"), nil)
			rec, err := p.out.Seal(nil, record.ApplicationData, []byte("|full"), record.MaxPlaintext-len("|full"))
			require.NoError(t, err)
			p.raw.Write(rec)
			p.expectEcho(t, "ping|full")
		})
		t.Run("6 a warning alert other than close_notify ends the connection", func(t *testing.T) {
			// RFC 8446, Section 6: alerts other than close_notify and
			// user_canceled are error alerts whatever their level; after
			// one nothing more is sent (Section 6.2).
			p := dialPeer(t, f, addr, tls.VersionTLS13)
			p.send(t, record.Alert, []byte{1, 40})
			o := p.readUntil(t, 1, 0)
			assert.True(t, o.closed, "the edge did not close")
			assert.Empty(t, o.alerts, "the edge answered an error alert")
		})
		t.Run("6.1 close_notify is answered with close_notify", func(t *testing.T) {
			p := dialPeer(t, f, addr, tls.VersionTLS13)
			p.send(t, record.ApplicationData, []byte("bye"))
			p.send(t, record.Alert, []byte{1, 0})
			o := p.readUntil(t, 3, 1)
			assert.Equal(t, "bye", string(o.data))
			require.Len(t, o.alerts, 1, "no close_notify")
			assert.Equal(t, []byte{1, 0}, o.alerts[0])
		})
	})
}

// TestProbeEdgeTLS12Records sends the edge's record layer what crypto/tls
// never sends after a TLS 1.2 handshake: renegotiation, above all.
func TestProbeEdgeTLS12Records(t *testing.T) {
	f := newFixture(t)
	renego := hsMsg(1, append([]byte{3, 3}, make([]byte, 32+1+4+2)...)...) // a ClientHello; its content does not matter
	refused := []refusedRecords{
		// RFC 5246, Section 7.4.1.1: HelloRequest is the server's.
		{"RFC 5246 7.4.1.1 HelloRequest from the client is unexpected_message", func(t *testing.T, p *peer) { p.send(t, record.Handshake, hsMsg(0)) }, alertUnexpectedMessage},
		{"RFC 5246 7.4 Finished after the handshake is unexpected_message", func(t *testing.T, p *peer) { p.send(t, record.Handshake, hsMsg(20, make([]byte, 12)...)) }, alertUnexpectedMessage},
		// RFC 5246, Section 6.2.1: no zero-length handshake, alert or
		// change_cipher_spec fragments.
		{"RFC 5246 6.2.1 zero-length handshake fragment is unexpected_message", func(t *testing.T, p *peer) { p.sendRaw(t, record.Handshake, nil) }, alertUnexpectedMessage},
		{"RFC 5246 6.2.1 zero-length alert fragment is unexpected_message", func(t *testing.T, p *peer) { p.sendRaw(t, record.Alert, nil) }, alertUnexpectedMessage},
		{"RFC 5246 7.1 change_cipher_spec after the handshake is unexpected_message", func(t *testing.T, p *peer) { p.send(t, record.ChangeCipherSpec, []byte{1}) }, alertUnexpectedMessage},
		{"RFC 6520 heartbeat record is unexpected_message", func(t *testing.T, p *peer) { p.raw.Write([]byte{24, 3, 3, 0, 3, 1, 0, 0}) }, alertUnexpectedMessage},
		{"RFC 5246 6.2.1 plaintext over 2^14 bytes is record_overflow", func(t *testing.T, p *peer) {
			p.sendRaw(t, record.ApplicationData, make([]byte, record.MaxPlaintext+1))
		}, alertRecordOverflow},
		{"RFC 5246 6.2.3 protected record over 2^14+2048 bytes is record_overflow", func(t *testing.T, p *peer) {
			p.raw.Write(appDataRecord(record.MaxCiphertextTLS12 + 1))
		}, alertRecordOverflow},
		{"RFC 5246 7.2 alert of three bytes is decode_error", func(t *testing.T, p *peer) { p.send(t, record.Alert, []byte{1, 0, 0}) }, alertDecodeError},
		{"RFC 5246 7.4 unknown handshake message type is unexpected_message", func(t *testing.T, p *peer) { p.send(t, record.Handshake, hsMsg(99, 1)) }, alertUnexpectedMessage},
	}
	probeEdges(t, f, func(t *testing.T, addr string) {
		expectRefused(t, f, addr, tls.VersionTLS12, refused)
		type clientRecord struct {
			typ  record.ContentType
			data []byte
		}
		for _, tc := range []struct {
			name    string
			records []clientRecord
		}{
			// RFC 5746, Section 4.4 and RFC 5246, Section 7.2.2: a server
			// that refuses renegotiation may answer the ClientHello with a
			// no_renegotiation warning and carry on (tlsfuzzer's
			// test-renegotiation-disabled.py).
			{"RFC 5746 4.4 renegotiation gets no_renegotiation and the data goes on", []clientRecord{
				{record.ApplicationData, []byte("GET /")}, {record.Handshake, renego}, {record.ApplicationData, []byte(" HTTP/1.0\r\n\r\n")}}},
			// RFC 5246, Section 6.2.1: "Data of different TLS record layer
			// content types MAY be interleaved"; only TLS 1.3 forbids it
			// (RFC 8446, Section 5.1).
			{"RFC 5246 6.2.1 application data between fragments of a renegotiation ClientHello", []clientRecord{
				{record.Handshake, renego[:10]}, {record.ApplicationData, []byte("inter")}, {record.Handshake, renego[10:]}, {record.ApplicationData, []byte("leaved")}}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				p := dialPeer(t, f, addr, tls.VersionTLS12)
				var want []byte
				for _, r := range tc.records {
					p.send(t, r.typ, r.data)
					if r.typ == record.ApplicationData {
						want = append(want, r.data...)
					}
				}
				o := p.readUntil(t, len(want), 1)
				require.False(t, o.closed, "the edge closed the connection; alerts % x", o.alerts)
				assert.Equal(t, [][]byte{{alertWarning, alertNoRenegotiation}}, o.alerts)
				assert.Equal(t, string(want), string(o.data))
			})
		}
		t.Run("RFC 5246 7.2 warning alerts and zero-length data are passed over", func(t *testing.T) {
			p := dialPeer(t, f, addr, tls.VersionTLS12)
			p.send(t, record.ApplicationData, nil, []byte("ping"), nil)
			p.send(t, record.Alert, []byte{1, 255}) // a warning nobody defined
			p.send(t, record.ApplicationData, []byte("pong"))
			p.expectEcho(t, "pingpong")
		})
		t.Run("RFC 5246 7.2.1 close_notify is answered with close_notify", func(t *testing.T) {
			p := dialPeer(t, f, addr, tls.VersionTLS12)
			p.send(t, record.Alert, []byte{1, 0})
			o := p.readUntil(t, 0, 1)
			require.Len(t, o.alerts, 1, "no close_notify")
			assert.Equal(t, []byte{1, 0}, o.alerts[0])
		})
	})
}

// replacePremaster replaces the encrypted premaster secret of the TLS 1.2
// ClientKeyExchange in the records b with ciphertext.
func replacePremaster(b, ciphertext []byte) []byte {
	for rec := b; len(rec) >= record.HeaderLen; {
		n := int(rec[3])<<8 | int(rec[4])
		body := rec[record.HeaderLen : record.HeaderLen+n]
		// RFC 5246, Section 7.4.7.1: EncryptedPreMasterSecret, after the
		// message header and its own length.
		if record.ContentType(rec[0]) == record.Handshake && body[0] == 16 && len(body) == 4+2+len(ciphertext) {
			copy(body[4+2:], ciphertext)
		}
		rec = rec[record.HeaderLen+n:]
	}
	return b
}

// TestProbeEdgeRSAPremaster plays the Bleichenbacher (ROBOT) oracle hunt
// of tlsfuzzer's test-bleichenbacher-workaround.py over the edge: Go's
// client runs a TLS 1.2 RSA key exchange whose encrypted premaster is
// replaced by a crafted one (padding right or wrong in each way an oracle
// could tell apart). Whatever the padding, the server must go on with a
// random premaster (RFC 5246, Section 7.4.7.1) and fail at the client's
// Finished record, which then does not authenticate: every variant gets
// the same bytes back, one plaintext bad_record_mac alert, then the close.
func TestProbeEdgeRSAPremaster(t *testing.T) {
	f := newFixture(t)
	block, _ := pem.Decode([]byte(f.rsa.CertPEM))
	cert, err := x509.ParseCertificate(block.Bytes)
	require.NoError(t, err)
	pub := cert.PublicKey.(*rsa.PublicKey)
	k := pub.Size()
	// encrypt is textbook RSA of em, a k-byte encoded message.
	encrypt := func(em []byte) []byte {
		c := new(big.Int).Exp(new(big.Int).SetBytes(em), big.NewInt(int64(pub.E)), pub.N)
		return c.FillBytes(make([]byte, k))
	}
	// pkcs1 is EM = 0x00 || 0x02 || PS || 0x00 || M (RFC 8017, Section
	// 7.2.1) with a PS of nonzero bytes, then changed by mangle.
	pkcs1 := func(m []byte, mangle func(em []byte)) []byte {
		em := make([]byte, k)
		em[1] = 2
		ps := em[2 : k-len(m)-1]
		for i := range ps {
			ps[i] = byte(i%250 + 1)
		}
		copy(em[k-len(m):], m)
		if mangle != nil {
			mangle(em)
		}
		return encrypt(em)
	}
	premaster := func(version uint16) []byte {
		return append([]byte{byte(version >> 8), byte(version)}, bytes.Repeat([]byte{0x42}, 46)...)
	}
	variants := []struct {
		name       string
		ciphertext []byte
	}{
		{"well-formed, but not the client's premaster", pkcs1(premaster(0x0303), nil)},
		{"premaster with version 0x0302", pkcs1(premaster(0x0302), nil)},
		{"premaster with version 0x0000", pkcs1(premaster(0), nil)},
		{"premaster of 47 bytes", pkcs1(premaster(0x0303)[:47], nil)},
		{"premaster of 49 bytes", pkcs1(append(premaster(0x0303), 0x42), nil)},
		{"first byte 0x01", pkcs1(premaster(0x0303), func(em []byte) { em[0] = 1 })},
		{"block type 0x01", pkcs1(premaster(0x0303), func(em []byte) { em[1] = 1 })},
		{"no zero separator", pkcs1(premaster(0x0303), func(em []byte) { em[k-48-1] = 0x11 })},
		{"zero byte in the first eight bytes of padding", pkcs1(premaster(0x0303), func(em []byte) { em[5] = 0 })},
		{"empty message", pkcs1(nil, nil)},
		{"ciphertext 0", make([]byte, k)},
		{"ciphertext over the modulus", bytes.Repeat([]byte{0xff}, k)},
	}
	probeEdges(t, f, func(t *testing.T, addr string) {
		var first []byte
		for _, v := range variants {
			t.Run(v.name, func(t *testing.T) {
				raw := dialRaw(t, addr)
				c := &tapConn{Conn: raw, write: func(b []byte) []byte { return replacePremaster(b, v.ciphertext) }}
				tc := tls.Client(c, &tls.Config{ServerName: f.rsa.Name, RootCAs: f.rsa.Pool, MaxVersion: tls.VersionTLS12,
					CipherSuites: []uint16{tls.TLS_RSA_WITH_AES_128_GCM_SHA256}})
				require.NoError(t, raw.SetDeadline(time.Now().Add(20*time.Second)))
				err := tc.Handshake()
				require.Error(t, err, "the handshake completed with a premaster the client did not choose")
				rest, err := io.ReadAll(raw)
				require.NoError(t, err, "the edge did not close")
				got := slices.Concat(c.readSoFar(), rest)
				// After the server's flight (ServerHello, Certificate,
				// ServerHelloDone): the alert.
				recs := splitPlainRecords(t, got)
				require.NotEmpty(t, recs)
				last := recs[len(recs)-1]
				assert.Equal(t, serverRecord{record.Alert, []byte{2, 20}}, last, "want one plaintext fatal bad_record_mac, then the close")
				for _, r := range recs[:len(recs)-1] {
					assert.Equal(t, record.Handshake, r.typ, "before the alert")
				}
				if first == nil {
					first = last.body
				}
				assert.Equal(t, first, last.body, "variants differ")
			})
		}
	})
}

// splitPlainRecords cuts data into whole plaintext records.
func splitPlainRecords(t *testing.T, data []byte) []serverRecord {
	t.Helper()
	var recs []serverRecord
	for len(data) > 0 {
		typ, _, body, n, err := record.Parse(data, record.MaxPlaintext)
		require.NoError(t, err)
		require.NotZero(t, n, "a record cut short")
		recs = append(recs, serverRecord{typ, slices.Clone(body)})
		data = data[n:]
	}
	return recs
}

// TestProbeEdgeDataWithFinished: records the client writes in the same
// TCP segment as its Finished reach the record layer whichever way the
// edge completed the handshake (the service's leftover, or the edge's own
// check of the Finished with -one-round-trip).
func TestProbeEdgeDataWithFinished(t *testing.T) {
	t.Run("no tickets", func(t *testing.T) { probeDataWithFinished(t, newFixture(t), 0) })
	// The edge's NewSessionTicket comes first; with -one-round-trip the
	// edge holds it back until it has checked the Finished.
	t.Run("tickets", func(t *testing.T) { probeDataWithFinished(t, newTicketFixture(t), 1) })
}

func probeDataWithFinished(t *testing.T, f *fixture, tickets int) {
	seal := func(p *peer, typ record.ContentType, b []byte) []byte {
		rec, err := p.out.Seal(nil, typ, b, 0)
		require.NoError(t, err)
		return rec
	}
	probeEdges(t, f, func(t *testing.T, addr string) {
		t.Run("RFC 8446 4.6.3 KeyUpdate and data with the Finished", func(t *testing.T) {
			p := dialPeerWith(t, f, addr, tls.VersionTLS13, peerHooks{last: func(p *peer, flight []byte) []byte {
				rec := slices.Concat(flight, seal(p, record.ApplicationData, []byte("first|")), seal(p, record.Handshake, []byte{24, 0, 0, 1, 1}))
				require.NoError(t, p.out.Update())
				return slices.Concat(rec, seal(p, record.ApplicationData, []byte("under the new key")))
			}})
			o := p.readUntil(t, len("first|under the new key"), 0)
			require.False(t, o.closed, "the edge closed the connection; alerts % x", o.alerts)
			assert.Equal(t, "first|under the new key", string(o.data))
			assert.Equal(t, 1, o.keyUpdates, "update_requested: the edge's KeyUpdate")
			assert.Equal(t, tickets, o.tickets, "NewSessionTickets")
		})
		t.Run("RFC 7918 False Start data with the Finished", func(t *testing.T) {
			p := dialPeerWith(t, f, addr, tls.VersionTLS12, peerHooks{last: func(p *peer, flight []byte) []byte {
				return slices.Concat(flight, seal(p, record.ApplicationData, []byte("false start")))
			}})
			p.expectEcho(t, "false start")
		})
	})
}

// TestProbeEdgeTLS13Finished replaces the client's TLS 1.3 second flight
// (RFC 8446, Section 4.4) with variants of its own Finished: the engine
// checks it (multiplex, -unary) or the edge does (-one-round-trip), and
// each must answer as the other.
func TestProbeEdgeTLS13Finished(t *testing.T) {
	f := newFixture(t)
	ccs := []byte{20, 3, 3, 0, 1, 1}
	seal := func(c *record.Cipher, typ record.ContentType, b []byte, padding int) []byte {
		rec, err := c.Seal(nil, typ, b, padding)
		require.NoError(t, err)
		return rec
	}
	tests := []struct {
		name   string
		flight func(fin []byte, hs *record.Cipher) []byte
		alert  uint8 // 0: accepted
	}{
		{"4.4.4 Finished without change_cipher_spec is accepted", func(fin []byte, hs *record.Cipher) []byte {
			return seal(hs, record.Handshake, fin, 0)
		}, 0},
		// RFC 8446, Section 5: compatibility change_cipher_spec records
		// are dropped until the peer's Finished.
		{"5 two change_cipher_spec records are dropped", func(fin []byte, hs *record.Cipher) []byte {
			return slices.Concat(ccs, ccs, seal(hs, record.Handshake, fin, 0))
		}, 0},
		{"5.1 Finished across two records is accepted", func(fin []byte, hs *record.Cipher) []byte {
			return slices.Concat(ccs, seal(hs, record.Handshake, fin[:5], 0), seal(hs, record.Handshake, fin[5:], 0))
		}, 0},
		{"5.1 Finished in one-byte records is accepted", func(fin []byte, hs *record.Cipher) []byte {
			var w []byte
			for i := range fin {
				w = slices.Concat(w, seal(hs, record.Handshake, fin[i:i+1], 0))
			}
			return w
		}, 0},
		{"5.4 padded Finished is accepted", func(fin []byte, hs *record.Cipher) []byte {
			return seal(hs, record.Handshake, fin, 1000)
		}, 0},
		{"4.4.4 wrong verify_data is decrypt_error", func(fin []byte, hs *record.Cipher) []byte {
			bad := slices.Clone(fin)
			bad[len(bad)-1] ^= 1
			return seal(hs, record.Handshake, bad, 0)
		}, alertDecryptError},
		{"4.4.4 Finished one byte short is decode_error", func(fin []byte, hs *record.Cipher) []byte {
			return seal(hs, record.Handshake, hsMsg(20, fin[4:len(fin)-1]...), 0)
		}, alertDecodeError},
		{"5 change_cipher_spec of value 2 is unexpected_message", func(fin []byte, hs *record.Cipher) []byte {
			return slices.Concat([]byte{20, 3, 3, 0, 1, 2}, seal(hs, record.Handshake, fin, 0))
		}, alertUnexpectedMessage},
		{"5 plaintext Finished is unexpected_message", func(fin []byte, hs *record.Cipher) []byte {
			return fragments(fin, 1<<14)
		}, alertUnexpectedMessage},
		{"5 application data before the Finished is unexpected_message", func(fin []byte, hs *record.Cipher) []byte {
			return slices.Concat(seal(hs, record.ApplicationData, []byte("early"), 0), seal(hs, record.Handshake, fin, 0))
		}, alertUnexpectedMessage},
		{"5.2 record that fails to decrypt is bad_record_mac", func(fin []byte, hs *record.Cipher) []byte {
			rec := seal(hs, record.Handshake, fin, 0)
			rec[len(rec)-1] ^= 1
			return rec
		}, alertBadRecordMAC},
		// RFC 8446, Section 5.1: a message before a key change ends its
		// record.
		{"5.1 data after the Finished in its record is unexpected_message", func(fin []byte, hs *record.Cipher) []byte {
			return seal(hs, record.Handshake, slices.Concat(fin, hsMsg(24, 0)), 0)
		}, alertUnexpectedMessage},
		{"4 KeyUpdate in place of the Finished is unexpected_message", func(fin []byte, hs *record.Cipher) []byte {
			return seal(hs, record.Handshake, hsMsg(24, 0), 0)
		}, alertUnexpectedMessage},
		// RFC 8446, Section 5.1 and 5.2: at most 2^14 bytes in the clear,
		// 2^14+256 protected.
		{"5.1 plaintext record over 2^14 bytes is record_overflow", func(fin []byte, hs *record.Cipher) []byte {
			return append([]byte{byte(record.Alert), 3, 3, 0x40, 0x01}, make([]byte, 1<<14+1)...)
		}, alertRecordOverflow},
		{"5.2 protected record over 2^14+256 bytes is record_overflow", func(fin []byte, hs *record.Cipher) []byte {
			return appDataRecord(record.MaxCiphertextTLS13 + 1)
		}, alertRecordOverflow},
		{"4.4.4 empty Finished is decode_error", func(fin []byte, hs *record.Cipher) []byte {
			return seal(hs, record.Handshake, hsMsg(20), 0)
		}, alertDecodeError},
	}
	probeEdges(t, f, func(t *testing.T, addr string) {
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				p := dialPeerWith(t, f, addr, tls.VersionTLS13, peerHooks{last: func(p *peer, flight []byte) []byte {
					fin, hs := clientFinished13(t, p, flight)
					return tc.flight(fin, hs())
				}})
				if tc.alert == 0 {
					p.expectServes(t)
					return
				}
				p.expectAlert(t, tc.alert)
			})
		}
		// RFC 8446, Section 6.2: after a fatal alert nothing more is
		// sent. A client that cannot take the server's flight may send
		// it under the handshake key or, before it has keys, in the clear.
		for _, alert := range []struct {
			name   string
			record func(hs *record.Cipher) []byte
		}{
			{"protected", func(hs *record.Cipher) []byte { return seal(hs, record.Alert, []byte{2, 42}, 0) }},
			{"plaintext", func(*record.Cipher) []byte { return record.Append(nil, record.Alert, 0x0303, []byte{2, 42}) }},
		} {
			t.Run("6.2 a "+alert.name+" fatal alert in place of the Finished gets no answer", func(t *testing.T) {
				p := dialPeerWith(t, f, addr, tls.VersionTLS13, peerHooks{last: func(p *peer, flight []byte) []byte {
					_, hs := clientFinished13(t, p, flight)
					return alert.record(hs())
				}})
				o := p.readUntil(t, 1, 0)
				assert.True(t, o.closed, "the edge did not close")
				assert.Empty(t, o.alerts, "the edge answered the client's fatal alert")
			})
		}
	})
}

// clientFinished13 opens the client's TLS 1.3 last flight, crypto/tls's
// change_cipher_spec and protected Finished, and returns the Finished
// message and a maker of new client handshake ciphers (RFC 8446, Section
// 7.3) from sequence number 0.
func clientFinished13(t *testing.T, p *peer, flight []byte) ([]byte, func() *record.Cipher) {
	t.Helper()
	secret := testenv.KeyLogSecret(t, p.logs, "CLIENT_HANDSHAKE_TRAFFIC_SECRET")
	hs := func() *record.Cipher {
		c, err := record.NewTLS13Cipher(p.suite, secret, 0)
		require.NoError(t, err)
		return c
	}
	c := hs()
	for _, r := range splitPlainRecords(t, flight) {
		if r.typ != record.ApplicationData {
			continue
		}
		typ, fin, err := c.Open(r.typ, 0x0303, r.body)
		require.NoError(t, err)
		require.Equal(t, record.Handshake, typ)
		require.Equal(t, byte(20), fin[0], "not a Finished")
		return slices.Clone(fin), hs
	}
	require.Fail(t, "no protected record in the client's last flight")
	return nil, nil
}

// TestProbeEdgeTLS12Fragmented sends the client's TLS 1.2 second flight
// (ClientKeyExchange, ChangeCipherSpec, Finished) in one-byte handshake
// records, each in a TCP segment of its own (tlsfuzzer's
// test-record-layer-fragmentation.py): RFC 5246, Section 6.2.1 lets any
// handshake message span records.
func TestProbeEdgeTLS12Fragmented(t *testing.T) {
	f := newFixture(t)
	probeEdges(t, f, func(t *testing.T, addr string) {
		p := dialPeerWith(t, f, addr, tls.VersionTLS12, peerHooks{last: func(p *peer, flight []byte) []byte {
			out, err := record.NewTLS12Cipher(p.suite, p.key, p.iv, 0)
			require.NoError(t, err)
			in, err := record.NewTLS12Cipher(p.suite, p.key, p.iv, 0)
			require.NoError(t, err)
			var recs [][]byte
			changed := false
			for _, r := range splitPlainRecords(t, flight) {
				body := r.body
				switch {
				case r.typ == record.ChangeCipherSpec:
					recs, changed = append(recs, record.Append(nil, r.typ, 0x0303, body)), true
					continue
				case changed:
					var typ record.ContentType
					typ, body, err = in.Open(r.typ, 0x0303, body)
					require.NoError(t, err)
					require.Equal(t, record.Handshake, typ)
				}
				for i := range body {
					rec := record.Append(nil, r.typ, 0x0303, body[i:i+1])
					if changed {
						rec, err = out.Seal(nil, r.typ, body[i:i+1], 0)
						require.NoError(t, err)
					}
					recs = append(recs, rec)
				}
			}
			p.out = out // past the Finished's records
			conn := p.raw.(*tapConn).Conn
			for _, rec := range recs {
				_, err := conn.Write(rec)
				require.NoError(t, err)
			}
			return nil
		}})
		p.expectServes(t)
	})
}

// TestProbeEdgeVersions: version negotiation as the edge's -min-version
// and -max-version configure it (RFC 8446, Sections 4.1.3 and 4.2.1).
func TestProbeEdgeVersions(t *testing.T) {
	f := newFixture(t)
	backend, _ := echoBackend(t)
	def, _ := f.start(t, "-backend", backend)
	only12, _ := f.start(t, "-backend", backend, "-max-version", "1.2")
	only13, _ := f.start(t, "-backend", backend, "-min-version", "1.3")
	cfg := func(max uint16) *tls.Config {
		return &tls.Config{ServerName: f.ecdsa.Name, RootCAs: f.ecdsa.Pool, MaxVersion: max}
	}
	// serverRandom runs a handshake and returns the ServerHello's random.
	serverRandom := func(t *testing.T, addr string, c *tls.Config) ([]byte, error) {
		tap := &tapConn{Conn: dialRaw(t, addr)}
		err := tls.Client(tap, c).Handshake()
		hello := tap.readSoFar()
		require.Greater(t, len(hello), record.HeaderLen+6+32, "no ServerHello")
		return hello[record.HeaderLen+6 : record.HeaderLen+6+32], err
	}
	t.Run("4.1.3 TLS 1.2 negotiated by a TLS 1.3 server carries the downgrade sentinel", func(t *testing.T) {
		random, err := serverRandom(t, def, cfg(tls.VersionTLS12))
		require.NoError(t, err)
		assert.Equal(t, []byte("DOWNGRD\x01"), random[24:])
	})
	t.Run("4.1.3 a server configured for TLS 1.2 at most sends no sentinel", func(t *testing.T) {
		// A TLS 1.3 client would take a sentinel for a downgrade attack
		// and abort, as crypto/tls does.
		random, err := serverRandom(t, only12, cfg(tls.VersionTLS13))
		require.NoError(t, err, "a TLS 1.3 client cannot reach an edge limited to TLS 1.2")
		assert.NotEqual(t, []byte("DOWNGRD\x01"), random[24:])
		assert.NotEqual(t, []byte("DOWNGRD\x00"), random[24:])
	})
	t.Run("4.1.3 TLS 1.3 carries no sentinel", func(t *testing.T) {
		random, err := serverRandom(t, def, cfg(tls.VersionTLS13))
		require.NoError(t, err)
		assert.NotEqual(t, []byte("DOWNGRD\x01"), random[24:])
	})
	t.Run("4.2.1 a TLS 1.2 client of a TLS 1.3-only server gets protocol_version", func(t *testing.T) {
		c := dialRaw(t, only13)
		_, err := c.Write(fragments(clientHello(t, cfg(tls.VersionTLS12)), 1<<14))
		require.NoError(t, err)
		expectPlainAlert(t, c, alertProtocolVersion)
	})
	t.Run("RFC 7507 TLS_FALLBACK_SCSV below the best version is inappropriate_fallback", func(t *testing.T) {
		// crypto/tls sends no SCSV: add it to the cipher suites of its
		// TLS 1.2 ClientHello.
		hello := clientHello(t, cfg(tls.VersionTLS12))
		c := dialRaw(t, def)
		_, err := c.Write(fragments(withSuite(t, hello, 0x5600), 1<<14))
		require.NoError(t, err)
		expectPlainAlert(t, c, alertInappropriateFallback)
	})
}

// TestProbeEdgeGroupFallback: a TLS 1.2 client none of whose groups the
// edge takes (-groups) gets no ECDHE suite (RFC 8422, Section 5.1): RSA
// key exchange if it offers it, else handshake_failure.
func TestProbeEdgeGroupFallback(t *testing.T) {
	f := newFixture(t)
	backend, _ := echoBackend(t)
	addr, _ := f.start(t, "-backend", backend, "-groups", "P384")
	client := func(suites ...uint16) *tls.Config {
		return &tls.Config{ServerName: f.rsa.Name, RootCAs: f.rsa.Pool, MaxVersion: tls.VersionTLS12,
			CurvePreferences: []tls.CurveID{tls.X25519, tls.CurveP256}, CipherSuites: suites}
	}
	c := tls.Client(dialRaw(t, addr), client(tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, tls.TLS_RSA_WITH_AES_128_GCM_SHA256))
	require.NoError(t, c.Handshake())
	assert.Equal(t, tls.TLS_RSA_WITH_AES_128_GCM_SHA256, c.ConnectionState().CipherSuite)

	raw := dialRaw(t, addr)
	_, err := raw.Write(fragments(clientHello(t, client(tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256)), 1<<14))
	require.NoError(t, err)
	expectPlainAlert(t, raw, alertHandshakeFailure)
}

// TestProbeEdgeCCSAcrossHelloRetryRequest: RFC 8446, Section 5 has the
// server drop compatibility change_cipher_spec records until the client's
// Finished; the engine and the edge (-one-round-trip) bound them the same
// way, 16 in each wait: before the second ClientHello, and before the
// Finished. The edge takes P-384 only, for which Go's client sends no
// share: a HelloRetryRequest, then Go's one CCS before its second
// ClientHello.
func TestProbeEdgeCCSAcrossHelloRetryRequest(t *testing.T) {
	f := newFixture(t)
	ccs := []byte{20, 3, 3, 0, 1, 1}
	ccsBefore := func(n int) peerHooks {
		return peerHooks{
			earlier: func(i int, b []byte) []byte {
				if i == 1 { // the second ClientHello
					return slices.Concat(bytes.Repeat(ccs, 15), b)
				}
				return b
			},
			last: func(p *peer, flight []byte) []byte { return slices.Concat(bytes.Repeat(ccs, n), flight) },
		}
	}
	probeEdgesWith(t, f, []string{"-groups", "P384"}, func(t *testing.T, addr string) {
		t.Run("16 before the second ClientHello and 16 before the Finished are dropped", func(t *testing.T) {
			p := dialPeerWith(t, f, addr, tls.VersionTLS13, ccsBefore(16))
			p.expectServes(t)
		})
		t.Run("17 before the Finished is unexpected_message", func(t *testing.T) {
			p := dialPeerWith(t, f, addr, tls.VersionTLS13, ccsBefore(17))
			p.expectAlert(t, alertUnexpectedMessage)
		})
	})
}

// TestProbeEdgeServiceDown: with handshaked unreachable the client's
// handshake fails with a fatal internal_error (RFC 8446, Section 6.2), not
// a bare close, in each mode.
func TestProbeEdgeServiceDown(t *testing.T) {
	f := newFixture(t)
	hello := fragments(clientHello(t, &tls.Config{ServerName: f.ecdsa.Name}), 1<<14)
	down := testenv.FreeAddr(t)
	for _, m := range edgeModes {
		t.Run(m.name, func(t *testing.T) {
			addr, _ := startEdge(t, append([]string{"-handshaked", down, "-key", f.ecdsa.ID}, m.args...)...)
			c := dialRaw(t, addr)
			_, err := c.Write(hello)
			require.NoError(t, err)
			expectPlainAlert(t, c, alertInternalError)
		})
	}
}

// TestProbeEdgeTLS12ResumptionFlight changes the second flight of a
// resuming TLS 1.2 client, its ChangeCipherSpec then Finished (RFC 5246,
// Section 7.3): the engine checks it (multiplex, -unary) or the edge does
// (-one-round-trip), and each must answer as the other.
func TestProbeEdgeTLS12ResumptionFlight(t *testing.T) {
	f := newTicketFixture(t)
	ccs := []byte{20, 3, 3, 0, 1, 1}
	tests := []struct {
		name   string
		change func(ccs, fin []byte) []byte
		alert  string // crypto/tls's text of the alert; "": resumed
	}{
		{"7.3 ChangeCipherSpec then Finished resumes", func(ccs, fin []byte) []byte { return slices.Concat(ccs, fin) }, ""},
		{"7.3 missing ChangeCipherSpec is unexpected_message", func(ccs, fin []byte) []byte { return fin }, "unexpected message"},
		{"7.3 Finished before ChangeCipherSpec is unexpected_message", func(ccs, fin []byte) []byte { return slices.Concat(fin, ccs) }, "unexpected message"},
		{"7.1 two ChangeCipherSpecs is unexpected_message", func(ccs, fin []byte) []byte { return slices.Concat(ccs, ccs, fin) }, "unexpected message"},
		{"7.1 ChangeCipherSpec of value 2 is unexpected_message", func(ccs, fin []byte) []byte {
			return slices.Concat([]byte{20, 3, 3, 0, 1, 2}, fin)
		}, "unexpected message"},
		{"6.2.3.3 garbled Finished record is bad_record_mac", func(ccs, fin []byte) []byte {
			fin[len(fin)-1] ^= 1
			return slices.Concat(ccs, fin)
		}, "bad record MAC"},
	}
	probeEdges(t, f, func(t *testing.T, addr string) {
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				cfg := &tls.Config{ServerName: f.ecdsa.Name, RootCAs: f.ecdsa.Pool, MaxVersion: tls.VersionTLS12,
					ClientSessionCache: tls.NewLRUClientSessionCache(1)}
				full := tls.Client(dialRaw(t, addr), cfg)
				require.NoError(t, full.Handshake())
				full.Close()

				// Write 0 is the ClientHello, write 1 the second flight.
				writes := 0
				tap := &tapConn{Conn: dialRaw(t, addr), write: func(b []byte) []byte {
					if writes++; writes != 2 {
						return b
					}
					require.True(t, bytes.HasPrefix(b, ccs), "the second flight does not start with a ChangeCipherSpec")
					return tc.change(slices.Clone(ccs), b[len(ccs):])
				}}
				c := tls.Client(tap, cfg)
				require.NoError(t, c.Handshake(), "a resuming TLS 1.2 client finishes before reading the server's answer")
				require.True(t, c.ConnectionState().DidResume)
				_, err := c.Write([]byte("ping"))
				require.NoError(t, err)
				require.NoError(t, tap.SetReadDeadline(time.Now().Add(20*time.Second)))
				got := make([]byte, 4)
				_, err = io.ReadFull(c, got)
				if tc.alert == "" {
					require.NoError(t, err)
					assert.Equal(t, "ping", string(got))
					return
				}
				assert.ErrorContains(t, err, "remote error: tls: "+tc.alert)
			})
		}
	})
}
