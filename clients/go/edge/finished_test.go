package edge

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/hex"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/engine/record"
)

// oneRoundTrip is a handshake config whose TLS 1.3 handshakes complete in
// the service on the server's flight.
func (s *testService) oneRoundTrip(suites ...uint16) *pb.HandshakeConfig {
	cfg := s.config(suites...)
	cfg.CallerVerifiesFinished = true
	return cfg
}

// TestOneRoundTrip: with caller_verifies_finished, a TLS 1.3 handshake
// takes one service step, streamed or unary, every suite, with the
// client's records whole or one byte per segment; application data then
// goes both ways. TLS 1.2 takes its two steps as before.
func TestOneRoundTrip(t *testing.T) {
	s := newTestService(t)
	for _, sc := range suites {
		if sc.version == tls.VersionTLS12 && sc.id != tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 {
			continue
		}
		for _, unary := range []bool{false, true} {
			for _, trickle := range []bool{false, true} {
				name := tls.CipherSuiteName(sc.id)
				if unary {
					name += "/unary"
				}
				if trickle {
					name += "/trickled"
				}
				t.Run(name, func(t *testing.T) {
					l, conns := listen(t, &Config{Client: s.client, Handshake: s.oneRoundTrip(sc.id), Unary: unary})
					raw, err := net.Dial("tcp", l.Addr().String())
					require.NoError(t, err)
					cc := &clientConn{Conn: raw, corruptAt: -1, trickle: trickle}
					client := tls.Client(cc, s.clientConfig(sc.id, sc.version, sc.ec))
					t.Cleanup(func() { client.Close() })
					require.NoError(t, client.Handshake())
					server := accept(t, conns)
					st := server.ConnectionState()
					assert.Equal(t, sc.id, st.CipherSuite)
					if sc.version == tls.VersionTLS13 {
						assert.Len(t, st.Steps, 1, "service steps")
					} else {
						assert.GreaterOrEqual(t, len(st.Steps), 2, "service steps")
					}
					exchange(t, client, server, []byte("after a Finished the edge verified"))
				})
			}
		}
	}
}

// TestTwoStepsWithoutOption: without caller_verifies_finished a TLS 1.3
// handshake takes its two service steps (the baseline of the figures).
func TestTwoStepsWithoutOption(t *testing.T) {
	s := newTestService(t)
	l, conns := listen(t, &Config{Client: s.client, Handshake: s.config()})
	client, _ := dial(t, l, s.clientConfig(0, tls.VersionTLS13, true))
	server := accept(t, conns)
	assert.Len(t, server.ConnectionState().Steps, 2)
	exchange(t, client, server, []byte("after a Finished the service verified"))
}

// finishedTamperConn is a client connection that rewrites the client's
// Finished: it reads the client handshake traffic secret from the
// client's key log, opens the first protected record it writes and seals
// change(plaintext) in its place, so the Finished is wrong but the record
// authenticates.
type finishedTamperConn struct {
	net.Conn
	suite  uint16
	change func(pt []byte) (record.ContentType, []byte)
	garble bool // and flip a bit of the record's tag

	mu     sync.Mutex
	keyLog bytes.Buffer
	done   bool
}

func (c *finishedTamperConn) secret() []byte {
	sc := bufio.NewScanner(bytes.NewReader(c.keyLog.Bytes()))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 3 && f[0] == "CLIENT_HANDSHAKE_TRAFFIC_SECRET" {
			b, _ := hex.DecodeString(f[2])
			return b
		}
	}
	return nil
}

func (c *finishedTamperConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	secret := c.secret()
	if c.done || secret == nil {
		return c.Conn.Write(b)
	}
	out := slices.Clone(b)
	for off := 0; off < len(out); {
		typ, vers, body, n, err := record.Parse(out[off:], record.MaxCiphertextTLS13)
		if err != nil || n == 0 {
			break
		}
		if typ == record.ApplicationData {
			open, _ := record.NewTLS13Cipher(c.suite, secret, 0)
			seal, _ := record.NewTLS13Cipher(c.suite, secret, 0)
			_, pt, err := open.Open(typ, vers, slices.Clone(body))
			if err != nil {
				panic(err)
			}
			typ, pt := c.change(pt)
			rec, _ := seal.Seal(nil, typ, pt, 0)
			if c.garble {
				rec[len(rec)-1] ^= 1
			}
			out = slices.Concat(out[:off], rec, out[off+n:])
			c.done = true
			break
		}
		off += n
	}
	if _, err := c.Conn.Write(out); err != nil {
		return 0, err
	}
	return len(b), nil
}

