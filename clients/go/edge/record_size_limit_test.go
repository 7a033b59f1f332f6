package edge

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"io"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/engine/record"
)

// TestWriteRecordPlaintextLimit: the edge cuts what it writes into records
// of at most the session's record_plaintext_limit (the client's
// record_size_limit, RFC 8449, Section 4, as the service says it), in TLS
// 1.3 and TLS 1.2; a session from a service that predates the field (0),
// or one that says more than 2^14, gets records of 2^14, as before.
func TestWriteRecordPlaintextLimit(t *testing.T) {
	secret := func(n int) []byte {
		b := make([]byte, n)
		rand.Read(b)
		return b
	}
	sessions := map[string]func() (*pb.Session, *record.Cipher){
		"TLS 1.3": func() (*pb.Session, *record.Cipher) {
			s := &pb.Session{Version: tls.VersionTLS13, CipherSuite: uint32(tls.TLS_AES_128_GCM_SHA256), Keys: &pb.SessionKeys{
				ClientApplicationTrafficSecret: secret(32), ServerApplicationTrafficSecret: secret(32), ServerSequence: 1}}
			in, err := record.NewTLS13Cipher(tls.TLS_AES_128_GCM_SHA256, s.Keys.ServerApplicationTrafficSecret, 1)
			require.NoError(t, err)
			return s, in
		},
		"TLS 1.2": func() (*pb.Session, *record.Cipher) {
			s := &pb.Session{Version: tls.VersionTLS12, CipherSuite: uint32(tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256), Keys: &pb.SessionKeys{
				ClientWriteKey: secret(16), ClientWriteIv: secret(4), ServerWriteKey: secret(16), ServerWriteIv: secret(4),
				ClientSequence: 1, ServerSequence: 1}}
			in, err := record.NewTLS12Cipher(tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, s.Keys.ServerWriteKey, s.Keys.ServerWriteIv, 1)
			require.NoError(t, err)
			return s, in
		},
	}
	data := make([]byte, 3*record.MaxPlaintext+17)
	rand.Read(data)
	for vers, session := range sessions {
		for _, tc := range []struct{ given, want int }{
			{0, record.MaxPlaintext}, // a service before record_size_limit
			{63, 63},                 // TLS 1.3 at the smallest limit, 64
			{64, 64},
			{1000, 1000},
			{record.MaxPlaintext, record.MaxPlaintext},
			{record.MaxPlaintext + 1, record.MaxPlaintext}, // never more than the protocol's
		} {
			t.Run(vers+" limit "+strconv.Itoa(tc.given), func(t *testing.T) {
				s, in := session()
				s.RecordPlaintextLimit = uint32(tc.given)
				server, client := net.Pipe()
				defer client.Close()
				c, err := newConn(server, s, nil, nil, nil)
				require.NoError(t, err)
				assert.Equal(t, tc.want, c.ConnectionState().RecordPlaintextLimit)
				go func() {
					c.Write(data)
					c.Close()
				}()
				client.SetReadDeadline(time.Now().Add(10 * time.Second))
				var got []byte
				records := 0
				for {
					var hdr [record.HeaderLen]byte
					_, err := io.ReadFull(client, hdr[:])
					require.NoError(t, err)
					body := make([]byte, int(hdr[3])<<8|int(hdr[4]))
					_, err = io.ReadFull(client, body)
					require.NoError(t, err)
					typ, plain, err := in.Open(record.ContentType(hdr[0]), 0x0303, body)
					require.NoError(t, err)
					if typ == record.Alert {
						break // close_notify
					}
					records++
					require.LessOrEqual(t, len(plain), tc.want, "record %d", records)
					got = append(got, plain...)
				}
				assert.True(t, bytes.Equal(data, got), "the data, in order")
				assert.Equal(t, (len(data)+tc.want-1)/tc.want, records, "records: each full but the last")
			})
		}
	}
}
