package main

import (
	"bytes"
	"crypto"
	"crypto/ecdh"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"hash"
	"net"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/cryptobyte"

	"github.com/handshaked/handshaked/internal/engine/record"
)

// More probes in the manner of tlsfuzzer's scripts, for what crypto/tls's
// client cannot be made to send: ClientHellos changed field by field, a
// HelloRetryRequest answered wrongly, 0-RTT records. A ClientHello changed
// by the probe no longer matches crypto/tls's transcript, so where the
// handshake must go on, client13 (below) runs it: a TLS 1.3 client of
// TLS_AES_128_GCM_SHA256 and X25519 with its own key schedule.

// Extension code points the probes change (RFC 8446, Section 4.2; RFC
// 6066, Section 3; RFC 7627, Section 5.1).
const (
	extServerName    uint16 = 0
	extGroups        uint16 = 10
	extSigAlgs       uint16 = 13
	extEMS           uint16 = 23
	extSessionTicket uint16 = 35
	extPreSharedKey  uint16 = 41
	extEarlyData     uint16 = 42
	extPSKModes      uint16 = 45
	extVersions      uint16 = 43
	extKeyShare      uint16 = 51
)

// Named groups (RFC 8446, Section 4.2.7).
const (
	groupP256   uint16 = 0x0017
	groupP521   uint16 = 0x0019
	groupX25519 uint16 = 0x001d
)

// helloMsg is a ClientHello taken apart (RFC 8446, Section 4.1.2), to be
// changed and put together again.
type helloMsg struct {
	version             uint16
	random, sessionID   []byte
	suites, compression []byte // as on the wire, without their length
	exts                []helloExt
}

type helloExt struct {
	typ  uint16
	data []byte
}

// parseHello takes the ClientHello message msg apart.
func parseHello(t *testing.T, msg []byte) *helloMsg {
	t.Helper()
	require.Equal(t, byte(1), msg[0], "not a ClientHello")
	s := cryptobyte.String(msg[4:])
	h := &helloMsg{}
	var random, sid, suites, comp, exts cryptobyte.String
	require.True(t, s.ReadUint16(&h.version) && s.ReadBytes((*[]byte)(&random), 32) && s.ReadUint8LengthPrefixed(&sid) &&
		s.ReadUint16LengthPrefixed(&suites) && s.ReadUint8LengthPrefixed(&comp) && s.ReadUint16LengthPrefixed(&exts) && s.Empty(), "ClientHello")
	h.random, h.sessionID, h.suites, h.compression = slices.Clone(random), slices.Clone(sid), slices.Clone(suites), slices.Clone(comp)
	h.exts = parseExtensions(t, exts)
	return h
}

// parseExtensions splits an extensions block (without its length).
func parseExtensions(t *testing.T, b []byte) []helloExt {
	t.Helper()
	s := cryptobyte.String(b)
	var exts []helloExt
	for !s.Empty() {
		var e helloExt
		var data cryptobyte.String
		require.True(t, s.ReadUint16(&e.typ) && s.ReadUint16LengthPrefixed(&data), "extension")
		e.data = slices.Clone(data)
		exts = append(exts, e)
	}
	return exts
}

// marshal is the ClientHello message.
func (h *helloMsg) marshal() []byte {
	var b cryptobyte.Builder
	b.AddUint8(1)
	b.AddUint24LengthPrefixed(func(b *cryptobyte.Builder) {
		b.AddUint16(h.version)
		b.AddBytes(h.random)
		b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(h.sessionID) })
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(h.suites) })
		b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(h.compression) })
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
			for _, e := range h.exts {
				b.AddUint16(e.typ)
				b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(e.data) })
			}
		})
	})
	return b.BytesOrPanic()
}

// clone is a copy to change.
func (h *helloMsg) clone() *helloMsg {
	c := *h
	c.exts = slices.Clone(h.exts)
	return &c
}

// set returns a copy with extension typ's data replaced (or added last).
func (h *helloMsg) set(typ uint16, data []byte) *helloMsg {
	c := h.clone()
	for i, e := range c.exts {
		if e.typ == typ {
			c.exts[i].data = data
			return c
		}
	}
	c.exts = append(c.exts, helloExt{typ, data})
	return c
}

// ext is extension typ's data, nil if absent.
func (h *helloMsg) ext(typ uint16) []byte {
	for _, e := range h.exts {
		if e.typ == typ {
			return e.data
		}
	}
	return nil
}

// without returns a copy without extension typ.
func (h *helloMsg) without(typ uint16) *helloMsg {
	c := h.clone()
	c.exts = slices.DeleteFunc(c.exts, func(e helloExt) bool { return e.typ == typ })
	return c
}

// withSuites returns a copy offering only suites.
func (h *helloMsg) withSuites(suites ...uint16) *helloMsg {
	c := h.clone()
	c.suites = u16list(suites...)[2:]
	return c
}

// maxExtensions is the most an extensions block holds: extensions<8..2^16-1>
// (RFC 8446, Section 4.1.2).
const maxExtensions = 1<<16 - 1

// extensionsLen is the length of h's extensions block.
func (h *helloMsg) extensionsLen() int {
	n := 0
	for _, e := range h.exts {
		n += 4 + len(e.data)
	}
	return n
}

// largestHello is the TLS 1.2 ClientHello msg grown to the most each of
// its fields holds (RFC 5246, Section 7.4.1.2): a 32-byte session ID,
// 2^15-1 cipher suites (unassigned ones added after its own), 255
// compression methods and a padding extension (RFC 7685) filling the
// extensions to 2^16-1 bytes. Its body is 131396 bytes, as OpenSSL's
// CLIENT_HELLO_MAX_LENGTH, and tlsfuzzer's test-client-hello-max-size.py
// sends one.
func largestHello(t *testing.T, msg []byte) []byte {
	t.Helper()
	h := parseHello(t, msg).without(21)
	h.sessionID = bytes.Repeat([]byte{7}, 32)
	suites := slices.Clone(h.suites)
	// From 0x0100 on, but for TLS_FALLBACK_SCSV (0x5600, RFC 7507):
	// unassigned values, and TLS 1.3's, which TLS 1.2 passes over.
	for v := 0x0100; len(suites) < 2*(1<<15-1); v++ {
		if v != 0x5600 {
			suites = append(suites, byte(v>>8), byte(v))
		}
	}
	h.suites = suites
	h.compression = make([]byte, 255)
	for i := range h.compression {
		h.compression[i] = byte(i) // null first
	}
	h = h.set(21, make([]byte, maxExtensions-h.extensionsLen()-4))
	out := h.marshal()
	require.Len(t, out, 4+131396)
	return out
}

// u16list is a list of 16-bit values with its 16-bit length, as groups,
// signature schemes and suites go on the wire.
func u16list(v ...uint16) []byte {
	b := []byte{byte(len(v) * 2 >> 8), byte(len(v) * 2)}
	for _, x := range v {
		b = append(b, byte(x>>8), byte(x))
	}
	return b
}

// keyShare is the data of a key_share extension of a ClientHello (RFC
// 8446, Section 4.2.8) with the entries, group then key exchange, given.
func keyShare(entries ...any) []byte {
	var b cryptobyte.Builder
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
		for i := 0; i < len(entries); i += 2 {
			b.AddUint16(entries[i].(uint16))
			b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(entries[i+1].([]byte)) })
		}
	})
	return b.BytesOrPanic()
}