// TestOneRoundTripRefusesBadFinished: a client whose Finished is wrong,
// garbled, replaced or missing gets no connection: the edge refuses it
// with the alert RFC 8446 calls for, protected so that the client reads
// it, before any application data is read or written with the session
// keys, and writes no session ticket.
func TestOneRoundTripRefusesBadFinished(t *testing.T) {
	s := newTestService(t)
	const suite = tls.TLS_AES_128_GCM_SHA256
	tests := []struct {
		name        string
		conn        func(raw net.Conn) (net.Conn, io.Writer)
		alert       string // the edge's HandshakeError
		clientAlert string // what the client reads
	}{
		{name: "wrong verify_data", alert: "decrypt_error", clientAlert: "error decrypting message",
			conn: func(raw net.Conn) (net.Conn, io.Writer) {
				c := &finishedTamperConn{Conn: raw, suite: suite, change: func(pt []byte) (record.ContentType, []byte) {
					pt[len(pt)-1] ^= 1
					return record.Handshake, pt
				}}
				return c, &lockedWriter{&c.mu, &c.keyLog}
			}},
		{name: "application data instead of Finished", alert: "unexpected_message", clientAlert: "unexpected message",
			conn: func(raw net.Conn) (net.Conn, io.Writer) {
				c := &finishedTamperConn{Conn: raw, suite: suite, change: func([]byte) (record.ContentType, []byte) {
					return record.ApplicationData, []byte("GET / HTTP/1.1\r\n")
				}}
				return c, &lockedWriter{&c.mu, &c.keyLog}
			}},
		{name: "garbled Finished record", alert: "bad_record_mac", clientAlert: "bad record MAC",
			conn: func(raw net.Conn) (net.Conn, io.Writer) {
				c := &finishedTamperConn{Conn: raw, suite: suite, garble: true,
					change: func(pt []byte) (record.ContentType, []byte) { return record.Handshake, pt }}
				return c, &lockedWriter{&c.mu, &c.keyLog}
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			hcfg := s.oneRoundTrip(suite)
			inner, err := net.Listen("tcp", "127.0.0.1:0")
			require.NoError(t, err)
			defer inner.Close()
			type result struct {
				c   *Conn
				err error
			}
			done := make(chan result, 1)
			go func() {
				raw, err := inner.Accept()
				if err != nil {
					done <- result{nil, err}
					return
				}
				c, err := Server(context.Background(), raw, &Config{Client: s.client, Handshake: hcfg})
				done <- result{c, err}
			}()
			raw, err := net.Dial("tcp", inner.Addr().String())
			require.NoError(t, err)
			defer raw.Close()
			conn, keyLog := tc.conn(raw)
			cfg := s.clientConfig(suite, tls.VersionTLS13, true)
			cfg.KeyLogWriter = keyLog
			cfg.ClientSessionCache = tls.NewLRUClientSessionCache(1)
			client := tls.Client(conn, cfg)
			require.NoError(t, client.Handshake(), "a TLS 1.3 client finishes before reading the server's answer")
			_, err = client.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
			require.NoError(t, err)
			raw.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, err = client.Read(make([]byte, 100))
			assert.ErrorContains(t, err, "remote error: tls: "+tc.clientAlert)
			res := <-done
			assert.Nil(t, res.c, "the edge made a connection")
			var herr *HandshakeError
			require.ErrorAs(t, res.err, &herr)
			assert.Equal(t, tc.alert, herr.Alert, herr.Reason)
			_, ok := cfg.ClientSessionCache.Get(s.ecds.Name)
			assert.False(t, ok, "the client got a session ticket")
		})
	}
}

