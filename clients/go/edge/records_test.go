package edge

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/engine/record"
	"github.com/handshaked/handshaked/internal/testenv"
)

// rawPeer is the client's side of a TLS 1.3 connection to the edge whose
// handshake crypto/tls completed: the TCP connection with the client's
// write cipher (out) and a cipher that opens what the edge sends (in).
type rawPeer struct {
	raw     net.Conn
	out, in *record.Cipher
}

// rawClient completes a TLS 1.3 handshake with crypto/tls, then writes its
// own records on the TCP connection with the client's traffic secret.
func rawClient(t *testing.T, s *testService, suite uint16) (*rawPeer, *Conn) {
	t.Helper()
	hcfg := s.config(suite)
	l, conns := listen(t, &Config{Client: s.client, Handshake: hcfg})
	logs := &testenv.Buffer{}
	cfg := s.clientConfig(0, tls.VersionTLS13, true)
	cfg.KeyLogWriter = logs
	_, cc := dial(t, l, cfg)
	server := accept(t, conns)
	out, err := record.NewTLS13Cipher(suite, testenv.KeyLogSecret(t, logs, "CLIENT_TRAFFIC_SECRET_0"), 0)
	require.NoError(t, err)
	in, err := record.NewTLS13Cipher(suite, testenv.KeyLogSecret(t, logs, "SERVER_TRAFFIC_SECRET_0"), 0)
	require.NoError(t, err)
	return &rawPeer{raw: cc.Conn, out: out, in: in}, server
}

func seal(t *testing.T, c *record.Cipher, typ record.ContentType, b []byte, padding int) []byte {
	t.Helper()
	rec, err := c.Seal(nil, typ, b, padding)
	require.NoError(t, err)
	return rec
}

// readAlert reads the next record the edge sent and returns the alert
// description it carries.
func (p *rawPeer) readAlert(t *testing.T) uint8 {
	t.Helper()
	require.NoError(t, p.raw.SetReadDeadline(time.Now().Add(10*time.Second)))
	hdr := make([]byte, record.HeaderLen)
	_, err := io.ReadFull(p.raw, hdr)
	require.NoError(t, err, "no record from the edge")
	body := make([]byte, int(hdr[3])<<8|int(hdr[4]))
	_, err = io.ReadFull(p.raw, body)
	require.NoError(t, err)
	typ, plain, err := p.in.Open(record.ContentType(hdr[0]), uint16(hdr[1])<<8|uint16(hdr[2]), body)
	require.NoError(t, err, "the edge's record does not open under the server traffic key")
	require.Equal(t, record.Alert, typ, "the edge sent a %v record, want an alert", typ)
	require.Len(t, plain, 2)
	assert.Equal(t, uint8(alertLevelFatal), plain[0], "alert level")
	return plain[1]
}

// TestTLS13ClientRecords sends the edge what crypto/tls never sends:
// empty and padded records, a client-initiated KeyUpdate split over two
// records, and records that must fail.
func TestTLS13ClientRecords(t *testing.T) {
	s := newTestService(t)
	for _, suite := range []uint16{tls.TLS_AES_128_GCM_SHA256, tls.TLS_AES_256_GCM_SHA384, tls.TLS_CHACHA20_POLY1305_SHA256} {
		t.Run(tls.CipherSuiteName(suite), func(t *testing.T) {
			p, server := rawClient(t, s, suite)
			var w []byte
			w = append(w, seal(t, p.out, record.ApplicationData, nil, 0)...)
			w = append(w, seal(t, p.out, record.ApplicationData, []byte("padded"), 1000)...)
			w = append(w, seal(t, p.out, record.ApplicationData, nil, 50)...)
			// KeyUpdate(update_requested) in two records.
			w = append(w, seal(t, p.out, record.Handshake, []byte{24, 0}, 0)...)
			w = append(w, seal(t, p.out, record.Handshake, []byte{0, 1, 1}, 0)...)
			require.NoError(t, p.out.Update())
			w = append(w, seal(t, p.out, record.ApplicationData, []byte("|new key"), 0)...)
			_, err := p.raw.Write(w)
			require.NoError(t, err)
			got := make([]byte, len("padded|new key"))
			_, err = io.ReadFull(server, got)
			require.NoError(t, err)
			require.Equal(t, "padded|new key", string(got))
			server.out.Lock()
			seq := server.out.cipher.Seq()
			server.out.Unlock()
			assert.Zero(t, seq, "the edge did not answer update_requested with its own KeyUpdate")

			// A maximum-size record is fine; a header announcing more
			// than 2^14+256 bytes is record_overflow before its body
			// arrives (RFC 8446 §5.2).
			p.raw.Write(seal(t, p.out, record.ApplicationData, bytes.Repeat([]byte{'z'}, record.MaxPlaintext), 0))
			big := make([]byte, record.MaxPlaintext)
			_, err = io.ReadFull(server, big)
			require.NoError(t, err, "maximum-size record")
			tooLong := record.MaxCiphertextTLS13 + 1
			p.raw.Write([]byte{byte(record.ApplicationData), 3, 3, byte(tooLong >> 8), byte(tooLong)})
			_, err = server.Read(big)
			assert.ErrorIs(t, err, record.ErrRecordOverflow, "over-long record")
		})
	}
}

