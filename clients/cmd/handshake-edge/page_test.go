package main

import (
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/testenv"
)

// TestPageNamesRSAKeyExchange: a TLS 1.2 RSA-key-exchange connection has no
// group and no signature scheme, and the echo page says so in words rather
// than printing zero values (CurveID(0), SignatureScheme(0)); the edge's
// log line of the connection has no group.
func TestPageNamesRSAKeyExchange(t *testing.T) {
	f := newFixture(t)
	addr, log := f.start(t)
	tr := &http.Transport{TLSClientConfig: &tls.Config{
		ServerName: f.rsa.Name, RootCAs: f.rsa.Pool, MaxVersion: tls.VersionTLS12,
		CipherSuites: []uint16{tls.TLS_RSA_WITH_AES_128_GCM_SHA256},
	}}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 30 * time.Second}).Get("https://" + addr + "/")
	require.NoError(t, err)
	page, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	require.Equal(t, tls.TLS_RSA_WITH_AES_128_GCM_SHA256, resp.TLS.CipherSuite)
	assert.Contains(t, string(page), "Group: none (RSA key exchange)\n")
	assert.Contains(t, string(page), "Signature scheme: none (RSA key exchange)\n")
	assert.NotContains(t, string(page), "(0)")

	// Logged before the page is served (http.Server's ConnContext).
	var logged []string
	for line := range strings.Lines(log.String()) {
		if strings.Contains(line, `msg="TLS connection"`) {
			logged = append(logged, line)
		}
	}
	require.Len(t, logged, 1, "the connection's log line:\n%s", log.String())
	assert.Contains(t, logged[0], "suite=TLS_RSA_WITH_AES_128_GCM_SHA256")
	assert.NotContains(t, logged[0], "group=")
}

// servedPage is what the edge's page must say of one connection of an
// outside client (TestJSSEClient, TestNSSClient): each run's first
// connection is a full handshake with signature, the ones after it resume.
type servedPage struct {
	client                            string // for the messages
	version, suite, server, signature string
	resumed                           bool
}

func (w servedPage) check(t *testing.T, page, where string) {
	t.Helper()
	assert.Contains(t, page, "TLS version: "+w.version+"\n", "%s:\n%s", where, page)
	assert.Contains(t, page, "Cipher suite: "+w.suite+"\n", "%s:\n%s", where, page)
	assert.Contains(t, page, "Server name: "+w.server+"\n", "%s:\n%s", where, page)
	if w.resumed {
		assert.Contains(t, page, "Resumed: yes", "%s: %s did not resume:\n%s", where, w.client, page)
		assert.Contains(t, page, "Signature scheme: none (resumed)\n", "%s:\n%s", where, page)
	} else {
		assert.Contains(t, page, "Resumed: no (full handshake)\n", "%s:\n%s", where, page)
		assert.Contains(t, page, w.signature+"\n", "%s:\n%s", where, page)
	}
	if w.version == "TLS 1.2" {
		// Both clients offer RFC 7627's extension; the edge must use it.
		assert.Contains(t, page, "Extended master secret: true\n", "%s:\n%s", where, page)
	}
}

// TestPageShowsRecordPlaintextLimit: the echo page shows the record
// plaintext limit the engine negotiated beside the other parameters: the
// protocol's 2^14 for a client that sends no record_size_limit (Go's), and
// 512 bytes for gnutls-cli --recordsize 512 (RFC 8449, Section 4), which
// advertises 512 in TLS 1.2 and 513 in TLS 1.3, whose limit counts the
// inner content type byte.
func TestPageShowsRecordPlaintextLimit(t *testing.T) {
	f := newFixture(t)
	addr, _ := f.start(t)
	assert.Contains(t, getPage(t, addr, &tls.Config{ServerName: f.rsa.Name, RootCAs: f.rsa.Pool}), "Record plaintext limit: 16384 bytes\n")

	gnutls := testenv.LookPath(t, "gnutls-cli")
	host, port, _ := net.SplitHostPort(addr)
	for _, prio := range []string{"NORMAL:-VERS-ALL:+VERS-TLS1.3", "NORMAL:-VERS-ALL:+VERS-TLS1.2"} {
		cmd := exec.Command(gnutls, "--x509cafile", f.rsaCA, "--sni-hostname", "rsa.test", "--verify-hostname", "rsa.test",
			"--priority", prio, "--recordsize", "512", "-p", port, host)
		// HTTP/1.0: the page ends the connection, and so gnutls-cli.
		cmd.Stdin = strings.NewReader("GET / HTTP/1.0\r\n\r\n")
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		killer := time.AfterFunc(60*time.Second, func() { cmd.Process.Kill() })
		err := cmd.Run()
		killer.Stop()
		require.NoError(t, err, "%s:\n%s", prio, stderr.String())
		assert.Contains(t, stdout.String(), "Record plaintext limit: 512 bytes (the client's record_size_limit, RFC 8449)\n", "%s:\n%s", prio, stdout.String())
	}
}