// serverNameExt is the server_name extension for one host_name (RFC 6066,
// Section 3).
func serverNameExt(name string) []byte {
	var b cryptobyte.Builder
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
		b.AddUint8(0)
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(name)) })
	})
	return b.BytesOrPanic()
}

// helloRetryRequestRandom marks a ServerHello as a HelloRetryRequest (RFC
// 8446, Section 4.1.3).
var helloRetryRequestRandom = []byte{
	0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11, 0xbe, 0x1d, 0x8c, 0x02, 0x1e, 0x65, 0xb8, 0x91,
	0xc2, 0xa2, 0x11, 0x16, 0x7a, 0xbb, 0x8c, 0x5e, 0x07, 0x9e, 0x09, 0xe2, 0xc8, 0xa8, 0x33, 0x9c,
}

// serverHello is a ServerHello as a client reads it.
type serverHello struct {
	raw               []byte // the whole message
	version           uint16
	random, sessionID []byte
	suite             uint16
	exts              []helloExt
	rest              []byte // what followed it in its record
}

func (s *serverHello) isHRR() bool { return bytes.Equal(s.random, helloRetryRequestRandom) }

func (s *serverHello) ext(typ uint16) []byte {
	data, _ := s.lookup(typ)
	return data
}

func (s *serverHello) lookup(typ uint16) ([]byte, bool) {
	for _, e := range s.exts {
		if e.typ == typ {
			return e.data, true
		}
	}
	return nil, false
}

// readServerHello reads the edge's first record, which must be a
// ServerHello (a compatibility change_cipher_spec comes after it, RFC 8446,
// Appendix D.4).
func readServerHello(t *testing.T, c net.Conn) *serverHello {
	t.Helper()
	recs, _ := readRecords(t, c, 1)
	require.Len(t, recs, 1, "the edge closed without a ServerHello")
	r := recs[0]
	require.Equal(t, record.Handshake, r.typ, "the edge sent % x, want a ServerHello", r.body)
	return parseServerHello(t, r.body)
}

// parseServerHello parses the ServerHello msgs starts with.
func parseServerHello(t *testing.T, msgs []byte) *serverHello {
	t.Helper()
	s := cryptobyte.String(msgs)
	var typ uint8
	var body, random, sid, exts cryptobyte.String
	var vers uint16
	var comp uint8
	sh := &serverHello{}
	// In TLS 1.3 the ServerHello is alone in its record (a key change
	// follows, RFC 8446, Section 5.1); in TLS 1.2 the flight may follow it
	// in the same record.
	require.True(t, s.ReadUint8(&typ) && typ == 2 && s.ReadUint24LengthPrefixed(&body), "want a ServerHello, got % x", msgs)
	require.True(t, body.ReadUint16(&vers) && body.ReadBytes((*[]byte)(&random), 32) && body.ReadUint8LengthPrefixed(&sid) &&
		body.ReadUint16(&sh.suite) && body.ReadUint8(&comp) && body.ReadUint16LengthPrefixed(&exts) && body.Empty(), "ServerHello")
	sh.raw, sh.random, sh.exts = msgs[:len(msgs)-len(s)], slices.Clone(random), parseExtensions(t, exts)
	sh.version, sh.sessionID, sh.rest = vers, slices.Clone(sid), slices.Clone(s)
	return sh
}

// client13 is a TLS 1.3 client of its own making: the ClientHellos are
// crypto/tls's, changed as a probe wants and with client13's own X25519
// share, and it derives the keys itself (RFC 8446, Section 7.1), so that
// it can finish a handshake whose messages crypto/tls would never send.
type client13 struct {
	t          *testing.T
	raw        net.Conn
	key        *ecdh.PrivateKey
	hello      *helloMsg // crypto/tls's first ClientHello, with the share of key
	transcript hash.Hash
	// shared, when set, is the shared secret from the server's share, in
	// place of key's.
	shared func(server []byte) []byte
	// psk, when set, is the PSK of the ticket the ClientHello offers
	// (resumeWith); early is its early secret.
	psk, early []byte
	// resumption is the resumption_master_secret once the handshake is
	// finished (RFC 8446, Section 7.1).
	resumption []byte
	// sentHello is the legacy_session_id of the first ClientHello sent;
	// ccs counts the server's change_cipher_spec records.
	sentHello *helloMsg
	ccs       int
}

// suite13 is the one suite client13 offers.
const suite13 = tls.TLS_AES_128_GCM_SHA256

// dialClient13 connects a client13 to addr; its ClientHello names the
// ECDSA key and offers X25519 and P-256.
func dialClient13(t *testing.T, f *fixture, addr string) *client13 {
	t.Helper()
	key, err := ecdh.X25519().GenerateKey(rand.Reader)
	require.NoError(t, err)
	hello := parseHello(t, clientHello(t, &tls.Config{ServerName: f.ecdsa.Name, MinVersion: tls.VersionTLS13,
		CurvePreferences: []tls.CurveID{tls.X25519, tls.CurveP256}}))
	hello = hello.withSuites(suite13).set(extKeyShare, keyShare(groupX25519, key.PublicKey().Bytes()))
	return &client13{t: t, raw: dialRaw(t, addr), key: key, hello: hello, transcript: sha256.New()}
}

// share is the client's X25519 key exchange value.
func (c *client13) share() []byte { return c.key.PublicKey().Bytes() }

// send writes the ClientHello h, in one record, then the records after;
// the ClientHello enters the transcript.
func (c *client13) send(h *helloMsg, after ...[]byte) {
	c.t.Helper()
	msg := h.marshal()
	c.transcript.Write(msg)
	if c.sentHello == nil {
		c.sentHello = h
	}
	_, err := c.raw.Write(slices.Concat(append([][]byte{fragments(msg, 1<<14)}, after...)...))
	require.NoError(c.t, err)
}

// retried takes the edge's HelloRetryRequest: RFC 8446, Section 4.4.1, the
// transcript restarts with the hash of the first ClientHello.
func (c *client13) retried() *serverHello {
	c.t.Helper()
	hrr := readServerHello(c.t, c.raw)
	require.True(c.t, hrr.isHRR(), "want a HelloRetryRequest")
	first := c.transcript.Sum(nil)
	c.transcript.Reset()
	c.transcript.Write(append([]byte{254, 0, 0, byte(len(first))}, first...))
	c.transcript.Write(hrr.raw)
	if len(c.sentHello.sessionID) > 0 {
		// RFC 8446, Appendix D.4: the compatibility change_cipher_spec
		// follows the server's first handshake message, if the client
		// asked for it with a legacy_session_id.
		recs, _ := readRecords(c.t, c.raw, 1)
		require.Equal(c.t, []serverRecord{{record.ChangeCipherSpec, []byte{1}}}, recs, "after the HelloRetryRequest")
		c.ccs++
	}
	return hrr
}

// flight13 is the server's TLS 1.3 flight as client13 read it, and what
// the client needs to finish.
type flight13 struct {
	c         *client13
	hello     *serverHello
	master    []byte
	msgs      []byte         // EncryptedExtensions to Finished
	p         *peer          // out: the client handshake traffic key; in: the server application traffic key
	finished  []byte         // the client's Finished message
	appOut    *record.Cipher // the client application traffic key
	appSecret []byte
}

