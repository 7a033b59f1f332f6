package main

import (
	"crypto/tls"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestPageNamesRSAKeyExchange: a TLS 1.2 RSA-key-exchange connection has no
// group and no signature scheme, and the echo page says so in words rather
// than printing zero values (CurveID(0), SignatureScheme(0)).
func TestPageNamesRSAKeyExchange(t *testing.T) {
	f := newFixture(t)
	addr, _ := f.start(t)
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
