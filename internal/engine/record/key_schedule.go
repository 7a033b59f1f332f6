package record

import (
	"crypto"
	"crypto/hkdf"
	"encoding/binary"
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
	const prefix = "tls13 "
	if len(prefix)+len(label) > 255 || len(context) > 255 || length < 0 || length > 0xffff {
		panic("record: ExpandLabel: label, context or length out of range")
	}
	info := make([]byte, 0, 2+1+len(prefix)+len(label)+1+len(context))
	info = binary.BigEndian.AppendUint16(info, uint16(length))
	info = append(info, byte(len(prefix)+len(label)))
	info = append(info, prefix...)
	info = append(info, label...)
	info = append(info, byte(len(context)))
	info = append(info, context...)
	out, err := hkdf.Expand(h.New, secret, string(info), length)
	if err != nil {
		panic("record: ExpandLabel: " + err.Error())
	}
	return out
}

// TrafficKeys derives the record key and IV from a TLS 1.3 traffic secret
// (RFC 8446 §7.3), for callers that must hand them to another record layer.
// It panics if s is not a TLS 1.3 suite, whose keys come from the TLS 1.2
// key block instead.
func TrafficKeys(s *Suite, trafficSecret []byte) (key, iv []byte) {
	if !s.TLS13 {
		panic("record: TrafficKeys needs a TLS 1.3 suite")
	}
	key = ExpandLabel(s.Hash, trafficSecret, "key", nil, s.KeyLen)
	iv = ExpandLabel(s.Hash, trafficSecret, "iv", nil, s.FixedIVLen)
	return key, iv
}

// nextTrafficSecret derives application_traffic_secret_N+1 from
// application_traffic_secret_N for KeyUpdate (RFC 8446 §7.2).
func nextTrafficSecret(h crypto.Hash, secret []byte) []byte {
	return ExpandLabel(h, secret, "traffic upd", nil, h.Size())
}
