package record

import (
	"crypto/cipher"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"math"
	"slices"
)

// nonceLen is the AEAD nonce length of every supported suite (RFC 5288 §3,
// RFC 7905 §2, RFC 8446 §5.3).
const nonceLen = 12

// Cipher protects the records of one direction of a connection: it holds the
// AEAD key, the IV and the next sequence number.
//
// A Cipher is not safe for concurrent use; each direction is sequential by
// nature. It never prints its keys: formatting it with any verb shows only
// the suite and sequence number.
type Cipher struct {
	suite *Suite
	aead  cipher.AEAD
	iv    [nonceLen]byte // TLS 1.2 AES-GCM: the salt in iv[:4]; otherwise the nonce mask
	seq   uint64
	// secret is the TLS 1.3 traffic secret, kept for KeyUpdate.
	secret []byte

	// Scratch space for the nonce and additional data. They live here
	// because passing a stack array to the AEAD interface would move it to
	// the heap on every record.
	nonce [nonceLen]byte
	aad   [13]byte
}

// NewTLS12Cipher returns a TLS 1.2 Cipher for suiteID whose next record has
// sequence number seq. key and fixedIV are the write key and IV of the
// direction, cut from the key block (RFC 5246 §6.3): for AES-GCM, fixedIV is
// the 4-byte salt and the 8-byte explicit nonce is the sequence number
// (RFC 5288 §3); for ChaCha20-Poly1305, fixedIV is 12 bytes XORed with the
// sequence number and there is no explicit nonce (RFC 7905 §2). The Cipher
// copies what it needs; the caller may wipe key and fixedIV.
func NewTLS12Cipher(suiteID uint16, key, fixedIV []byte, seq uint64) (*Cipher, error) {
	s := lookupSuite(suiteID)
	if s == nil || s.TLS13 {
		return nil, fmt.Errorf("record: cipher suite %#04x is not a supported TLS 1.2 suite", suiteID)
	}
	if len(key) != s.KeyLen || len(fixedIV) != s.FixedIVLen {
		return nil, fmt.Errorf("record: %s needs a %d-byte key and %d-byte IV, got %d and %d",
			tls.CipherSuiteName(suiteID), s.KeyLen, s.FixedIVLen, len(key), len(fixedIV))
	}
	aead, err := s.newAEAD(key)
	if err != nil {
		return nil, fmt.Errorf("record: %s: %w", tls.CipherSuiteName(suiteID), err)
	}
	c := &Cipher{suite: s, aead: aead, seq: seq}
	copy(c.iv[:], fixedIV)
	return c, nil
}

// NewTLS13Cipher returns a TLS 1.3 Cipher for suiteID keyed from
// trafficSecret, whose next record has sequence number seq (0 for a fresh
// secret, RFC 8446 §5.3). The key and IV are derived as in TrafficKeys. The
// Cipher keeps a copy of the secret for Update.
func NewTLS13Cipher(suiteID uint16, trafficSecret []byte, seq uint64) (*Cipher, error) {
	s := lookupSuite(suiteID)
	if s == nil || !s.TLS13 {
		return nil, fmt.Errorf("record: cipher suite %#04x is not a supported TLS 1.3 suite", suiteID)
	}
	if len(trafficSecret) != s.Hash.Size() {
		return nil, fmt.Errorf("record: %s needs a %d-byte traffic secret, got %d",
			tls.CipherSuiteName(suiteID), s.Hash.Size(), len(trafficSecret))
	}
	c := &Cipher{suite: s, seq: seq}
	if err := c.setTrafficSecret(append([]byte(nil), trafficSecret...)); err != nil {
		return nil, err
	}
	return c, nil
}

// setTrafficSecret keys c from secret, which c takes ownership of.
func (c *Cipher) setTrafficSecret(secret []byte) error {
	key, iv := TrafficKeys(c.suite, secret)
	aead, err := c.suite.newAEAD(key)
	clear(key)
	if err != nil {
		return fmt.Errorf("record: %s: %w", tls.CipherSuiteName(c.suite.ID), err)
	}
	c.aead = aead
	copy(c.iv[:], iv)
	clear(iv)
	clear(c.secret)
	c.secret = secret
	return nil
}

// Update moves c, in place, to the next TLS 1.3 application traffic secret
// (RFC 8446 §7.2):
//
//	application_traffic_secret_N+1 = HKDF-Expand-Label(application_traffic_secret_N, "traffic upd", "", Hash.length)
//
// and resets the sequence number to 0 (RFC 8446 §5.3). The old secret is
// wiped. The sender calls it right after sealing its KeyUpdate message, the
// receiver right after opening one. It fails for a TLS 1.2 Cipher.
func (c *Cipher) Update() error {
	if !c.suite.TLS13 {
		return fmt.Errorf("record: KeyUpdate needs TLS 1.3")
	}
	if c.secret == nil {
		return fmt.Errorf("record: KeyUpdate needs the traffic secret, and this Cipher was built from a key (NewTLS13KeyCipher)")
	}
	if err := c.setTrafficSecret(nextTrafficSecret(c.suite.Hash, c.secret)); err != nil {
		return err
	}
	c.seq = 0
	return nil
}

