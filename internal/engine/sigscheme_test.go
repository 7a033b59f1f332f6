package engine

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/testenv"
)

// keyCurve is the curve of an ECDSA test key, nil for other keys.
func keyCurve(k *testKey) elliptic.Curve {
	if pub, ok := k.signer.Public().(*ecdsa.PublicKey); ok {
		return pub.Curve
	}
	return nil
}

// TestKeyChoosesSignatureScheme: the engine signs only with a scheme the
// key says it can produce (KeyOps.SignatureSchemes), the client's favourite
// among them. A key that can do only rsa_pkcs1 (as a hardware key without
// RSA-PSS) gets PKCS #1 v1.5 in TLS 1.2 although Go's client prefers PSS, and
// no TLS 1.3 handshake, where rsa_pkcs1 signs nothing (RFC 8446, Section
// 4.2.3).
func TestKeyChoosesSignatureScheme(t *testing.T) {
	p := getPKI(t)
	onlyPKCS1 := &testKeyOps{signers: p.keys.signers, schemes: map[string][]tls.SignatureScheme{
		"key/rsa": {tls.PKCS1WithSHA384, tls.PKCS1WithSHA256},
	}}
	cl := clientConfig(p, "rsa.example.com")
	cl.MaxVersion = tls.VersionTLS12
	cl.CipherSuites = []uint16{tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256}
	sess := expectSuccess(t, runInterop(t, interopCase{server: serverConfig(p.rsa), client: cl, keys: onlyPKCS1}))
	assert.Equal(t, tls.PKCS1WithSHA256, sess.SignatureScheme, "the client's favourite among the key's")

	cl = clientConfig(p, "rsa.example.com")
	cl.MinVersion = tls.VersionTLS13
	expectFailure(t, runInterop(t, interopCase{server: serverConfig(p.rsa), client: cl, keys: onlyPKCS1}), alertHandshakeFailure)

	// The key's list is limited by what the certificate fits: a key that
	// claims an ECDSA scheme for an RSA certificate does not get it.
	confused := &testKeyOps{signers: p.keys.signers, schemes: map[string][]tls.SignatureScheme{
		"key/rsa": {tls.ECDSAWithP256AndSHA256, tls.PSSWithSHA512},
	}}
	sess = expectSuccess(t, runInterop(t, interopCase{server: serverConfig(p.rsa), client: cl, keys: confused}))
	assert.Equal(t, tls.PSSWithSHA512, sess.SignatureScheme)
}

// TestECDSASchemeByVersion: in TLS 1.2 an ECDSA scheme names only the hash,
// and Go's client lists ecdsa_secp256r1_sha256 first, so a P-384 or P-521
// key signs with it; in TLS 1.3 the scheme names the curve (RFC 8446,
// Section 4.2.3).
func TestECDSASchemeByVersion(t *testing.T) {
	p := getPKI(t)
	for _, tc := range []struct {
		key    *testKey
		tls13  tls.SignatureScheme
		client string
	}{
		{p.p256, tls.ECDSAWithP256AndSHA256, "p256.example.com"},
		{p.p384, tls.ECDSAWithP384AndSHA384, "p384.example.com"},
		{p.p521, tls.ECDSAWithP521AndSHA512, "p521.example.com"},
	} {
		for _, vers := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
			cl := clientConfig(p, tc.client)
			cl.MinVersion, cl.MaxVersion = vers, vers
			sess := expectSuccess(t, runInterop(t, interopCase{server: serverConfig(tc.key), client: cl}))
			want := tc.tls13
			if vers == tls.VersionTLS12 {
				want = tls.ECDSAWithP256AndSHA256
			}
			assert.Equal(t, want, sess.SignatureScheme, "%s %s", tc.key.name, versionName(vers))
		}
	}
}

