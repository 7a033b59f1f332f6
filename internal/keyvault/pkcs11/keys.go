//go:build pkcs11

package pkcs11

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/asn1"
	"errors"
	"fmt"
	"io"
	"math/big"
	"sync"

	"github.com/miekg/pkcs11"
	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"

	"github.com/handshaked/handshaked/internal/keyvault"
)

// PKCS #11 3.0 names for EdDSA, which miekg/pkcs11 v1.1.1 predates.
const (
	ckmECEdwardsKeyPairGen = 0x1055 // CKM_EC_EDWARDS_KEY_PAIR_GEN
	ckmEdDSA               = 0x1057 // CKM_EDDSA
)

// Curve OIDs for CKA_EC_PARAMS (RFC 5480 §2.1.1.1, RFC 8410 §3).
var (
	oidP256    = asn1.ObjectIdentifier{1, 2, 840, 10045, 3, 1, 7}
	oidP384    = asn1.ObjectIdentifier{1, 3, 132, 0, 34}
	oidP521    = asn1.ObjectIdentifier{1, 3, 132, 0, 35}
	oidEd25519 = asn1.ObjectIdentifier{1, 3, 101, 112}
)

// The vault records an intent for each key it generates here, and undoes
// one left behind with DestroyLabeled (keyvault's intent.go).
var _ keyvault.LabelDestroyer = (*Backend)(nil)

// Name is keyvault.BackendPKCS11.
func (b *Backend) Name() string { return keyvault.BackendPKCS11 }

// Generate makes a key pair of alg in the token: the private key sensitive
// and never extractable, and, for RSA, an HMAC key of the same CKA_ID that
// keys the implicit rejection of premaster decryption. The handle is the
// private key's RFC 7512 URI.
func (b *Backend) Generate(ctx context.Context, alg keyvault.Algorithm, label string) ([]byte, crypto.Signer, error) {
	id := make([]byte, 16)
	rand.Read(id)
	common := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_ID, id),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
	}
	public := append([]*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true), pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, false)}, common...)
	private := append([]*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
	}, common...)
	var mech uint
	switch alg {
	case keyvault.RSA2048, keyvault.RSA3072, keyvault.RSA4096:
		bits := map[keyvault.Algorithm]int{keyvault.RSA2048: 2048, keyvault.RSA3072: 3072, keyvault.RSA4096: 4096}[alg]
		mech = pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN
		public = append(public,
			pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, true),
			pkcs11.NewAttribute(pkcs11.CKA_MODULUS_BITS, bits),
			pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, []byte{1, 0, 1}))
		private = append(private, pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true))
	case keyvault.ECDSAP256, keyvault.ECDSAP384, keyvault.ECDSAP521, keyvault.Ed25519:
		oid := map[keyvault.Algorithm]asn1.ObjectIdentifier{keyvault.ECDSAP256: oidP256, keyvault.ECDSAP384: oidP384, keyvault.ECDSAP521: oidP521, keyvault.Ed25519: oidEd25519}[alg]
		params, err := asn1.Marshal(oid)
		if err != nil {
			return nil, nil, err
		}
		mech = pkcs11.CKM_EC_KEY_PAIR_GEN
		if alg == keyvault.Ed25519 {
			mech = ckmECEdwardsKeyPairGen
		}
		public = append(public, pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, params))
	default:
		return nil, nil, fmt.Errorf("pkcs11: algorithm %v: %w", alg, keyvault.ErrInvalidArgument)
	}

	var pubObj, privObj, hmacObj pkcs11.ObjectHandle
	err := b.withSession(ctx, func(sh pkcs11.SessionHandle) error {
		// A retry on a new session (withSession) starts over: objects an
		// attempt made before its session was lost go first, or the id
		// would name two keys.
		if err := b.destroyID(sh, id); err != nil {
			return fmt.Errorf("pkcs11: clear an earlier attempt: %w", err)
		}
		var err error
		pubObj, privObj, err = b.mod.ctx.GenerateKeyPair(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(mech, nil)}, public, private)
		if err != nil {
			if errors.Is(err, pkcs11.Error(pkcs11.CKR_MECHANISM_INVALID)) || errors.Is(err, pkcs11.Error(pkcs11.CKR_CURVE_NOT_SUPPORTED)) {
				return fmt.Errorf("pkcs11: token %q cannot generate %v keys (%v): %w", b.token, alg, err, keyvault.ErrFailedPrecondition)
			}
			return fmt.Errorf("pkcs11: generate an %v key pair: %w", alg, err)
		}
		if mech != pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN {
			return nil
		}
		hmacObj, err = b.mod.ctx.GenerateKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_GENERIC_SECRET_KEY_GEN, nil)}, append([]*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_GENERIC_SECRET),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
			pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
		}, common...))
		if err != nil {
			return errors.Join(fmt.Errorf("pkcs11: generate the rejection key: %w", err), b.destroyID(sh, id))
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	key, err := b.newKey(ctx, alg, id, pubObj, privObj, hmacObj)
	if err != nil {
		return nil, nil, errors.Join(err, b.withSession(ctx, func(sh pkcs11.SessionHandle) error { return b.destroyID(sh, id) }))
	}
	uri := objectURI{Token: b.token, Object: label, ID: id, Type: "private"}
	return []byte(uri.String()), key, nil
}

