package record

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"testing"
)

// FuzzParse feeds arbitrary bytes to Parse as a stream of records.
func FuzzParse(f *testing.F) {
	f.Add([]byte{22, 3, 1, 0, 5, 1, 0, 0, 1, 0})
	f.Add(Append(Append(nil, Handshake, tls.VersionTLS12, []byte("hello")), Alert, tls.VersionTLS12, []byte{2, 40}))
	f.Add(Append(nil, ApplicationData, tls.VersionTLS12, make([]byte, MaxPlaintext)))
	f.Add([]byte{23, 3, 3, 0x41, 0})
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		for len(data) > 0 {
			typ, version, body, n, err := Parse(data, MaxCiphertextTLS13)
			if err != nil {
				if n != 0 || body != nil || alertOf(err) == 0 {
					t.Fatalf("error %v with n=%d body=%d bytes alert=%d", err, n, len(body), alertOf(err))
				}
				return
			}
			if n == 0 {
				if len(data) >= HeaderLen && len(data) >= HeaderLen+(int(data[3])<<8|int(data[4])) {
					t.Fatalf("need-more for a complete %d-byte record", len(data))
				}
				return
			}
			if n != HeaderLen+len(body) || len(body) > MaxCiphertextTLS13 || !typ.known() || version>>8 != 3 {
				t.Fatalf("Parse = %v, %#x, %d-byte body, n=%d", typ, version, len(body), n)
			}
			// Append splits bodies over MaxPlaintext, which only
			// protected records may carry.
			if len(body) <= MaxPlaintext && !bytes.Equal(Append(nil, typ, version, body), data[:n]) {
				t.Fatal("Append does not reproduce the parsed record")
			}
			data = data[n:]
		}
	})
}

// fuzzCipher returns the fixed-key Cipher FuzzOpen uses for suite i (mod the
// number of suites).
func fuzzCipher(t testing.TB, i uint8) *Cipher {
	return newTestCipher(t, suites[int(i)%len(suites)].ID, 0)
}

// FuzzOpen parses arbitrary bytes into records and opens them with a fixed
// key. Open must never panic, never return plaintext with an error, leave no
// plaintext behind after an authentication failure, and whatever it accepts
// must be exactly what Seal would have produced.
func FuzzOpen(f *testing.F) {
	for i := range suites {
		c := fuzzCipher(f, uint8(i))
		var seed []byte
		seed, _ = c.Seal(seed, ApplicationData, []byte("hello, fuzzer"), 0)
		seed, _ = c.Seal(seed, ApplicationData, nil, 0)
		seed, _ = c.Seal(seed, Handshake, []byte{24, 0, 0, 1, 0}, 0)
		if suites[i].TLS13 {
			seed, _ = c.Seal(seed, Alert, []byte{1, 0}, 37)
		}
		f.Add(uint8(i), seed)
		f.Add(uint8(i), sealRaw(fuzzCipher(f, uint8(i)), ApplicationData, make([]byte, 20)))
	}
	f.Fuzz(func(t *testing.T, which uint8, data []byte) {
		opener, sealer := fuzzCipher(t, which), fuzzCipher(t, which)
		maxLen := MaxCiphertextTLS12
		if opener.suite.TLS13 {
			maxLen = MaxCiphertextTLS13
		}
		for len(data) > 0 {
			typ, version, body, n, err := Parse(data, maxLen)
			if err != nil || n == 0 {
				return
			}
			record := bytes.Clone(data[:n])
			seq := opener.Seq()
			gotType, plaintext, err := opener.Open(typ, version, body)
			if err != nil {
				if plaintext != nil || gotType != 0 {
					t.Fatalf("Open returned %v %q with error %v", gotType, plaintext, err)
				}
				if errors.Is(err, ErrBadRecordMAC) && !bytes.Equal(body, make([]byte, len(body))) {
					t.Fatal("body not wiped after an authentication failure")
				}
				if opener.Seq() != seq && !errors.Is(err, ErrRecordOverflow) && !errors.Is(err, ErrUnexpectedMessage) {
					t.Fatalf("seq moved on %v", err)
				}
				return
			}
			data = data[n:]
			if e := opener.suite.ExplicitNonceLen; e > 0 && binary.BigEndian.Uint64(record[HeaderLen:]) != seq {
				// A TLS 1.2 AES-GCM sender may choose another explicit
				// nonce (RFC 5288 §3); Seal always uses seq.
				continue
			}
			// Authentic: Seal must reproduce it byte for byte.
			padding := 0
			if opener.suite.TLS13 {
				padding = len(body) - 1 - len(plaintext) - opener.aead.Overhead()
			}
			sealer.seq = seq
			resealed, err := sealer.Seal(nil, gotType, plaintext, padding)
			if err != nil {
				t.Fatalf("Seal of an accepted record: %v", err)
			}
			if !bytes.Equal(resealed, record) {
				t.Fatalf("accepted record % x, Seal gives % x", record, resealed)
			}
		}
	})
}