// TestP521Group: secp521r1 as the only group a client offers, in TLS 1.2 and
// 1.3, and never ahead of P-256 when the client offers both.
func TestP521Group(t *testing.T) {
	p := getPKI(t)
	for _, vers := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		cl := clientConfig(p, "rsa.example.com")
		cl.MinVersion, cl.MaxVersion = vers, vers
		cl.CurvePreferences = []tls.CurveID{tls.CurveP521}
		sess := expectSuccess(t, runInterop(t, interopCase{server: serverConfig(p.rsa), client: cl}))
		assert.Equal(t, tls.CurveP521, sess.Group, versionName(vers))

		// With P-256 offered too, the server's preference puts P-256 ahead
		// (Go's client sends a share for each of its two groups here, so
		// TLS 1.3 needs no HelloRetryRequest for it either).
		cl.CurvePreferences = []tls.CurveID{tls.CurveP521, tls.CurveP256}
		sess = expectSuccess(t, runInterop(t, interopCase{server: serverConfig(p.rsa), client: cl}))
		want := tls.CurveP256
		assert.Equal(t, want, sess.Group, versionName(vers))
	}
}

// TestECDSACertificateCurveTLS12: in TLS 1.2 supported_groups also names
// the curves the client can verify ECDSA signatures on (RFC 8422, Sections
// 5.1 and 5.3): a P-256 certificate is not used for a client that lists
// only P-521; another certificate is, if one fits.
func TestECDSACertificateCurveTLS12(t *testing.T) {
	p := getPKI(t)
	cl := clientConfig(p, "p256.example.com")
	cl.MaxVersion = tls.VersionTLS12
	cl.CurvePreferences = []tls.CurveID{tls.CurveP521}
	expectFailure(t, runInterop(t, interopCase{server: serverConfig(p.p256), client: cl}), alertHandshakeFailure)

	cl = clientConfig(p, "p256.example.com")
	cl.MaxVersion = tls.VersionTLS12
	cl.CurvePreferences = []tls.CurveID{tls.CurveP521}
	cl.VerifyConnection = func(cs tls.ConnectionState) error { return nil }
	cl.InsecureSkipVerify = true // the RSA certificate is not for p256.example.com
	sess := expectSuccess(t, runInterop(t, interopCase{server: serverConfig(p.p256, p.rsa), client: cl}))
	assert.Equal(t, tls.CurveP521, sess.Group)
	assert.Equal(t, tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, sess.CipherSuite)

	// TLS 1.3 signature schemes name their curve; supported_groups is only
	// for the key exchange there (RFC 8446, Section 4.2.7).
	cl = clientConfig(p, "p256.example.com")
	cl.MinVersion = tls.VersionTLS13
	cl.CurvePreferences = []tls.CurveID{tls.CurveP521}
	sess = expectSuccess(t, runInterop(t, interopCase{server: serverConfig(p.p256), client: cl}))
	assert.Equal(t, tls.CurveP521, sess.Group)
}

