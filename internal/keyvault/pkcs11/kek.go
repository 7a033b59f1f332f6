//go:build pkcs11

package pkcs11

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/miekg/pkcs11"
)

// kekWrappingLabel is the CKA_LABEL of the token's AES key that wraps the
// vault's key-encryption key.
const kekWrappingLabel = "handshaked KEK wrapping key"

// wrappedKEKFormat names the format of a wrapped KEK and is its GCM
// associated data, with the wrapping key's URI.
const wrappedKEKFormat = "handshaked-pkcs11-wrapped-kek-v1"

// wrappedKEK is what WrapKEK returns: the KEK sealed with AES-256-GCM in
// the token, under a key that never leaves it.
type wrappedKEK struct {
	Format      string `json:"format"`
	WrappingKey string `json:"wrapping_key"` // RFC 7512 URI
	IV          []byte `json:"iv"`
	Ciphertext  []byte `json:"ciphertext"` // with the GCM tag
}

// WrapKEK seals kek under the token's KEK-wrapping key, an AES-256 key
// generated in the token (sensitive, never extractable) the first time.
// What it returns may be stored anywhere: without the token and its PIN it
// does not open. The caller clears kek.
func (b *Backend) WrapKEK(ctx context.Context, kek []byte) ([]byte, error) {
	w := wrappedKEK{Format: wrappedKEKFormat, IV: make([]byte, 12)}
	rand.Read(w.IV)
	err := b.withSession(ctx, func(sh pkcs11.SessionHandle) error {
		obj, id, err := b.kekWrappingKey(sh)
		if err != nil {
			return err
		}
		w.WrappingKey = objectURI{Token: b.token, Object: kekWrappingLabel, ID: id, Type: "secret-key"}.String()
		c := b.mod.ctx
		m := []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, pkcs11.NewGCMParams(w.IV, []byte(wrappedKEKFormat+w.WrappingKey), 128))}
		if err := c.EncryptInit(sh, m, obj); err != nil {
			return err
		}
		w.Ciphertext, err = c.Encrypt(sh, kek)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("pkcs11: wrap the key-encryption key: %w", err)
	}
	return json.MarshalIndent(w, "", "  ")
}

// UnwrapKEK opens what WrapKEK returned, in the token. A changed or
// foreign wrapped KEK fails.
func (b *Backend) UnwrapKEK(ctx context.Context, wrapped []byte) ([]byte, error) {
	var w wrappedKEK
	if err := json.Unmarshal(wrapped, &w); err != nil || w.Format != wrappedKEKFormat {
		return nil, errors.New("pkcs11: not a wrapped key-encryption key (" + wrappedKEKFormat + ")")
	}
	uri, err := parseObjectURI(w.WrappingKey)
	if err != nil {
		return nil, err
	}
	if uri.Token != b.token || uri.Type != "secret-key" {
		return nil, fmt.Errorf("pkcs11: the key-encryption key is wrapped by a key in token %q, not %q", uri.Token, b.token)
	}
	var kek []byte
	err = b.withSession(ctx, func(sh pkcs11.SessionHandle) error {
		obj, err := b.find(sh, pkcs11.CKO_SECRET_KEY, uri.ID)
		if err != nil {
			return err
		}
		c := b.mod.ctx
		m := []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, pkcs11.NewGCMParams(w.IV, []byte(wrappedKEKFormat+w.WrappingKey), 128))}
		if err := c.DecryptInit(sh, m, obj); err != nil {
			return err
		}
		kek, err = c.Decrypt(sh, w.Ciphertext)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("pkcs11: unwrap the key-encryption key with %s: %w", w.WrappingKey, err)
	}
	return kek, nil
}

// kekWrappingKey returns the token's KEK-wrapping key and its CKA_ID,
// generating it if the token has none.
func (b *Backend) kekWrappingKey(sh pkcs11.SessionHandle) (pkcs11.ObjectHandle, []byte, error) {
	c := b.mod.ctx
	objs, err := b.findAll(sh, pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY), pkcs11.NewAttribute(pkcs11.CKA_LABEL, kekWrappingLabel))
	if err != nil {
		return 0, nil, err
	}
	switch len(objs) {
	case 1:
		attrs, err := c.GetAttributeValue(sh, objs[0], []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_ID, nil)})
		if err != nil {
			return 0, nil, err
		}
		return objs[0], attrs[0].Value, nil
	case 0:
	default:
		return 0, nil, fmt.Errorf("%d keys labelled %q in the token, not 1", len(objs), kekWrappingLabel)
	}
	id := make([]byte, 16)
	rand.Read(id)
	obj, err := c.GenerateKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, true),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true),
		pkcs11.NewAttribute(pkcs11.CKA_ID, id),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, kekWrappingLabel),
	})
	if err != nil {
		return 0, nil, fmt.Errorf("generate the KEK-wrapping key: %w", err)
	}
	return obj, id, nil
}
