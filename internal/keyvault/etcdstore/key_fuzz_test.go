package etcdstore

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/keyvault"
)

// FuzzParseKey: the keys Scan reads from etcd (bytes from the network)
// parse into a record reference only if it is the one they name, and never
// panic.
func FuzzParseKey(f *testing.F) {
	s := &Store{records: "/p/store/r/"}
	for _, k := range []string{"/p/store/r/02/00000000/web", "/p/store/r/04/00000001/a/b", "/p/store/r/40/00000000/",
		"/p/store/r/zz", "/p/store/r/02/0000000/x", "/p/store/r/2/00000001/x", "/p/store/r/02/00000001x", "/p/store/head", ""} {
		f.Add(k)
	}
	f.Fuzz(func(t *testing.T, k string) {
		ref, err := s.parseKey(k)
		if err != nil {
			assert.ErrorIs(t, err, keyvault.ErrCorrupted)
			return
		}
		assert.Equal(t, k, s.key(ref), "parsed as %v", ref)
	})
}

// FuzzKeyRoundTrip: every record reference has a key that parses back to it.
func FuzzKeyRoundTrip(f *testing.F) {
	s := &Store{records: "/p/store/r/"}
	f.Add(uint8(keyvault.RecordMaterial), uint32(1), "web")
	f.Add(uint8(keyvault.RecordKEKRotation), uint32(0), "")
	f.Add(uint8(0xff), uint32(0xffffffff), "a/b/\x00/c")
	f.Fuzz(func(t *testing.T, kind uint8, version uint32, id string) {
		ref := keyvault.RecordRef{Kind: keyvault.RecordKind(kind), Version: version, ID: id}
		got, err := s.parseKey(s.key(ref))
		require.NoError(t, err)
		assert.Equal(t, ref, got)
	})
}
