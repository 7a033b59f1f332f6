//go:build pkcs11

package pkcs11

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// objectURI is the part of an RFC 7512 PKCS #11 URI that names a key: the
// token's label, the object's label and ID, and its type. It is a key
// version's handle in the vault's store.
type objectURI struct {
	Token  string
	Object string // CKA_LABEL
	ID     []byte // CKA_ID
	Type   string // "private", "secret-key"
}

// String formats u as "pkcs11:token=…;object=…;id=…;type=…". Every byte but
// the unreserved ones is percent-encoded, which RFC 7512 §2.3 allows for
// any character (and requires of the id, which is binary).
func (u objectURI) String() string {
	return "pkcs11:token=" + pctEncode([]byte(u.Token)) + ";object=" + pctEncode([]byte(u.Object)) +
		";id=" + pctEncodeAll(u.ID) + ";type=" + u.Type
}

func pctEncode(b []byte) string {
	var s strings.Builder
	for _, c := range b {
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~' {
			s.WriteByte(c)
		} else {
			fmt.Fprintf(&s, "%%%02X", c)
		}
	}
	return s.String()
}

func pctEncodeAll(b []byte) string {
	var s strings.Builder
	for _, c := range b {
		fmt.Fprintf(&s, "%%%02X", c)
	}
	return s.String()
}

// parseObjectURI parses the path attributes of an RFC 7512 URI (§2.3); it
// needs token, id and type, keeps object, and refuses what it does not
// know rather than ignore an attribute that would select another key.
func parseObjectURI(s string) (objectURI, error) {
	var u objectURI
	path, ok := strings.CutPrefix(s, "pkcs11:")
	if !ok {
		return u, errors.New("pkcs11: a key handle is a pkcs11: URI")
	}
	if i := strings.IndexByte(path, '?'); i >= 0 {
		return u, errors.New("pkcs11: a key handle has no query attributes")
	}
	seen := make(map[string]bool)
	for attr := range strings.SplitSeq(path, ";") {
		name, raw, ok := strings.Cut(attr, "=")
		if !ok || seen[name] {
			return u, fmt.Errorf("pkcs11: malformed URI attribute %.40q", attr)
		}
		seen[name] = true
		val, err := url.PathUnescape(raw)
		if err != nil {
			return u, fmt.Errorf("pkcs11: URI attribute %s: %w", name, err)
		}
		switch name {
		case "token":
			u.Token = val
		case "object":
			u.Object = val
		case "id":
			u.ID = []byte(val)
		case "type":
			u.Type = val
		default:
			return u, fmt.Errorf("pkcs11: unexpected URI attribute %.40q", name)
		}
	}
	if u.Token == "" || len(u.ID) == 0 || u.Type == "" {
		return u, errors.New("pkcs11: a key handle names its token, id and type")
	}
	return u, nil
}
