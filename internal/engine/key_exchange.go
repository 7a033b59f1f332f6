package engine

import (
	"crypto/ecdh"
	"crypto/elliptic"
	"crypto/mlkem"
	"crypto/tls"
	"errors"
	"io"
	"slices"
)

// Key exchange groups, RFC 8446, Section 4.2.7, RFC 8422, Section 5.1.1 and
// draft-ietf-tls-ecdhe-mlkem (X25519MLKEM768).

// defaultGroups is the default server preference. The hybrid post-quantum
// group comes first; it exists only in TLS 1.3. P-521 comes last: it is the
// slowest and adds nothing a client that also offers X25519 or P-256 needs,
// but a client offering only secp521r1 (as Go's and OpenSSL's can be told
// to) must still find a group in common.
var defaultGroups = []tls.CurveID{tls.X25519MLKEM768, tls.X25519, tls.CurveP256, tls.CurveP384, tls.CurveP521}

// ecdhCurve returns the classical curve of a group, nil if unsupported.
func ecdhCurve(g tls.CurveID) ecdh.Curve {
	switch g {
	case tls.X25519:
		return ecdh.X25519()
	case tls.CurveP256:
		return ecdh.P256()
	case tls.CurveP384:
		return ecdh.P384()
	case tls.CurveP521:
		return ecdh.P521()
	}
	return nil
}

// curveID returns the group of an ECDSA key's curve.
func curveID(c elliptic.Curve) (tls.CurveID, bool) {
	switch c {
	case elliptic.P256():
		return tls.CurveP256, true
	case elliptic.P384():
		return tls.CurveP384, true
	case elliptic.P521():
		return tls.CurveP521, true
	}
	return 0, false
}

func isHybrid(g tls.CurveID) bool { return g == tls.X25519MLKEM768 }

func groupSupported(g tls.CurveID) bool { return isHybrid(g) || ecdhCurve(g) != nil }

var errInvalidKeyShare = errors.New("invalid key share")

// serverKeyShare13 answers a TLS 1.3 client key share (RFC 8446, Section
// 4.2.8): it returns the shared secret and the server's key_exchange value.
func serverKeyShare13(g tls.CurveID, rand io.Reader, clientShare []byte) (shared, serverShare []byte, err error) {
	switch {
	case g == tls.X25519:
		return x25519Share(rand, clientShare)
	case !isHybrid(g):
		return ecdhe(ecdhCurve(g), rand, clientShare)
	}
	// draft-ietf-tls-ecdhe-mlkem, Section 4.1: the client share is the
	// ML-KEM-768 encapsulation key followed by the X25519 share; the server
	// answers with the ML-KEM ciphertext followed by its X25519 share, and
	// the shared secret is the ML-KEM secret followed by the X25519 one.
	if len(clientShare) != mlkem.EncapsulationKeySize768+32 {
		return nil, nil, errInvalidKeyShare
	}
	ek, err := mlkem.NewEncapsulationKey768(clientShare[:mlkem.EncapsulationKeySize768])
	if err != nil {
		return nil, nil, errInvalidKeyShare
	}
	ecdhShared, ecdhShare, err := x25519Share(rand, clientShare[mlkem.EncapsulationKeySize768:])
	if err != nil {
		return nil, nil, err
	}
	kemShared, ciphertext := ek.Encapsulate()
	return append(kemShared, ecdhShared...), append(ciphertext, ecdhShare...), nil
}

// ecdhe generates an ephemeral key on curve and combines it with the peer's
// public value. For X25519 a low-order peer value makes ECDH fail, which is
// the check RFC 8446, Section 7.4.2 asks for.
func ecdhe(curve ecdh.Curve, rand io.Reader, peer []byte) (shared, public []byte, err error) {
	peerKey, err := curve.NewPublicKey(peer)
	if err != nil {
		return nil, nil, errInvalidKeyShare
	}
	priv, err := curve.GenerateKey(rand)
	if err != nil {
		return nil, nil, err
	}
	shared, err = priv.ECDH(peerKey)
	if err != nil {
		return nil, nil, errInvalidKeyShare
	}
	return shared, priv.PublicKey().Bytes(), nil
}

// selectGroup13 picks the TLS 1.3 group: a post-quantum hybrid if both sides
// support one (draft-ietf-tls-key-share-prediction, Section 4: worth a
// HelloRetryRequest), else a group the client already sent a share for, else
// the server's first choice among the client's groups.
func selectGroup13(configured []tls.CurveID, ch *clientHelloMsg) (tls.CurveID, bool) {
	mutual := slices.DeleteFunc(slices.Clone(configured), func(g tls.CurveID) bool {
		return !slices.Contains(ch.supportedGroups, g)
	})
	if len(mutual) == 0 {
		return 0, false
	}
	for _, g := range mutual {
		if isHybrid(g) {
			return g, true
		}
	}
	for _, g := range mutual {
		if ch.keyShare(g) != nil {
			return g, true
		}
	}
	return mutual[0], true
}

// selectGroup12 picks the ECDHE curve for TLS 1.2. A client that sends no
// supported_groups lets the server choose (RFC 8422, Section 4); it gets
// P-256 when the server takes it: such a client is most likely one of RFC
// 4492's, which knew only the NIST curves, not X25519 (tlsfuzzer's
// test-x25519.py expects P-256 too).
func selectGroup12(configured []tls.CurveID, ch *clientHelloMsg) (tls.CurveID, bool) {
	if !ch.has(extensionSupportedGroups) && slices.Contains(configured, tls.CurveP256) {
		return tls.CurveP256, true
	}
	for _, g := range configured {
		if isHybrid(g) {
			continue
		}
		if !ch.has(extensionSupportedGroups) || slices.Contains(ch.supportedGroups, g) {
			return g, true
		}
	}
	return 0, false
}

// generateKey12 creates the TLS 1.2 server's ephemeral ECDHE key.
func generateKey12(g tls.CurveID, rand io.Reader) (*ecdh.PrivateKey, error) {
	return ecdhCurve(g).GenerateKey(rand)
}
