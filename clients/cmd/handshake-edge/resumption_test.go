package main

import (
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/service"
	"github.com/handshaked/handshaked/internal/servicetest"
	"github.com/handshaked/handshaked/internal/testenv"
)

// newTicketFixture is newFixture with session tickets on in the service.
func newTicketFixture(t testing.TB) *fixture {
	t.Helper()
	return newFixtureWith(t, service.Options{Tickets: &service.TicketOptions{Deployment: "edge-test"}})
}

// serviceMetric reads one sample of the service's /metrics; 0 if absent.
func serviceMetric(t testing.TB, srv *servicetest.Server, sample string) float64 {
	t.Helper()
	return servicetest.Metric(t, http.DefaultClient, srv.RESTURL, sample)
}

// handshakeSigns counts the signatures the service made inside handshakes.
func handshakeSigns(t testing.TB, srv *servicetest.Server) float64 {
	t.Helper()
	return servicetest.MetricSum(t, http.DefaultClient, srv.RESTURL, "handshaked_key_operation_seconds_count", `operation="sign"`, `source="handshake"`)
}

// getPage fetches the echo page over a new connection.
func getPage(t *testing.T, addr string, cfg *tls.Config) string {
	t.Helper()
	tr := &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 30 * time.Second}).Get("https://" + addr + "/")
	require.NoError(t, err)
	defer resp.Body.Close()
	page, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return string(page)
}

// TestGoClientResumesAcrossEdges: Go's client with a session cache resumes
// on a second edge the session of the first, in TLS 1.2 and 1.3; the page
// and the service's metrics say so, and the resumed handshakes made no
// private-key operation.
func TestGoClientResumesAcrossEdges(t *testing.T) {
	f := newTicketFixture(t)
	a, _ := f.start(t)
	b, _ := f.start(t)
	for _, v := range []uint16{tls.VersionTLS13, tls.VersionTLS12} {
		t.Run(tls.VersionName(v), func(t *testing.T) {
			cfg := &tls.Config{ServerName: f.ecdsa.Name, RootCAs: f.ecdsa.Pool, MinVersion: v, MaxVersion: v,
				ClientSessionCache: tls.NewLRUClientSessionCache(4)}
			page := getPage(t, a, cfg)
			require.Contains(t, page, "Resumed: no (full handshake)\n", page)
			signs := handshakeSigns(t, f.srv)
			resumed := serviceMetric(t, f.srv, `handshaked_handshakes_resumed_total{version="`+tls.VersionName(v)+`"}`)
			for _, edge := range []string{b, a, b} {
				page = getPage(t, edge, cfg)
				assert.Contains(t, page, "Resumed: yes", page)
				assert.Contains(t, page, "Signature scheme: none (resumed)\n", page)
				assert.NotContains(t, page, ">Certificate ", "a resumed handshake sent a certificate")
			}
			assert.Equal(t, signs, handshakeSigns(t, f.srv),
				"a resumed handshake made a private-key operation")
			assert.Equal(t, resumed+3, serviceMetric(t, f.srv, `handshaked_handshakes_resumed_total{version="`+tls.VersionName(v)+`"}`))
		})
	}
}

// TestTicketsOffAtTheEdge: -session-tickets=false makes every handshake a
// full one; -tls12-session-tickets=false only the TLS 1.2 ones.
func TestTicketsOffAtTheEdge(t *testing.T) {
	f := newTicketFixture(t)
	off, _ := f.start(t, "-session-tickets=false")
	off12, _ := f.start(t, "-tls12-session-tickets=false")
	for _, tc := range []struct {
		addr    string
		version uint16
		resumes bool
	}{
		{off, tls.VersionTLS13, false}, {off, tls.VersionTLS12, false},
		{off12, tls.VersionTLS13, true}, {off12, tls.VersionTLS12, false},
	} {
		cfg := &tls.Config{ServerName: f.ecdsa.Name, RootCAs: f.ecdsa.Pool, MinVersion: tc.version, MaxVersion: tc.version,
			ClientSessionCache: tls.NewLRUClientSessionCache(4)}
		getPage(t, tc.addr, cfg)
		page := getPage(t, tc.addr, cfg)
		assert.Equal(t, tc.resumes, strings.Contains(page, "Resumed: yes"), "%s %s:\n%s", tc.addr, tls.VersionName(tc.version), page)
	}
}

