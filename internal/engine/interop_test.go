//go:debug tlsrsakex=1
package engine

import (
	"crypto/tls"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func clientConfig(p *testPKI, serverName string) *tls.Config {
	return &tls.Config{RootCAs: p.serverRoots, ServerName: serverName, SessionTicketsDisabled: true}
}

func serverConfig(certs ...*testKey) Config {
	// As the edge asks (HandshakeConfig.caller_honors_record_size_limit).
	cfg := Config{CallerHonorsRecordSizeLimit: true}
	for _, k := range certs {
		cfg.Certificates = append(cfg.Certificates, k.cert)
	}
	return cfg
}

var keyNames = []string{"rsa", "p256", "p384", "ed25519"}

// TestInteropTLS13 runs crypto/tls's client through every TLS 1.3 suite,
// group and key type, with the input cut in every way.
func TestInteropTLS13(t *testing.T) {
	p := getPKI(t)
	suites := []uint16{tls.TLS_AES_128_GCM_SHA256, tls.TLS_AES_256_GCM_SHA384, tls.TLS_CHACHA20_POLY1305_SHA256}
	groups := []tls.CurveID{tls.X25519MLKEM768, tls.X25519, tls.CurveP256, tls.CurveP384}
	cell := 0
	for _, suite := range suites {
		for _, group := range groups {
			for _, kn := range keyNames {
				mode := splitMode(cell % 3)
				cell++
				name := fmt.Sprintf("%s/%v/%s/%v", tls.CipherSuiteName(suite), group, kn, mode)
				t.Run(name, func(t *testing.T) {
					t.Parallel()
					k := p.key(kn)
					cfg := serverConfig(k)
					cfg.CipherSuitesTLS13 = []uint16{suite}
					cfg.Groups = []tls.CurveID{group}
					cl := clientConfig(p, kn+".example.com")
					cl.CurvePreferences = []tls.CurveID{group}
					s := expectSuccess(t, runInterop(t, interopCase{server: cfg, client: cl, mode: mode}))
					assert.Equal(t, uint16(tls.VersionTLS13), s.Version)
					assert.Equal(t, suite, s.CipherSuite)
					assert.Equal(t, group, s.Group)
					assert.False(t, s.DidHelloRetryRequest)
				})
			}
		}
	}
}

// TestInteropTLS12 covers every TLS 1.2 suite with every curve and fitting
// key type, RSA key exchange included.
func TestInteropTLS12(t *testing.T) {
	p := getPKI(t)
	cell := 0
	for _, s := range cipherSuites12 {
		var keys []string
		groups := []tls.CurveID{tls.X25519, tls.CurveP256, tls.CurveP384}
		switch s.kex {
		case kexRSA:
			keys, groups = []string{"rsa"}, []tls.CurveID{0}
		case kexECDHERSA:
			keys = []string{"rsa"}
		case kexECDHEECDSA:
			keys = []string{"p256", "p384", "ed25519"}
		}
		for _, group := range groups {
			for _, kn := range keys {
				mode := splitMode(cell % 3)
				cell++
				name := fmt.Sprintf("%s/%v/%s/%v", tls.CipherSuiteName(s.id), group, kn, mode)
				t.Run(name, func(t *testing.T) {
					t.Parallel()
					cfg := serverConfig(p.key(kn))
					cfg.MaxVersion = tls.VersionTLS12
					cl := clientConfig(p, kn+".example.com")
					cl.MaxVersion = tls.VersionTLS12
					cl.CipherSuites = []uint16{s.id}
					if group != 0 {
						// In TLS 1.2 supported_groups also names the curves of
						// ECDSA certificates (RFC 8422, Section 5.1), so the
						// client lists the key's; the server uses only group.
						cfg.Groups = []tls.CurveID{group}
						cl.CurvePreferences = []tls.CurveID{group}
						if id, ok := curveID(keyCurve(p.key(kn))); ok && id != group {
							cl.CurvePreferences = append(cl.CurvePreferences, id)
						}
					}
					sess := expectSuccess(t, runInterop(t, interopCase{server: cfg, client: cl, mode: mode}))
					assert.Equal(t, s.id, sess.CipherSuite)
					assert.Equal(t, group, sess.Group)
					assert.True(t, sess.ExtendedMasterSecret)
					assert.Equal(t, uint64(1), sess.ClientSeq)
					assert.Equal(t, uint64(1), sess.ServerSeq)
				})
			}
		}
	}
}

// TestDowngradeSentinelDetected: a TLS 1.3 client checks the sentinel
// itself (TestDowngradeSentinelBytes reads it): a server that offers 1.3
// but answers a 1.3-capable client with 1.2 is caught by the client.
func TestDowngradeSentinelDetected(t *testing.T) {
	p := getPKI(t)
	cfg := serverConfig(p.p256)
	cfg.MaxVersion = tls.VersionTLS13
	cl := clientConfig(p, "p256.example.com")
	cl.MaxVersion = tls.VersionTLS13
	// Remove TLS 1.3 from the client's supported_versions in flight, as a
	// downgrading attacker would; the sentinel gives it away.
	res := runInterop(t, interopCase{server: cfg, client: cl, mode: splitRecords, tamper: stripTLS13})
	require.Error(t, res.clientErr)
	assert.Contains(t, res.clientErr.Error(), "downgrade")
}

func TestHelloRetryRequest(t *testing.T) {
	p := getPKI(t)
	for _, mode := range []splitMode{splitWhole, splitRandom, splitBytes} {
		t.Run(mode.String(), func(t *testing.T) {
			cfg := serverConfig(p.p256)
			cfg.Groups = []tls.CurveID{tls.CurveP256}
			cl := clientConfig(p, "p256.example.com")
			// The client sends a share for X25519 only.
			cl.CurvePreferences = []tls.CurveID{tls.X25519, tls.CurveP256}
			res := runInterop(t, interopCase{server: cfg, client: cl, mode: mode})
			s := expectSuccess(t, res)
			assert.True(t, s.DidHelloRetryRequest)
			assert.Equal(t, tls.CurveP256, s.Group)
		})
	}
	// A client supporting the hybrid group without sending a share for it
	// gets a HelloRetryRequest for it.
	t.Run("post-quantum preferred", func(t *testing.T) {
		cfg := serverConfig(p.ed)
		cl := clientConfig(p, "ed25519.example.com")
		cl.CurvePreferences = []tls.CurveID{tls.X25519, tls.X25519MLKEM768}
		s := expectSuccess(t, runInterop(t, interopCase{server: cfg, client: cl}))
		assert.Equal(t, tls.X25519MLKEM768, s.Group)
	})
}

func TestDefaultsChooseHybrid(t *testing.T) {
	p := getPKI(t)
	s := expectSuccess(t, runInterop(t, interopCase{server: serverConfig(p.p256, p.rsa), client: clientConfig(p, "p256.example.com")}))
	assert.Equal(t, uint16(tls.VersionTLS13), s.Version)
	assert.Equal(t, tls.X25519MLKEM768, s.Group)
	assert.Zero(t, s.CertificateIndex)
}

func TestSNI(t *testing.T) {
	p := getPKI(t)
	cfg := serverConfig(p.p256, p.rsa, p.ed)
	tests := []struct {
		serverName string
		want       int
		vers       uint16
	}{
		{"p256.example.com", 0, tls.VersionTLS13},
		{"rsa.example.com", 1, tls.VersionTLS13},
		{"RSA.Example.COM", 1, tls.VersionTLS13},
		{"host.ed25519.example.net", 2, tls.VersionTLS13}, // wildcard
		{"rsa.example.com", 1, tls.VersionTLS12},
		{"host.ed25519.example.net", 2, tls.VersionTLS12},
		{"unknown.example.org", 0, tls.VersionTLS13}, // default
	}
	for _, tc := range tests {
		t.Run(tc.serverName+"/"+versionName(tc.vers), func(t *testing.T) {
			cl := clientConfig(p, tc.serverName)
			cl.MaxVersion = tc.vers
			if tc.serverName == "unknown.example.org" {
				cl.InsecureSkipVerify = true
			}
			s := expectSuccess(t, runInterop(t, interopCase{server: cfg, client: cl}))
			assert.Equal(t, tc.want, s.CertificateIndex)
			assert.Equal(t, tc.serverName, s.ServerName)
			assert.Equal(t, cfg.Certificates[tc.want].KeyRef, s.KeyRef)
		})
	}
	// A client that cannot verify Ed25519 or ECDSA signatures still gets a
	// certificate it can use when one exists.
	t.Run("fallback by key type", func(t *testing.T) {
		cl := clientConfig(p, "rsa.example.com")
		cl.MaxVersion = tls.VersionTLS12
		cl.CipherSuites = []uint16{tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256}
		s := expectSuccess(t, runInterop(t, interopCase{server: serverConfig(p.p256, p.rsa), client: cl}))
		assert.Equal(t, 1, s.CertificateIndex)
	})
}

func TestALPN(t *testing.T) {
	p := getPKI(t)
	for _, vers := range []uint16{tls.VersionTLS13, tls.VersionTLS12} {
		t.Run(versionName(vers), func(t *testing.T) {
			cfg := serverConfig(p.p256)
			cfg.NextProtos = []string{"h2", "http/1.1"}
			cl := clientConfig(p, "p256.example.com")
			cl.MaxVersion = vers
			cl.NextProtos = []string{"http/1.1", "h2"}
			s := expectSuccess(t, runInterop(t, interopCase{server: cfg, client: cl}))
			assert.Equal(t, "h2", s.ALPN)
			cl.NextProtos = []string{"spdy/3"}
			res := runInterop(t, interopCase{server: cfg, client: cl})
			expectFailure(t, res, alertNoApplicationProtocol)
			// No ALPN from the client: no protocol, no failure.
			cl.NextProtos = nil
			assert.Empty(t, expectSuccess(t, runInterop(t, interopCase{server: cfg, client: cl})).ALPN)
		})
	}
}

func TestClientAuth(t *testing.T) {
	p := getPKI(t)
	for _, vers := range []uint16{tls.VersionTLS13, tls.VersionTLS12} {
		for _, kn := range keyNames {
			t.Run(versionName(vers)+"/"+kn, func(t *testing.T) {
				t.Parallel()
				cfg := serverConfig(p.p256)
				cfg.ClientAuth, cfg.ClientCAs = ClientAuthRequired, p.clientCA
				cl := clientConfig(p, "p256.example.com")
				cl.MaxVersion = vers
				cl.Certificates = []tls.Certificate{p.clientCerts[kn]}
				s := expectSuccess(t, runInterop(t, interopCase{server: cfg, client: cl, mode: splitRandom}))
				assert.Equal(t, p.clientCerts[kn].Certificate, s.PeerCertificates)
			})
		}
		t.Run(versionName(vers)+"/missing", func(t *testing.T) {
			cfg := serverConfig(p.p256)
			cfg.ClientAuth, cfg.ClientCAs = ClientAuthRequired, p.clientCA
			cl := clientConfig(p, "p256.example.com")
			cl.MaxVersion = vers
			want := alertCertificateRequired
			if vers == tls.VersionTLS12 {
				want = alertHandshakeFailure
			}
			expectFailure(t, runInterop(t, interopCase{server: cfg, client: cl}), want)

			cfg.ClientAuth = ClientAuthOptional
			s := expectSuccess(t, runInterop(t, interopCase{server: cfg, client: cl}))
			assert.Empty(t, s.PeerCertificates, "peer certificates without a client certificate")
		})
		t.Run(versionName(vers)+"/unknown CA", func(t *testing.T) {
			cfg := serverConfig(p.p256)
			cfg.ClientAuth, cfg.ClientCAs = ClientAuthOptional, p.clientCA
			cl := clientConfig(p, "p256.example.com")
			cl.MaxVersion = vers
			// crypto/tls only sends a certificate from a CA the server
			// names; this one is sent regardless.
			cl.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
				return &p.rogueClientCert, nil
			}
			expectFailure(t, runInterop(t, interopCase{server: cfg, client: cl}), alertUnknownCA)
		})
	}
}

