package engine

import (
	"crypto/tls"
	"crypto/x509"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/testenv"
)

// TestOpenSSLClientAlerts: openssl s_client prints the alert a refused
// client certificate earns, in TLS 1.3 after the server's Finished (under
// the application traffic keys) and in TLS 1.2.
func TestOpenSSLClientAlerts(t *testing.T) {
	testenv.LookPath(t, "openssl")
	p := getPKI(t)
	roots := rootsPEM(t, p)
	keyFile := func(c tls.Certificate) string {
		der, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
		require.NoError(t, err)
		return writePEM(t, "client.key", "PRIVATE KEY", der)
	}
	certArgs := func(c tls.Certificate) []string {
		return []string{"-cert", writePEM(t, "client.pem", "CERTIFICATE", c.Certificate...), "-key", keyFile(c)}
	}
	for _, tc := range []struct {
		name string
		args []string
		want Alert
		text string // OpenSSL's name of the alert
	}{
		{"TLS1.3 unknown CA", append([]string{"-tls1_3"}, certArgs(p.rogueClientCert)...), alertUnknownCA, "tlsv1 alert unknown ca"},
		{"TLS1.2 unknown CA", append([]string{"-tls1_2"}, certArgs(p.rogueClientCert)...), alertUnknownCA, "tlsv1 alert unknown ca"},
		{"TLS1.3 no certificate", []string{"-tls1_3"}, alertCertificateRequired, "tlsv13 alert certificate required"},
		{"TLS1.3 serverAuth-only certificate", append([]string{"-tls1_3"}, certArgs(p.serverAuthClientCert)...), alertBadCertificate, "sslv3 alert bad certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := serverConfig(p.p256)
			cfg.ClientAuth, cfg.ClientCAs = ClientAuthRequired, p.clientCA
			port, done := externalServer(t, cfg, pingPong)
			args := append([]string{"s_client", "-connect", "127.0.0.1:" + port, "-servername", "p256.example.com",
				"-CAfile", roots, "-verify_return_error", "-ign_eof"}, tc.args...)
			want := "SSL alert number " + strconv.Itoa(int(tc.want))
			out, err := runClient(t, string(ping)+"\n", want, "openssl", args...)
			res := <-done
			require.Error(t, res.err, "the engine refused the client")
			assert.Contains(t, res.err.Error(), tc.want.String())
			assert.NoError(t, err)
			assert.Contains(t, out, want, "openssl read the alert")
			assert.Contains(t, out, tc.text)
			assert.NotContains(t, out, "bad record mac")
		})
	}
}

// TestGnuTLSWithoutExtendedMasterSecret: a client that does not offer the
// extended master secret gets none (RFC 7627, Section 5.2: the server
// answers only an offer), and both sides derive the RFC 5246 master secret,
// which the completed handshake and the data exchanged under its keys show.
func TestGnuTLSWithoutExtendedMasterSecret(t *testing.T) {
	testenv.LookPath(t, "gnutls-cli")
	p := getPKI(t)
	roots := rootsPEM(t, p)
	for _, priority := range []string{"NORMAL:-VERS-ALL:+VERS-TLS1.2:%NO_SESSION_HASH", "NORMAL:-VERS-ALL:+VERS-TLS1.2"} {
		t.Run(priority, func(t *testing.T) {
			port, done := externalServer(t, serverConfig(p.p384), pingPong)
			out, err := runClient(t, string(ping)+"\n", string(pong), "gnutls-cli", "--x509cafile", roots,
				"--priority", priority, "--sni-hostname", "p384.example.com", "--verify-hostname", "p384.example.com",
				"-p", port, "127.0.0.1")
			res := <-done
			require.NoError(t, res.err, out)
			require.NoError(t, err, out)
			assert.Equal(t, !strings.Contains(priority, "%NO_SESSION_HASH"), res.session.ExtendedMasterSecret, "session %s", res.session)
		})
	}
}

// TestGnuTLSClientAlerts: gnutls-cli reports the alert a client certificate
// from an unknown CA earns, in TLS 1.3 (under the server's application
// traffic keys) and TLS 1.2.
func TestGnuTLSClientAlerts(t *testing.T) {
	testenv.LookPath(t, "gnutls-cli")
	p := getPKI(t)
	roots := rootsPEM(t, p)
	der, err := x509.MarshalPKCS8PrivateKey(p.rogueClientCert.PrivateKey)
	require.NoError(t, err)
	keyFile := writePEM(t, "client.key", "PRIVATE KEY", der)
	certFile := writePEM(t, "client.pem", "CERTIFICATE", p.rogueClientCert.Certificate...)
	for _, vers := range []string{"TLS1.3", "TLS1.2"} {
		t.Run(vers, func(t *testing.T) {
			cfg := serverConfig(p.p256)
			cfg.ClientAuth, cfg.ClientCAs = ClientAuthRequired, p.clientCA
			port, done := externalServer(t, cfg, pingPong)
			want := "Received alert [48]"
			out, err := runClient(t, string(ping)+"\n", want, "gnutls-cli", "--x509cafile", roots,
				"--x509certfile", certFile, "--x509keyfile", keyFile,
				"--priority", "NORMAL:-VERS-ALL:+VERS-"+vers, "--sni-hostname", "p256.example.com",
				"--verify-hostname", "p256.example.com", "-p", port, "127.0.0.1")
			res := <-done
			require.Error(t, res.err)
			assert.Contains(t, res.err.Error(), alertUnknownCA.String())
			assert.NoError(t, err)
			assert.Contains(t, out, want, "gnutls-cli read the alert")
			assert.NotContains(t, out, "MAC verification failed")
		})
	}
}