// TestOpenSSLResumes: s_client saves the session of a connection to one
// edge (-sess_out) and resumes it on another (-sess_in): "Reused".
func TestOpenSSLResumes(t *testing.T) {
	openssl := testenv.LookPath(t, "openssl")
	f := newTicketFixture(t)
	a, _ := f.start(t)
	b, _ := f.start(t)
	for _, tc := range []struct{ name, flag, version string }{{"TLS1.3", "-tls1_3", "TLSv1.3"}, {"TLS1.2", "-tls1_2", "TLSv1.2"}} {
		t.Run(tc.name, func(t *testing.T) {
			sess := filepath.Join(t.TempDir(), "session.pem")
			sClient := func(addr string, sessFlag string) string {
				t.Helper()
				cmd := exec.Command(openssl, "s_client", "-connect", addr, "-servername", "ec.test", "-CAfile", f.ecCA,
					"-verify_return_error", "-ign_eof", tc.flag, sessFlag, sess)
				// The page comes after the TLS 1.3 NewSessionTicket: once
				// it is read, the ticket is in the session s_client saves.
				cmd.Stdin = strings.NewReader("GET / HTTP/1.0\r\n\r\n")
				out, err := cmd.CombinedOutput()
				require.NoError(t, err, "%s", out)
				return string(out)
			}
			out := sClient(a, "-sess_out")
			require.Contains(t, out, "New, "+tc.version, out)
			require.Contains(t, out, "Resumed: no", out)
			out = sClient(b, "-sess_in")
			assert.Contains(t, out, "Reused, "+tc.version, out)
			assert.Contains(t, out, "Resumed: yes", out)
		})
	}
}

// TestGnuTLSResumes: gnutls-cli --resume reconnects with the session of
// its first connection.
func TestGnuTLSResumes(t *testing.T) {
	gnutls := testenv.LookPath(t, "gnutls-cli")
	f := newTicketFixture(t)
	backend, _ := echoBackend(t)
	addr, _ := f.start(t, "-backend", backend)
	host, port, _ := net.SplitHostPort(addr)
	for _, prio := range []string{"NORMAL:-VERS-ALL:+VERS-TLS1.3", "NORMAL:-VERS-ALL:+VERS-TLS1.2"} {
		t.Run(prio, func(t *testing.T) {
			cmd := exec.Command(gnutls, "--x509cafile", f.ecCA, "--sni-hostname", "ec.test", "--verify-hostname", "ec.test",
				"--priority", prio, "--resume", "--waitresumption", "-p", port, host)
			cmd.Stdin = strings.NewReader("")
			out, err := cmd.CombinedOutput()
			require.NoError(t, err, "%s", out)
			assert.Contains(t, string(out), "This is a resumed session", "%s", out)
		})
	}
}

// TestCurlResumes: curl fetching several URLs in one invocation, each on a
// new connection (the server closes them), resumes the first's session in
// TLS 1.3. (In TLS 1.2 curl offers no session_ticket extension: it sets
// SSL_OP_NO_TICKET and resumes by session ID only, which needs a session
// cache on the server, not tickets; Go, openssl and gnutls-cli resume TLS
// 1.2 above.)
func TestCurlResumes(t *testing.T) {
	curl := testenv.LookPath(t, "curl")
	f := newTicketFixture(t)
	addr, _ := f.start(t)
	pages := curlPages(t, curl, f, addr)
	assert.Contains(t, pages[0], "Resumed: no", pages[0])
	assert.Contains(t, pages[1], "Resumed: yes", pages[1])
	assert.Contains(t, pages[2], "Resumed: yes", pages[2])
}

