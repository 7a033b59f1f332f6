package main

import (
	"context"
	"crypto/tls"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/servicetest"
	"github.com/handshaked/handshaked/internal/testenv"
)

// The tests of -one-round-trip: real clients through the edge, each TLS
// 1.3 handshake and TLS 1.2 resumption one call to the service (the echo
// page counts them), the client's Finished verified by the edge.

const oneTrip = "Service round trips: 1\n"

// TestOneRoundTripGoClient: Go's client, full and resumed TLS 1.3
// handshakes in one round trip, a HelloRetryRequest in two, a full TLS 1.2
// handshake in two and a resumed one in one.
func TestOneRoundTripGoClient(t *testing.T) {
	f := newTicketFixture(t)
	addr, log := f.start(t, "-one-round-trip")
	hrr, _ := f.start(t, "-one-round-trip", "-groups", "P384")
	cfg := &tls.Config{ServerName: f.ecdsa.Name, RootCAs: f.ecdsa.Pool, ClientSessionCache: tls.NewLRUClientSessionCache(4)}
	page := getPage(t, addr, cfg)
	assert.Contains(t, page, "TLS version: TLS 1.3\n", page)
	assert.Contains(t, page, "Resumed: no (full handshake)\n", page)
	assert.Contains(t, page, oneTrip, page)
	assert.Contains(t, page, "<Finished", "the trace shows the Finished the edge verified")
	page = getPage(t, addr, cfg)
	assert.Contains(t, page, "Resumed: yes", page)
	assert.Contains(t, page, oneTrip, page)
	assert.Contains(t, log.String(), "service_round_trips=1")

	page = getPage(t, hrr, &tls.Config{ServerName: f.ecdsa.Name, RootCAs: f.ecdsa.Pool, CurvePreferences: []tls.CurveID{tls.X25519, tls.CurveP384}})
	assert.Contains(t, page, "HelloRetryRequest: true\n", page)
	assert.Contains(t, page, "Service round trips: 2\n", page)

	// TLS 1.2: the full handshake in two (the client's Finished comes
	// first), the resumed one in one.
	cfg12 := &tls.Config{ServerName: f.ecdsa.Name, RootCAs: f.ecdsa.Pool, MaxVersion: tls.VersionTLS12, ClientSessionCache: tls.NewLRUClientSessionCache(4)}
	page = getPage(t, addr, cfg12)
	assert.Contains(t, page, "TLS version: TLS 1.2\n", page)
	assert.Contains(t, page, "Service round trips: 2\n", page)
	page = getPage(t, addr, cfg12)
	assert.Contains(t, page, "TLS version: TLS 1.2\n", page)
	assert.Contains(t, page, "Resumed: yes", page)
	assert.Contains(t, page, oneTrip, page)
}

// TestOneRoundTripCurl: curl fetches three pages over new connections, the
// later two resumed, each handshake in one round trip.
func TestOneRoundTripCurl(t *testing.T) {
	curl := testenv.LookPath(t, "curl")
	f := newTicketFixture(t)
	addr, _ := f.start(t, "-one-round-trip")
	pages := curlPages(t, curl, f, addr) // resumption_test.go
	assert.Contains(t, pages[0], "Resumed: no", pages[0])
	assert.Contains(t, pages[2], "Resumed: yes", pages[2])
	for _, p := range pages {
		assert.Contains(t, p, oneTrip, p)
	}
}

// TestOneRoundTripOpenSSL: s_client, a full handshake whose session it
// saves and a resumed one: in TLS 1.3 each in one round trip, in TLS 1.2
// the full one in two (its client Finished comes first) and the resumed
// one in one.
func TestOneRoundTripOpenSSL(t *testing.T) {
	openssl := testenv.LookPath(t, "openssl")
	f := newTicketFixture(t)
	addr, _ := f.start(t, "-one-round-trip")
	for _, tc := range []struct{ flag, name, fullTrips string }{
		{"-tls1_3", "TLSv1.3", oneTrip},
		{"-tls1_2", "TLSv1.2", "Service round trips: 2\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sess := filepath.Join(t.TempDir(), "session.pem")
			sClient := func(sessFlag string) string {
				cmd := exec.Command(openssl, "s_client", "-connect", addr, "-servername", "ec.test", "-CAfile", f.ecCA,
					"-verify_return_error", "-ign_eof", tc.flag, sessFlag, sess)
				cmd.Stdin = strings.NewReader("GET / HTTP/1.0\r\n\r\n")
				out, err := cmd.CombinedOutput()
				require.NoError(t, err, "%s", out)
				return string(out)
			}
			out := sClient("-sess_out")
			assert.Contains(t, out, "New, "+tc.name, out)
			assert.Contains(t, out, tc.fullTrips, out)
			out = sClient("-sess_in")
			assert.Contains(t, out, "Reused, "+tc.name, out)
			assert.Contains(t, out, oneTrip, out)
		})
	}
}

