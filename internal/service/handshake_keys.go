package service

import (
	"context"
	"crypto/tls"
	"fmt"
	"strconv"
	"strings"

	"github.com/handshaked/handshaked/internal/keyvault"
)

// vaultKeyOps performs the engine's private-key operations with the vault.
// Key references are "<id>/<version>", resolved when the handshake starts so
// that a rotation mid-handshake cannot switch keys under it.
type vaultKeyOps struct {
	vault *keyvault.Vault
	keys  *keyMetrics
}

func keyRef(id string, version uint32) string {
	return id + "/" + strconv.FormatUint(uint64(version), 10)
}

func parseKeyRef(ref string) (string, uint32, error) {
	id, v, ok := strings.Cut(ref, "/")
	n, err := strconv.ParseUint(v, 10, 32)
	if !ok || err != nil {
		return "", 0, fmt.Errorf("malformed key reference %q", ref)
	}
	return id, uint32(n), nil
}

func (k vaultKeyOps) Sign(ctx context.Context, ref string, scheme tls.SignatureScheme, message []byte) ([]byte, error) {
	id, version, err := parseKeyRef(ref)
	if err != nil {
		return nil, err
	}
	sig, _, err := k.keys.sign(ctx, k.vault, sourceHandshake, id, version, scheme, message, false)
	return sig, err
}

// SignatureSchemes asks the vault what the key can sign with at vers.
func (k vaultKeyOps) SignatureSchemes(ctx context.Context, ref string, vers uint16) ([]tls.SignatureScheme, error) {
	id, version, err := parseKeyRef(ref)
	if err != nil {
		return nil, err
	}
	return k.vault.SignatureSchemes(ctx, id, version, vers)
}

func (k vaultKeyOps) DecryptPremaster(ctx context.Context, ref string, ciphertext []byte, clientVersion uint16) ([]byte, error) {
	id, version, err := parseKeyRef(ref)
	if err != nil {
		return nil, err
	}
	plaintext, _, err := k.keys.decrypt(ctx, k.vault, sourceHandshake, id, version, keyvault.DecryptRSAPKCS1TLSPremaster, ciphertext, clientVersion)
	return plaintext, err
}