// lockedWriter writes under mu (the key log is written by the client's
// handshake and read by its connection's writes).
type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (w *lockedWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.Write(b)
}

// TestOneRoundTripMissingFinished: a client that never sends its Finished
// gets no connection; the handshake ends at its deadline.
func TestOneRoundTripMissingFinished(t *testing.T) {
	s := newTestService(t)
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer inner.Close()
	done := make(chan error, 1)
	go func() {
		raw, err := inner.Accept()
		if err == nil {
			_, err = Server(context.Background(), raw, &Config{Client: s.client, Handshake: s.oneRoundTrip(), HandshakeTimeout: 2 * time.Second})
		}
		done <- err
	}()
	raw, err := net.Dial("tcp", inner.Addr().String())
	require.NoError(t, err)
	defer raw.Close()
	client := tls.Client(&dropAfterFirstWrite{Conn: raw}, s.clientConfig(0, tls.VersionTLS13, true))
	require.NoError(t, client.Handshake())
	err = <-done
	require.Error(t, err)
	assert.ErrorContains(t, err, "reading the client's Finished")
}

// dropAfterFirstWrite sends the ClientHello and drops what follows.
type dropAfterFirstWrite struct {
	net.Conn
	wrote bool
}

func (c *dropAfterFirstWrite) Write(b []byte) (int, error) {
	if c.wrote {
		return len(b), nil
	}
	c.wrote = true
	return c.Conn.Write(b)
}

// TestReadFlightReadsPastChangeCipherSpec: a change_cipher_spec that
// arrives alone is read together with what follows it, so it costs no
// service round trip of its own; anything else is returned as it comes.
func TestReadFlightReadsPastChangeCipherSpec(t *testing.T) {
	hello := []byte{22, 3, 3, 0, 4, 1, 0, 0, 0}
	for _, tc := range []struct {
		name   string
		writes [][]byte
		want   []byte
	}{
		{"change_cipher_spec alone, then the ClientHello", [][]byte{ccsRecord, hello}, slices.Concat(ccsRecord, hello)},
		{"two change_cipher_spec, then the ClientHello", [][]byte{ccsRecord, ccsRecord, hello}, slices.Concat(ccsRecord, ccsRecord, hello)},
		{"ClientHello", [][]byte{hello, ccsRecord}, hello},
		{"part of a change_cipher_spec", [][]byte{ccsRecord[:3], ccsRecord[3:]}, ccsRecord[:3]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			server, client := net.Pipe()
			defer server.Close()
			defer client.Close()
			go func() {
				for _, w := range tc.writes {
					client.Write(w)
				}
			}()
			// net.Pipe hands each write to one read.
			buf := make([]byte, 100)
			n, err := readFlight(server, buf)
			require.NoError(t, err)
			assert.Equal(t, tc.want, buf[:n])
		})
	}
}

// TestOneRoundTripFreesTheSlot: the service slot of a handshake
// (MaxHandshakes) is given back once the service is done, so a client
// that stalls before its Finished does not hold it: with one slot, another
// client handshakes meanwhile.
func TestOneRoundTripFreesTheSlot(t *testing.T) {
	s := newTestService(t)
	l, conns := listen(t, &Config{Client: s.client, Handshake: s.oneRoundTrip(), MaxHandshakes: 1, HandshakeTimeout: time.Minute})
	cfg := s.clientConfig(0, tls.VersionTLS13, true)
	raw, err := net.Dial("tcp", l.Addr().String())
	require.NoError(t, err)
	defer raw.Close()
	// Its handshake returns once it has the server's flight; its Finished
	// never reaches the edge.
	require.NoError(t, tls.Client(&dropAfterFirstWrite{Conn: raw}, cfg).Handshake())

	raw2, err := net.Dial("tcp", l.Addr().String())
	require.NoError(t, err)
	raw2.SetDeadline(time.Now().Add(20 * time.Second)) // well before the stalled one's minute
	client := tls.Client(raw2, cfg)
	t.Cleanup(func() { client.Close() })
	require.NoError(t, client.Handshake())
	server := accept(t, conns)
	exchange(t, client, server, []byte("while another waits for its Finished"))
}
