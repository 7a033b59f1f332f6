package record

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
)

// testKeyMaterial is fixed so that two calls give ciphers with the same keys.
func testKeyMaterial(n int, salt byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i)*7 + salt
	}
	return b
}

// newTestCipher returns a Cipher for suite id with fixed keys.
func newTestCipher(t testing.TB, id uint16, seq uint64) *Cipher {
	t.Helper()
	s := lookupSuite(id)
	var c *Cipher
	var err error
	if s.TLS13 {
		c, err = NewTLS13Cipher(id, testKeyMaterial(s.Hash.Size(), 1), seq)
	} else {
		c, err = NewTLS12Cipher(id, testKeyMaterial(s.KeyLen, 2), testKeyMaterial(s.FixedIVLen, 3), seq)
	}
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// sealRaw protects inner as given, bypassing Seal's checks, to build the
// records a broken or hostile peer holding the keys could send. In TLS 1.3
// inner is the whole TLSInnerPlaintext.
func sealRaw(c *Cipher, typ ContentType, inner []byte) []byte {
	explicit := c.suite.ExplicitNonceLen
	length := explicit + len(inner) + c.aead.Overhead()
	rec := []byte{byte(typ), 3, 3, byte(length >> 8), byte(length)}
	c.setNonce(c.seq)
	rec = append(rec, c.nonce[nonceLen-explicit:]...)
	aad := rec[:HeaderLen:HeaderLen]
	if !c.suite.TLS13 {
		aad = c.tls12AAD(typ, tls.VersionTLS12, len(inner))
	}
	rec = c.aead.Seal(rec, c.nonce[:], inner, aad)
	c.seq++
	return rec
}

// openRecord parses one whole record and opens it.
func openRecord(t testing.TB, c *Cipher, record []byte) (ContentType, []byte, error) {
	t.Helper()
	maxLen := MaxCiphertextTLS12
	if c.suite.TLS13 {
		maxLen = MaxCiphertextTLS13
	}
	typ, version, body, n, err := Parse(record, maxLen)
	if err != nil || n != len(record) {
		t.Fatalf("Parse: n=%d of %d, err=%v", n, len(record), err)
	}
	return c.Open(typ, version, body)
}

func forEachSuite(t *testing.T, f func(t *testing.T, s *Suite)) {
	for i := range suites {
		t.Run(tls.CipherSuiteName(suites[i].ID), func(t *testing.T) { f(t, &suites[i]) })
	}
}

func TestSuiteByID(t *testing.T) {
	known := make(map[uint16]*tls.CipherSuite)
	for _, cs := range append(tls.CipherSuites(), tls.InsecureCipherSuites()...) {
		known[cs.ID] = cs
	}
	if len(suites) != 11 {
		t.Errorf("%d suites, want 3 TLS 1.3 + 8 TLS 1.2", len(suites))
	}
	for _, s := range suites {
		got, ok := SuiteByID(s.ID)
		if !ok || got.ID != s.ID {
			t.Fatalf("SuiteByID(%#04x) = %v, %v", s.ID, got, ok)
		}
		got.KeyLen = 1
		if again, _ := SuiteByID(s.ID); again.KeyLen == 1 {
			t.Errorf("SuiteByID returns shared state")
		}
		cs := known[s.ID]
		if cs == nil {
			t.Errorf("%#04x is not a crypto/tls suite", s.ID)
			continue
		}
		if tls13 := slices.Contains(cs.SupportedVersions, tls.VersionTLS13); tls13 != s.TLS13 {
			t.Errorf("%s: TLS13 = %v, crypto/tls says %v", cs.Name, s.TLS13, tls13)
		}
	}
	for _, id := range []uint16{0, tls.TLS_RSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256} {
		if s, ok := SuiteByID(id); ok || s != nil {
			t.Errorf("SuiteByID(%#04x) = %v, %v; want unsupported", id, s, ok)
		}
	}
}

func TestSealOpenRoundTrip(t *testing.T) {
	forEachSuite(t, func(t *testing.T, s *Suite) {
		sealer, opener := newTestCipher(t, s.ID, 0), newTestCipher(t, s.ID, 0)
		type msg struct {
			typ     ContentType
			data    []byte
			padding int
		}
		msgs := []msg{
			{ApplicationData, nil, 0},
			{ApplicationData, []byte("x"), 0},
			{Handshake, []byte("handshake message"), 0},
			{Alert, []byte{1, 0}, 0},
			{ApplicationData, testKeyMaterial(MaxPlaintext, 9), 0},
		}
		if s.TLS13 {
			msgs = append(msgs,
				msg{ApplicationData, nil, 1},
				msg{Handshake, []byte("padded"), 300},
				msg{ApplicationData, []byte("y"), MaxPlaintext - 1},
				msg{ApplicationData, testKeyMaterial(MaxPlaintext-10, 4), 10},
			)
		}
		// Seal everything into one buffer, coalesced, then parse and
		// open record by record.
		var wire []byte
		for i, m := range msgs {
			before := len(wire)
			var err error
			wire, err = sealer.Seal(wire, m.typ, m.data, m.padding)
			if err != nil {
				t.Fatalf("Seal %d: %v", i, err)
			}
			rec := wire[before:]
			wantType, explicit := m.typ, s.ExplicitNonceLen
			overhead := explicit + 16
			if s.TLS13 {
				wantType, overhead = ApplicationData, overhead+1+m.padding
			}
			if ContentType(rec[0]) != wantType || rec[1] != 3 || rec[2] != 3 ||
				int(rec[3])<<8|int(rec[4]) != len(m.data)+overhead || len(rec) != HeaderLen+len(m.data)+overhead {
				t.Fatalf("record %d: header % x, length %d", i, rec[:HeaderLen], len(rec))
			}
			if explicit > 0 && !bytes.Equal(rec[HeaderLen:HeaderLen+explicit], []byte{0, 0, 0, 0, 0, 0, 0, byte(i)}) {
				t.Errorf("record %d: explicit nonce % x, want the sequence number", i, rec[HeaderLen:HeaderLen+explicit])
			}
		}
		if sealer.Seq() != uint64(len(msgs)) {
			t.Errorf("sealer at seq %d after %d records", sealer.Seq(), len(msgs))
		}
		maxLen := MaxCiphertextTLS12
		if s.TLS13 {
			maxLen = MaxCiphertextTLS13
		}
		for i, m := range msgs {
			typ, version, body, n, err := Parse(wire, maxLen)
			if err != nil || n == 0 {
				t.Fatalf("Parse %d: n=%d err=%v", i, n, err)
			}
			gotType, plaintext, err := opener.Open(typ, version, body)
			if err != nil {
				t.Fatalf("Open %d: %v", i, err)
			}
			if gotType != m.typ || !bytes.Equal(plaintext, m.data) {
				t.Fatalf("Open %d = %v, %d bytes; want %v, %d bytes", i, gotType, len(plaintext), m.typ, len(m.data))
			}
			if len(plaintext) > 0 && &plaintext[0] != &body[s.ExplicitNonceLen] {
				t.Errorf("Open %d did not decrypt in place", i)
			}
			wire = wire[n:]
		}
		if opener.Seq() != uint64(len(msgs)) {
			t.Errorf("opener at seq %d after %d records", opener.Seq(), len(msgs))
		}
	})
}

// TestTamper flips every bit position class of every byte of a record,
// header included: the record must fail authentication and yield nothing.
func TestTamper(t *testing.T) {
	secret := []byte("attack at dawn; bring the usual")
	forEachSuite(t, func(t *testing.T, s *Suite) {
		record, err := newTestCipher(t, s.ID, 5).Seal(nil, ApplicationData, secret, 0)
		if err != nil {
			t.Fatal(err)
		}
		for i := range record {
			for _, flip := range []byte{0x01, 0x80} {
				rec := bytes.Clone(record)
				rec[i] ^= flip
				typ := ContentType(rec[0])
				version := uint16(rec[1])<<8 | uint16(rec[2])
				body := rec[HeaderLen:]
				// A changed length field means the peer framed a
				// different body: make body that long.
				if n := int(rec[3])<<8 | int(rec[4]); n < len(body) {
					body = body[:n]
				} else {
					body = append(body, make([]byte, n-len(body))...)
				}
				opener := newTestCipher(t, s.ID, 5)
				gotType, plaintext, err := opener.Open(typ, version, body)
				switch {
				case plaintext != nil || gotType != 0:
					t.Fatalf("byte %d ^ %#x: Open returned %v %q", i, flip, gotType, plaintext)
				case s.TLS13 && i == 0 && typ != ApplicationData:
					// The outer type is checked before decryption.
					if !errors.Is(err, ErrUnexpectedMessage) {
						t.Fatalf("byte %d ^ %#x: outer type %v: err %v, want unexpected_message", i, flip, typ, err)
					}
				case !typ.known() && i == 0:
					if !errors.Is(err, ErrUnexpectedMessage) {
						t.Fatalf("byte %d ^ %#x: type %v: err %v", i, flip, typ, err)
					}
				case len(body) > MaxCiphertextTLS13 && s.TLS13, len(body) > MaxCiphertextTLS12:
					if !errors.Is(err, ErrRecordOverflow) {
						t.Fatalf("byte %d ^ %#x: %d-byte body: err %v", i, flip, len(body), err)
					}
				default:
					if !errors.Is(err, ErrBadRecordMAC) || alertOf(err) != 20 {
						t.Fatalf("byte %d ^ %#x: err %v, want bad_record_mac", i, flip, err)
					}
					if bytes.Contains(rec, secret[:8]) {
						t.Fatalf("byte %d ^ %#x: plaintext left in the buffer after a failed Open", i, flip)
					}
				}
				if opener.Seq() != 5 {
					t.Fatalf("byte %d ^ %#x: failed Open moved seq to %d", i, flip, opener.Seq())
				}
			}
		}
	})
}

func TestWrongSequenceNumber(t *testing.T) {
	forEachSuite(t, func(t *testing.T, s *Suite) {
		sealer := newTestCipher(t, s.ID, 10)
		var records [][]byte
		for i := range 3 {
			rec, err := sealer.Seal(nil, ApplicationData, fmt.Appendf(nil, "record %d", i), 0)
			if err != nil {
				t.Fatal(err)
			}
			records = append(records, rec)
		}
		for _, seq := range []uint64{0, 9, 11, math.MaxUint64 - 1} {
			if _, _, err := openRecord(t, newTestCipher(t, s.ID, seq), bytes.Clone(records[0])); !errors.Is(err, ErrBadRecordMAC) {
				t.Errorf("record 10 opened at seq %d: err %v, want bad_record_mac", seq, err)
			}
		}
		// Replay and reordering.
		opener := newTestCipher(t, s.ID, 10)
		if _, _, err := openRecord(t, opener, bytes.Clone(records[0])); err != nil {
			t.Fatal(err)
		}
		if _, _, err := openRecord(t, opener, bytes.Clone(records[0])); !errors.Is(err, ErrBadRecordMAC) {
			t.Errorf("replayed record: err %v", err)
		}
		if _, _, err := openRecord(t, opener, bytes.Clone(records[2])); !errors.Is(err, ErrBadRecordMAC) {
			t.Errorf("skipped record: err %v", err)
		}
		// A different key.
		other := newTestCipher(t, s.ID, 10)
		other.aead, _ = s.newAEAD(testKeyMaterial(s.KeyLen, 99))
		if _, _, err := openRecord(t, other, bytes.Clone(records[0])); !errors.Is(err, ErrBadRecordMAC) {
			t.Errorf("wrong key: err %v", err)
		}
	})
}

func TestOpenMalformed(t *testing.T) {
	forEachSuite(t, func(t *testing.T, s *Suite) {
		type tc struct {
			name  string
			typ   ContentType // record type (TLS 1.2) or inner type appended (TLS 1.3)
			inner []byte      // TLS 1.3: the whole TLSInnerPlaintext
			err   error
			want  []byte
		}
		var tests []tc
		if s.TLS13 {
			tests = []tc{
				{name: "no content type", inner: nil, err: ErrUnexpectedMessage},
				{name: "only padding", inner: make([]byte, 100), err: ErrUnexpectedMessage},
				{name: "protected change_cipher_spec", inner: []byte{1, 20}, err: ErrUnexpectedMessage},
				{name: "unknown inner type", inner: []byte{'a', 99, 0, 0}, err: ErrUnexpectedMessage},
				{name: "empty handshake", inner: []byte{22}, err: ErrUnexpectedMessage},
				{name: "empty padded alert", inner: []byte{21, 0, 0, 0}, err: ErrUnexpectedMessage},
				{name: "inner plaintext over 2^14+1", inner: append(make([]byte, MaxPlaintext+1), 23), err: ErrRecordOverflow},
				{name: "inner plaintext of 2^14+1", inner: append(bytes.Repeat([]byte{7}, MaxPlaintext), 23), want: bytes.Repeat([]byte{7}, MaxPlaintext)},
				{name: "padded alert", inner: append([]byte{2, 40, 21}, make([]byte, 1000)...), want: []byte{2, 40}},
				{name: "empty application_data", inner: []byte{23, 0}, want: []byte{}},
			}
		} else {
			tests = []tc{
				{name: "plaintext over 2^14", typ: ApplicationData, inner: make([]byte, MaxPlaintext+1), err: ErrRecordOverflow},
				{name: "empty handshake", typ: Handshake, inner: nil, err: ErrUnexpectedMessage},
				{name: "plaintext of 2^14", typ: ApplicationData, inner: make([]byte, MaxPlaintext), want: make([]byte, MaxPlaintext)},
			}
		}
		for _, tt := range tests {
			outer := tt.typ
			if s.TLS13 {
				outer = ApplicationData
			}
			record := sealRaw(newTestCipher(t, s.ID, 0), outer, tt.inner)
			opener := newTestCipher(t, s.ID, 0)
			_, plaintext, err := openRecord(t, opener, record)
			if tt.err != nil {
				if !errors.Is(err, tt.err) || plaintext != nil {
					t.Errorf("%s: %q, %v; want %v", tt.name, plaintext, err, tt.err)
				}
				continue
			}
			if err != nil || !bytes.Equal(plaintext, tt.want) {
				t.Errorf("%s: %d bytes, %v; want %d bytes", tt.name, len(plaintext), err, len(tt.want))
			}
		}

		c := newTestCipher(t, s.ID, 0)
		// Shorter than a tag (plus explicit nonce).
		if _, _, err := c.Open(ApplicationData, tls.VersionTLS12, make([]byte, s.ExplicitNonceLen+15)); !errors.Is(err, ErrBadRecordMAC) {
			t.Errorf("short body: %v", err)
		}
		maxLen := MaxCiphertextTLS12
		if s.TLS13 {
			maxLen = MaxCiphertextTLS13
			if _, _, err := c.Open(Handshake, tls.VersionTLS12, make([]byte, 100)); !errors.Is(err, ErrUnexpectedMessage) {
				t.Errorf("TLS 1.3 record with outer type handshake: %v", err)
			}
		}
		if _, _, err := c.Open(ApplicationData, tls.VersionTLS12, make([]byte, maxLen+1)); !errors.Is(err, ErrRecordOverflow) {
			t.Errorf("oversized body: %v", err)
		}
		if _, _, err := c.Open(24, tls.VersionTLS12, make([]byte, 100)); !errors.Is(err, ErrUnexpectedMessage) {
			t.Errorf("unknown record type: %v", err)
		}
	})
}

func TestSealErrors(t *testing.T) {
	forEachSuite(t, func(t *testing.T, s *Suite) {
		c := newTestCipher(t, s.ID, 3)
		type tc struct {
			name      string
			typ       ContentType
			plaintext []byte
			padding   int
		}
		tests := []tc{
			{"too long", ApplicationData, make([]byte, MaxPlaintext+1), 0},
			{"unknown type", 24, []byte("x"), 0},
			{"empty handshake", Handshake, nil, 0},
			{"empty alert", Alert, nil, 0},
		}
		if s.TLS13 {
			tests = append(tests,
				tc{"change_cipher_spec", ChangeCipherSpec, []byte{1}, 0},
				tc{"negative padding", ApplicationData, []byte("x"), -1},
				tc{"padding over the limit", ApplicationData, []byte("x"), MaxPlaintext},
				tc{"padding of an empty handshake", Handshake, nil, 10},
			)
		} else {
			tests = append(tests, tc{"padding", ApplicationData, []byte("x"), 1})
		}
		dst := []byte("keep")
		for _, tt := range tests {
			out, err := c.Seal(dst, tt.typ, tt.plaintext, tt.padding)
			if err == nil || !bytes.Equal(out, []byte("keep")) || c.Seq() != 3 {
				t.Errorf("%s: err %v, dst %q, seq %d; want an error and nothing sealed", tt.name, err, out, c.Seq())
			}
		}
	})
}

func TestSequenceExhausted(t *testing.T) {
	forEachSuite(t, func(t *testing.T, s *Suite) {
		sealer, opener := newTestCipher(t, s.ID, math.MaxUint64-1), newTestCipher(t, s.ID, math.MaxUint64-1)
		record, err := sealer.Seal(nil, ApplicationData, []byte("last"), 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := sealer.Seal(nil, ApplicationData, []byte("wraps"), 0); !errors.Is(err, ErrSequenceExhausted) {
			t.Errorf("Seal at seq 2^64-1: %v", err)
		}
		if _, p, err := openRecord(t, opener, record); err != nil || string(p) != "last" {
			t.Errorf("Open at seq 2^64-2: %q, %v", p, err)
		}
		if _, _, err := opener.Open(ApplicationData, tls.VersionTLS12, bytes.Clone(record[HeaderLen:])); !errors.Is(err, ErrSequenceExhausted) {
			t.Errorf("Open at seq 2^64-1: %v", err)
		}
		if alertOf(ErrSequenceExhausted) != 0 {
			t.Error("ErrSequenceExhausted is a local failure and carries no peer alert")
		}
	})
}

func TestUpdate(t *testing.T) {
	forEachSuite(t, func(t *testing.T, s *Suite) {
		c := newTestCipher(t, s.ID, 7)
		if !s.TLS13 {
			if err := c.Update(); err == nil {
				t.Error("Update of a TLS 1.2 Cipher succeeded")
			}
			return
		}
		old := newTestCipher(t, s.ID, 0)
		// RFC 8446 §7.2, applied twice by hand.
		secret := testKeyMaterial(s.Hash.Size(), 1)
		for range 2 {
			secret = ExpandLabel(s.Hash, secret, "traffic upd", nil, s.Hash.Size())
			if err := c.Update(); err != nil {
				t.Fatal(err)
			}
			if c.Seq() != 0 {
				t.Errorf("seq %d after Update, want 0", c.Seq())
			}
			want, err := NewTLS13Cipher(s.ID, secret, 0)
			if err != nil {
				t.Fatal(err)
			}
			got, err := c.Seal(nil, ApplicationData, []byte("after update"), 0)
			if err != nil {
				t.Fatal(err)
			}
			wantRec, _ := want.Seal(nil, ApplicationData, []byte("after update"), 0)
			if !bytes.Equal(got, wantRec) {
				t.Fatal("updated Cipher does not match the RFC 8446 §7.2 derivation")
			}
			if _, _, err := openRecord(t, old, got); !errors.Is(err, ErrBadRecordMAC) {
				t.Errorf("old keys opened a record sealed after Update: %v", err)
			}
			// The next round's record must not open under this round's keys.
			if old, err = NewTLS13Cipher(s.ID, secret, 0); err != nil {
				t.Fatal(err)
			}
		}
	})
}

func TestNewCipherErrors(t *testing.T) {
	k16, k32 := make([]byte, 16), make([]byte, 32)
	tests := []struct {
		name string
		new  func() (*Cipher, error)
	}{
		{"TLS 1.2 unknown suite", func() (*Cipher, error) { return NewTLS12Cipher(0x0005, k16, k16[:4], 0) }},
		{"TLS 1.2 with a TLS 1.3 suite", func() (*Cipher, error) { return NewTLS12Cipher(tls.TLS_AES_128_GCM_SHA256, k16, k16[:12], 0) }},
		{"TLS 1.2 short key", func() (*Cipher, error) { return NewTLS12Cipher(tls.TLS_RSA_WITH_AES_256_GCM_SHA384, k16, k16[:4], 0) }},
		{"TLS 1.2 GCM 12-byte IV", func() (*Cipher, error) {
			return NewTLS12Cipher(tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, k16, k16[:12], 0)
		}},
		{"TLS 1.2 ChaCha20 4-byte IV", func() (*Cipher, error) {
			return NewTLS12Cipher(tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256, k32, k32[:4], 0)
		}},
		{"TLS 1.3 with a TLS 1.2 suite", func() (*Cipher, error) { return NewTLS13Cipher(tls.TLS_RSA_WITH_AES_128_GCM_SHA256, k32, 0) }},
		{"TLS 1.3 unknown suite", func() (*Cipher, error) { return NewTLS13Cipher(0x1305, k32, 0) }},
		{"TLS 1.3 SHA-384 suite, 32-byte secret", func() (*Cipher, error) { return NewTLS13Cipher(tls.TLS_AES_256_GCM_SHA384, k32, 0) }},
	}
	for _, tt := range tests {
		if c, err := tt.new(); err == nil || c != nil {
			t.Errorf("%s: %v, %v; want an error", tt.name, c, err)
		}
	}
}

func TestCipherVersionAndOverhead(t *testing.T) {
	forEachSuite(t, func(t *testing.T, s *Suite) {
		c := newTestCipher(t, s.ID, 0)
		wantVersion := uint16(tls.VersionTLS12)
		if s.TLS13 {
			wantVersion = tls.VersionTLS13
		}
		if c.Version() != wantVersion {
			t.Errorf("Version() = %#04x, want %#04x", c.Version(), wantVersion)
		}
		for _, n := range []int{0, 1, 1000} {
			rec, err := c.Seal(nil, ApplicationData, make([]byte, n), 0)
			if err != nil {
				t.Fatal(err)
			}
			if len(rec) != n+c.Overhead() {
				t.Errorf("%d-byte plaintext sealed to %d bytes, Overhead() = %d", n, len(rec), c.Overhead())
			}
		}
	})
}

func TestCipherFormatHidesSecrets(t *testing.T) {
	secret := testKeyMaterial(32, 1)
	c, err := NewTLS13Cipher(tls.TLS_CHACHA20_POLY1305_SHA256, secret, 42)
	if err != nil {
		t.Fatal(err)
	}
	key, iv := TrafficKeys(lookupSuite(tls.TLS_CHACHA20_POLY1305_SHA256), secret)
	const want = "record.Cipher{TLS_CHACHA20_POLY1305_SHA256 seq=42}"
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%x", "%X", "%d", "%q"} {
		for _, arg := range []any{c, *c} {
			got := fmt.Sprintf(verb, arg)
			if got != want {
				t.Errorf("Sprintf(%q, %T) = %q, want %q", verb, arg, got, want)
			}
			for _, b := range [][]byte{secret, key, iv} {
				if strings.Contains(got, fmt.Sprintf("%x", b[:4])) || strings.Contains(got, fmt.Sprint(b[:4])) {
					t.Errorf("Sprintf(%q, %T) shows key material", verb, arg)
				}
			}
		}
	}
	if got := fmt.Sprint((*Cipher)(nil)); got != "<nil>" {
		t.Errorf("nil Cipher prints %q", got)
	}
}

// TestSealInPlace seals a plaintext that already sits where the record body
// goes.
func TestSealInPlace(t *testing.T) {
	forEachSuite(t, func(t *testing.T, s *Suite) {
		c := newTestCipher(t, s.ID, 0)
		msg := []byte("sealed where it lies")
		want, err := newTestCipher(t, s.ID, 0).Seal(nil, ApplicationData, msg, 0)
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 0, len(msg)+c.Overhead())
		at := HeaderLen + s.ExplicitNonceLen
		plaintext := buf[at : at+len(msg)]
		copy(plaintext, msg)
		got, err := c.Seal(buf, ApplicationData, plaintext, 0)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) || &got[0] != &buf[:1][0] {
			t.Errorf("in-place Seal produced a different record or reallocated")
		}
	})
}

// TestNoAllocations guards the hot path: Seal into a buffer with room and
// Open in place allocate nothing.
func TestNoAllocations(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector changes allocation counts")
	}
	forEachSuite(t, func(t *testing.T, s *Suite) {
		sealer, opener := newTestCipher(t, s.ID, 0), newTestCipher(t, s.ID, 0)
		plaintext := make([]byte, 1000)
		padding := 0
		if s.TLS13 {
			padding = 100
		}
		dst := make([]byte, 0, len(plaintext)+padding+sealer.Overhead())
		var rec []byte
		if n := testing.AllocsPerRun(100, func() {
			rec, _ = sealer.Seal(dst[:0], ApplicationData, plaintext, padding)
		}); n != 0 {
			t.Errorf("Seal: %v allocations", n)
		}
		buf := make([]byte, len(rec))
		if n := testing.AllocsPerRun(100, func() {
			copy(buf, rec)
			opener.seq = sealer.seq - 1
			typ, version, body, _, _ := Parse(buf, MaxCiphertextTLS12)
			if _, _, err := opener.Open(typ, version, body); err != nil {
				t.Fatal(err)
			}
		}); n != 0 {
			t.Errorf("Open: %v allocations", n)
		}
	})
}
