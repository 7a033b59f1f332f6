package main

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"time"

	"github.com/handshaked/handshaked/internal/keyvault"
)

// sampleKeyID is the key a development instance starts with.
const sampleKeyID = "dev-rsa"

// loadOrCreateKEK reads the hex-encoded 32-byte key-encryption key, creating
// it (mode 0600, never overwriting) when the file does not exist yet.
func loadOrCreateKEK(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		kek := make([]byte, 32)
		rand.Read(kek)
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return nil, fmt.Errorf("key-encryption key: %w", err)
		}
		if werr := writeAndClose(f, []byte(hex.EncodeToString(kek)+"\n")); werr != nil {
			return nil, fmt.Errorf("key-encryption key %s: %w", path, werr)
		}
		slog.Warn("created a new key-encryption key", "file", path)
		return kek, nil
	}
	if err != nil {
		return nil, fmt.Errorf("key-encryption key: %w", err)
	}
	defer clear(data)
	return parseKEK(data, path)
}

// writeAndClose writes data to the new file f, syncs and closes it: a
// key-encryption key file is complete on disk before it is used.
func writeAndClose(f *os.File, data []byte) error {
	_, err := f.Write(data)
	if serr := f.Sync(); err == nil {
		err = serr
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// parseKEK decodes a key-encryption key written as 64 hex digits; source
// names where it came from, for the error.
func parseKEK(data []byte, source string) ([]byte, error) {
	kek, err := keyvault.ParseKEK(data)
	if err != nil {
		return nil, fmt.Errorf("key-encryption key %s: want 64 hex digits (32 bytes)", source)
	}
	return kek, nil
}

// ensureSampleKey gives a development instance an RSA key with a self-signed
// certificate for localhost, made inside the vault like any other.
func ensureSampleKey(ctx context.Context, vault *keyvault.Vault) error {
	if _, err := vault.Get(ctx, sampleKeyID); err == nil {
		return nil
	} else if !errors.Is(err, keyvault.ErrNotFound) {
		return err
	}
	k, err := vault.Create(ctx, sampleKeyID, keyvault.RSA2048, map[string]string{"purpose": "development"})
	if err != nil {
		return err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "localhost", Organization: []string{"handshaked development"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(1, 0, 0),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	der, err := vault.CreateSelfSignedCertificate(ctx, sampleKeyID, k.Primary, tmpl)
	if err != nil {
		return fmt.Errorf("self-signed certificate: %w", err)
	}
	if _, err := vault.AttachChain(ctx, sampleKeyID, k.Primary, [][]byte{der}); err != nil {
		return err
	}
	slog.Info("created the sample key with a self-signed certificate for localhost", "key", sampleKeyID)
	return nil
}
