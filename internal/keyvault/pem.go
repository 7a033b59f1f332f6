package keyvault

import (
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"fmt"
)

// maxPEMSize bounds what Import parses. A 4096-bit RSA key in PEM is about
// 3.3 KiB. The bound matters beyond memory: the standard library validates
// an RSA key of any size while parsing it, at a cost cubic in its size.
const maxPEMSize = 8 << 10

// parsePrivateKeyPEM decodes the one private key in data. Its errors wrap
// ErrInvalidArgument and say what is wrong without quoting the input.
func parsePrivateKeyPEM(data []byte) (crypto.Signer, error) {
	if len(data) > maxPEMSize {
		return nil, fmt.Errorf("PEM larger than %d bytes: %w", maxPEMSize, ErrInvalidArgument)
	}
	var key *pem.Block
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		switch {
		case block.Type == "EC PARAMETERS":
			// `openssl ecparam -genkey` writes this ahead of the key,
			// which names its curve again.
		case key != nil:
			clear(block.Bytes)
			clear(key.Bytes)
			return nil, fmt.Errorf("more than one PEM block besides EC PARAMETERS: %w", ErrInvalidArgument)
		default:
			key = block
		}
	}
	if key == nil {
		return nil, fmt.Errorf("no PEM block found: %w", ErrInvalidArgument)
	}
	defer clear(key.Bytes)
	if key.Type == "ENCRYPTED PRIVATE KEY" || key.Headers["Proc-Type"] != "" {
		return nil, fmt.Errorf("the private key is encrypted; decrypt it before import: %w", ErrInvalidArgument)
	}

	var (
		parsed any
		err    error
	)
	switch key.Type {
	case "RSA PRIVATE KEY":
		parsed, err = x509.ParsePKCS1PrivateKey(key.Bytes)
	case "PRIVATE KEY":
		parsed, err = x509.ParsePKCS8PrivateKey(key.Bytes)
	case "EC PRIVATE KEY":
		parsed, err = x509.ParseECPrivateKey(key.Bytes)
	default:
		return nil, fmt.Errorf("PEM block %.40q is not a private key (RSA PRIVATE KEY, PRIVATE KEY or EC PRIVATE KEY): %w", key.Type, ErrInvalidArgument)
	}
	// The parser's message is not passed on: it is not needed to act on the
	// error, and no key byte must reach an error.
	if err != nil {
		return nil, fmt.Errorf("malformed %s: %w", key.Type, ErrInvalidArgument)
	}
	signer, ok := parsed.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("a %T cannot sign: %w", parsed, ErrInvalidArgument)
	}
	return signer, nil
}
