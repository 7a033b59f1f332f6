package engine

import (
	"crypto/tls"
	"io"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/testenv"
)

// TestResumptionTLS12OpenSSL resumes OpenSSL's s_client through the engine:
// -sess_out keeps the session (with its ticket) of a full handshake,
// -sess_in offers it on the next connection, and s_client reports "Reused".
func TestResumptionTLS12OpenSSL(t *testing.T) {
	testenv.LookPath(t, "openssl")
	p := getPKI(t)
	roots := rootsPEM(t, p)
	sess := filepath.Join(t.TempDir(), "session.pem")
	for _, tc := range []struct {
		name   string
		key    string
		cipher string
	}{
		{"ECDHE-ECDSA", "p256", "ECDHE-ECDSA-AES128-GCM-SHA256"},
		{"ECDHE-RSA SHA-384", "rsa", "ECDHE-RSA-AES256-GCM-SHA384"},
		{"RSA", "rsa", "AES128-GCM-SHA256"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := ticketConfig(newAEADTicketKeys(1), p.key(tc.key))
			connect := func(sessArg string) (string, *Session) {
				port, done := externalServer(t, cfg, pingPong)
				out, err := runClient(t, string(ping)+"\n", string(pong), "openssl", "s_client", "-connect", "127.0.0.1:"+port,
					"-servername", tc.key+".example.com", "-CAfile", roots, "-verify_return_error", "-tls1_2", "-cipher", tc.cipher, sessArg, sess)
				res := <-done
				require.NoError(t, res.err, "server; client output:\n%s", out)
				require.NoError(t, err, "client:\n%s", out)
				return out, res.session
			}
			out, s := connect("-sess_out")
			assert.Contains(t, out, "New, TLSv1.2")
			assert.False(t, s.Resumed)
			out, s = connect("-sess_in")
			assert.True(t, strings.Contains(out, "Reused, TLSv1.2"), "s_client did not resume:\n%s", out)
			assert.True(t, s.Resumed, "engine session %s", s)
		})
	}
}

// TestResumptionTLS12GnuTLS: gnutls-cli --resume connects, then connects
// again offering the session's ticket. Without the extended master secret
// (%NO_SESSION_HASH) the engine issues no ticket (RFC 7627, Section 5.3
// would abort its resumption) and the second connection is a full
// handshake.
func TestResumptionTLS12GnuTLS(t *testing.T) {
	testenv.LookPath(t, "gnutls-cli")
	p := getPKI(t)
	roots := rootsPEM(t, p)
	for _, tc := range []struct {
		priority string
		resumed  bool
	}{
		{"NORMAL:-VERS-ALL:+VERS-TLS1.2", true},
		{"NORMAL:-KX-ALL:+RSA:-VERS-ALL:+VERS-TLS1.2", true},
		{"NORMAL:-VERS-ALL:+VERS-TLS1.2:%NO_SESSION_HASH", false},
	} {
		t.Run(tc.priority, func(t *testing.T) {
			cfg := ticketConfig(newAEADTicketKeys(1), p.rsa)
			// The first connection ends once the client has the session;
			// a resumption makes no key operation.
			drain := func(rc *recordConn) error { _, err := io.Copy(io.Discard, rc.conn); return err }
			secondKeys := KeyOps(noKeyOps)
			if !tc.resumed {
				secondKeys = p.keys
			}
			port, done := serveConnections(t, cfg, []KeyOps{p.keys, secondKeys}, []func(*recordConn) error{drain, pingPong})
			out, err := runClient(t, string(ping)+"\n", string(pong), "gnutls-cli", "--resume", "--x509cafile", roots,
				"--priority", tc.priority, "--sni-hostname", "rsa.example.com", "--verify-hostname", "rsa.example.com",
				"-p", port, "127.0.0.1")
			first, second := <-done, <-done
			require.NoError(t, first.err, "first connection; client:\n%s", out)
			require.NoError(t, second.err, "second connection; client:\n%s", out)
			require.NoError(t, err, "client:\n%s", out)
			assert.False(t, first.session.Resumed)
			assert.Equal(t, tc.resumed, second.session.Resumed, "engine session %s", second.session)
			assert.Equal(t, tc.resumed, strings.Contains(out, "This is a resumed session"), "client:\n%s", out)
		})
	}
}

// TestChromiumResumeTLS12: headless Chromium held to TLS 1.2 resumes a
// later connection of a page with nested frames with an earlier one's
// RFC 5077 ticket.
func TestChromiumResumeTLS12(t *testing.T) {
	chromiumResumes(t, tls.VersionTLS12, "--ssl-version-max=tls1.2")
}