// serverFlight reads the ServerHello and the server's encrypted flight up
// to its Finished.
func (c *client13) serverFlight() flight13 {
	t := c.t
	t.Helper()
	sh := readServerHello(t, c.raw)
	require.False(t, sh.isHRR(), "a HelloRetryRequest, want a ServerHello")
	require.Equal(t, suite13, sh.suite)
	ks := cryptobyte.String(sh.ext(extKeyShare))
	var group uint16
	var share cryptobyte.String
	require.True(t, ks.ReadUint16(&group) && group == groupX25519 && ks.ReadUint16LengthPrefixed(&share) && ks.Empty(), "ServerHello key_share")
	var shared []byte
	if c.shared != nil {
		shared = c.shared(share)
	} else {
		pub, err := ecdh.X25519().NewPublicKey(share)
		require.NoError(t, err)
		shared, err = c.key.ECDH(pub)
		require.NoError(t, err)
	}
	c.transcript.Write(sh.raw)

	// RFC 8446, Section 7.1: the early secret of the PSK, or of zeros.
	zeros := make([]byte, sha256.Size)
	early := c.early
	if c.psk == nil {
		var err error
		early, err = hkdf.Extract(sha256.New, zeros, nil)
		require.NoError(t, err)
		_, ok := sh.lookup(extPreSharedKey)
		require.False(t, ok, "the ServerHello accepts a PSK the client did not offer")
	} else {
		require.Equal(t, []byte{0, 0}, sh.ext(extPreSharedKey), "the ServerHello does not accept the PSK")
	}
	hsSecret, err := hkdf.Extract(sha256.New, shared, c.deriveSecret(early, "derived", sha256.New()))
	require.NoError(t, err)
	clientHS := c.deriveSecret(hsSecret, "c hs traffic", c.transcript)
	serverHS, err := record.NewTLS13Cipher(suite13, c.deriveSecret(hsSecret, "s hs traffic", c.transcript), 0)
	require.NoError(t, err)

	// EncryptedExtensions to Finished.
	var msgs []byte
	for !endsWithFinished(msgs) {
		recs, _ := readRecords(t, c.raw, 1)
		require.Len(t, recs, 1, "the edge closed in its flight")
		if recs[0].typ == record.ChangeCipherSpec {
			require.Equal(t, []byte{1}, recs[0].body, "change_cipher_spec")
			require.Empty(t, msgs, "change_cipher_spec inside the server's encrypted flight")
			c.ccs++
			continue
		}
		typ, plain, err := serverHS.Open(recs[0].typ, 0x0303, recs[0].body)
		require.NoError(t, err, "the server's flight")
		require.Equal(t, record.Handshake, typ)
		msgs = append(msgs, plain...)
	}
	c.transcript.Write(msgs)
	// RFC 8446, Appendix D.4: one compatibility change_cipher_spec in the
	// handshake, if the client sent a legacy_session_id.
	wantCCS := 0
	if len(c.sentHello.sessionID) > 0 {
		wantCCS = 1
	}
	require.Equal(t, wantCCS, c.ccs, "compatibility change_cipher_spec records from the server")
	master, err := hkdf.Extract(sha256.New, zeros, c.deriveSecret(hsSecret, "derived", sha256.New()))
	require.NoError(t, err)
	s, ok := record.SuiteByID(suite13)
	require.True(t, ok)
	f := flight13{c: c, hello: sh, master: master, msgs: msgs}
	f.p = &peer{raw: c.raw, tls13: true, suite: suite13}
	f.p.key, f.p.iv = record.TrafficKeys(s, clientHS)
	f.p.out, err = record.NewTLS13Cipher(suite13, clientHS, 0)
	require.NoError(t, err)
	f.p.in, err = record.NewTLS13Cipher(suite13, c.deriveSecret(master, "s ap traffic", c.transcript), 0)
	require.NoError(t, err)
	f.appSecret = c.deriveSecret(master, "c ap traffic", c.transcript)
	f.appOut, err = record.NewTLS13Cipher(suite13, f.appSecret, 0)
	require.NoError(t, err)
	// RFC 8446, Section 4.4.4.
	mac := hmac.New(sha256.New, record.ExpandLabel(s.Hash, clientHS, "finished", nil, sha256.Size))
	mac.Write(c.transcript.Sum(nil))
	f.finished = hsMsg(20, mac.Sum(nil)...)
	return f
}

// finish writes before, then the client's Finished, and switches the peer
// to the client application traffic key.
func (f flight13) finish(t *testing.T, before ...[]byte) *peer {
	t.Helper()
	rec, err := f.p.out.Seal(nil, record.Handshake, f.finished, 0)
	require.NoError(t, err)
	_, err = f.p.raw.Write(slices.Concat(append(before, rec)...))
	require.NoError(t, err)
	f.p.out = f.appOut
	f.c.transcript.Write(f.finished)
	f.c.resumption = f.c.deriveSecret(f.master, "res master", f.c.transcript)
	s, _ := record.SuiteByID(suite13)
	f.p.key, f.p.iv = record.TrafficKeys(s, f.appSecret)
	return f.p
}

// ticket reads the edge's records up to its NewSessionTicket and returns
// the PSK it gives the client and the ticket's identity and ticket_age_add
// (RFC 8446, Sections 4.6.1).
func (c *client13) ticket(p *peer) (psk, identity []byte, ageAdd uint32) {
	t := c.t
	t.Helper()
	require.NotNil(t, c.resumption, "the handshake is not finished")
	for {
		recs, _ := readRecords(t, p.raw, 1)
		require.Len(t, recs, 1, "the edge closed without a NewSessionTicket")
		typ, plain, err := p.in.Open(recs[0].typ, 0x0303, recs[0].body)
		require.NoError(t, err)
		if typ != record.Handshake || plain[0] != 4 {
			continue
		}
		s := cryptobyte.String(plain[4:])
		var lifetime uint32
		var nonce, ticket, exts cryptobyte.String
		require.True(t, s.ReadUint32(&lifetime) && s.ReadUint32(&ageAdd) && s.ReadUint8LengthPrefixed(&nonce) &&
			s.ReadUint16LengthPrefixed(&ticket) && s.ReadUint16LengthPrefixed(&exts) && s.Empty(), "NewSessionTicket")
		return record.ExpandLabel(crypto.SHA256, c.resumption, "resumption", nonce, sha256.Size), slices.Clone(ticket), ageAdd
	}
}

