package edge

import (
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/engine/record"
)

// writeCountingConn counts the writes of no bytes made on it: each is a
// write(2), a system call for nothing.
type writeCountingConn struct {
	net.Conn
	empty atomic.Int32
}

func (c *writeCountingConn) Write(b []byte) (int, error) {
	if len(b) == 0 {
		c.empty.Add(1)
	}
	return c.Conn.Write(b)
}

// TestNoEmptyWrites: the edge writes nothing to the client for a step with
// no output, as the last of a TLS 1.2 resumption in two service round
// trips (after the client's Finished) and the client Finished it verifies
// itself in one (TLS 1.2 holds nothing back), and for full handshakes. A
// connection with nothing read from the client yet holds no read buffer
// until its first Read.
func TestNoEmptyWrites(t *testing.T) {
	s := ticketService(t)
	for _, oneTrip := range []bool{false, true} {
		t.Run(fmt.Sprintf("one-round-trip=%v", oneTrip), func(t *testing.T) {
			r := newResumer12(t, s, oneTrip)
			for i, resumed := range []bool{false, true, true} {
				var counted *writeCountingConn
				tc, server := r.handshake(t, i, resumed, nil, func(raw net.Conn) net.Conn {
					counted = &writeCountingConn{Conn: raw}
					return counted
				})
				server.in.Lock()
				assert.Nil(t, server.in.buf, "read buffer before the first Read of handshake %d", i)
				server.in.Unlock()
				exchange(t, tc, server, []byte("ping"))
				assert.Zero(t, counted.empty.Load(), "writes of no bytes in handshake %d", i)
				tc.Close()
				server.Close()
			}
		})
	}
}

// resumer12 makes TLS 1.2 handshakes (ECDHE-ECDSA, AES-128-GCM) of one
// crypto/tls client with a session cache through the edge, in one service
// round trip or two.
type resumer12 struct {
	s     *testService
	hcfg  *pb.HandshakeConfig
	inner net.Listener
	cfg   *tls.Config
	keys  *bytes.Buffer // the client's key log
}

func newResumer12(t *testing.T, s *testService, oneTrip bool) *resumer12 {
	const suite = tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { inner.Close() })
	r := &resumer12{s: s, hcfg: s.config(suite), inner: inner, cfg: s.clientConfig(suite, tls.VersionTLS12, true), keys: new(bytes.Buffer)}
	r.hcfg.CallerVerifiesFinished = oneTrip
	r.cfg.ClientSessionCache = tls.NewLRUClientSessionCache(1)
	r.cfg.KeyLogWriter = r.keys
	return r
}

// handshake makes handshake i, the client's connection and the edge's
// wrapped by client and edge if not nil, and returns both ends once the
// edge's resumed as resumed says.
func (r *resumer12) handshake(t *testing.T, i int, resumed bool, client, edge func(net.Conn) net.Conn) (*tls.Conn, *Conn) {
	t.Helper()
	wire, err := net.Dial("tcp", r.inner.Addr().String())
	require.NoError(t, err)
	raw, err := r.inner.Accept()
	require.NoError(t, err)
	if client != nil {
		wire = client(wire)
	}
	if edge != nil {
		raw = edge(raw)
	}
	served := make(chan *Conn, 1)
	go func() {
		c, err := Server(context.Background(), raw, &Config{Client: r.s.client, Handshake: r.hcfg})
		assert.NoError(t, err, "edge handshake %d", i)
		served <- c
	}()
	tc := tls.Client(wire, r.cfg)
	require.NoError(t, tc.Handshake(), "handshake %d", i)
	server := <-served
	require.NotNil(t, server)
	require.Equal(t, resumed, server.ConnectionState().DidResume, "handshake %d", i)
	return tc, server
}

// splitFinishedConn is a resuming TLS 1.2 client's connection that sends
// its Finished in two records (RFC 5246, Section 6.2.1: a handshake
// message may span records): it derives the client's write key from the
// master secret in keys (the client's key log) and the randoms it sees, and re-seals
// the Finished and every record after it, one sequence number on.
type splitFinishedConn struct {
	net.Conn
	t      *testing.T
	keys   *bytes.Buffer
	writes int
	read   []byte // the server's first bytes, for its random
	client []byte // the client random
	open   *record.Cipher
	seal   *record.Cipher
}

