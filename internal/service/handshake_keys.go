package service

import (
	"context"
	"crypto/tls"
	"fmt"
	"strconv"
	"strings"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/handshaked/handshaked/internal/keyvault"
)

// vaultKeyOps performs the engine's private-key operations with the vault.
// Key references are "<id>/<version>", resolved when the handshake starts so
// that a rotation mid-handshake cannot switch keys under it.
type vaultKeyOps struct {
	vault  *keyvault.Vault
	tracer trace.Tracer
	// metrics times them (source=handshake).
	metrics *keyMetrics
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

func (k vaultKeyOps) Sign(ctx context.Context, ref string, scheme tls.SignatureScheme, message []byte) (sig []byte, err error) {
	ctx, span := startVaultSpan(ctx, k.tracer, "sign", ref, attribute.String("tls.signature_scheme", scheme.String()), attribute.Int("vault.message_bytes", len(message)))
	defer func() { endVaultSpan(span, err) }()
	id, version, err := parseKeyRef(ref)
	if err != nil {
		return nil, err
	}
	sig, _, err = k.metrics.sign(ctx, k.vault, sourceHandshake, id, version, scheme, message, false)
	return sig, err
}

// SignatureSchemes asks the vault what the key can sign with at vers.
func (k vaultKeyOps) SignatureSchemes(ctx context.Context, ref string, vers uint16) (_ []tls.SignatureScheme, err error) {
	ctx, span := startVaultSpan(ctx, k.tracer, "signature_schemes", ref, attribute.String("tls.version", tls.VersionName(vers)))
	defer func() { endVaultSpan(span, err) }()
	id, version, err := parseKeyRef(ref)
	if err != nil {
		return nil, err
	}
	return k.vault.SignatureSchemes(ctx, id, version, vers)
}

func (k vaultKeyOps) DecryptPremaster(ctx context.Context, ref string, ciphertext []byte, clientVersion uint16) (_ []byte, err error) {
	// The span shows no outcome of the padding check: there is none to
	// show (implicit rejection, RFC 5246, Section 7.4.7.1).
	ctx, span := startVaultSpan(ctx, k.tracer, "decrypt_premaster", ref, attribute.Int("vault.ciphertext_bytes", len(ciphertext)))
	defer func() { endVaultSpan(span, err) }()
	id, version, err := parseKeyRef(ref)
	if err != nil {
		return nil, err
	}
	plaintext, _, err := k.metrics.decrypt(ctx, k.vault, sourceHandshake, id, version, keyvault.DecryptRSAPKCS1TLSPremaster, ciphertext, clientVersion)
	return plaintext, err
}