// resumeWith returns h offering the ticket identity of psk, with
// psk_dhe_ke, and sets c's key schedule to start from psk. The binder is
// computed over h as returned (RFC 8446, Section 4.2.11.2).
func (c *client13) resumeWith(h *helloMsg, psk, identity []byte, ageAdd uint32) *helloMsg {
	t := c.t
	t.Helper()
	var err error
	c.psk = psk
	c.early, err = hkdf.Extract(sha256.New, psk, make([]byte, sha256.Size))
	require.NoError(t, err)
	offer := func(binder []byte) []byte {
		var b cryptobyte.Builder
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
			b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(identity) })
			b.AddUint32(ageAdd) // a ticket of age 0
		})
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
			b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(binder) })
		})
		return b.BytesOrPanic()
	}
	// pre_shared_key last (Section 4.2.11), after psk_key_exchange_modes.
	h = h.without(extPreSharedKey).set(extPSKModes, []byte{1, 1}) // psk_dhe_ke
	h = h.set(extPreSharedKey, offer(make([]byte, sha256.Size)))
	msg := h.marshal()
	truncated := sha256.Sum256(msg[:len(msg)-(2+1+sha256.Size)])
	binderKey := c.deriveSecret(c.early, "res binder", sha256.New())
	mac := hmac.New(sha256.New, record.ExpandLabel(crypto.SHA256, binderKey, "finished", nil, sha256.Size))
	mac.Write(truncated[:])
	return h.set(extPreSharedKey, offer(mac.Sum(nil)))
}

// earlyCipher is the client's 0-RTT write cipher once its ClientHello is
// sent (RFC 8446, Section 7.1: client_early_traffic_secret).
func (c *client13) earlyCipher() *record.Cipher {
	c.t.Helper()
	e, err := record.NewTLS13Cipher(suite13, c.deriveSecret(c.early, "c e traffic", c.transcript), 0)
	require.NoError(c.t, err)
	return e
}

// deriveSecret is Derive-Secret(secret, label, messages) of RFC 8446,
// Section 7.1, with the transcript hash th of the messages.
func (c *client13) deriveSecret(secret []byte, label string, th hash.Hash) []byte {
	return record.ExpandLabel(crypto.SHA256, secret, label, th.Sum(nil), sha256.Size)
}

// endsWithFinished reports whether msgs are whole handshake messages, the
// last a Finished.
func endsWithFinished(msgs []byte) bool {
	last := byte(0)
	for len(msgs) >= 4 {
		n := 4 + (int(msgs[1])<<16 | int(msgs[2])<<8 | int(msgs[3]))
		if len(msgs) < n {
			return false
		}
		last, msgs = msgs[0], msgs[n:]
	}
	return len(msgs) == 0 && last == 20
}

// compatCCS is a compatibility change_cipher_spec record (RFC 8446,
// Appendix D.4).
var compatCCS = []byte{20, 3, 3, 0, 1, 1}

// garbage is one application_data record of n random bytes (up to
// 2^14+256, a protected record's limit): 0-RTT data under keys the server
// never derived, as tlsfuzzer's test-tls13-0rtt-garbage.py sends it.
func garbage(n int) []byte {
	b := appDataRecord(n)
	rand.Read(b[record.HeaderLen:])
	return b
}

// TestProbeEdgeEarlyData: a client may send 0-RTT records after a
// ClientHello with early_data; a server that refuses them (handshaked
// never accepts early data) skips them, trial-decrypting, up to its bound,
// and after a HelloRetryRequest skips application_data records until the
// second ClientHello (RFC 8446, Section 4.2.10).
func TestProbeEdgeEarlyData(t *testing.T) {
	f := newFixture(t)
	full := garbage(record.MaxCiphertextTLS13)
	probeEdges(t, f, func(t *testing.T, addr string) {
		t.Run("4.2.10 refused 0-RTT records are skipped", func(t *testing.T) {
			c := dialClient13(t, f, addr)
			c.send(c.hello.set(extEarlyData, nil), garbage(1), garbage(1000), full)
			p := c.serverFlight().finish(t)
			p.expectServes(t)
		})
		// The engine's bound: 2^16 bytes of skipped records, in each
		// mode the same.
		bound := 1 << 16
		rest := bound - 3*len(full[record.HeaderLen:])
		t.Run("4.2.10 2^16 bytes of refused 0-RTT records are skipped", func(t *testing.T) {
			c := dialClient13(t, f, addr)
			c.send(c.hello.set(extEarlyData, nil), full, full, full, garbage(rest))
			p := c.serverFlight().finish(t)
			p.expectServes(t)
		})
		t.Run("4.2.10 more refused 0-RTT data than the bound is unexpected_message", func(t *testing.T) {
			c := dialClient13(t, f, addr)
			c.send(c.hello.set(extEarlyData, nil), full, full, full, garbage(rest+1))
			c.serverFlight().p.expectAlert(t, alertUnexpectedMessage)
		})
		// tlsfuzzer's test-tls13-0rtt-garbage.py: compatibility
		// change_cipher_spec records among the 0-RTT ones are dropped
		// (RFC 8446, Section 5).
		t.Run("4.2.10 change_cipher_spec among refused 0-RTT records is dropped", func(t *testing.T) {
			c := dialClient13(t, f, addr)
			c.send(c.hello.set(extEarlyData, nil), compatCCS, garbage(100), compatCCS, garbage(200))
			p := c.serverFlight().finish(t)
			p.expectServes(t)
		})
		// RFC 8446, Appendix D.3: a client whose 0-RTT ClientHello gets a
		// TLS 1.2 ServerHello fails the connection, so a TLS 1.2 server
		// need not skip early data: to it they are application data
		// before the handshake's end.
		t.Run("D.3 0-RTT records after a TLS 1.2 ServerHello are unexpected_message", func(t *testing.T) {
			c := dialClient13(t, f, addr)
			c.send(c.hello.withSuites(suite13, tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256).
				set(extVersions, []byte{4, 0x03, 0x05, 0x03, 0x03}).set(extEarlyData, nil), garbage(100))
			sh := readServerHello(t, c.raw)
			require.Equal(t, uint16(tls.VersionTLS12), sh.version)
			expectPlainAlertAfterFlight(t, c.raw, alertUnexpectedMessage)
		})
		// "skip ... until it finds one that decrypts": from then on a
		// record that does not is the client's fault.
		t.Run("4.2.10 a record that fails after one that opened is bad_record_mac", func(t *testing.T) {
			c := dialClient13(t, f, addr)
			c.send(c.hello.set(extEarlyData, nil), garbage(100))
			fl := c.serverFlight()
			first, err := fl.p.out.Seal(nil, record.Handshake, fl.finished[:5], 0)
			require.NoError(t, err)
			_, err = c.raw.Write(slices.Concat(first, garbage(100)))
			require.NoError(t, err)
			fl.p.expectAlert(t, alertBadRecordMAC)
		})
		t.Run("4.2.10 0-RTT records without early_data are bad_record_mac", func(t *testing.T) {
			c := dialClient13(t, f, addr)
			c.send(c.hello, garbage(100))
			c.serverFlight().p.expectAlert(t, alertBadRecordMAC)
		})
		noShare := keyShare()
		t.Run("4.2.10 0-RTT records before the second ClientHello are skipped", func(t *testing.T) {
			c := dialClient13(t, f, addr)
			c.send(c.hello.set(extKeyShare, noShare).set(extEarlyData, nil), garbage(100), full)
			c.retried()
			// RFC 8446, Section 4.1.2: the second ClientHello is the
			// first with a share and without early_data.
			c.send(c.hello)
			p := c.serverFlight().finish(t)
			p.expectServes(t)
		})
		// Skipped in several steps of the edge (it reads 16 KiB at a
		// time): the count goes from one to the next, in the unary mode in
		// the state token.
		t.Run("4.2.10 2^16 bytes of 0-RTT records before the second ClientHello are skipped", func(t *testing.T) {
			c := dialClient13(t, f, addr)
			c.send(c.hello.set(extKeyShare, noShare).set(extEarlyData, nil), full, full, full, garbage(rest))
			c.retried()
			c.send(c.hello)
			p := c.serverFlight().finish(t)
			p.expectServes(t)
		})
		t.Run("4.2.10 more 0-RTT data than the bound before the second ClientHello is unexpected_message", func(t *testing.T) {
			c := dialClient13(t, f, addr)
			c.send(c.hello.set(extKeyShare, noShare).set(extEarlyData, nil), full, full, full, garbage(rest+1))
			c.retried()
			expectPlainAlert(t, c.raw, alertUnexpectedMessage)
		})
		t.Run("4.2.10 0-RTT records after the second ClientHello are bad_record_mac", func(t *testing.T) {
			c := dialClient13(t, f, addr)
			c.send(c.hello.set(extKeyShare, noShare).set(extEarlyData, nil))
			c.retried()
			c.send(c.hello)
			// After the flight: a record coalesced with the second
			// ClientHello fails the step that builds the flight, whose
			// answer is then a plaintext alert alone.
			fl := c.serverFlight()
			_, err := c.raw.Write(garbage(100))
			require.NoError(t, err)
			fl.p.expectAlert(t, alertBadRecordMAC)
		})
		t.Run("5 application data before the second ClientHello without early_data is unexpected_message", func(t *testing.T) {
			c := dialClient13(t, f, addr)
			c.send(c.hello.set(extKeyShare, noShare))
			c.retried()
			_, err := c.raw.Write(garbage(100))
			require.NoError(t, err)
			expectPlainAlert(t, c.raw, alertUnexpectedMessage)
		})
	})
}

