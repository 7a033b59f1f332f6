package engine

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/testenv"
)

// TestOpenSSLResumeTLS13: OpenSSL's s_client saves the engine's ticket
// (-sess_out) and resumes with it (-sess_in): "Reused", with no key
// operation on the server's side.
func TestOpenSSLResumeTLS13(t *testing.T) {
	testenv.LookPath(t, "openssl")
	p := getPKI(t)
	roots := rootsPEM(t, p)
	sess := filepath.Join(t.TempDir(), "session.pem")
	cfg := ticketConfig(newAEADTicketKeys(1), p.p256)
	client := func(keys KeyOps, extra ...string) (string, externalOutcome) {
		port, done := externalServerKeys(t, cfg, keys, pingPong)
		args := append([]string{"s_client", "-connect", "127.0.0.1:" + port, "-servername", "p256.example.com",
			"-CAfile", roots, "-verify_return_error", "-tls1_3", "-ign_eof"}, extra...)
		out, err := runClient(t, string(ping)+"\n", string(pong), "openssl", args...)
		res := <-done
		require.Truef(t, res.err == nil && err == nil, "server: %v\nclient: %v\n%s", res.err, err, out)
		return out, res
	}

	out, res := client(getPKI(t).keys, "-sess_out", sess)
	assert.Contains(t, out, "New, TLSv1.3")
	assert.False(t, res.session.Resumed)

	out, res = client(noKeyOps, "-sess_in", sess)
	assert.Contains(t, out, "Reused, TLSv1.3")
	assert.True(t, res.session.Resumed, "session %s", res.session)

	// The ticket allows no early data (no early_data extension in the
	// NewSessionTicket), so OpenSSL sends none.
	out, res = client(noKeyOps, "-sess_in", sess, "-early_data", writePEM(t, "early.txt", "EARLY", []byte("early")))
	assert.Contains(t, out, "Reused, TLSv1.3")
	assert.Contains(t, out, "Early data was not sent")
	assert.True(t, res.session.Resumed)
}

// TestOpenSSLEarlyDataRefused: OpenSSL's s_client sends 0-RTT data with a
// ticket another server (OpenSSL's s_server) issued with early data allowed.
// The engine cannot open the ticket: it does a full handshake, skips the
// early data records (RFC 8446, Section 4.2.10) and the connection carries
// on, with the client told that its early data was rejected.
func TestOpenSSLEarlyDataRefused(t *testing.T) {
	testenv.LookPath(t, "openssl")
	p := getPKI(t)
	roots := rootsPEM(t, p)
	key, err := x509.MarshalPKCS8PrivateKey(p.p256.signer)
	require.NoError(t, err)
	certFile := writePEM(t, "server.pem", "CERTIFICATE", p.p256.cert.Chain[0])
	keyFile := writePEM(t, "server.key", "PRIVATE KEY", key)
	sess := filepath.Join(t.TempDir(), "session.pem")

	// A ticket from s_server, which allows early data.
	ctx, cancel := context.WithCancel(context.Background())
	srv := exec.CommandContext(ctx, "openssl", "s_server", "-accept", "127.0.0.1:0", "-cert", certFile, "-key", keyFile,
		"-early_data", "-num_tickets", "1", "-naccept", "1")
	var srvOut testenv.Buffer
	srv.Stdout, srv.Stderr = &srvOut, &srvOut
	stdin, err := srv.StdinPipe() // open: s_server ends a connection on EOF
	require.NoError(t, err)
	require.NoError(t, srv.Start())
	t.Cleanup(func() {
		stdin.Close()
		cancel()
		srv.Wait()
	})
	accept := regexp.MustCompile(`ACCEPT 127\.0\.0\.1:(\d+)`)
	var port string
	require.Eventually(t, func() bool {
		m := accept.FindStringSubmatch(srvOut.String())
		if m != nil {
			port = m[1]
		}
		return m != nil
	}, 10*time.Second, 20*time.Millisecond, "s_server did not start: %s", srvOut.String())
	// s_client writes the session when the ticket arrives; its standard
	// output is buffered until it exits, so the file is what to watch.
	cl := exec.CommandContext(ctx, "openssl", "s_client", "-connect", "127.0.0.1:"+port,
		"-servername", "p256.example.com", "-CAfile", roots, "-tls1_3", "-ign_eof", "-sess_out", sess)
	var clOut testenv.Buffer
	cl.Stdout, cl.Stderr = &clOut, &clOut
	require.NoError(t, cl.Start())
	require.Eventually(t, func() bool {
		data, _ := os.ReadFile(sess)
		return bytes.Contains(data, []byte("-----END SSL SESSION PARAMETERS-----"))
	}, 10*time.Second, 20*time.Millisecond, "no session from s_server: %s", clOut.String())
	cl.Process.Kill()
	cl.Wait()
	out, err := runClient(t, "", "", "openssl", "sess_id", "-in", sess, "-noout", "-text")
	require.NoError(t, err, out)
	require.Contains(t, out, "Max Early Data: 16384", "s_server's ticket allows early data")

	cfg := ticketConfig(newAEADTicketKeys(1), p.p256)
	enginePort, done := externalServer(t, cfg, pingPong)
	early := writePEM(t, "early.txt", "EARLY", []byte("0-RTT data the server refuses"))
	out, err = runClient(t, string(ping)+"\n", string(pong), "openssl", "s_client", "-connect", "127.0.0.1:"+enginePort,
		"-servername", "p256.example.com", "-CAfile", roots, "-verify_return_error", "-tls1_3", "-ign_eof",
		"-sess_in", sess, "-early_data", early)
	res := <-done
	require.Truef(t, res.err == nil && err == nil, "server: %v\nclient: %v\n%s", res.err, err, out)
	assert.Contains(t, out, "Early data was rejected")
	assert.Contains(t, out, "New, TLSv1.3")
	assert.False(t, res.session.Resumed)
	assert.Positive(t, res.skippedEarlyData, "early data records skipped")
	assert.Contains(t, traceText(res.trace), "resumption=refused: ticket does not open")
}

