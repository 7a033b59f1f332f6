//go:build pkcs11

package pkcs11

import (
	"context"
	"crypto"
	"fmt"
	"strings"

	"github.com/miekg/pkcs11"
)

// OpenedSessions is how many sessions b has opened.
func OpenedSessions(b *Backend) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.open)
}

// KeyFlags reads CKA_SENSITIVE, CKA_EXTRACTABLE and CKA_TOKEN of key's
// private object, and reports whether the token hands out its private
// value (CKA_PRIVATE_EXPONENT or CKA_VALUE), which it must refuse.
func KeyFlags(b *Backend, key crypto.Signer) (sensitive, extractable, token, valueRead bool, err error) {
	tk := key.(interface{ base() *tokenKey }).base()
	err = b.withSession(context.Background(), func(sh pkcs11.SessionHandle) error {
		attrs, err := b.mod.ctx.GetAttributeValue(sh, tk.handle(pkcs11.CKO_PRIVATE_KEY), []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, nil), pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, nil), pkcs11.NewAttribute(pkcs11.CKA_TOKEN, nil),
		})
		if err != nil {
			return err
		}
		sensitive, extractable, token = attrs[0].Value[0] == 1, attrs[1].Value[0] == 1, attrs[2].Value[0] == 1
		for _, a := range []uint{pkcs11.CKA_PRIVATE_EXPONENT, pkcs11.CKA_VALUE} {
			if v, err := b.mod.ctx.GetAttributeValue(sh, tk.handle(pkcs11.CKO_PRIVATE_KEY), []*pkcs11.Attribute{pkcs11.NewAttribute(a, nil)}); err == nil && len(v[0].Value) > 0 {
				valueRead = true
			}
		}
		return nil
	})
	return
}

// ObjectsWithID counts the token's objects with key's CKA_ID.
func ObjectsWithID(b *Backend, key crypto.Signer) (int, error) {
	return countObjects(b, pkcs11.NewAttribute(pkcs11.CKA_ID, key.(interface{ base() *tokenKey }).base().id))
}

// ObjectsOfVersion counts the token's objects that the vault made for
// version n of key id, in any attempt: those labelled "handshaked/ID/N/"
// and a suffix of the attempt. The vault may destroy objects while it
// counts (tests poll it while a destroy runs), and SoftHSM answers the
// label of an object destroyed since it was found with an error
// (CKR_OBJECT_HANDLE_INVALID, or CKR_GENERAL_ERROR when its file went
// first): such a count starts over, and an error that stays is returned.
func ObjectsOfVersion(b *Backend, id string, n uint32) (int, error) {
	var (
		count int
		err   error
	)
	for range 5 {
		if count, err = objectsOfVersion(b, id, n); err == nil {
			break
		}
	}
	return count, err
}

func objectsOfVersion(b *Backend, id string, n uint32) (int, error) {
	prefix := fmt.Sprintf("handshaked/%s/%d/", id, n)
	var count int
	err := b.withSession(context.Background(), func(sh pkcs11.SessionHandle) error {
		if err := b.mod.ctx.FindObjectsInit(sh, nil); err != nil {
			return err
		}
		var objs []pkcs11.ObjectHandle
		for {
			batch, _, err := b.mod.ctx.FindObjects(sh, 100)
			if err != nil || len(batch) == 0 {
				b.mod.ctx.FindObjectsFinal(sh)
				if err != nil {
					return err
				}
				break
			}
			objs = append(objs, batch...)
		}
		for _, obj := range objs {
			attrs, err := b.mod.ctx.GetAttributeValue(sh, obj, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, nil)})
			if err != nil {
				return err
			}
			if strings.HasPrefix(string(attrs[0].Value), prefix) {
				count++
			}
		}
		return nil
	})
	return count, err
}

func countObjects(b *Backend, attr *pkcs11.Attribute) (int, error) {
	var n int
	err := b.withSession(context.Background(), func(sh pkcs11.SessionHandle) error {
		if err := b.mod.ctx.FindObjectsInit(sh, []*pkcs11.Attribute{attr}); err != nil {
			return err
		}
		objs, _, err := b.mod.ctx.FindObjects(sh, 10)
		b.mod.ctx.FindObjectsFinal(sh)
		n = len(objs)
		return err
	})
	return n, err
}

var ParseObjectURI = parseObjectURI

type ObjectURI = objectURI

// SlotOf is the slot ID of b's token.
func SlotOf(b *Backend) uint { return b.slot }

// CloseAllSessions ends every session of the process on b's token, and
// with them the login, as a token reset or an HSM failover does.
func CloseAllSessions(b *Backend) error { return b.mod.ctx.CloseAllSessions(b.slot) }
