package record

import (
	"bytes"
	"crypto/tls"
	"errors"
	"testing"
)

// alertOf returns the alert an error from this package asks for, or 0.
func alertOf(err error) uint8 {
	var e *Error
	if errors.As(err, &e) {
		return e.Alert()
	}
	return 0
}

func TestParsePartialInput(t *testing.T) {
	record := Append(nil, Handshake, tls.VersionTLS12, []byte("client hello bytes"))
	for i := range len(record) {
		typ, version, body, n, err := Parse(record[:i], MaxPlaintext)
		if n != 0 || err != nil || body != nil || typ != 0 || version != 0 {
			t.Errorf("Parse(%d of %d bytes) = %v, %#x, %q, %d, %v; want need-more", i, len(record), typ, version, body, n, err)
		}
	}
	typ, version, body, n, err := Parse(record, MaxPlaintext)
	if err != nil || n != len(record) || typ != Handshake || version != tls.VersionTLS12 || string(body) != "client hello bytes" {
		t.Errorf("Parse(whole record) = %v, %#x, %q, %d, %v", typ, version, body, n, err)
	}
}

func TestParseCoalesced(t *testing.T) {
	var buf []byte
	buf = Append(buf, Handshake, tls.VersionTLS10, []byte("hello")) // ClientHello's legacy record version
	buf = Append(buf, ChangeCipherSpec, tls.VersionTLS12, []byte{1})
	buf = Append(buf, ApplicationData, tls.VersionTLS12, nil)
	buf = Append(buf, Alert, tls.VersionTLS12, []byte{1, 0})
	buf = append(buf, byte(Handshake), 3, 3, 0, 10, 'p', 'a', 'r') // incomplete
	want := []struct {
		typ     ContentType
		version uint16
		body    string
	}{
		{Handshake, tls.VersionTLS10, "hello"},
		{ChangeCipherSpec, tls.VersionTLS12, "\x01"},
		{ApplicationData, tls.VersionTLS12, ""},
		{Alert, tls.VersionTLS12, "\x01\x00"},
	}
	for i, w := range want {
		typ, version, body, n, err := Parse(buf, MaxPlaintext)
		if err != nil || n != HeaderLen+len(w.body) || typ != w.typ || version != w.version || string(body) != w.body {
			t.Fatalf("record %d: Parse = %v, %#x, %q, %d, %v; want %v", i, typ, version, body, n, err, w)
		}
		// The body's capacity ends with the record: appending to it
		// must not overwrite the next record.
		before := bytes.Clone(buf[n:])
		_ = append(body, 0xff)
		if !bytes.Equal(buf[n:], before) {
			t.Fatalf("record %d: appending to body overwrote the next record", i)
		}
		buf = buf[n:]
	}
	if _, _, _, n, err := Parse(buf, MaxPlaintext); n != 0 || err != nil {
		t.Errorf("incomplete last record: n=%d err=%v, want need-more", n, err)
	}
}

func TestParseErrors(t *testing.T) {
	header := func(typ byte, version uint16, length int) []byte {
		return []byte{typ, byte(version >> 8), byte(version), byte(length >> 8), byte(length)}
	}
	tests := []struct {
		name   string
		buf    []byte
		maxLen int
		want   error
		alert  uint8
	}{
		{"type 0", header(0, 0x0303, 1), MaxPlaintext, ErrUnexpectedMessage, 10},
		{"type 19", header(19, 0x0303, 1), MaxPlaintext, ErrUnexpectedMessage, 10},
		{"heartbeat", header(24, 0x0303, 1), MaxPlaintext, ErrUnexpectedMessage, 10},
		{"type 255", header(255, 0x0303, 1), MaxPlaintext, ErrUnexpectedMessage, 10},
		{"SSL 2 version", header(22, 0x0200, 1), MaxPlaintext, ErrDecode, 50},
		{"version 4.3", header(22, 0x0403, 1), MaxPlaintext, ErrDecode, 50},
		{"HTTP", []byte("GET / HTTP/1.1\r\n"), MaxPlaintext, ErrUnexpectedMessage, 10},
		{"plaintext over 2^14", header(22, 0x0303, MaxPlaintext+1), MaxPlaintext, ErrRecordOverflow, 22},
		{"TLS 1.3 ciphertext over 2^14+256", header(23, 0x0303, MaxCiphertextTLS13+1), MaxCiphertextTLS13, ErrRecordOverflow, 22},
		{"TLS 1.2 ciphertext over 2^14+2048", header(23, 0x0303, MaxCiphertextTLS12+1), MaxCiphertextTLS12, ErrRecordOverflow, 22},
		{"empty handshake", header(22, 0x0303, 0), MaxPlaintext, ErrUnexpectedMessage, 10},
		{"empty alert", header(21, 0x0303, 0), MaxPlaintext, ErrUnexpectedMessage, 10},
		{"empty change_cipher_spec", header(20, 0x0303, 0), MaxPlaintext, ErrUnexpectedMessage, 10},
	}
	for _, tt := range tests {
		// Only the header is present: errors must not wait for the body.
		typ, version, body, n, err := Parse(tt.buf, tt.maxLen)
		if !errors.Is(err, tt.want) || n != 0 || body != nil || typ != 0 || version != 0 {
			t.Errorf("%s: Parse = %v, %#x, %q, %d, %v; want %v", tt.name, typ, version, body, n, err, tt.want)
		}
		if got := alertOf(err); got != tt.alert {
			t.Errorf("%s: alert %d, want %d", tt.name, got, tt.alert)
		}
	}

	// The limits themselves are allowed.
	for _, maxLen := range []int{MaxPlaintext, MaxCiphertextTLS13, MaxCiphertextTLS12} {
		buf := append(header(23, 0x0303, maxLen), make([]byte, maxLen)...)
		if _, _, body, n, err := Parse(buf, maxLen); err != nil || n != len(buf) || len(body) != maxLen {
			t.Errorf("record of exactly %d bytes: n=%d err=%v", maxLen, n, err)
		}
	}
}

func TestAppendFragments(t *testing.T) {
	for _, size := range []int{0, 1, MaxPlaintext, MaxPlaintext + 1, 3*MaxPlaintext + 5} {
		msg := bytes.Repeat([]byte{0xab}, size)
		prefix := []byte("existing")
		buf := Append(bytes.Clone(prefix), ApplicationData, tls.VersionTLS12, msg)
		if !bytes.HasPrefix(buf, prefix) {
			t.Fatalf("size %d: Append clobbered dst", size)
		}
		buf = buf[len(prefix):]
		var got []byte
		records := 0
		for len(buf) > 0 {
			typ, version, body, n, err := Parse(buf, MaxPlaintext)
			if err != nil || n == 0 || typ != ApplicationData || version != tls.VersionTLS12 {
				t.Fatalf("size %d: Parse = %v, %#x, %d, %v", size, typ, version, n, err)
			}
			got = append(got, body...)
			buf = buf[n:]
			records++
		}
		wantRecords := max(1, (size+MaxPlaintext-1)/MaxPlaintext)
		if !bytes.Equal(got, msg) || records != wantRecords {
			t.Errorf("size %d: %d records carrying %d bytes, want %d records", size, records, len(got), wantRecords)
		}
	}
}

func TestContentTypeString(t *testing.T) {
	for typ, want := range map[ContentType]string{
		ChangeCipherSpec: "change_cipher_spec", Alert: "alert", Handshake: "handshake",
		ApplicationData: "application_data", 24: "unknown(24)",
	} {
		if got := typ.String(); got != want {
			t.Errorf("%d.String() = %q, want %q", uint8(typ), got, want)
		}
	}
}