// expectPlainAlertAfterFlight checks that the edge went on with its
// plaintext handshake flight, then sent the fatal alert want and closed.
func expectPlainAlertAfterFlight(t *testing.T, c net.Conn, want uint8) {
	t.Helper()
	for {
		recs, _ := readRecords(t, c, 1)
		require.Len(t, recs, 1, "the edge closed without an alert, want %s", record.AlertName(want))
		if recs[0].typ != record.Handshake {
			require.Equal(t, serverRecord{record.Alert, []byte{2, want}}, recs[0], "want fatal %s", record.AlertName(want))
			break
		}
	}
	_, closed := readRecords(t, c, 1)
	assert.True(t, closed, "the edge sent more after its fatal alert")
}

// TestProbeEdgeHelloRetryRequest answers the edge's HelloRetryRequest with
// second ClientHellos that change what RFC 8446, Section 4.1.2 says must
// stay: "the client MUST send the same ClientHello without modification",
// but for the key_share (one share, for the group asked for, Section
// 4.1.4), early_data removed, a cookie and padding. The state between the
// two is what the unary mode carries in its token.
func TestProbeEdgeHelloRetryRequest(t *testing.T) {
	f := newFixture(t)
	p256, err := ecdh.P256().GenerateKey(rand.Reader)
	require.NoError(t, err)
	refused := []struct {
		name   string
		second func(c *client13) *helloMsg
		alert  uint8
	}{
		{"4.1.4 share for a group not asked for is illegal_parameter", func(c *client13) *helloMsg {
			return c.hello.set(extKeyShare, keyShare(groupP256, p256.PublicKey().Bytes()))
		}, alertIllegalParameter},
		{"4.1.4 a second share is illegal_parameter", func(c *client13) *helloMsg {
			return c.hello.set(extKeyShare, keyShare(groupX25519, c.share(), groupP256, p256.PublicKey().Bytes()))
		}, alertIllegalParameter},
		// Section 4.1.4: a server sends at most one HelloRetryRequest.
		{"4.1.4 no share again is illegal_parameter", func(c *client13) *helloMsg {
			return c.hello.set(extKeyShare, keyShare())
		}, alertIllegalParameter},
		{"4.1.2 cipher_suites changed is illegal_parameter", func(c *client13) *helloMsg {
			return c.hello.withSuites(suite13, tls.TLS_AES_256_GCM_SHA384)
		}, alertIllegalParameter},
		{"4.1.2 random changed is illegal_parameter", func(c *client13) *helloMsg {
			h := c.hello.clone()
			h.random = slices.Clone(h.random)
			h.random[0] ^= 1
			return h
		}, alertIllegalParameter},
		{"4.1.2 early_data added is illegal_parameter", func(c *client13) *helloMsg {
			return c.hello.set(extEarlyData, nil)
		}, alertIllegalParameter},
		{"4.1.2 server_name changed is illegal_parameter", func(c *client13) *helloMsg {
			return c.hello.set(extServerName, serverNameExt(f.rsa.Name))
		}, alertIllegalParameter},
		{"4.1.2 supported_groups changed is illegal_parameter", func(c *client13) *helloMsg {
			return c.hello.set(extGroups, u16list(groupX25519))
		}, alertIllegalParameter},
		{"4.1.2 signature_algorithms changed is illegal_parameter", func(c *client13) *helloMsg {
			return c.hello.set(extSigAlgs, u16list(uint16(tls.ECDSAWithP256AndSHA256)))
		}, alertIllegalParameter},
	}
	probeEdges(t, f, func(t *testing.T, addr string) {
		// retry sends a first ClientHello with no share, so that the edge
		// asks for one, for X25519, its first choice of the client's.
		retry := func(t *testing.T) *client13 {
			c := dialClient13(t, f, addr)
			c.send(c.hello.set(extKeyShare, keyShare()))
			hrr := c.retried()
			require.Equal(t, []byte{0, 0x1d}, hrr.ext(extKeyShare), "HelloRetryRequest selected_group")
			assert.Equal(t, suite13, hrr.suite)
			return c
		}
		t.Run("4.1.4 the second ClientHello as asked completes", func(t *testing.T) {
			c := retry(t)
			c.send(c.hello)
			p := c.serverFlight().finish(t)
			p.expectServes(t)
		})
		// RFC 8446, Appendix D.4: no compatibility change_cipher_spec for
		// a client without a legacy_session_id (client13 counts them).
		t.Run("D.4 without legacy_session_id no change_cipher_spec", func(t *testing.T) {
			c := dialClient13(t, f, addr)
			c.hello = c.hello.clone()
			c.hello.sessionID = nil
			c.send(c.hello.set(extKeyShare, keyShare()))
			c.retried()
			c.send(c.hello)
			p := c.serverFlight().finish(t)
			p.expectServes(t)
		})
		for _, tc := range refused {
			t.Run(tc.name, func(t *testing.T) {
				c := retry(t)
				c.send(tc.second(c))
				expectPlainAlert(t, c.raw, tc.alert)
			})
		}
	})
}

