package record

import (
	"crypto"
	"crypto/hkdf"
	"crypto/hmac"
	"encoding/binary"
	"hash"
)

// ExpandLabel implements HKDF-Expand-Label (RFC 8446 §7.1):
//
//	HKDF-Expand(Secret, HkdfLabel, Length), where HkdfLabel is
//	uint16 length || opaque label<7..255> = "tls13 " + Label || opaque context<0..255>
//
// It is the building block of the whole TLS 1.3 key schedule, so the engine
// uses it too. Like crypto/tls, it panics on arguments no protocol message
// can produce (a label or context over 255 bytes, a length over what HKDF
// can expand): those are programming errors, not peer input.
func ExpandLabel(h crypto.Hash, secret []byte, label string, context []byte, length int) []byte {
	if length <= h.Size() {
		return newLabelExpander(h, secret).expand(label, context, length)
	}
	out, err := hkdf.Expand(h.New, secret, string(hkdfLabel(label, context, length)), length)
	if err != nil {
		panic("record: ExpandLabel: " + err.Error())
	}
	return out
}

// hkdfLabel is the HkdfLabel structure of RFC 8446 §7.1.
func hkdfLabel(label string, context []byte, length int) []byte {
	const prefix = "tls13 "
	if len(prefix)+len(label) > 255 || len(context) > 255 || length < 0 || length > 0xffff {
		panic("record: ExpandLabel: label, context or length out of range")
	}
	// Room for the counter and for the HMAC that labelExpander writes
	// over it (at most SHA-512's 64 bytes).
	info := make([]byte, 0, max(2+1+len(prefix)+len(label)+1+len(context)+1, 64))
	info = binary.BigEndian.AppendUint16(info, uint16(length))
	info = append(info, byte(len(prefix)+len(label)))
	info = append(info, prefix...)
	info = append(info, label...)
	info = append(info, byte(len(context)))
	return append(info, context...)
}

// labelExpander expands several labels from one secret with one HMAC
// keyed once. It serves only outputs of at most the hash's length, for
// which HKDF-Expand is the first Length bytes of T(1) = HMAC(PRK, info ||
// 0x01) (RFC 5869 §2.3): every record key, IV and traffic secret. That
// saves what crypto/hkdf spends around the HMAC per call (a hash built to
// learn its size, the info copied twice) and, for a key and IV, keying the
// HMAC twice.
type labelExpander struct {
	size int
	mac  hash.Hash
}

func newLabelExpander(h crypto.Hash, secret []byte) labelExpander {
	return labelExpander{size: h.Size(), mac: hmac.New(h.New, secret)}
}

func (e labelExpander) expand(label string, context []byte, length int) []byte {
	if length > e.size {
		panic("record: labelExpander: length over the hash's")
	}
	info := append(hkdfLabel(label, context, length), 1) // the counter of T(1)
	e.mac.Reset()
	e.mac.Write(info)
	t1 := e.mac.Sum(info[:0])
	clear(t1[length:]) // no unused output left behind the result
	return t1[:length:length]
}

// TrafficKeys derives the record key and IV from a TLS 1.3 traffic secret
// (RFC 8446 §7.3), for callers that must hand them to another record layer.
// It panics if s is not a TLS 1.3 suite, whose keys come from the TLS 1.2
// key block instead.
func TrafficKeys(s *Suite, trafficSecret []byte) (key, iv []byte) {
	if !s.TLS13 {
		panic("record: TrafficKeys needs a TLS 1.3 suite")
	}
	e := newLabelExpander(s.Hash, trafficSecret)
	return e.expand("key", nil, s.KeyLen), e.expand("iv", nil, s.FixedIVLen)
}

// nextTrafficSecret derives application_traffic_secret_N+1 from
// application_traffic_secret_N for KeyUpdate (RFC 8446 §7.2).
func nextTrafficSecret(h crypto.Hash, secret []byte) []byte {
	return ExpandLabel(h, secret, "traffic upd", nil, h.Size())
}
