package engine

import (
	"crypto/subtle"
	"io"

	"filippo.io/edwards25519"
	"filippo.io/edwards25519/field"
)

// x25519Share answers a TLS 1.3 X25519 key share (RFC 8446, Section 7.4.2;
// RFC 7748, Section 6.1): a fresh private key, the server's public value
// and the shared secret.
//
// crypto/ecdh would compute the public value with the same variable-base
// Montgomery ladder as the shared secret (and offers no ECDH without it):
// the public value is [k]B, a fixed-base multiplication, which on the
// birationally equivalent Edwards curve uses precomputed tables (RFC 7748,
// Section 4.1 gives the map; filippo.io/edwards25519 implements both, in
// constant time). Half of the key exchange's two multiplications is then
// about three times cheaper (issue 12: X25519 key generation was 11% of the
// service's CPU per handshake).
func x25519Share(rand io.Reader, peer []byte) (shared, public []byte, err error) {
	if len(peer) != 32 {
		return nil, nil, errInvalidKeyShare
	}
	var k [32]byte
	if _, err := io.ReadFull(rand, k[:]); err != nil {
		return nil, nil, err
	}
	// SetBytesWithClamping clamps as RFC 7748, Section 5 decodes a scalar,
	// and reduces modulo the order of B, which does not change [k]B.
	s, err := edwards25519.NewScalar().SetBytesWithClamping(k[:])
	if err != nil {
		return nil, nil, err
	}
	public = new(edwards25519.Point).ScalarBaseMult(s).BytesMontgomery()
	shared, err = x25519(&k, peer)
	if err != nil {
		return nil, nil, err
	}
	return shared, public, nil
}

// x25519 is the X25519 function of RFC 7748, Section 5: the Montgomery
// ladder over GF(2^255-19), in constant time (a fixed number of steps,
// conditional swaps, no branch or index on secret bits). The peer's u is
// decoded as the RFC says (top bit ignored, non-canonical values
// accepted); an all-zero result, which a low-order peer value gives, is
// refused (RFC 7748, Section 6.1; RFC 8446, Section 7.4.2).
func x25519(scalar *[32]byte, u []byte) ([]byte, error) {
	k := *scalar
	k[0] &= 248
	k[31] &= 127
	k[31] |= 64

	var x1, x2, z2, x3, z3 field.Element
	if _, err := x1.SetBytes(u); err != nil {
		return nil, errInvalidKeyShare
	}
	x2.One()
	x3.Set(&x1)
	z3.One()
	var a, aa, b, bb, e, c, d, da, cb field.Element
	swap := 0
	for t := 254; t >= 0; t-- {
		kt := int(k[t/8]>>(t%8)) & 1
		swap ^= kt
		x2.Swap(&x3, swap)
		z2.Swap(&z3, swap)
		swap = kt

		a.Add(&x2, &z2)
		aa.Square(&a)
		b.Subtract(&x2, &z2)
		bb.Square(&b)
		e.Subtract(&aa, &bb)
		c.Add(&x3, &z3)
		d.Subtract(&x3, &z3)
		da.Multiply(&d, &a)
		cb.Multiply(&c, &b)
		x3.Add(&da, &cb)
		x3.Square(&x3)
		z3.Subtract(&da, &cb)
		z3.Square(&z3)
		z3.Multiply(&x1, &z3)
		x2.Multiply(&aa, &bb)
		z2.Mult32(&e, 121665) // a24 = (486662 - 2) / 4
		z2.Add(&aa, &z2)
		z2.Multiply(&e, &z2)
	}
	x2.Swap(&x3, swap)
	z2.Swap(&z3, swap)
	z2.Invert(&z2)
	x2.Multiply(&x2, &z2)
	out := x2.Bytes()
	if subtle.ConstantTimeCompare(out, make([]byte, 32)) == 1 {
		return nil, errInvalidKeyShare
	}
	return out, nil
}