// TestKeyUpdateRefused sends KeyUpdates the edge must refuse, each in one
// record, and checks the alert the client receives, sealed under the
// server's application traffic key.
func TestKeyUpdateRefused(t *testing.T) {
	s := newTestService(t)
	for _, tc := range []struct {
		name   string
		record []byte
		alert  uint8
	}{
		// RFC 8446 §4.6.3: "If an implementation receives any other value
		// [than 0 or 1], it MUST terminate the connection with an
		// "illegal_parameter" alert."
		{"request_update 2", []byte{24, 0, 0, 1, 2}, alertIllegalParameter},
		{"request_update 255", []byte{24, 0, 0, 1, 255}, alertIllegalParameter},
		// A KeyUpdate body is one byte (RFC 8446 §4.6.3).
		{"two-byte body", []byte{24, 0, 0, 2, 0, 0}, alertDecodeError},
		{"empty body", []byte{24, 0, 0, 0}, alertDecodeError},
		// The header decides, with the rest of the body not yet in.
		{"header of a 100-byte body, one byte sent", []byte{24, 0, 0, 100, 0}, alertDecodeError},
		{"header of an unknown message, one byte sent", []byte{99, 0, 0, 100, 0}, alertUnexpectedMessage},
		// RFC 8446 §5.1: handshake messages preceding a key change must
		// align with a record boundary, else unexpected_message.
		{"two KeyUpdates in one record", []byte{24, 0, 0, 1, 0, 24, 0, 0, 1, 0}, alertUnexpectedMessage},
		{"KeyUpdate then part of a message", []byte{24, 0, 0, 1, 1, 24, 0}, alertUnexpectedMessage},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, server := rawClient(t, s, tls.TLS_AES_128_GCM_SHA256)
			_, err := p.raw.Write(seal(t, p.out, record.Handshake, tc.record, 0))
			require.NoError(t, err)
			require.NoError(t, server.SetReadDeadline(time.Now().Add(5*time.Second)))
			_, err = server.Read(make([]byte, 10))
			var ne net.Error
			require.Error(t, err)
			require.False(t, errors.As(err, &ne) && ne.Timeout(), "the edge accepted the KeyUpdate and waited for more")
			assert.Equal(t, record.AlertName(tc.alert), record.AlertName(p.readAlert(t)))
		})
	}
}

// TestUselessRecords: a flood of empty records is cut off with
// unexpected_message.
func TestUselessRecords(t *testing.T) {
	s := newTestService(t)
	p, server := rawClient(t, s, tls.TLS_AES_128_GCM_SHA256)
	var w []byte
	for range maxUselessRecords + 2 {
		w = append(w, seal(t, p.out, record.ApplicationData, nil, 0)...)
	}
	go p.raw.Write(w)
	_, err := server.Read(make([]byte, 10))
	assert.ErrorContains(t, err, "without application data", "empty-record flood")
}

// TestRemoteFatalAlert: a fatal alert from the client ends reading with a
// RemoteAlertError, and the edge sends nothing more, not even close_notify.
func TestRemoteFatalAlert(t *testing.T) {
	s := newTestService(t)
	p, server := rawClient(t, s, tls.TLS_AES_128_GCM_SHA256)
	p.raw.Write(seal(t, p.out, record.Alert, []byte{2, 40}, 0))
	var rerr *RemoteAlertError
	_, err := server.Read(make([]byte, 10))
	require.ErrorAs(t, err, &rerr)
	assert.Equal(t, uint8(40), rerr.Alert)
	assert.ErrorContains(t, err, "handshake_failure")
	_, err = server.Write([]byte("x"))
	assert.Error(t, err, "write after the client's fatal alert succeeded")
	server.Close()
	p.raw.SetReadDeadline(time.Now().Add(5 * time.Second))
	rest, err := io.ReadAll(p.raw)
	assert.NoError(t, err)
	assert.Empty(t, rest, "after the client's fatal alert the edge sent something")
}