// TestOpenSSLSignatureSchemeAlone offers each scheme alone from OpenSSL
// (-sigalgs) against every key type in both versions: RFC 8446, Section
// 4.2.3, written out per key so the test does not lean on the table it
// checks. The TLS 1.2 cases offer only ECDHE suites, so RSA key exchange,
// which signs nothing, cannot stand in.
func TestOpenSSLSignatureSchemeAlone(t *testing.T) {
	openssl := testenv.LookPath(t, "openssl")
	p := getPKI(t)
	roots := writePEM(t, "roots.pem", "CERTIFICATE", p.rsa.cert.Chain[0], p.p256.cert.Chain[0], p.p384.cert.Chain[0], p.ed.cert.Chain[0], p.p521.cert.Chain[0])
	pss := []tls.SignatureScheme{tls.PSSWithSHA256, tls.PSSWithSHA384, tls.PSSWithSHA512}
	pkcs1 := []tls.SignatureScheme{tls.PKCS1WithSHA256, tls.PKCS1WithSHA384, tls.PKCS1WithSHA512}
	ecdsaAll := []tls.SignatureScheme{tls.ECDSAWithP256AndSHA256, tls.ECDSAWithP384AndSHA384, tls.ECDSAWithP521AndSHA512}
	all := append(append(append(append([]tls.SignatureScheme{}, pss...), pkcs1...), ecdsaAll...), tls.Ed25519)
	names := map[tls.SignatureScheme]string{
		tls.PSSWithSHA256: "rsa_pss_rsae_sha256", tls.PSSWithSHA384: "rsa_pss_rsae_sha384", tls.PSSWithSHA512: "rsa_pss_rsae_sha512",
		tls.PKCS1WithSHA256: "rsa_pkcs1_sha256", tls.PKCS1WithSHA384: "rsa_pkcs1_sha384", tls.PKCS1WithSHA512: "rsa_pkcs1_sha512",
		tls.ECDSAWithP256AndSHA256: "ecdsa_secp256r1_sha256", tls.ECDSAWithP384AndSHA384: "ecdsa_secp384r1_sha384",
		tls.ECDSAWithP521AndSHA512: "ecdsa_secp521r1_sha512", tls.Ed25519: "ed25519",
	}
	keys := map[string]*testKey{"rsa": p.rsa, "p256": p.p256, "p384": p.p384, "p521": p.p521, "ed25519": p.ed}
	want := map[uint16]map[string][]tls.SignatureScheme{
		tls.VersionTLS13: {"rsa": pss, "p256": {tls.ECDSAWithP256AndSHA256}, "p384": {tls.ECDSAWithP384AndSHA384},
			"p521": {tls.ECDSAWithP521AndSHA512}, "ed25519": {tls.Ed25519}},
		tls.VersionTLS12: {"rsa": append(append([]tls.SignatureScheme{}, pss...), pkcs1...), "p256": ecdsaAll, "p384": ecdsaAll,
			"p521": ecdsaAll, "ed25519": {tls.Ed25519}},
	}
	for vers, byKey := range want {
		for name, fits := range byKey {
			for _, scheme := range all {
				t.Run(versionName(vers)+"/"+name+"/"+names[scheme], func(t *testing.T) {
					args := []string{"-tls1_3"}
					if vers == tls.VersionTLS12 {
						args = []string{"-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256"}
					}
					port, done := externalServer(t, serverConfig(keys[name]), pingPong)
					args = append([]string{"s_client", "-connect", "127.0.0.1:" + port, "-servername", name + ".example.com",
						"-CAfile", roots, "-verify_return_error", "-quiet", "-sigalgs", names[scheme]}, args...)
					out, _ := runClient(t, string(ping)+"\n", string(pong), openssl, args...)
					res := <-done
					if !slices.Contains(fits, scheme) {
						require.Error(t, res.err, "%s must fail\n%s", names[scheme], out)
						assert.Contains(t, res.err.Error(), "handshake_failure")
						return
					}
					require.NoError(t, res.err, "%s must complete\n%s", names[scheme], out)
					assert.Equal(t, scheme, res.session.SignatureScheme)
					assert.Equal(t, vers, res.session.Version)
				})
			}
		}
	}
}

// TestOpenSSLP521Group: OpenSSL offering only P-521 completes in both
// versions (issue 8 item 5), with an RSA and a P-521 key.
func TestOpenSSLP521Group(t *testing.T) {
	openssl := testenv.LookPath(t, "openssl")
	p := getPKI(t)
	roots := writePEM(t, "roots.pem", "CERTIFICATE", p.rsa.cert.Chain[0], p.p521.cert.Chain[0])
	for _, vers := range []string{"-tls1_2", "-tls1_3"} {
		for _, k := range []*testKey{p.rsa, p.p521} {
			port, done := externalServer(t, serverConfig(k), pingPong)
			out, err := runClient(t, string(ping)+"\n", string(pong), openssl, "s_client", "-connect", "127.0.0.1:"+port,
				"-servername", k.name+".example.com", "-CAfile", roots, "-verify_return_error", "-quiet", vers, "-groups", "P-521")
			res := <-done
			require.NoError(t, res.err, "%s %s\n%s", vers, k.name, out)
			require.NoError(t, err, "%s %s\n%s", vers, k.name, out)
			assert.Equal(t, tls.CurveP521, res.session.Group, "%s %s", vers, k.name)
		}
	}
}
