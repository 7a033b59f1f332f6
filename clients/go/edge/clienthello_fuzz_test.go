package edge

import (
	"bytes"
	"crypto/tls"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/engine/record"
)

// helloConn is a bytesConn that also takes read deadlines.
type helloConn struct{ bytesConn }

func (c *helloConn) SetReadDeadline(time.Time) error { return nil }

// goClientHello is the first flight of a crypto/tls client.
func goClientHello(t testing.TB) []byte {
	t.Helper()
	c1, c2 := net.Pipe()
	defer c2.Close()
	go tls.Client(c1, &tls.Config{ServerName: "hello.test"}).Handshake()
	var flight []byte
	buf := make([]byte, 4096)
	for {
		n, err := c2.Read(buf)
		require.NoError(t, err)
		flight = append(flight, buf[:n]...)
		if _, _, _, m, _ := record.Parse(flight, record.MaxPlaintext); m > 0 {
			return flight
		}
	}
}

// fragment re-records the handshake bytes of one record in records of at
// most n bytes each.
func fragment(rec []byte, n int) []byte {
	var out []byte
	for body := rec[record.HeaderLen:]; len(body) > 0; {
		k := min(n, len(body))
		out = append(out, rec[0], rec[1], rec[2], byte(k>>8), byte(k))
		out = append(out, body[:k]...)
		body = body[k:]
	}
	return out
}

// TestReadClientHello: the edge holds the first flight until the whole
// ClientHello is in, however it is fragmented, and hands on at once what
// cannot begin one.
func TestReadClientHello(t *testing.T) {
	hello := goClientHello(t)
	for _, tc := range []struct {
		name      string
		in        []byte
		want      int  // bytes handed on
		noneInYet bool // the input ends before the ClientHello does
	}{
		{"one record", hello, len(hello), false},
		{"with more after it", append(bytes.Clone(hello), 20, 3, 3, 0, 1, 1), len(hello), false},
		{"in 7-byte records", fragment(hello, 7), len(fragment(hello, 7)), false},
		{"in 1-byte records", fragment(hello, 1), len(fragment(hello, 1)), false},
		{"cut short", hello[:len(hello)-1], 0, true},
		{"a record header only", hello[:record.HeaderLen], 0, true},
		{"silent", nil, 0, true},
		{"not a handshake record", []byte("GET / HTTP/1.1\r\n\r\n"), record.HeaderLen, false},
		{"an empty handshake record", []byte{22, 3, 1, 0, 0, 1, 2, 3}, record.HeaderLen, false},
		{"an over-long record", []byte{22, 3, 1, 0x40, 0x01, 1}, record.HeaderLen, false},
		{"another message", []byte{22, 3, 1, 0, 4, 2, 0, 0, 9, 9}, 9, false},
		{"an over-long ClientHello", []byte{22, 3, 1, 0, 4, 1, 2, 1, 0x45, 9}, 9, false}, // 131397 bytes
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := readClientHello(&helloConn{bytesConn{r: bytes.NewReader(tc.in)}}, &Config{})
			if tc.noneInYet {
				assert.ErrorIs(t, err, errNoClientHello)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.in[:tc.want], got)
		})
	}
}

// FuzzReadClientHello: whatever the client sends, readClientHello never
// panics, hands on a prefix of it of bounded length that begins with a
// whole record header, or reports that no ClientHello came.
func FuzzReadClientHello(f *testing.F) {
	hello := goClientHello(f)
	f.Add(hello)
	f.Add(fragment(hello, 3))
	f.Add(hello[:20])
	f.Add([]byte{22, 3, 1, 0, 4, 1, 1, 0, 1, 9})
	f.Add([]byte("\x80\x2e\x01\x03\x01"))
	f.Fuzz(func(t *testing.T, in []byte) {
		got, err := readClientHello(&helloConn{bytesConn{r: bytes.NewReader(in)}}, &Config{})
		if err != nil {
			require.ErrorIs(t, err, errNoClientHello)
			return
		}
		require.GreaterOrEqual(t, len(got), record.HeaderLen)
		require.LessOrEqual(t, len(got), maxFirstFlight+record.HeaderLen+record.MaxPlaintext)
		require.Equal(t, in[:len(got)], got)
	})
}
