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
