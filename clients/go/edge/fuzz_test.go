package edge

import (
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"testing"
	"time"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/engine/record"
)

// bytesConn is a net.Conn that reads fixed bytes and discards writes.
type bytesConn struct {
	net.Conn
	r io.Reader
}

func (c *bytesConn) Read(b []byte) (int, error)         { return c.r.Read(b) }
func (c *bytesConn) Write(b []byte) (int, error)        { return len(b), nil }
func (c *bytesConn) Close() error                       { return nil }
func (c *bytesConn) SetWriteDeadline(t time.Time) error { return nil }

// fuzzSessions are fixed sessions, one per protocol version: the fuzzer
// can reach authenticated records through the seeds, which are sealed with
// the same keys.
var fuzzSessions = []*pb.Session{
	{Version: tls.VersionTLS13, CipherSuite: uint32(tls.TLS_AES_128_GCM_SHA256), Keys: &pb.SessionKeys{
		ClientApplicationTrafficSecret: bytes.Repeat([]byte{1}, 32), ServerApplicationTrafficSecret: bytes.Repeat([]byte{2}, 32)}},
	{Version: tls.VersionTLS12, CipherSuite: uint32(tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256), Keys: &pb.SessionKeys{
		ClientWriteKey: bytes.Repeat([]byte{3}, 32), ClientWriteIv: bytes.Repeat([]byte{4}, 12),
		ServerWriteKey: bytes.Repeat([]byte{5}, 32), ServerWriteIv: bytes.Repeat([]byte{6}, 12), ClientSequence: 1, ServerSequence: 1}},
}

// clientCipher seals as the client of fuzzSessions[i].
func clientCipher(tb testing.TB, i int) *record.Cipher {
	s := fuzzSessions[i]
	var c *record.Cipher
	var err error
	if i == 0 {
		c, err = record.NewTLS13Cipher(uint16(s.CipherSuite), s.Keys.ClientApplicationTrafficSecret, 0)
	} else {
		c, err = record.NewTLS12Cipher(uint16(s.CipherSuite), s.Keys.ClientWriteKey, s.Keys.ClientWriteIv, s.Keys.ClientSequence)
	}
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// FuzzConnRead feeds arbitrary bytes to the read path of a Conn: record
// parsing, opening, alerts and post-handshake messages. It must never
// panic, never hand out more plaintext than it was given, and always end
// with an error.
func FuzzConnRead(f *testing.F) {
	for i := range fuzzSessions {
		c := clientCipher(f, i)
		var seed []byte
		seed, _ = c.Seal(seed, record.ApplicationData, []byte("hello"), 0)
		seed, _ = c.Seal(seed, record.ApplicationData, nil, 0)
		if i == 0 {
			seed, _ = c.Seal(seed, record.ApplicationData, []byte("padded"), 20)
			seed, _ = c.Seal(seed, record.Handshake, []byte{24, 0, 0, 1, 1}, 0)
			c.Update()
		} else {
			seed, _ = c.Seal(seed, record.Handshake, []byte{1, 0, 0, 0}, 0)
		}
		seed, _ = c.Seal(seed, record.ApplicationData, bytes.Repeat([]byte{'b'}, 300), 0)
		seed, _ = c.Seal(seed, record.Alert, []byte{1, 0}, 0)
		f.Add(byte(i), seed)
		tampered := bytes.Clone(seed)
		tampered[len(tampered)/2] ^= 1
		f.Add(byte(i), tampered)
	}
	f.Add(byte(0), []byte{23, 3, 3, 0x40, 0x01})
	f.Add(byte(1), []byte{20, 3, 3, 0, 1, 1})
	f.Fuzz(func(t *testing.T, which byte, data []byte) {
		s := fuzzSessions[int(which)%len(fuzzSessions)]
		c, err := newConn(&bytesConn{r: bytes.NewReader(data)}, s, nil, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 1000)
		total := 0
		for range len(data) + 2 {
			n, err := c.Read(buf)
			total += n
			if err != nil {
				if total > len(data) {
					t.Fatalf("read %d bytes of plaintext from %d bytes of input", total, len(data))
				}
				return
			}
		}
		t.Fatal("Read never returned an error at the end of the input")
	})
}