// Seq returns the sequence number of the next record.
func (c *Cipher) Seq() uint64 { return c.seq }

// Version returns the protocol version c protects: tls.VersionTLS12 or
// tls.VersionTLS13.
func (c *Cipher) Version() uint16 {
	if c.suite.TLS13 {
		return tls.VersionTLS13
	}
	return tls.VersionTLS12
}

// Overhead returns how many bytes a sealed record adds to its plaintext and
// padding: the header, any explicit nonce, the TLS 1.3 inner content type and
// the AEAD tag. Callers use it to size buffers so Seal does not reallocate.
func (c *Cipher) Overhead() int {
	n := HeaderLen + c.suite.ExplicitNonceLen + c.aead.Overhead()
	if c.suite.TLS13 {
		n++
	}
	return n
}

// Format prints the suite and sequence number, and never key material,
// whatever the verb. Its receiver is a value so that a dereferenced Cipher
// is covered too.
func (c Cipher) Format(f fmt.State, verb rune) {
	fmt.Fprintf(f, "record.Cipher{%s seq=%d}", tls.CipherSuiteName(c.suite.ID), c.seq)
}

// Seal protects plaintext as one record of type typ, appends the whole record
// (header included) to dst and returns the extended slice. With enough
// spare capacity in dst (see Overhead) it does not allocate.
//
// In TLS 1.3 the record carries TLSInnerPlaintext = plaintext || typ ||
// padding zero bytes, under outer type application_data and legacy version
// 0x0303, with the header as additional data (RFC 8446 §5.2, §5.4). In
// TLS 1.2 padding must be 0, and the additional data is seq || type ||
// version || length (RFC 5246 §6.2.3.3).
//
// plaintext must not overlap dst's spare capacity, except when it sits
// exactly where the record body goes (dst[len(dst)+HeaderLen+ExplicitNonceLen:])
// for sealing in place.
//
// Seal fails, leaving c unchanged, if plaintext is longer than MaxPlaintext,
// if plaintext plus padding would exceed it in TLS 1.3, for an empty
// non-application_data fragment (RFC 8446 §5.1), for change_cipher_spec in
// TLS 1.3 (RFC 8446 §5: it is never protected), and with
// ErrSequenceExhausted when the sequence number would wrap.
func (c *Cipher) Seal(dst []byte, typ ContentType, plaintext []byte, padding int) ([]byte, error) {
	tls13 := c.suite.TLS13
	switch {
	case !typ.known():
		return dst, fmt.Errorf("record: seal: unknown content type %d", uint8(typ))
	case len(plaintext) > MaxPlaintext:
		return dst, fmt.Errorf("record: seal: %d-byte plaintext exceeds %d", len(plaintext), MaxPlaintext)
	case len(plaintext) == 0 && typ != ApplicationData:
		return dst, fmt.Errorf("record: seal: empty %v fragment", typ)
	case tls13 && typ == ChangeCipherSpec:
		return dst, fmt.Errorf("record: seal: change_cipher_spec is never protected in TLS 1.3")
	case tls13 && (padding < 0 || padding > MaxPlaintext-len(plaintext)):
		return dst, fmt.Errorf("record: seal: padding %d out of range for a %d-byte plaintext", padding, len(plaintext))
	case !tls13 && padding != 0:
		return dst, fmt.Errorf("record: seal: padding needs TLS 1.3")
	case c.seq == math.MaxUint64:
		return dst, ErrSequenceExhausted
	}

	explicit := c.suite.ExplicitNonceLen
	inner := len(plaintext)
	outerType := typ
	if tls13 {
		inner += 1 + padding
		outerType = ApplicationData
	}
	length := explicit + inner + c.aead.Overhead()
	// One growth up front: the appends below never reallocate halfway,
	// which in-place sealing relies on.
	dst = slices.Grow(dst, HeaderLen+length)
	start := len(dst)
	dst = append(dst, byte(outerType), 3, 3, byte(length>>8), byte(length))
	c.setNonce(c.seq)
	dst = append(dst, c.nonce[nonceLen-explicit:]...)
	body := len(dst)
	dst = append(dst, plaintext...)

	var aad []byte
	if tls13 {
		dst = append(dst, byte(typ))
		dst = append(dst, make([]byte, padding)...)
		aad = dst[start : start+HeaderLen]
	} else {
		aad = c.tls12AAD(typ, tls.VersionTLS12, len(plaintext))
	}
	dst = c.aead.Seal(dst[:body], c.nonce[:], dst[body:], aad)
	c.seq++
	return dst, nil
}