// TestClientAuthLongChain: a client's chain longer than 64 KiB (its
// certificate, then padding certificates a verifier passes over as
// unneeded intermediates) is taken up to crypto/tls's 256 KiB for a
// Certificate message, in TLS 1.3 and 1.2; a longer one is
// illegal_parameter, without waiting for its body.
func TestClientAuthLongChain(t *testing.T) {
	p := getPKI(t)
	leaf := p.clientCerts["p256"]
	pad := p.rogueClientCert.Certificate[0]
	// chainOf is leaf's chain padded to at least n bytes of certificates.
	chainOf := func(n int) tls.Certificate {
		c := leaf
		c.Certificate = slices.Clone(leaf.Certificate)
		for size := len(c.Certificate[0]); size < n; size += len(pad) {
			c.Certificate = append(c.Certificate, pad)
		}
		return c
	}
	for _, vers := range []uint16{tls.VersionTLS13, tls.VersionTLS12} {
		for _, tc := range []struct {
			name  string
			bytes int
			ok    bool
		}{
			{"100 KiB", 100 << 10, true},
			{"250 KiB", 250 << 10, true},
			{"over 256 KiB", 257 << 10, false},
		} {
			t.Run(versionName(vers)+"/"+tc.name, func(t *testing.T) {
				cfg := serverConfig(p.p256)
				cfg.ClientAuth, cfg.ClientCAs = ClientAuthRequired, p.clientCA
				cl := clientConfig(p, "p256.example.com")
				cl.MinVersion, cl.MaxVersion = vers, vers
				chain := chainOf(tc.bytes)
				cl.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &chain, nil }
				res := runInterop(t, interopCase{server: cfg, client: cl})
				if !tc.ok {
					expectFailure(t, res, alertIllegalParameter)
					return
				}
				s := expectSuccess(t, res)
				assert.Len(t, s.PeerCertificates, len(chain.Certificate))
			})
		}
	}
}

