package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestClientAuth: with -client-auth require, a client certificate issued by
// the -client-ca roots gets the page (which names it), also sent with a
// chain over 64 KiB (padded with copies of the CA's certificate, which
// verification passes over; a session ticket cannot hold such a chain, and
// the handshake goes on without one); a client without one is refused in
// the handshake. With request, both get in.
func TestClientAuth(t *testing.T) {
	f := newTicketFixture(t)
	caDER, caFile, client := clientCA(t, "client-7")
	withCert := []tls.Certificate{client}
	long := tls.Certificate{Certificate: slices.Clone(client.Certificate), PrivateKey: client.PrivateKey}
	for size := len(client.Certificate[0]); size < 200<<10; size += len(caDER) {
		long.Certificate = append(long.Certificate, caDER)
	}
	withLongChain := []tls.Certificate{long}

	get := func(addr string, certs []tls.Certificate, version uint16) (string, error) {
		tr := &http.Transport{TLSClientConfig: &tls.Config{ServerName: f.ecdsa.Name, RootCAs: f.ecdsa.Pool, Certificates: certs, MaxVersion: version}}
		defer tr.CloseIdleConnections()
		resp, err := (&http.Client{Transport: tr, Timeout: 20 * time.Second}).Get("https://" + addr + "/")
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return string(b), err
	}

	// In each mode: -one-round-trip leaves a handshake with client
	// authentication to the service (the edge cannot verify the client's
	// Certificate and CertificateVerify).
	for _, m := range edgeModes {
		required, _ := f.start(t, append([]string{"-client-auth", "require", "-client-ca", caFile}, m.args...)...)
		requested, _ := f.start(t, append([]string{"-client-auth", "request", "-client-ca", caFile}, m.args...)...)
		for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
			name := m.name + " " + tls.VersionName(v)
			page, err := get(required, withCert, v)
			if assert.NoError(t, err, "%s require, with a certificate", name) {
				assert.Contains(t, page, "Client certificate: CN=client-7", "%s require, with a certificate", name)
			}
			page, err = get(required, withLongChain, v)
			if assert.NoError(t, err, "%s require, with a %d-certificate chain", name, len(long.Certificate)) {
				assert.Contains(t, page, "Client certificate: CN=client-7", "%s require, with a long chain", name)
			}
			_, err = get(required, nil, v)
			assert.Error(t, err, "%s require: a client without a certificate got in", name)
			page, err = get(requested, nil, v)
			if assert.NoError(t, err, "%s request, without a certificate", name) {
				assert.NotContains(t, page, "Client certificate", "%s request, without a certificate", name)
			}
			page, err = get(requested, withCert, v)
			if assert.NoError(t, err, "%s request, with a certificate", name) {
				assert.Contains(t, page, "Client certificate: CN=client-7", "%s request, with a certificate", name)
			}
		}
	}
}

// clientCA makes a CA for client certificates, written to caFile for
// -client-ca, and a client certificate it issued for the common name cn.
func clientCA(t *testing.T, cn string) (caDER []byte, caFile string, client tls.Certificate) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "edge test clients"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err = x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	require.NoError(t, err)
	ca, err := x509.ParseCertificate(caDER)
	require.NoError(t, err)
	clientKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	clientDER, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		KeyUsage: x509.KeyUsageDigitalSignature}, ca, &clientKey.PublicKey, caKey)
	require.NoError(t, err)
	caFile = filepath.Join(t.TempDir(), "clients.pem")
	require.NoError(t, os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o600))
	return caDER, caFile, tls.Certificate{Certificate: [][]byte{clientDER}, PrivateKey: clientKey}
}