func (c *splitFinishedConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if len(c.read) < 64 {
		c.read = append(c.read, b[:n]...)
	}
	return n, err
}

func (c *splitFinishedConn) Write(b []byte) (int, error) {
	c.writes++
	switch {
	case c.writes == 1: // ClientHello: record header, message header, version
		c.client = bytes.Clone(b[11:43])
		return c.Conn.Write(b)
	case c.writes == 2: // ChangeCipherSpec, Finished
		// crypto/tls logs a TLS 1.2 master secret at the full handshake
		// only: the resumed session's is the last logged.
		var master []byte
		for _, line := range strings.Split(c.keys.String(), "\n") {
			if f := strings.Fields(line); len(f) == 3 && f[0] == "CLIENT_RANDOM" {
				master, _ = hex.DecodeString(f[2])
			}
		}
		require.NotEmpty(c.t, master, "the client's master secret")
		ck, _, civ, _ := record.NewSecret12(crypto.SHA256, master).KeyBlock(c.client, c.read[11:43], 16, 4)
		var err error
		c.open, err = record.NewTLS12Cipher(tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, ck, civ, 0)
		require.NoError(c.t, err)
		c.seal, err = record.NewTLS12Cipher(tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, ck, civ, 0)
		require.NoError(c.t, err)
		require.True(c.t, bytes.HasPrefix(b, ccsRecord))
		out := slices.Clone(ccsRecord)
		fin := c.reseal(b[len(ccsRecord):], func(typ record.ContentType, plain []byte) {
			for _, part := range [][]byte{plain[:3], plain[3:]} {
				rec, err := c.seal.Seal(nil, typ, part, 0)
				require.NoError(c.t, err)
				out = append(out, rec...)
			}
		})
		require.Empty(c.t, fin, "more than the Finished in the second flight")
		_, err = c.Conn.Write(out)
		return len(b), err
	default:
		var out []byte
		rest := c.reseal(b, func(typ record.ContentType, plain []byte) {
			rec, err := c.seal.Seal(nil, typ, plain, 0)
			require.NoError(c.t, err)
			out = append(out, rec...)
		})
		require.Empty(c.t, rest, "a record cut across writes")
		_, err := c.Conn.Write(out)
		return len(b), err
	}
}

// reseal opens the first record of b, hands its content to f, and returns
// the bytes after it.
func (c *splitFinishedConn) reseal(b []byte, f func(record.ContentType, []byte)) []byte {
	for len(b) > 0 {
		typ, vers, body, n, err := record.Parse(b, record.MaxCiphertextTLS12)
		require.NoError(c.t, err)
		require.NotZero(c.t, n)
		inner, plain, err := c.open.Open(typ, vers, bytes.Clone(body))
		require.NoError(c.t, err)
		f(inner, plain)
		b = b[n:]
		if inner == record.Handshake {
			return b
		}
	}
	return b
}

// TestOneRoundTripTLS12FragmentedFinished: a resuming TLS 1.2 client whose
// Finished spans two records (RFC 5246, Section 6.2.1) through the edge in
// one round trip (the edge verifies it, then opens the client's records
// from sequence number 2, not the session's 1) and in two (the engine
// verifies it), and data goes both ways.
func TestOneRoundTripTLS12FragmentedFinished(t *testing.T) {
	s := ticketService(t)
	for _, oneTrip := range []bool{true, false} {
		t.Run(fmt.Sprintf("one-round-trip=%v", oneTrip), func(t *testing.T) {
			r := newResumer12(t, s, oneTrip)
			for i, resumed := range []bool{false, true} {
				var split func(net.Conn) net.Conn
				if resumed {
					split = func(c net.Conn) net.Conn { return &splitFinishedConn{Conn: c, t: t, keys: r.keys} }
				}
				tc, server := r.handshake(t, i, resumed, split, nil)
				exchange(t, tc, server, []byte("after a Finished in two records"))
				tc.Close()
				server.Close()
			}
		})
	}
}