// Load finds the objects a handle of Generate names.
func (b *Backend) Load(ctx context.Context, alg keyvault.Algorithm, handle []byte) (crypto.Signer, error) {
	uri, err := parseObjectURI(string(handle))
	if err != nil {
		return nil, err
	}
	if uri.Token != b.token || uri.Type != "private" {
		return nil, fmt.Errorf("pkcs11: the key is a %s in token %q, not a private key in token %q", uri.Type, uri.Token, b.token)
	}
	var pubObj, privObj, hmacObj pkcs11.ObjectHandle
	err = b.withSession(ctx, func(sh pkcs11.SessionHandle) error {
		var err error
		if pubObj, err = b.find(sh, pkcs11.CKO_PUBLIC_KEY, uri.ID); err != nil {
			return err
		}
		if privObj, err = b.find(sh, pkcs11.CKO_PRIVATE_KEY, uri.ID); err != nil {
			return err
		}
		if alg == keyvault.RSA2048 || alg == keyvault.RSA3072 || alg == keyvault.RSA4096 {
			hmacObj, err = b.find(sh, pkcs11.CKO_SECRET_KEY, uri.ID)
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("pkcs11: %s: %w", uri, err)
	}
	return b.newKey(ctx, alg, uri.ID, pubObj, privObj, hmacObj)
}

// find returns the one object of class with CKA_ID id.
func (b *Backend) find(sh pkcs11.SessionHandle, class uint, id []byte) (pkcs11.ObjectHandle, error) {
	objs, err := b.findAll(sh, pkcs11.NewAttribute(pkcs11.CKA_CLASS, class), pkcs11.NewAttribute(pkcs11.CKA_ID, id))
	if err == nil && len(objs) != 1 {
		err = fmt.Errorf("%d objects of class %d with this id in the token, not 1", len(objs), class)
	}
	if err != nil {
		return 0, err
	}
	return objs[0], nil
}

// findAll returns the objects matching template, two at most: enough to
// tell one from several.
func (b *Backend) findAll(sh pkcs11.SessionHandle, template ...*pkcs11.Attribute) ([]pkcs11.ObjectHandle, error) {
	if err := b.mod.ctx.FindObjectsInit(sh, template); err != nil {
		return nil, err
	}
	objs, _, err := b.mod.ctx.FindObjects(sh, 2)
	if ferr := b.mod.ctx.FindObjectsFinal(sh); err == nil {
		err = ferr
	}
	return objs, err
}

// Destroy destroys the objects a handle of Generate names: the private,
// public and rejection keys of its CKA_ID. Objects gone already (another
// replica destroying the same key) are no error.
func (b *Backend) Destroy(ctx context.Context, handle []byte) error {
	uri, err := parseObjectURI(string(handle))
	if err != nil {
		return err
	}
	if uri.Token != b.token || uri.Type != "private" {
		return fmt.Errorf("pkcs11: the key is a %s in token %q, not a private key in token %q", uri.Type, uri.Token, b.token)
	}
	return b.withSession(ctx, func(sh pkcs11.SessionHandle) error { return b.destroyID(sh, uri.ID) })
}

// DestroyLabeled implements keyvault.LabelDestroyer: it destroys every
// object with CKA_LABEL label, the objects of every key Generate made
// under it (the vault gives each attempt a label of its own), found or
// not by their CKA_ID.
func (b *Backend) DestroyLabeled(ctx context.Context, label string) error {
	return b.withSession(ctx, func(sh pkcs11.SessionHandle) error {
		return b.destroyAll(sh, pkcs11.NewAttribute(pkcs11.CKA_LABEL, label))
	})
}

// destroyID destroys every object with CKA_ID id: a key's public, private
// and rejection keys.
func (b *Backend) destroyID(sh pkcs11.SessionHandle, id []byte) error {
	return b.destroyAll(sh, pkcs11.NewAttribute(pkcs11.CKA_ID, id))
}

// destroyAll destroys every object matching attr. An object that another
// session destroyed between the search and its destruction is gone all
// the same.
func (b *Backend) destroyAll(sh pkcs11.SessionHandle, attr *pkcs11.Attribute) error {
	for {
		objs, err := b.findAll(sh, attr)
		if err != nil || len(objs) == 0 {
			return err
		}
		for _, obj := range objs {
			if err := b.mod.ctx.DestroyObject(sh, obj); err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_OBJECT_HANDLE_INVALID)) {
				return err
			}
		}
	}
}