// TestProbeEdgeClientHello13 sends TLS 1.3 ClientHellos that differ from
// crypto/tls's in one field each.
func TestProbeEdgeClientHello13(t *testing.T) {
	f := newFixture(t)
	p256, err := ecdh.P256().GenerateKey(rand.Reader)
	require.NoError(t, err)
	p256Only := func(c *client13, share []byte) *helloMsg {
		return c.hello.set(extGroups, u16list(groupP256)).set(extKeyShare, keyShare(groupP256, share))
	}
	sigAlgs := func(c *client13, schemes ...tls.SignatureScheme) *helloMsg {
		var v []uint16
		for _, s := range schemes {
			v = append(v, uint16(s))
		}
		return c.hello.set(extSigAlgs, u16list(v...))
	}
	refused := []struct {
		name  string
		hello func(c *client13) *helloMsg
		alert uint8
	}{
		// RFC 8446, Section 4.2.8: "Clients MUST NOT offer multiple
		// KeyShareEntry values for the same group"; servers MAY check,
		// with illegal_parameter.
		{"4.2.8 two X25519 shares is illegal_parameter", func(c *client13) *helloMsg {
			return c.hello.set(extKeyShare, keyShare(groupX25519, c.share(), groupX25519, c.share()))
		}, alertIllegalParameter},
		// RFC 8446, Section 4.2.8.2 and RFC 7748, Section 5: X25519's
		// key_exchange is 32 bytes.
		{"4.2.8.2 X25519 share of 31 bytes is illegal_parameter", func(c *client13) *helloMsg {
			return c.hello.set(extKeyShare, keyShare(groupX25519, c.share()[:31]))
		}, alertIllegalParameter},
		{"4.2.8.2 X25519 share of 33 bytes is illegal_parameter", func(c *client13) *helloMsg {
			return c.hello.set(extKeyShare, keyShare(groupX25519, append(c.share(), 0)))
		}, alertIllegalParameter},
		{"4.2.8.2 P-256 share of 64 bytes is illegal_parameter", func(c *client13) *helloMsg {
			return p256Only(c, p256.PublicKey().Bytes()[1:])
		}, alertIllegalParameter},
		{"4.2.8.2 P-256 share with a point form other than 4 is illegal_parameter", func(c *client13) *helloMsg {
			return p256Only(c, append([]byte{5}, p256.PublicKey().Bytes()[1:]...))
		}, alertIllegalParameter},
		// RFC 8446, Section 4.1.1: no group in common is handshake_failure
		// (ffdhe2048, RFC 7919, which handshaked does not do).
		{"4.1.1 no group in common is handshake_failure", func(c *client13) *helloMsg {
			return c.hello.set(extGroups, u16list(0x0100)).set(extKeyShare, keyShare())
		}, alertHandshakeFailure},
		{"4.1.1 no TLS 1.3 cipher suite is handshake_failure", func(c *client13) *helloMsg {
			return c.hello.withSuites(tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, 0x1305)
		}, alertHandshakeFailure},
		// RFC 8446, Section 4.2.3: in TLS 1.3 rsa_pkcs1_* are for
		// certificates only, "MUST NOT" sign a CertificateVerify; and an
		// ECDSA scheme names its curve.
		{"4.2.3 only rsa_pkcs1 schemes is handshake_failure", func(c *client13) *helloMsg {
			return sigAlgs(c, tls.PKCS1WithSHA256, tls.PKCS1WithSHA384, tls.PKCS1WithSHA512).set(extServerName, serverNameExt(f.rsa.Name))
		}, alertHandshakeFailure},
		{"4.2.3 only ecdsa_secp384r1_sha384 for a P-256 key is handshake_failure", func(c *client13) *helloMsg {
			return sigAlgs(c, tls.ECDSAWithP384AndSHA384)
		}, alertHandshakeFailure},
		{"4.2.3 only SHA-1 schemes is handshake_failure", func(c *client13) *helloMsg {
			return sigAlgs(c, tls.ECDSAWithSHA1, tls.PKCS1WithSHA1)
		}, alertHandshakeFailure},
		// RFC 8446, Section 4.2.3: rsa_pss_pss_* need a key whose
		// certificate says RSASSA-PSS; the RSA key's says rsaEncryption.
		{"4.2.3 only rsa_pss_pss schemes for an rsaEncryption key is handshake_failure", func(c *client13) *helloMsg {
			return sigAlgs(c, tls.SignatureScheme(0x0809), tls.SignatureScheme(0x080a), tls.SignatureScheme(0x080b)).set(extServerName, serverNameExt(f.rsa.Name))
		}, alertHandshakeFailure},
		{"4.2.3 only ed25519 for ECDSA and RSA keys is handshake_failure", func(c *client13) *helloMsg {
			return sigAlgs(c, tls.Ed25519)
		}, alertHandshakeFailure},
		{"9.2 no signature_algorithms is missing_extension", func(c *client13) *helloMsg {
			return c.hello.without(extSigAlgs)
		}, alertMissingExtension},
		{"9.2 no key_share is missing_extension", func(c *client13) *helloMsg {
			return c.hello.without(extKeyShare)
		}, alertMissingExtension},
	}
	// tlsfuzzer's test-tls13-legacy-version.py: a TLS 1.3 ClientHello
	// whose legacy_version is SSL 3.0 or below (and in its
	// supported_versions too) is protocol_version: RFC 8446, Appendix D.5
	// for SSL 3.0; Section 4.1.2 for "MUST be set to 0x0303".
	for _, v := range []uint16{0x0300, 0x0000, 0x0200, 0x0002, 0x0100, 0x0103, 0x0102, 0x0001} {
		refused = append(refused, struct {
			name  string
			hello func(c *client13) *helloMsg
			alert uint8
		}{fmt.Sprintf("4.1.2 legacy_version %#04x is protocol_version", v), func(c *client13) *helloMsg {
			h := c.hello.set(extVersions, []byte{4, 3, 4, byte(v >> 8), byte(v)})
			h.version = v
			return h
		}, alertProtocolVersion})
	}
	probeEdges(t, f, func(t *testing.T, addr string) {
		for _, tc := range refused {
			t.Run(tc.name, func(t *testing.T) {
				c := dialClient13(t, f, addr)
				c.send(tc.hello(c))
				expectPlainAlert(t, c.raw, tc.alert)
			})
		}
		// RFC 7748, Section 5: the top bit of a u-coordinate is masked,
		// and non-canonical values (p to 2^255-1) are taken modulo p.
		// The base point (u = 9) is the client's public value for the
		// scalar 1: the shared secret is the server's public value.
		basePoint := func(server []byte) []byte { return server }
		for _, tc := range []struct {
			name   string
			share  func(c *client13) []byte
			shared func(server []byte) []byte
		}{
			{"RFC 7748 5 X25519 share with the top bit set completes", func(c *client13) []byte {
				s := c.share()
				s[31] |= 0x80
				return s
			}, nil},
			{"RFC 7748 5 X25519 base point completes", func(*client13) []byte { return append([]byte{9}, make([]byte, 31)...) }, basePoint},
			{"RFC 7748 5 X25519 non-canonical base point (p+9) completes", func(*client13) []byte {
				return append(append([]byte{0xf6}, bytes.Repeat([]byte{0xff}, 30)...), 0x7f)
			}, basePoint},
		} {
			t.Run(tc.name, func(t *testing.T) {
				c := dialClient13(t, f, addr)
				c.shared = tc.shared
				c.send(c.hello.set(extKeyShare, keyShare(groupX25519, tc.share(c))))
				p := c.serverFlight().finish(t)
				p.expectServes(t)
			})
		}
		t.Run("D.4 without legacy_session_id no change_cipher_spec", func(t *testing.T) {
			c := dialClient13(t, f, addr)
			c.hello = c.hello.clone()
			c.hello.sessionID = nil
			c.send(c.hello)
			p := c.serverFlight().finish(t)
			p.expectServes(t)
		})
		// tlsfuzzer's test-tls13-signature-algorithms.py: the most
		// schemes the extensions block holds ("tolerance 32717
		// methods"), the ClientHello over 2^16 bytes; the one the edge's
		// key can sign with last.
		t.Run("4.2.3 signature_algorithms filling the extensions completes", func(t *testing.T) {
			c := dialClient13(t, f, addr)
			h := c.hello.without(extSigAlgs)
			n := (maxExtensions - h.extensionsLen() - 4 - 2) / 2
			schemes := slices.Repeat([]uint16{0x0202}, n-1) // sha1 dsa, which nobody signs with
			h = h.set(extSigAlgs, u16list(append(schemes, uint16(tls.ECDSAWithP256AndSHA256))...))
			require.Greater(t, len(h.marshal()), 1<<16+4)
			c.send(h)
			p := c.serverFlight().finish(t)
			p.expectServes(t)
		})
		// RFC 8446, Section 4.2.1: with supported_versions, "servers MUST
		// NOT use the ClientHello.legacy_version value for version
		// negotiation".
		t.Run("4.2.1 legacy_version 0x0304 with supported_versions is TLS 1.3", func(t *testing.T) {
			c := dialClient13(t, f, addr)
			h := c.hello.clone()
			h.version = tls.VersionTLS13
			c.send(h)
			p := c.serverFlight().finish(t)
			p.expectServes(t)
		})
	})
}