// curlPages has one curl fetch three pages from the edge at addr over TLS
// 1.3, each on a new connection (the server closes them), and returns them.
func curlPages(t *testing.T, curl string, f *fixture, addr string) []string {
	t.Helper()
	_, port, _ := net.SplitHostPort(addr)
	args := []string{"-fsS", "--max-time", "30", "--cacert", f.ecCA, "--resolve", "ec.test:" + port + ":127.0.0.1",
		"-H", "Connection: close", "--tlsv1.3"}
	for _, p := range []string{"/1", "/2", "/3"} {
		args = append(args, "https://ec.test:"+port+p)
	}
	out, err := exec.Command(curl, args...).CombinedOutput()
	require.NoError(t, err, "%s", out)
	pages := strings.Split(string(out), "handshake-edge echo")[1:]
	require.Len(t, pages, 3, "%s", out)
	return pages
}

// TestOpenSSLEarlyDataRefusedThroughEdge: RFC 8446, Section 4.2.10 end to
// end. s_client offers 0-RTT data with a ticket from OpenSSL's s_server
// (which allows early data) for the same name and key; the edge's service
// cannot open that ticket, does a full handshake and skips the 0-RTT
// records, which arrive through the edge between the engine's Steps in the
// service (carried in the state token with -unary), or, with -one-round-trip, after the one Step, while the edge
// waits for the client's Finished. The client is told its early data was
// rejected and the page comes back over the full handshake.
func TestOpenSSLEarlyDataRefusedThroughEdge(t *testing.T) {
	openssl := testenv.LookPath(t, "openssl")
	f := newTicketFixture(t)
	for _, args := range [][]string{nil, {"-unary"}, {"-one-round-trip"}} {
		t.Run(strings.Join(append([]string{"edge"}, args...), " "), func(t *testing.T) {
			addr, _ := f.start(t, args...)
			sess, early := earlyDataSession(t, openssl, f)
			cmd := exec.Command(openssl, "s_client", "-connect", addr, "-servername", f.ecdsa.Name, "-CAfile", f.ecCA,
				"-verify_return_error", "-tls1_3", "-ign_eof", "-sess_in", sess, "-early_data", early)
			cmd.Stdin = strings.NewReader("GET / HTTP/1.0\r\n\r\n")
			out, err := cmd.CombinedOutput()
			require.NoError(t, err, "%s", out)
			assert.Contains(t, string(out), "Early data was rejected", "%s", out)
			assert.Contains(t, string(out), "New, TLSv1.3", "%s", out)
			assert.Contains(t, string(out), "Resumed: no (full handshake)\n", "the page, over the full handshake: %s", out)
			if slices.Contains(args, "-one-round-trip") {
				assert.Contains(t, string(out), oneTrip, "%s", out)
			}
		})
	}
}

// TestGoClientResumesAfterHelloRetryRequest: RFC 8446, Section 4.2.11.2 end
// to end. The edge takes P-384 only, for which Go's client sends no share
// at first: each handshake has a HelloRetryRequest, and the second resumes
// with a binder over message_hash(ClientHello1), the HelloRetryRequest and
// the truncated second ClientHello, checked by the service's engine across
// its Steps.
func TestGoClientResumesAfterHelloRetryRequest(t *testing.T) {
	f := newTicketFixture(t)
	addr, _ := f.start(t, "-groups", "P384")
	cfg := &tls.Config{ServerName: f.ecdsa.Name, RootCAs: f.ecdsa.Pool, MinVersion: tls.VersionTLS13,
		CurvePreferences: []tls.CurveID{tls.X25519, tls.CurveP384}, ClientSessionCache: tls.NewLRUClientSessionCache(4)}
	page := getPage(t, addr, cfg)
	require.Contains(t, page, "HelloRetryRequest: true\n", page)
	require.Contains(t, page, "Resumed: no (full handshake)\n", page)
	page = getPage(t, addr, cfg)
	assert.Contains(t, page, "HelloRetryRequest: true\n", page)
	assert.Contains(t, page, "Resumed: yes", page)
}