// tokenKey is what every key of the token holds: its objects and public
// key. Object handles belong to the application, not a session, so any
// pooled session may use them; a token may renumber them when the
// application's sessions end, so they are found again by CKA_ID then.
type tokenKey struct {
	b   *Backend
	id  []byte
	pub crypto.PublicKey

	mu   sync.Mutex
	objs map[uint]pkcs11.ObjectHandle // by class: public, private, secret (the rejection key, RSA only)
}

func (k *tokenKey) base() *tokenKey          { return k }
func (k *tokenKey) Public() crypto.PublicKey { return k.pub }

// handle is the key's object of class, 0 if it has none.
func (k *tokenKey) handle(class uint) pkcs11.ObjectHandle {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.objs[class]
}

// op runs one single-part operation (C_*Init then C_*) with the key's
// object of class, finding the object again once if the token no longer
// knows its handle.
func (k *tokenKey) op(ctx context.Context, class uint, mech *pkcs11.Mechanism, decrypt bool, in []byte) ([]byte, error) {
	var out []byte
	err := k.b.withSession(ctx, func(sh pkcs11.SessionHandle) error {
		c := k.b.mod.ctx
		m := []*pkcs11.Mechanism{mech}
		run := func(obj pkcs11.ObjectHandle) (err error) {
			if decrypt {
				if err = c.DecryptInit(sh, m, obj); err == nil {
					out, err = c.Decrypt(sh, in)
				}
			} else if err = c.SignInit(sh, m, obj); err == nil {
				out, err = c.Sign(sh, in)
			}
			return err
		}
		err := run(k.handle(class))
		if !errors.Is(err, pkcs11.Error(pkcs11.CKR_OBJECT_HANDLE_INVALID)) && !errors.Is(err, pkcs11.Error(pkcs11.CKR_KEY_HANDLE_INVALID)) {
			return err
		}
		obj, ferr := k.b.find(sh, class, k.id)
		if ferr != nil {
			return fmt.Errorf("%w; finding the key again: %w", err, ferr)
		}
		k.mu.Lock()
		k.objs[class] = obj
		k.mu.Unlock()
		return run(obj)
	})
	return out, err
}