// TestCoalescedLeftover has the client's Finished and its first application
// data arrive in one read: the engine must stop after the Finished record
// and leave the rest to the record layer.
func TestCoalescedLeftover(t *testing.T) {
	p := getPKI(t)
	for _, kn := range []string{"p256", "rsa"} {
		t.Run(kn, func(t *testing.T) {
			cfg := serverConfig(p.key(kn))
			res := runInterop(t, interopCase{server: cfg, client: clientConfig(p, kn+".example.com"), coalesce: true})
			expectSuccess(t, res)
			assert.NotEmpty(t, res.relay.leftover, "no bytes left after the client's Finished; the test did not coalesce")
		})
	}
}

func TestClientCertificateExpired(t *testing.T) {
	p := getPKI(t)
	cfg := serverConfig(p.p256)
	cfg.ClientAuth, cfg.ClientCAs = ClientAuthRequired, p.clientCA
	cfg.Time = func() time.Time { return time.Now().Add(72 * time.Hour) }
	cl := clientConfig(p, "p256.example.com")
	cl.Certificates = []tls.Certificate{p.clientCerts["rsa"]}
	res := runInterop(t, interopCase{server: cfg, client: cl})
	expectFailure(t, res, alertCertificateExpired)
	assert.Contains(t, traceText(res.relay.trace), "subject[0]=CN=client rsa", "trace lacks the client certificate")
}

