package edge

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/handshaked/handshaked/internal/engine/record"
	"github.com/handshaked/handshaked/internal/testenv"
)

// keyLogSecret returns the secret on the line of an NSS key log (as
// crypto/tls's KeyLogWriter writes it) with label, so a test can write
// records as the client would.
func keyLogSecret(t *testing.T, keyLog *testenv.Buffer, label string) []byte {
	t.Helper()
	sc := bufio.NewScanner(bytes.NewReader(keyLog.Bytes()))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 3 && f[0] == label {
			b, err := hex.DecodeString(f[2])
			if err != nil {
				t.Fatal(err)
			}
			return b
		}
	}
	t.Fatalf("no %s in the key log", label)
	return nil
}

// rawClient completes a TLS 1.3 handshake with crypto/tls, then writes its
// own records on the TCP connection with the client's traffic secret.
func rawClient(t *testing.T, s *testService, suite uint16) (net.Conn, *record.Cipher, *Conn) {
	t.Helper()
	hcfg := s.config(suite)
	l, conns := listen(t, &Config{Client: s.client, Handshake: hcfg})
	logs := &testenv.Buffer{}
	cfg := s.clientConfig(0, tls.VersionTLS13, true)
	cfg.KeyLogWriter = logs
	_, cc := dial(t, l, cfg)
	server := accept(t, conns)
	out, err := record.NewTLS13Cipher(suite, keyLogSecret(t, logs, "CLIENT_TRAFFIC_SECRET_0"), 0)
	if err != nil {
		t.Fatal(err)
	}
	return cc.Conn, out, server
}

func seal(t *testing.T, c *record.Cipher, typ record.ContentType, b []byte, padding int) []byte {
	t.Helper()
	rec, err := c.Seal(nil, typ, b, padding)
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

// TestTLS13ClientRecords sends the edge what crypto/tls never sends:
// empty and padded records, a client-initiated KeyUpdate split over two
// records, and records that must fail.
func TestTLS13ClientRecords(t *testing.T) {
	s := newTestService(t)
	for _, suite := range []uint16{tls.TLS_AES_128_GCM_SHA256, tls.TLS_AES_256_GCM_SHA384, tls.TLS_CHACHA20_POLY1305_SHA256} {
		t.Run(tls.CipherSuiteName(suite), func(t *testing.T) {
			raw, out, server := rawClient(t, s, suite)
			var w []byte
			w = append(w, seal(t, out, record.ApplicationData, nil, 0)...)
			w = append(w, seal(t, out, record.ApplicationData, []byte("padded"), 1000)...)
			w = append(w, seal(t, out, record.ApplicationData, nil, 50)...)
			// KeyUpdate(update_requested) in two records.
			w = append(w, seal(t, out, record.Handshake, []byte{24, 0}, 0)...)
			w = append(w, seal(t, out, record.Handshake, []byte{0, 1, 1}, 0)...)
			if err := out.Update(); err != nil {
				t.Fatal(err)
			}
			w = append(w, seal(t, out, record.ApplicationData, []byte("|new key"), 0)...)
			if _, err := raw.Write(w); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, len("padded|new key"))
			if _, err := io.ReadFull(server, got); err != nil || string(got) != "padded|new key" {
				t.Fatalf("edge read %q, %v", got, err)
			}
			server.out.Lock()
			seq := server.out.cipher.Seq()
			server.out.Unlock()
			if seq != 0 {
				t.Errorf("the edge did not answer update_requested with its own KeyUpdate (write seq %d)", seq)
			}

			// A maximum-size record is fine; a header announcing more
			// than 2^14+256 bytes is record_overflow before its body
			// arrives (RFC 8446 §5.2).
			raw.Write(seal(t, out, record.ApplicationData, bytes.Repeat([]byte{'z'}, record.MaxPlaintext), 0))
			big := make([]byte, record.MaxPlaintext)
			if _, err := io.ReadFull(server, big); err != nil {
				t.Fatalf("maximum-size record: %v", err)
			}
			tooLong := record.MaxCiphertextTLS13 + 1
			raw.Write([]byte{byte(record.ApplicationData), 3, 3, byte(tooLong >> 8), byte(tooLong)})
			if _, err := server.Read(big); !errors.Is(err, record.ErrRecordOverflow) {
				t.Errorf("over-long record: %v, want record_overflow", err)
			}
		})
	}
}

// TestUselessRecords: a flood of empty records is cut off with
// unexpected_message.
func TestUselessRecords(t *testing.T) {
	s := newTestService(t)
	raw, out, server := rawClient(t, s, tls.TLS_AES_128_GCM_SHA256)
	var w []byte
	for range maxUselessRecords + 2 {
		w = append(w, seal(t, out, record.ApplicationData, nil, 0)...)
	}
	go raw.Write(w)
	if _, err := server.Read(make([]byte, 10)); err == nil || !strings.Contains(err.Error(), "without application data") {
		t.Errorf("empty-record flood: %v", err)
	}
}

// TestRemoteFatalAlert: a fatal alert from the client ends reading with a
// RemoteAlertError, and the edge sends nothing more, not even close_notify.
func TestRemoteFatalAlert(t *testing.T) {
	s := newTestService(t)
	raw, out, server := rawClient(t, s, tls.TLS_AES_128_GCM_SHA256)
	raw.Write(seal(t, out, record.Alert, []byte{2, 40}, 0))
	var rerr *RemoteAlertError
	if _, err := server.Read(make([]byte, 10)); !errors.As(err, &rerr) || rerr.Alert != 40 || !strings.Contains(err.Error(), "handshake_failure") {
		t.Fatalf("read: %v, want the client's handshake_failure", err)
	}
	if _, err := server.Write([]byte("x")); err == nil {
		t.Error("write after the client's fatal alert succeeded")
	}
	server.Close()
	raw.SetReadDeadline(time.Now().Add(5 * time.Second))
	if rest, err := io.ReadAll(raw); err != nil || len(rest) != 0 {
		t.Errorf("after the client's fatal alert the edge sent % x (%v)", rest, err)
	}
}