// TestProbeEdgeClientHello12 sends TLS 1.2 ClientHellos that differ from
// crypto/tls's in one field each, and checks what the ServerHello says to
// them.
func TestProbeEdgeClientHello12(t *testing.T) {
	f := newTicketFixture(t)
	cfg := &tls.Config{ServerName: f.ecdsa.Name, RootCAs: f.ecdsa.Pool, MaxVersion: tls.VersionTLS12,
		ClientSessionCache: tls.NewLRUClientSessionCache(1)}
	base := parseHello(t, clientHello(t, cfg))
	const extRenegotiationInfo uint16 = 0xff01
	probeEdges(t, f, func(t *testing.T, addr string) {
		hello := func(t *testing.T, h *helloMsg) (net.Conn, *serverHello) {
			c := dialRaw(t, addr)
			_, err := c.Write(fragments(h.marshal(), 1<<14))
			require.NoError(t, err)
			return c, readServerHello(t, c)
		}
		// nextMessage is the type of the handshake message after the
		// ServerHello.
		nextMessage := func(t *testing.T, c net.Conn, sh *serverHello) byte {
			if len(sh.rest) > 0 {
				return sh.rest[0]
			}
			recs, _ := readRecords(t, c, 1)
			require.Len(t, recs, 1, "nothing after the ServerHello")
			if recs[0].typ == record.ChangeCipherSpec {
				return 0
			}
			require.Equal(t, record.Handshake, recs[0].typ)
			return recs[0].body[0]
		}
		t.Run("RFC 5746 3.6 SCSV gets an empty renegotiation_info", func(t *testing.T) {
			h := base.without(extRenegotiationInfo)
			h.suites = append(slices.Clone(h.suites), 0x00, 0xff)
			_, sh := hello(t, h)
			data, ok := sh.lookup(extRenegotiationInfo)
			require.True(t, ok, "no renegotiation_info in the ServerHello")
			assert.Equal(t, []byte{0}, data)
		})
		t.Run("RFC 7627 5.1 extended_master_secret is answered", func(t *testing.T) {
			_, sh := hello(t, base)
			data, ok := sh.lookup(extEMS)
			require.True(t, ok, "no extended_master_secret in the ServerHello")
			assert.Empty(t, data)
		})
		t.Run("RFC 7627 5.1 no extended_master_secret, none in the ServerHello", func(t *testing.T) {
			_, sh := hello(t, base.without(extEMS))
			_, ok := sh.lookup(extEMS)
			assert.False(t, ok)
		})
		t.Run("RFC 5077 3.4 a ticket that does not decrypt gets a full handshake", func(t *testing.T) {
			ticket := make([]byte, 200)
			rand.Read(ticket)
			h := base.set(extSessionTicket, ticket)
			h.sessionID = bytes.Repeat([]byte{7}, 32)
			c, sh := hello(t, h)
			assert.NotEqual(t, h.sessionID, sh.sessionID, "the session ID echoed: resumed")
			assert.Equal(t, byte(11), nextMessage(t, c, sh), "want a Certificate after the ServerHello")
		})
		// RFC 7627, Section 5.3: "If the original session used the
		// "extended_master_secret" extension but the new ClientHello does
		// not contain it, the server MUST abort the abbreviated
		// handshake."
		t.Run("RFC 7627 5.3 resuming a session with the extended master secret", func(t *testing.T) {
			c := tls.Client(dialRaw(t, addr), cfg)
			require.NoError(t, c.Handshake())
			c.Close()
			resume := parseHello(t, clientHello(t, cfg))
			require.NotEmpty(t, resume.ext(extSessionTicket), "crypto/tls offers no ticket")
			t.Run("with it resumes", func(t *testing.T) {
				c, sh := hello(t, resume)
				assert.Equal(t, resume.sessionID, sh.sessionID, "the session ID not echoed: not resumed")
				assert.NotEqual(t, byte(11), nextMessage(t, c, sh), "a Certificate: not resumed")
			})
			t.Run("without it is handshake_failure", func(t *testing.T) {
				c := dialRaw(t, addr)
				_, err := c.Write(fragments(resume.without(extEMS).marshal(), 1<<14))
				require.NoError(t, err)
				expectPlainAlert(t, c, alertHandshakeFailure)
			})
		})
		refused := []struct {
			name  string
			hello *helloMsg
			alert uint8
		}{
			// RFC 5246, Section 7.4.1.4.1: the server's signature uses a
			// scheme the client listed; rsa_pss_pss_* need an RSASSA-PSS
			// key (RFC 8446, Section 4.2.3), which the RSA key is not.
			{"RFC 5246 7.4.1.4.1 only rsa_pss_pss schemes for ECDHE_RSA is handshake_failure",
				base.withSuites(tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256).set(extSigAlgs, u16list(0x0809, 0x080a, 0x080b)).set(extServerName, serverNameExt(f.rsa.Name)),
				alertHandshakeFailure},
			{"RFC 5246 7.4.1.4.1 only RSA schemes for ECDHE_ECDSA is handshake_failure",
				base.withSuites(tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256).set(extSigAlgs, u16list(0x0401, 0x0804)),
				alertHandshakeFailure},
			{"RFC 5246 7.4.1.2 only TLS 1.3 suites in a TLS 1.2 ClientHello is handshake_failure",
				base.withSuites(tls.TLS_AES_128_GCM_SHA256, tls.TLS_AES_256_GCM_SHA384), alertHandshakeFailure},
		}
		for _, tc := range refused {
			t.Run(tc.name, func(t *testing.T) {
				c := dialRaw(t, addr)
				_, err := c.Write(fragments(tc.hello.marshal(), 1<<14))
				require.NoError(t, err)
				expectPlainAlert(t, c, tc.alert)
			})
		}
	})
}