// TestGnuTLSResumeTLS13: gnutls-cli --resume connects twice, the second
// time with the engine's ticket: "This is a resumed session". The ticket
// comes after the client's Finished (RFC 8446, Section 4.6.1), so
// --waitresumption: without it gnutls-cli may take its session data and
// close before the ticket arrives, and under load the second connection
// was then a full handshake.
func TestGnuTLSResumeTLS13(t *testing.T) {
	testenv.LookPath(t, "gnutls-cli")
	p := getPKI(t)
	roots := rootsPEM(t, p)
	cfg := ticketConfig(newAEADTicketKeys(1), p.p256)
	// The first connection ends once the client has the ticket.
	drain := func(rc *recordConn) error { _, err := io.Copy(io.Discard, rc.conn); return err }
	port, sessions := serveConnections(t, cfg, []KeyOps{p.keys, noKeyOps}, []func(*recordConn) error{drain, pingPong})
	out, err := runClient(t, string(ping)+"\n", string(pong), "gnutls-cli", "--x509cafile", roots, "--resume", "--waitresumption",
		"--priority", "NORMAL:-VERS-ALL:+VERS-TLS1.3", "--sni-hostname", "p256.example.com", "--verify-hostname", "p256.example.com",
		"-p", port, "127.0.0.1")
	require.NoError(t, err, out)
	first, second := <-sessions, <-sessions
	require.NoError(t, first.err)
	require.NoError(t, second.err, out)
	assert.False(t, first.session.Resumed)
	assert.True(t, second.session.Resumed, "session %s", second.session)
	assert.Contains(t, out, "This is a resumed session")
}

// TestCurlResumeTLS13: curl fetching two URLs from a server that closes
// each connection resumes the second with the first one's ticket.
func TestCurlResumeTLS13(t *testing.T) {
	testenv.LookPath(t, "curl")
	p := getPKI(t)
	roots := rootsPEM(t, p)
	cfg := ticketConfig(newAEADTicketKeys(1), p.p256)
	cfg.NextProtos = []string{"http/1.1"}
	port, sessions := serveConnections(t, cfg, []KeyOps{p.keys, noKeyOps}, []func(*recordConn) error{httpPong, httpPong})
	host := "p256.example.com"
	url := "https://" + host + ":" + port
	out, err := runClient(t, "", "", "curl", "-sS", "--tlsv1.3", "--http1.1", "--cacert", roots,
		"--resolve", host+":"+port+":127.0.0.1", url+"/one", url+"/two")
	first, second := <-sessions, <-sessions
	require.NoError(t, err, out)
	require.NoError(t, first.err)
	require.NoError(t, second.err)
	assert.Equal(t, 2, strings.Count(out, string(pong)), out)
	assert.False(t, first.session.Resumed)
	assert.True(t, second.session.Resumed, "session %s", second.session)
}

// TestChromiumResumeTLS13: headless Chromium loads a page with nested
// frames, each over another connection (each response closes its
// connection); a later connection resumes with an earlier one's ticket.
func TestChromiumResumeTLS13(t *testing.T) {
	chromiumResumes(t, tls.VersionTLS13)
}

// chromiumResumes is TestChromiumResumeTLS13 at version vers (Chromium
// limited to it by flag).
func chromiumResumes(t *testing.T, vers uint16, flags ...string) {
	testenv.LookPath(t, "chromium")
	p := getPKI(t)
	cfg := ticketConfig(newAEADTicketKeys(1), p.p256)
	cfg.NextProtos = []string{"http/1.1"}
	// Nested frames, each over a new connection: Chromium may have opened
	// a spare one before any ticket came.
	page := func(req []byte) string {
		switch {
		case bytes.HasPrefix(req, []byte("GET /1 ")):
			return `<iframe src="/2"></iframe>`
		case bytes.HasPrefix(req, []byte("GET /2 ")):
			return `<iframe src="/3"></iframe>`
		case bytes.HasPrefix(req, []byte("GET /3 ")):
			return "last"
		}
		return `<html><body>` + string(pong) + `<iframe src="/1"></iframe></body></html>`
	}
	sessions := loadInChromium(t, cfg, page, "p256.example.com", flags...)
	// The last frame's connection may still be finishing as Chromium exits
	// (on a loaded machine, for a while: the bound only ends a failing run).
	var completed, resumed int
	for timeout := time.After(30 * time.Second); resumed == 0; {
		select {
		case s := <-sessions:
			completed++
			assert.Equal(t, vers, s.Version)
			if s.Resumed {
				resumed++
			}
		case <-timeout:
			require.Failf(t, "no resumed connection", "%d handshakes completed, none resumed", completed)
		}
	}
	assert.GreaterOrEqual(t, completed, 2)
}