func (b *Backend) newKey(ctx context.Context, alg keyvault.Algorithm, id []byte, pubObj, privObj, hmacObj pkcs11.ObjectHandle) (crypto.Signer, error) {
	k := &tokenKey{b: b, id: id, objs: map[uint]pkcs11.ObjectHandle{pkcs11.CKO_PUBLIC_KEY: pubObj, pkcs11.CKO_PRIVATE_KEY: privObj}}
	if hmacObj != 0 {
		k.objs[pkcs11.CKO_SECRET_KEY] = hmacObj
	}
	var template, attrs []*pkcs11.Attribute
	rsaKey := alg == keyvault.RSA2048 || alg == keyvault.RSA3072 || alg == keyvault.RSA4096
	if rsaKey {
		template = []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_MODULUS, nil), pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, nil)}
	} else {
		template = []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, nil)}
	}
	// The template stays intact for a retry on a new session (withSession):
	// a failed call returns no attributes.
	err := b.withSession(ctx, func(sh pkcs11.SessionHandle) error {
		var err error
		attrs, err = b.mod.ctx.GetAttributeValue(sh, pubObj, template)
		if err == nil && len(attrs) != len(template) {
			err = fmt.Errorf("%d attributes read, not %d", len(attrs), len(template))
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("pkcs11: read the public key: %w", err)
	}
	if rsaKey {
		e := new(big.Int).SetBytes(attrs[1].Value)
		if !e.IsInt64() || e.Int64() > 1<<31-1 {
			return nil, errors.New("pkcs11: RSA public exponent out of range")
		}
		k.pub = &rsa.PublicKey{N: new(big.Int).SetBytes(attrs[0].Value), E: int(e.Int64())}
		return &rsaTokenKey{k}, nil
	}
	point := attrs[0].Value
	// CKA_EC_POINT is the DER encoding of an OCTET STRING holding the point
	// (PKCS #11 §2.3.3, 2.3.5); some tokens give the bare point.
	var inner cryptobyte.String
	if s := cryptobyte.String(point); s.ReadASN1(&inner, cbasn1.OCTET_STRING) && s.Empty() {
		point = inner
	}
	switch alg {
	case keyvault.Ed25519:
		if len(point) != ed25519.PublicKeySize {
			return nil, errors.New("pkcs11: malformed Ed25519 public key")
		}
		k.pub = ed25519.PublicKey(append([]byte(nil), point...))
		return &ed25519TokenKey{k}, nil
	default:
		curve := map[keyvault.Algorithm]elliptic.Curve{keyvault.ECDSAP256: elliptic.P256(), keyvault.ECDSAP384: elliptic.P384(), keyvault.ECDSAP521: elliptic.P521()}[alg]
		pub, err := ecdsa.ParseUncompressedPublicKey(curve, point)
		if err != nil {
			return nil, fmt.Errorf("pkcs11: EC public key: %w", err)
		}
		k.pub = pub
		return &ecdsaTokenKey{k}, nil
	}
}

// rsaTokenKey signs (PKCS #1 v1.5, PSS) and gives the vault the raw RSA
// operation and the rejection KDK (keyvault.RawRSAKey). It does not offer
// the token's PKCS #1 v1.5 decryption, a padding oracle, nor its OAEP: the
// vault removes either padding itself.
type rsaTokenKey struct{ *tokenKey }

// DigestInfo prefixes of RFC 8017 §9.2 note 1: CKM_RSA_PKCS signs what it
// is given, so the DigestInfo is added here.
var digestInfoPrefix = map[crypto.Hash][]byte{
	crypto.SHA256: {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20},
	crypto.SHA384: {0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05, 0x00, 0x04, 0x30},
	crypto.SHA512: {0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03, 0x05, 0x00, 0x04, 0x40},
	crypto.SHA1:   {0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00, 0x04, 0x14},
}

// pssMechanisms are CKM and CKG_MGF1 of each PSS hash.
var pssMechanisms = map[crypto.Hash][2]uint{
	crypto.SHA256: {pkcs11.CKM_SHA256, pkcs11.CKG_MGF1_SHA256},
	crypto.SHA384: {pkcs11.CKM_SHA384, pkcs11.CKG_MGF1_SHA384},
	crypto.SHA512: {pkcs11.CKM_SHA512, pkcs11.CKG_MGF1_SHA512},
}

func (k *rsaTokenKey) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	ctx := context.Background()
	h := opts.HashFunc()
	if h != 0 && len(digest) != h.Size() {
		return nil, fmt.Errorf("pkcs11: a %v digest is %d bytes, not %d", h, h.Size(), len(digest))
	}
	if pss, ok := opts.(*rsa.PSSOptions); ok {
		m, ok := pssMechanisms[h]
		if !ok {
			return nil, fmt.Errorf("pkcs11: RSA-PSS with %v is not supported", h)
		}
		salt := pss.SaltLength
		if salt == rsa.PSSSaltLengthEqualsHash || salt == rsa.PSSSaltLengthAuto {
			// TLS requires the salt as long as the hash (RFC 8446 §4.2.3).
			salt = h.Size()
		}
		return k.op(ctx, pkcs11.CKO_PRIVATE_KEY, pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_PSS, pkcs11.NewPSSParams(m[0], m[1], uint(salt))), false, digest)
	}
	prefix, ok := digestInfoPrefix[h]
	if !ok && h != 0 {
		return nil, fmt.Errorf("pkcs11: RSA PKCS #1 v1.5 with %v is not supported", h)
	}
	return k.op(ctx, pkcs11.CKO_PRIVATE_KEY, pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS, nil), false, append(append([]byte(nil), prefix...), digest...))
}