// messageTypes lists the types of the handshake messages msgs.
func messageTypes(msgs []byte) []byte {
	var types []byte
	for len(msgs) >= 4 {
		types = append(types, msgs[0])
		msgs = msgs[min(len(msgs), 4+(int(msgs[1])<<16|int(msgs[2])<<8|int(msgs[3]))):]
	}
	return types
}

// encryptedExtensions is the extensions of the EncryptedExtensions first
// in msgs.
func encryptedExtensions(t *testing.T, msgs []byte) []helloExt {
	t.Helper()
	s := cryptobyte.String(msgs)
	var typ uint8
	var body, exts cryptobyte.String
	require.True(t, s.ReadUint8(&typ) && typ == 8 && s.ReadUint24LengthPrefixed(&body) && body.ReadUint16LengthPrefixed(&exts) && body.Empty(),
		"the server's flight does not start with EncryptedExtensions")
	return parseExtensions(t, exts)
}

// TestProbeEdgeResumption13 resumes from the edge's tickets with client13,
// which can offer what crypto/tls does not: 0-RTT data under the early
// traffic key, bad binders, other key exchange modes (RFC 8446, Sections
// 2.2, 4.2.9 to 4.2.11).
func TestProbeEdgeResumption13(t *testing.T) {
	f := newTicketFixture(t)
	probeEdges(t, f, func(t *testing.T, addr string) {
		// A full handshake, for its ticket: psk_dhe_ke offered, or the
		// server issues none (RFC 8446, Section 4.2.9).
		c := dialClient13(t, f, addr)
		c.send(c.hello.set(extPSKModes, []byte{1, 1}))
		psk, identity, ageAdd := c.ticket(c.serverFlight().finish(t))
		resume := func(t *testing.T, h func(c *client13) *helloMsg) *client13 {
			c := dialClient13(t, f, addr)
			c.send(c.resumeWith(h(c), psk, identity, ageAdd))
			return c
		}
		same := func(c *client13) *helloMsg { return c.hello }
		t.Run("4.2.11 resumption completes without a certificate", func(t *testing.T) {
			fl := resume(t, same).serverFlight()
			assert.Equal(t, []byte{8, 20}, messageTypes(fl.msgs), "EncryptedExtensions and Finished")
			p := fl.finish(t)
			p.expectServes(t)
		})
		// The server takes the PSK but not the early data (its tickets
		// allow none, Section 4.6.1): the 0-RTT records are under keys it
		// could derive, and it still skips them unread.
		t.Run("4.2.10 refused 0-RTT data under the early traffic key is skipped unread", func(t *testing.T) {
			c := resume(t, func(c *client13) *helloMsg { return c.hello.set(extEarlyData, nil) })
			early := c.earlyCipher()
			var w []byte
			for _, data := range []string{"GET / HTTP/1.1\r\n", "Host: ec.test\r\n\r\n"} {
				var err error
				w, err = early.Seal(w, record.ApplicationData, []byte(data), 0)
				require.NoError(t, err)
			}
			_, err := c.raw.Write(w)
			require.NoError(t, err)
			fl := c.serverFlight()
			for _, e := range encryptedExtensions(t, fl.msgs) {
				assert.NotEqual(t, extEarlyData, e.typ, "early_data accepted")
			}
			p := fl.finish(t)
			p.send(t, record.ApplicationData, []byte("after"))
			p.expectEcho(t, "after") // and not the early data
		})
		t.Run("4.5 EndOfEarlyData after refused early data is unexpected_message", func(t *testing.T) {
			c := resume(t, func(c *client13) *helloMsg { return c.hello.set(extEarlyData, nil) })
			fl := c.serverFlight()
			eoed, err := fl.p.out.Seal(nil, record.Handshake, hsMsg(5), 0)
			require.NoError(t, err)
			_, err = c.raw.Write(eoed)
			require.NoError(t, err)
			fl.p.expectAlert(t, alertUnexpectedMessage)
		})
		// tlsfuzzer's test-tls13-0rtt-garbage.py: a client offering a
		// ticket the server cannot open, early_data and 0-RTT records
		// gets a full handshake, the records skipped; after a
		// HelloRetryRequest, up to its second ClientHello, whose binder
		// is new.
		fake := func(c *client13, h *helloMsg) *helloMsg {
			identity := make([]byte, 320)
			rand.Read(identity)
			h = c.resumeWith(h, identity[:32], identity, uint32(len(identity)))
			c.psk, c.early = nil, nil // the server's key schedule has none
			return h
		}
		t.Run("4.2.10 a ticket that does not open with 0-RTT records: full handshake, records skipped", func(t *testing.T) {
			c := dialClient13(t, f, addr)
			c.send(fake(c, c.hello.set(extEarlyData, nil)), garbage(1000), garbage(1000))
			fl := c.serverFlight()
			assert.Contains(t, messageTypes(fl.msgs), byte(11), "no Certificate: resumed")
			p := fl.finish(t)
			p.expectServes(t)
		})
		t.Run("4.2.10 a ticket that does not open with 0-RTT records and a HelloRetryRequest", func(t *testing.T) {
			c := dialClient13(t, f, addr)
			c.send(fake(c, c.hello.set(extKeyShare, keyShare()).set(extEarlyData, nil)), garbage(1000))
			c.retried()
			c.send(fake(c, c.hello))
			p := c.serverFlight().finish(t)
			p.expectServes(t)
		})
		// Section 4.2.11: "If this value is not present or does not
		// validate, the server MUST abort the handshake."
		t.Run("4.2.11 wrong binder is decrypt_error", func(t *testing.T) {
			c := dialClient13(t, f, addr)
			h := c.resumeWith(c.hello, psk, identity, ageAdd)
			binder := h.ext(extPreSharedKey)
			binder[len(binder)-1] ^= 1
			c.send(h)
			expectPlainAlert(t, c.raw, alertDecryptError)
		})
		// Section 4.2.9: the server "MUST NOT select a key exchange mode
		// that is not listed by the client"; handshaked does psk_dhe_ke
		// only, so a psk_ke offer is a full handshake (its binder unread).
		// So is a ticket it cannot open.
		for _, tc := range []struct {
			name  string
			hello func(c *client13) *helloMsg
		}{
			{"4.2.9 psk_ke only is a full handshake", func(c *client13) *helloMsg {
				return c.resumeWith(c.hello, psk, identity, ageAdd).set(extPSKModes, []byte{1, 0})
			}},
			{"4.2.11 a ticket that does not open is a full handshake", func(c *client13) *helloMsg {
				bad := slices.Clone(identity)
				bad[len(bad)/2] ^= 1
				return c.resumeWith(c.hello, psk, bad, ageAdd)
			}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				c := dialClient13(t, f, addr)
				h := tc.hello(c)
				c.psk, c.early = nil, nil
				c.send(h)
				fl := c.serverFlight()
				assert.Contains(t, messageTypes(fl.msgs), byte(11), "no Certificate: resumed")
				p := fl.finish(t)
				p.expectServes(t)
			})
		}
	})
}