// TestTrace checks the message sequence of the trace and that no secret of
// the session appears in it.
func TestTrace(t *testing.T) {
	p := getPKI(t)
	for _, tc := range []struct {
		vers uint16
		want []string
	}{
		{tls.VersionTLS13, []string{"received ClientHello", "sent ServerHello", "sent ChangeCipherSpec", "sent EncryptedExtensions",
			"sent CertificateRequest", "sent Certificate", "sent CertificateVerify", "sent Finished",
			"received ChangeCipherSpec", "received Certificate", "received CertificateVerify", "received Finished"}},
		{tls.VersionTLS12, []string{"received ClientHello", "sent ServerHello", "sent Certificate", "sent ServerKeyExchange",
			"sent CertificateRequest", "sent ServerHelloDone", "received Certificate", "received ClientKeyExchange",
			"received CertificateVerify", "received ChangeCipherSpec", "received Finished", "sent ChangeCipherSpec", "sent Finished"}},
	} {
		t.Run(versionName(tc.vers), func(t *testing.T) {
			cfg := serverConfig(p.rsa)
			cfg.ClientAuth, cfg.ClientCAs = ClientAuthRequired, p.clientCA
			cfg.NextProtos = []string{"h2"}
			cl := clientConfig(p, "rsa.example.com")
			cl.MaxVersion, cl.NextProtos = tc.vers, []string{"h2"}
			cl.Certificates = []tls.Certificate{p.clientCerts["ed25519"]}
			res := runInterop(t, interopCase{server: cfg, client: cl, mode: splitBytes})
			s := expectSuccess(t, res)
			var got []string
			for _, e := range res.relay.trace {
				got = append(got, e.Direction.String()+" "+e.Message)
			}
			assert.Equal(t, tc.want, got, "trace")
			text := traceText(res.relay.trace) + s.String() + fmt.Sprintf("%v %+v %#v", s, s, s)
			for _, secret := range [][]byte{s.ClientKey, s.ServerKey, s.ClientIV, s.ServerIV, s.ClientTrafficSecret, s.ServerTrafficSecret, s.ExporterMasterSecret} {
				if len(secret) > 0 {
					assert.NotContains(t, text, fmt.Sprintf("%x", secret), "secret in trace or Session formatting")
					assert.NotContains(t, text, string(secret), "secret in trace or Session formatting")
				}
			}
			for _, want := range []string{"server_name=rsa.example.com", "alpn=h2", "subject[0]=CN=client ed25519", "signature_scheme="} {
				assert.Contains(t, text, want)
			}
		})
	}
}
