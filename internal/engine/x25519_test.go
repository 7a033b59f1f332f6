package engine

import (
	"bytes"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/hex"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func unhex(t *testing.T, s string) []byte {
	b, err := hex.DecodeString(s)
	require.NoError(t, err)
	return b
}

// TestX25519RFC7748: the Diffie-Hellman vector of RFC 7748, Section 6.1
// (public values and shared secret, both ways) and the iterated function
// of Section 5.2 after 1 and 1,000 iterations.
func TestX25519RFC7748(t *testing.T) {
	alice := unhex(t, "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
	bob := unhex(t, "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
	alicePub := unhex(t, "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
	bobPub := unhex(t, "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
	want := unhex(t, "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")

	shared, public, err := x25519Share(bytes.NewReader(alice), bobPub)
	require.NoError(t, err)
	assert.Equal(t, alicePub, public)
	assert.Equal(t, want, shared)
	shared, public, err = x25519Share(bytes.NewReader(bob), alicePub)
	require.NoError(t, err)
	assert.Equal(t, bobPub, public)
	assert.Equal(t, want, shared)

	k, u := make([]byte, 32), make([]byte, 32)
	k[0], u[0] = 9, 9
	for i := 1; i <= 1000; i++ {
		out, err := x25519((*[32]byte)(k), u)
		require.NoError(t, err)
		k, u = out, k
		switch i {
		case 1:
			assert.Equal(t, "422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079", hex.EncodeToString(k))
		case 1000:
			assert.Equal(t, "684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51", hex.EncodeToString(k))
		}
	}
}

// TestX25519AgreesWithCryptoECDH: for random private keys and peer values,
// public value and shared secret are crypto/ecdh's, including peer values
// with the top bit set or not reduced modulo p (RFC 7748, Section 5:
// accepted, the top bit ignored).
func TestX25519AgreesWithCryptoECDH(t *testing.T) {
	for i := range 300 {
		priv := make([]byte, 32)
		rand.Read(priv)
		peer := make([]byte, 32)
		rand.Read(peer)
		switch i % 3 {
		case 0: // an honest peer's public value
			k, err := ecdh.X25519().GenerateKey(rand.Reader)
			require.NoError(t, err)
			peer = k.PublicKey().Bytes()
		case 1: // any 32 bytes, top bit set
			peer[31] |= 0x80
		case 2: // p + small, not reduced
			peer = unhex(t, "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f")
			peer[0] += byte(i)
		}
		ref, err := ecdh.X25519().NewPrivateKey(priv)
		require.NoError(t, err)
		refPeer, err := ecdh.X25519().NewPublicKey(peer)
		require.NoError(t, err)
		refShared, refErr := ref.ECDH(refPeer)

		shared, public, err := x25519Share(bytes.NewReader(priv), peer)
		if refErr != nil {
			assert.ErrorIs(t, err, errInvalidKeyShare, "peer %x", peer)
			continue
		}
		require.NoError(t, err, "peer %x", peer)
		assert.Equal(t, ref.PublicKey().Bytes(), public, "public value of %x", priv)
		assert.Equal(t, refShared, shared, "shared secret of %x with %x", priv, peer)
	}
}

// TestX25519LowOrder: a peer value of small order makes the shared secret
// all zeros, which RFC 8446, Section 7.4.2 says to refuse; so is a share
// of the wrong length.
func TestX25519LowOrder(t *testing.T) {
	for _, u := range []string{
		"0000000000000000000000000000000000000000000000000000000000000000", // 0
		"0100000000000000000000000000000000000000000000000000000000000000", // 1
		"e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800", // order 8
		"5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157", // order 8
		"ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f", // p - 1
		"edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f", // p
		"eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f", // p + 1
	} {
		_, _, err := x25519Share(rand.Reader, unhex(t, u))
		assert.ErrorIs(t, err, errInvalidKeyShare, "u = %s", u)
	}
	for _, n := range []int{0, 31, 33} {
		_, _, err := x25519Share(rand.Reader, make([]byte, n))
		assert.ErrorIs(t, err, errInvalidKeyShare, "%d bytes", n)
	}
}

// BenchmarkX25519Share: the server's side of an X25519 exchange, here and
// with crypto/ecdh (GenerateKey and ECDH), in one run.
//
//	go test -run '^$' -bench X25519Share -benchmem ./internal/engine/
func BenchmarkX25519Share(b *testing.B) {
	k, err := ecdh.X25519().GenerateKey(rand.Reader)
	require.NoError(b, err)
	peer := k.PublicKey().Bytes()
	b.Run("engine", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, _, err := x25519Share(rand.Reader, peer); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("crypto_ecdh", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, _, err := ecdhe(ecdh.X25519(), rand.Reader, peer); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// FuzzX25519: for any peer share and private key, x25519Share agrees with
// crypto/ecdh: the same public value and secret, or both refuse.
func FuzzX25519(f *testing.F) {
	f.Add(make([]byte, 32), make([]byte, 32))
	f.Add(bytes.Repeat([]byte{0xff}, 32), bytes.Repeat([]byte{0x42}, 32))
	f.Add([]byte{9}, bytes.Repeat([]byte{1}, 32))
	f.Fuzz(func(t *testing.T, peer, priv []byte) {
		if len(priv) != 32 {
			return
		}
		shared, public, err := x25519Share(bytes.NewReader(priv), peer)
		refPeer, refErr := ecdh.X25519().NewPublicKey(peer)
		if refErr != nil { // the wrong length
			require.ErrorIs(t, err, errInvalidKeyShare)
			return
		}
		ref, err2 := ecdh.X25519().NewPrivateKey(priv)
		require.NoError(t, err2)
		refShared, refErr := ref.ECDH(refPeer)
		if refErr != nil {
			require.ErrorIs(t, err, errInvalidKeyShare)
			return
		}
		require.NoError(t, err)
		require.Equal(t, ref.PublicKey().Bytes(), public)
		require.Equal(t, refShared, shared)
	})
}
