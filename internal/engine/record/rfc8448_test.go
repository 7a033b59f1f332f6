package record

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"strings"
	"testing"
)

// unhex decodes a hex dump as printed in the RFCs, ignoring whitespace.
func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.Join(strings.Fields(s), ""))
	if err != nil {
		t.Fatalf("bad hex in test vector: %v", err)
	}
	return b
}

// Values from RFC 8448 §3, "Simple 1-RTT Handshake" (TLS_AES_128_GCM_SHA256).
const (
	rfc8448EarlySecret     = `33 ad 0a 1c 60 7e c0 3b 09 e6 cd 98 93 68 0c e2 10 ad f3 00 aa 1f 26 60 e1 b2 2e 10 f1 70 f9 2a`
	rfc8448Derived         = `6f 26 15 a1 08 c7 02 c5 67 8f 54 fc 9d ba b6 97 16 c0 76 18 9c 48 25 0c eb ea c3 57 6c 36 11 ba`
	rfc8448HandshakeSecret = `1d c8 26 e9 36 06 aa 6f dc 0a ad c1 2f 74 1b 01 04 6a a6 b9 9f 69 1e d2 21 a9 f0 ca 04 3f be ac`
	rfc8448HelloHash       = `86 0c 06 ed c0 78 58 ee 8e 78 f0 e7 42 8c 58 ed d6 b4 3f 2c a3 e6 e9 5f 02 ed 06 3c f0 e1 ca d8`

	rfc8448ClientHSSecret  = `b3 ed db 12 6e 06 7f 35 a7 80 b3 ab f4 5e 2d 8f 3b 1a 95 07 38 f5 2e 96 00 74 6a 0e 27 a5 5a 21`
	rfc8448ServerHSSecret  = `b6 7b 7d 69 0c c1 6c 4e 75 e5 42 13 cb 2d 37 b4 e9 c9 12 bc de d9 10 5d 42 be fd 59 d3 91 ad 38`
	rfc8448ClientAppSecret = `9e 40 64 6c e7 9a 7f 9d c0 5a f8 88 9b ce 65 52 87 5a fa 0b 06 df 00 87 f7 92 eb b7 c1 75 04 a5`
	rfc8448ServerAppSecret = `a1 1a f9 f0 55 31 f8 56 ad 47 11 6b 45 a9 50 32 82 04 b4 f4 4b fb 6b 3a 4b 4f 1f 3f cb 63 16 43`

	// {client} send handshake record: the client Finished, client
	// handshake keys, sequence number 0.
	rfc8448ClientFinishedRecord = `17 03 03 00 35 75 ec 4d c2 38 cc e6 0b 29 80 44 a7 1e 21 9c 56 cc 77 b0
		51 7f e9 b9 3c 7a 4b fc 44 d8 7f 38 f8 03 38 ac 98 fc 46 de b3 84 bd 1c ae ac ab 68 67 d7 26 c4 05 46`
	// {client} send application_data record: 00 01 .. 31, client
	// application keys, sequence number 0.
	rfc8448ClientAppRecord = `17 03 03 00 43 a2 3f 70 54 b6 2c 94 d0 af fa fe 82 28 ba 55 cb ef ac ea
		42 f9 14 aa 66 bc ab 3f 2b 98 19 a8 a5 b4 6b 39 5b d5 4a 9a 20 44 1e 2b 62 97 4e 1f 5a 62 92 a2 97
		70 14 bd 1e 3d ea e6 3a ee bb 21 69 49 15 e4`
	// {server} send application_data record: the same bytes, server
	// application keys, sequence number 1 (the NewSessionTicket took 0).
	rfc8448ServerAppRecord = `17 03 03 00 43 2e 93 7e 11 ef 4a c7 40 e5 38 ad 36 00 5f c4 a4 69 32 fc
		32 25 d0 5f 82 aa 1b 36 e3 0e fa f9 7d 90 e6 df fc 60 2d cb 50 1a 59 a8 fc c4 9c 4b f2 e5 f0 a2
		1c 00 47 c2 ab f3 32 54 0d d0 32 e1 67 c2 95 5d`
)

func TestExpandLabelRFC8448(t *testing.T) {
	emptyHash := sha256.Sum256(nil)
	tests := []struct {
		name    string
		secret  string
		label   string
		context []byte
		want    string
	}{
		{"derived", rfc8448EarlySecret, "derived", emptyHash[:], rfc8448Derived},
		{"c hs traffic", rfc8448HandshakeSecret, "c hs traffic", unhex(t, rfc8448HelloHash), rfc8448ClientHSSecret},
		{"s hs traffic", rfc8448HandshakeSecret, "s hs traffic", unhex(t, rfc8448HelloHash), rfc8448ServerHSSecret},
	}
	for _, tt := range tests {
		got := ExpandLabel(crypto.SHA256, unhex(t, tt.secret), tt.label, tt.context, 32)
		if want := unhex(t, tt.want); !bytes.Equal(got, want) {
			t.Errorf("%s: got %x, want %x", tt.name, got, want)
		}
	}
}

