package keyless_test

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	handshaked "github.com/handshaked/handshaked/clients/go"
	"github.com/handshaked/handshaked/clients/go/keyless"
	"github.com/handshaked/handshaked/internal/service"
	"github.com/handshaked/handshaked/internal/servicetest"
)

// handshakeWith runs a crypto/tls server holding cert (a keyless key) and a
// Go client on loopback, and returns the client's handshake error.
func handshakeWith(t *testing.T, cert tls.Certificate, key servicetest.ServerKey, maxVersion, suite uint16) error {
	t.Helper()
	// RSA key exchange is off by default in crypto/tls; naming it turns it on.
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert},
		CipherSuites: []uint16{tls.TLS_RSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256}})
	require.NoError(t, err)
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		c.(*tls.Conn).Handshake()
	}()
	cfg := &tls.Config{RootCAs: key.Pool, ServerName: key.Name, MaxVersion: maxVersion}
	if suite != 0 {
		cfg.CipherSuites = []uint16{suite}
	}
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", ln.Addr().String(), cfg)
	if err == nil {
		conn.Close()
	}
	return err
}

// TestKeylessDisabledVersion: once its version is disabled in the vault, a
// keyless key neither signs nor decrypts, and a TLS server holding it can
// no longer complete a handshake with it (TLS 1.3 signs, TLS 1.2 RSA key
// exchange decrypts); enabled again, it does.
func TestKeylessDisabledVersion(t *testing.T) {
	srv := servicetest.Start(t, service.Options{})
	key := srv.ServerKey(t, "keyless-rsa", "rsa2048-pkcs1.pem", "keyless.test")
	c := handshaked.New(srv.Conn)
	ctx := context.Background()
	cert, err := keyless.Certificate(ctx, c, key.ID)
	require.NoError(t, err)
	signer := cert.PrivateKey.(crypto.Signer)
	pub := signer.Public().(*rsa.PublicKey)
	premaster := make([]byte, 48)
	premaster[0], premaster[1] = 3, 3
	ciphertext, err := rsa.EncryptPKCS1v15(rand.Reader, pub, premaster)
	require.NoError(t, err)
	digest := sha256.Sum256([]byte("m"))

	use := func() map[string]error {
		_, signErr := signer.Sign(rand.Reader, digest[:], crypto.SHA256)
		_, decryptErr := signer.(crypto.Decrypter).Decrypt(rand.Reader, ciphertext, &rsa.PKCS1v15DecryptOptions{SessionKeyLen: 48})
		return map[string]error{
			"Sign":                     signErr,
			"Decrypt":                  decryptErr,
			"TLS 1.3 handshake":        handshakeWith(t, cert, key, tls.VersionTLS13, 0),
			"TLS 1.2 RSA kx handshake": handshakeWith(t, cert, key, tls.VersionTLS12, tls.TLS_RSA_WITH_AES_128_GCM_SHA256),
		}
	}
	for name, err := range use() {
		assert.NoError(t, err, "%s with the version enabled", name)
	}
	_, err = c.DisableKeyVersion(ctx, key.ID, 1)
	require.NoError(t, err)
	errs := use()
	for name, err := range errs {
		assert.Error(t, err, "%s with the version disabled", name)
	}
	assert.Equal(t, codes.FailedPrecondition, status.Code(errs["Sign"]))
	assert.Equal(t, codes.FailedPrecondition, status.Code(errs["Decrypt"]))
	_, err = c.EnableKeyVersion(ctx, key.ID, 1)
	require.NoError(t, err)
	for name, err := range use() {
		assert.NoError(t, err, "%s enabled again", name)
	}
}