// DecryptRaw is CKM_RSA_X_509: RSADP with no padding check in the token,
// so nothing it returns or how long it takes depends on the padding.
func (k *rsaTokenKey) DecryptRaw(ctx context.Context, ciphertext []byte) ([]byte, error) {
	em, err := k.op(ctx, pkcs11.CKO_PRIVATE_KEY, pkcs11.NewMechanism(pkcs11.CKM_RSA_X_509, nil), true, ciphertext)
	if err != nil {
		return nil, fmt.Errorf("pkcs11: raw RSA: %w", err)
	}
	size := k.pub.(*rsa.PublicKey).Size()
	if len(em) > size {
		clear(em)
		return nil, fmt.Errorf("pkcs11: raw RSA gave %d bytes for a %d-byte modulus", len(em), size)
	}
	// A token may drop the leading zero bytes of the block; put them back
	// so the vault sees the block at the modulus' length.
	out := make([]byte, size)
	copy(out[size-len(em):], em)
	clear(em)
	return out, nil
}

// RejectionKDK is CKM_SHA256_HMAC of ciphertext under the key's rejection
// key, a secret that never leaves the token.
func (k *rsaTokenKey) RejectionKDK(ctx context.Context, ciphertext []byte) ([]byte, error) {
	kdk, err := k.op(ctx, pkcs11.CKO_SECRET_KEY, pkcs11.NewMechanism(pkcs11.CKM_SHA256_HMAC, nil), false, ciphertext)
	if err != nil {
		return nil, fmt.Errorf("pkcs11: rejection key: %w", err)
	}
	return kdk, nil
}

// ecdsaTokenKey signs with CKM_ECDSA, which takes the digest and returns
// r || s; crypto.Signer callers expect the ASN.1 form (RFC 3279 §2.2.3).
type ecdsaTokenKey struct{ *tokenKey }

func (k *ecdsaTokenKey) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	raw, err := k.op(context.Background(), pkcs11.CKO_PRIVATE_KEY, pkcs11.NewMechanism(pkcs11.CKM_ECDSA, nil), false, digest)
	if err != nil {
		return nil, fmt.Errorf("pkcs11: ECDSA: %w", err)
	}
	if len(raw) == 0 || len(raw)%2 != 0 {
		return nil, fmt.Errorf("pkcs11: ECDSA signature of %d bytes", len(raw))
	}
	r, s := new(big.Int).SetBytes(raw[:len(raw)/2]), new(big.Int).SetBytes(raw[len(raw)/2:])
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1BigInt(r)
		b.AddASN1BigInt(s)
	})
	return b.Bytes()
}

// ed25519TokenKey signs the message itself with CKM_EDDSA (pure Ed25519,
// RFC 8032).
type ed25519TokenKey struct{ *tokenKey }

func (k *ed25519TokenKey) Sign(_ io.Reader, message []byte, opts crypto.SignerOpts) ([]byte, error) {
	if opts.HashFunc() != 0 {
		return nil, errors.New("pkcs11: Ed25519 signs the message, not a digest")
	}
	sig, err := k.op(context.Background(), pkcs11.CKO_PRIVATE_KEY, pkcs11.NewMechanism(ckmEdDSA, nil), false, message)
	if err != nil {
		return nil, fmt.Errorf("pkcs11: Ed25519: %w", err)
	}
	return sig, nil
}