func TestTrafficKeysRFC8448(t *testing.T) {
	s, ok := SuiteByID(tls.TLS_AES_128_GCM_SHA256)
	if !ok {
		t.Fatal("TLS_AES_128_GCM_SHA256 not supported")
	}
	tests := []struct{ name, secret, key, iv string }{
		{"server handshake", rfc8448ServerHSSecret, `3f ce 51 60 09 c2 17 27 d0 f2 e4 e8 6e e4 03 bc`, `5d 31 3e b2 67 12 76 ee 13 00 0b 30`},
		{"client handshake", rfc8448ClientHSSecret, `db fa a6 93 d1 76 2c 5b 66 6a f5 d9 50 25 8d 01`, `5b d3 c7 1b 83 6e 0b 76 bb 73 26 5f`},
		{"server application", rfc8448ServerAppSecret, `9f 02 28 3b 6c 9c 07 ef c2 6b b9 f2 ac 92 e3 56`, `cf 78 2b 88 dd 83 54 9a ad f1 e9 84`},
		{"client application", rfc8448ClientAppSecret, `17 42 2d da 59 6e d5 d9 ac d8 90 e3 c6 3f 50 51`, `5b 78 92 3d ee 08 57 90 33 e5 23 d9`},
	}
	for _, tt := range tests {
		key, iv := TrafficKeys(s, unhex(t, tt.secret))
		if want := unhex(t, tt.key); !bytes.Equal(key, want) {
			t.Errorf("%s key: got %x, want %x", tt.name, key, want)
		}
		if want := unhex(t, tt.iv); !bytes.Equal(iv, want) {
			t.Errorf("%s iv: got %x, want %x", tt.name, iv, want)
		}
	}
}

// TestRecordsRFC8448 opens records of the RFC 8448 trace and seals their
// plaintext again, which must reproduce the RFC's bytes exactly.
func TestRecordsRFC8448(t *testing.T) {
	appData := make([]byte, 50)
	for i := range appData {
		appData[i] = byte(i)
	}
	tests := []struct {
		name     string
		secret   string
		seq      uint64
		record   string
		wantType ContentType
		check    func(t *testing.T, plaintext []byte)
	}{
		{"client Finished", rfc8448ClientHSSecret, 0, rfc8448ClientFinishedRecord, Handshake, func(t *testing.T, p []byte) {
			// finished(20), 3-byte length 32, then verify_data.
			if len(p) != 36 || !bytes.Equal(p[:4], []byte{20, 0, 0, 32}) {
				t.Errorf("inner plaintext %x is not a 32-byte Finished", p)
			}
		}},
		{"client application_data", rfc8448ClientAppSecret, 0, rfc8448ClientAppRecord, ApplicationData, func(t *testing.T, p []byte) {
			if !bytes.Equal(p, appData) {
				t.Errorf("plaintext %x, want %x", p, appData)
			}
		}},
		{"server application_data", rfc8448ServerAppSecret, 1, rfc8448ServerAppRecord, ApplicationData, func(t *testing.T, p []byte) {
			if !bytes.Equal(p, appData) {
				t.Errorf("plaintext %x, want %x", p, appData)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			record := unhex(t, tt.record)
			opener, err := NewTLS13Cipher(tls.TLS_AES_128_GCM_SHA256, unhex(t, tt.secret), tt.seq)
			if err != nil {
				t.Fatal(err)
			}
			typ, version, body, n, err := Parse(bytes.Clone(record), MaxCiphertextTLS13)
			if err != nil || n != len(record) {
				t.Fatalf("Parse: n=%d err=%v", n, err)
			}
			inner, plaintext, err := opener.Open(typ, version, body)
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			if inner != tt.wantType {
				t.Errorf("inner type %v, want %v", inner, tt.wantType)
			}
			tt.check(t, plaintext)

			sealer, err := NewTLS13Cipher(tls.TLS_AES_128_GCM_SHA256, unhex(t, tt.secret), tt.seq)
			if err != nil {
				t.Fatal(err)
			}
			resealed, err := sealer.Seal(nil, inner, plaintext, 0)
			if err != nil {
				t.Fatalf("Seal: %v", err)
			}
			if !bytes.Equal(resealed, record) {
				t.Errorf("Seal:\n got %x\nwant %x", resealed, record)
			}
			if opener.Seq() != tt.seq+1 || sealer.Seq() != tt.seq+1 {
				t.Errorf("sequence numbers %d, %d after one record from %d", opener.Seq(), sealer.Seq(), tt.seq)
			}
		})
	}
}