// TestOneRoundTripGnuTLS: gnutls-cli over TLS 1.3 in one round trip, and
// over TLS 1.2 a full handshake and a resumption (--resume), the
// resumption in one round trip.
func TestOneRoundTripGnuTLS(t *testing.T) {
	gnutls := testenv.LookPath(t, "gnutls-cli")
	f := newTicketFixture(t)
	addr, log := f.start(t, "-one-round-trip")
	host, port, _ := net.SplitHostPort(addr)
	cmd := exec.Command(gnutls, "--x509cafile", f.rsaCA, "--sni-hostname", "rsa.test", "--verify-hostname", "rsa.test",
		"--priority", "NORMAL:-VERS-ALL:+VERS-TLS1.3", "-p", port, host)
	cmd.Stdin = strings.NewReader("GET / HTTP/1.0\r\n\r\n")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Contains(t, string(out), "TLS version: TLS 1.3\n", "%s", out)
	assert.Contains(t, string(out), oneTrip, "%s", out)

	cmd = exec.Command(gnutls, "--x509cafile", f.rsaCA, "--sni-hostname", "rsa.test", "--verify-hostname", "rsa.test",
		"--priority", "NORMAL:-VERS-ALL:+VERS-TLS1.2", "--resume", "-p", port, host)
	cmd.Stdin = strings.NewReader("GET / HTTP/1.0\r\n\r\n")
	out, err = cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Contains(t, string(out), "This is a resumed session", "%s", out)
	assert.Contains(t, string(out), "TLS version: TLS 1.2\n", "%s", out)
	assert.Contains(t, string(out), oneTrip, "the resumed connection's page: %s", out)
	assert.Contains(t, log.String(), "resumed=true service_round_trips=1", log.String())
}

// TestOneRoundTripChromium: headless Chromium loads the resumption page:
// the first connection's handshake and the resumed ones each take one
// round trip.
func TestOneRoundTripChromium(t *testing.T) {
	chromium := testenv.LookPath(t, "chromium")
	f := newTicketFixture(t)
	addr, log := f.start(t, "-one-round-trip")
	page := dumpDOM(t, chromium, "https://"+addr+"/resumption")
	first, next, ok := strings.Cut(page, `id="next"`)
	require.True(t, ok, page)
	assert.Contains(t, first, "Group: X25519MLKEM768", page)
	assert.Contains(t, first, oneTrip, page)
	assert.Contains(t, next, "Resumed: yes", page)
	assert.Contains(t, log.String(), "resumed=true service_round_trips=1", log.String())
}

// earlyDataSession gets s_client a session from OpenSSL's s_server that
// allows early data, for the edge's name and key, and a file of early data.
func earlyDataSession(t *testing.T, openssl string, f *fixture) (sess, early string) {
	t.Helper()
	dir := t.TempDir()
	keyFile, sess, early := filepath.Join(dir, "key.pem"), filepath.Join(dir, "session.pem"), filepath.Join(dir, "early.txt")
	require.NoError(t, os.WriteFile(keyFile, servicetest.Fixture(t, "p256-pkcs8.pem"), 0o600))
	require.NoError(t, os.WriteFile(early, []byte("GET /early HTTP/1.0\r\n\r\n"), 0o600))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv := exec.CommandContext(ctx, openssl, "s_server", "-accept", "127.0.0.1:0", "-cert", f.ecCA, "-key", keyFile,
		"-early_data", "-num_tickets", "1", "-naccept", "1")
	var srvOut testenv.Buffer
	srv.Stdout, srv.Stderr = &srvOut, &srvOut
	stdin, err := srv.StdinPipe() // kept open: s_server ends a connection on EOF
	require.NoError(t, err)
	require.NoError(t, srv.Start())
	defer func() {
		stdin.Close()
		cancel()
		srv.Wait()
	}()
	port := ""
	require.Eventually(t, func() bool {
		if m := regexp.MustCompile(`ACCEPT 127\.0\.0\.1:(\d+)`).FindStringSubmatch(srvOut.String()); m != nil {
			port = m[1]
		}
		return port != ""
	}, 10*time.Second, 20*time.Millisecond, "s_server did not start: %s", srvOut.String())
	// s_client writes the session when the ticket arrives; its output is
	// buffered until it exits, so the file is what to watch.
	cl := exec.CommandContext(ctx, openssl, "s_client", "-connect", "127.0.0.1:"+port, "-servername", f.ecdsa.Name,
		"-CAfile", f.ecCA, "-tls1_3", "-ign_eof", "-sess_out", sess)
	var clOut testenv.Buffer
	cl.Stdout, cl.Stderr = &clOut, &clOut
	require.NoError(t, cl.Start())
	require.Eventually(t, func() bool {
		data, _ := os.ReadFile(sess)
		return strings.Contains(string(data), "-----END SSL SESSION PARAMETERS-----")
	}, 10*time.Second, 20*time.Millisecond, "no session from s_server: %s", clOut.String())
	cl.Process.Kill()
	cl.Wait()
	return sess, early
}