// Open authenticates and decrypts, in place, the body of a record whose
// header carried typ and version (as returned by Parse), and returns the
// content type and the plaintext, a subslice of body.
//
// In TLS 1.3 the outer type must be application_data (change_cipher_spec is
// not protected and is the caller's to handle, RFC 8446 §5); the padding is
// stripped and the inner type returned (RFC 8446 §5.4).
//
// Errors: ErrBadRecordMAC if the record fails authentication or is too short
// to hold a tag; then no plaintext is returned and body is zeroed, so not a
// byte of unauthenticated plaintext survives. ErrRecordOverflow for a body
// over MaxCiphertextTLS12/13 or a plaintext over MaxPlaintext (RFC 8446
// §5.2, 5.4, RFC 5246 §6.2). ErrUnexpectedMessage for an inner plaintext with
// no non-zero byte, an unknown or change_cipher_spec inner type, or an empty
// non-application_data fragment. ErrSequenceExhausted when the sequence
// number would wrap. The sequence number advances only when a record
// authenticates.
func (c *Cipher) Open(typ ContentType, version uint16, body []byte) (ContentType, []byte, error) {
	tls13 := c.suite.TLS13
	maxLen := MaxCiphertextTLS12
	if tls13 {
		maxLen = MaxCiphertextTLS13
	}
	explicit := c.suite.ExplicitNonceLen
	switch {
	case len(body) > maxLen:
		return 0, nil, fmt.Errorf("%w: %d-byte protected record, limit %d", ErrRecordOverflow, len(body), maxLen)
	case tls13 && typ != ApplicationData, !typ.known():
		return 0, nil, fmt.Errorf("%w: protected record of type %v", ErrUnexpectedMessage, typ)
	case c.seq == math.MaxUint64:
		return 0, nil, ErrSequenceExhausted
	case len(body) < explicit+c.aead.Overhead():
		clear(body)
		return 0, nil, ErrBadRecordMAC
	}

	c.setNonce(c.seq)
	if explicit > 0 {
		// RFC 5288 §3: the receiver uses the nonce_explicit the sender chose.
		copy(c.nonce[nonceLen-explicit:], body[:explicit])
	}
	ciphertext := body[explicit:]
	var aad []byte
	if tls13 {
		aad = c.aad[:HeaderLen]
		aad[0] = byte(typ)
		binary.BigEndian.PutUint16(aad[1:], version)
		binary.BigEndian.PutUint16(aad[3:], uint16(len(body)))
	} else {
		aad = c.tls12AAD(typ, version, len(ciphertext)-c.aead.Overhead())
	}
	plaintext, err := c.aead.Open(ciphertext[:0], c.nonce[:], ciphertext, aad)
	if err != nil {
		clear(body)
		return 0, nil, ErrBadRecordMAC
	}
	c.seq++

	if tls13 {
		// RFC 8446 §5.4: the encoded TLSInnerPlaintext is at most 2^14+1
		// bytes; the content type is the last non-zero byte.
		if len(plaintext) > MaxPlaintext+1 {
			return 0, nil, fmt.Errorf("%w: %d-byte inner plaintext", ErrRecordOverflow, len(plaintext))
		}
		i := len(plaintext) - 1
		for i >= 0 && plaintext[i] == 0 {
			i--
		}
		if i < 0 {
			return 0, nil, fmt.Errorf("%w: inner plaintext has no content type", ErrUnexpectedMessage)
		}
		typ = ContentType(plaintext[i])
		plaintext = plaintext[:i]
		if !typ.known() || typ == ChangeCipherSpec {
			return 0, nil, fmt.Errorf("%w: protected record of inner type %v", ErrUnexpectedMessage, typ)
		}
	} else if len(plaintext) > MaxPlaintext {
		return 0, nil, fmt.Errorf("%w: %d-byte plaintext", ErrRecordOverflow, len(plaintext))
	}
	if err := checkFragment(typ, len(plaintext)); err != nil {
		return 0, nil, err
	}
	return typ, plaintext, nil
}

// setNonce builds the nonce of record seq in c.nonce: the salt followed by
// seq as the explicit nonce for TLS 1.2 AES-GCM (RFC 5288 §3), otherwise the
// IV XORed with seq left-padded to 12 bytes (RFC 7905 §2, RFC 8446 §5.3).
func (c *Cipher) setNonce(seq uint64) {
	c.nonce = c.iv
	tail := c.nonce[nonceLen-8:]
	if c.suite.ExplicitNonceLen > 0 {
		binary.BigEndian.PutUint64(tail, seq)
		return
	}
	binary.BigEndian.PutUint64(tail, binary.BigEndian.Uint64(tail)^seq)
}

// tls12AAD builds the TLS 1.2 additional data seq_num || type || version ||
// length of the plaintext (RFC 5246 §6.2.3.3) in c.aad.
func (c *Cipher) tls12AAD(typ ContentType, version uint16, length int) []byte {
	binary.BigEndian.PutUint64(c.aad[:8], c.seq)
	c.aad[8] = byte(typ)
	binary.BigEndian.PutUint16(c.aad[9:11], version)
	binary.BigEndian.PutUint16(c.aad[11:13], uint16(length))
	return c.aad[:]
}
