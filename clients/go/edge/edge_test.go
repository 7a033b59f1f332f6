package edge

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	handshaked "github.com/handshaked/handshaked/clients/go"
	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/engine/record"
	"github.com/handshaked/handshaked/internal/service"
	"github.com/handshaked/handshaked/internal/servicetest"
)

// testService is a service with an RSA and an ECDSA key, each with a
// self-signed certificate.
type testService struct {
	client    *handshaked.Client
	rsa, ecds servicetest.ServerKey
}

func newTestService(t testing.TB) *testService {
	t.Helper()
	srv := servicetest.Start(t, service.Options{})
	return &testService{
		client: handshaked.New(srv.Conn),
		rsa:    srv.ServerKey(t, "edge-rsa", "rsa2048-pkcs1.pem", "rsa.test"),
		ecds:   srv.ServerKey(t, "edge-ec", "p256-pkcs8.pem", "ec.test"),
	}
}

// config is a handshake config with both keys, ECDSA first.
func (s *testService) config(suites ...uint16) *pb.HandshakeConfig {
	cfg := &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: s.ecds.ID}, {Key: s.rsa.ID}}}
	for _, id := range suites {
		cfg.CipherSuites = append(cfg.CipherSuites, uint32(id))
	}
	return cfg
}

// listen starts an edge listener and returns it with a channel of the
// connections it accepts.
func listen(t testing.TB, cfg *Config) (*Listener, <-chan *Conn) {
	t.Helper()
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := NewListener(inner, cfg)
	t.Cleanup(func() { l.Close() })
	conns := make(chan *Conn, 16)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				close(conns)
				return
			}
			conns <- c.(*Conn)
		}
	}()
	return l, conns
}

// clientConn is the client's TCP connection, which a test can make write
// one byte per segment or corrupt a byte of its next write.
type clientConn struct {
	net.Conn
	mu        sync.Mutex
	trickle   bool
	corruptAt int // flip this byte of the next write; -1: none
}

func (c *clientConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	trickle, at := c.trickle, c.corruptAt
	c.corruptAt = -1
	c.mu.Unlock()
	if at >= 0 && at < len(b) {
		b = bytes.Clone(b)
		b[at] ^= 0x80
	}
	if !trickle {
		return c.Conn.Write(b)
	}
	for i := range b {
		if _, err := c.Conn.Write(b[i : i+1]); err != nil {
			return i, err
		}
	}
	return len(b), nil
}

func dial(t testing.TB, l *Listener, cfg *tls.Config) (*tls.Conn, *clientConn) {
	t.Helper()
	raw, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	cc := &clientConn{Conn: raw, corruptAt: -1}
	tc := tls.Client(cc, cfg)
	t.Cleanup(func() { tc.Close() })
	if err := tc.Handshake(); err != nil {
		t.Fatalf("client handshake: %v", err)
	}
	return tc, cc
}

func accept(t testing.TB, conns <-chan *Conn) *Conn {
	t.Helper()
	select {
	case c, ok := <-conns:
		if !ok {
			t.Fatal("listener closed")
		}
		t.Cleanup(func() { c.Close() })
		return c
	case <-time.After(20 * time.Second):
		t.Fatal("no connection accepted")
	}
	return nil
}

var suites = []struct {
	id      uint16
	version uint16
	ec      bool // needs the ECDSA certificate
}{
	{tls.TLS_AES_128_GCM_SHA256, tls.VersionTLS13, true},
	{tls.TLS_AES_256_GCM_SHA384, tls.VersionTLS13, false},
	{tls.TLS_CHACHA20_POLY1305_SHA256, tls.VersionTLS13, true},
	{tls.TLS_RSA_WITH_AES_128_GCM_SHA256, tls.VersionTLS12, false},
	{tls.TLS_RSA_WITH_AES_256_GCM_SHA384, tls.VersionTLS12, false},
	{tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, tls.VersionTLS12, false},
	{tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384, tls.VersionTLS12, false},
	{tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256, tls.VersionTLS12, false},
	{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.VersionTLS12, true},
	{tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, tls.VersionTLS12, true},
	{tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, tls.VersionTLS12, true},
}

// clientConfig is a crypto/tls client config for one suite.
func (s *testService) clientConfig(id, version uint16, ec bool) *tls.Config {
	key := s.rsa
	if ec {
		key = s.ecds
	}
	cfg := &tls.Config{ServerName: key.Name, RootCAs: key.Pool, MinVersion: version, MaxVersion: version, NextProtos: []string{"h2", "http/1.1"}}
	if version == tls.VersionTLS12 {
		cfg.CipherSuites = []uint16{id}
	}
	return cfg
}

// TestEverySuite runs the record layer against crypto/tls for every
// suite: fragmented, coalesced, maximum-size and empty records in both
// directions, 1 MiB each way, and a tampered record that must fail with
// bad_record_mac and never yield plaintext.
func TestEverySuite(t *testing.T) {
	s := newTestService(t)
	for _, sc := range suites {
		t.Run(tls.CipherSuiteName(sc.id), func(t *testing.T) {
			hcfg := s.config(sc.id)
			hcfg.AlpnProtocols = []string{"http/1.1"}
			l, conns := listen(t, &Config{Client: s.client, Handshake: hcfg})
			client, cc := dial(t, l, s.clientConfig(sc.id, sc.version, sc.ec))
			server := accept(t, conns)

			st := server.ConnectionState()
			cs := client.ConnectionState()
			if st.Version != sc.version || st.CipherSuite != sc.id || cs.CipherSuite != sc.id {
				t.Fatalf("negotiated %#04x/%#04x, client %#04x", st.Version, st.CipherSuite, cs.CipherSuite)
			}
			if st.NegotiatedProtocol != "http/1.1" || cs.NegotiatedProtocol != "http/1.1" {
				t.Errorf("ALPN: edge %q, client %q", st.NegotiatedProtocol, cs.NegotiatedProtocol)
			}
			if want := s.clientConfig(sc.id, sc.version, sc.ec).ServerName; st.ServerName != want {
				t.Errorf("SNI %q, want %q", st.ServerName, want)
			}

			// Fragmented: the client's records arrive one byte per segment.
			cc.mu.Lock()
			cc.trickle = true
			cc.mu.Unlock()
			exchange(t, client, server, []byte("fragmented record"))
			cc.mu.Lock()
			cc.trickle = false
			cc.mu.Unlock()

			// Maximum-size records, and 1 MiB each way.
			exchange(t, client, server, bytes.Repeat([]byte{'m'}, record.MaxPlaintext))
			big := make([]byte, 1<<20)
			rand.Read(big)
			exchange(t, client, server, big)

			// Empty records from the edge are skipped by crypto/tls.
			server.out.Lock()
			for range 3 {
				if err := server.writeRecordLocked(record.ApplicationData, nil); err != nil {
					t.Fatal(err)
				}
			}
			server.out.Unlock()
			exchange(t, client, server, []byte("after empty records"))

			// A flipped bit in the ciphertext of the client's next record.
			cc.mu.Lock()
			cc.corruptAt = record.HeaderLen + 40
			cc.mu.Unlock()
			if _, err := client.Write(bytes.Repeat([]byte{'x'}, 100)); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 200)
			n, err := server.Read(buf)
			if n != 0 || !errors.Is(err, record.ErrBadRecordMAC) {
				t.Fatalf("tampered record: read %q, %v; want bad_record_mac", buf[:n], err)
			}
			if _, err := client.Read(buf); err == nil || !strings.Contains(err.Error(), "bad record MAC") {
				t.Errorf("client saw %v, want the bad_record_mac alert", err)
			}
			// The edge sent its fatal alert and closed: nothing more.
			if _, err := server.Write([]byte("more")); err == nil {
				t.Error("write after a fatal alert succeeded")
			}
		})
	}
}

// exchange sends msg from the client to the edge and back.
func exchange(t testing.TB, client *tls.Conn, server *Conn, msg []byte) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		_, err := client.Write(msg)
		errc <- err
	}()
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(server, got); err != nil {
		t.Fatalf("edge read: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("client write: %v", err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatal("edge read other bytes than the client wrote")
	}
	go func() {
		_, err := server.Write(msg)
		errc <- err
	}()
	if _, err := io.ReadFull(client, got); err != nil {
		t.Fatalf("client read: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("edge write: %v", err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatal("client read other bytes than the edge wrote")
	}
}

// TestKeyUpdate has the edge request key updates, which crypto/tls answers
// with its own KeyUpdate: both directions change keys, over the stream and
// the unary API.
func TestKeyUpdate(t *testing.T) {
	s := newTestService(t)
	for _, unary := range []bool{false, true} {
		t.Run(fmt.Sprintf("unary=%v", unary), func(t *testing.T) {
			l, conns := listen(t, &Config{Client: s.client, Handshake: s.config(), Unary: unary})
			client, _ := dial(t, l, s.clientConfig(0, tls.VersionTLS13, true))
			server := accept(t, conns)
			for i := range 3 {
				if err := server.KeyUpdate(true); err != nil {
					t.Fatal(err)
				}
				exchange(t, client, server, fmt.Appendf(nil, "after key update %d", i))
				// Both sides moved on: the client's answer was opened with
				// its next secret (the sequence restarted from 0).
				server.in.Lock()
				seq := server.in.cipher.Seq()
				server.in.Unlock()
				if seq != 1 {
					t.Errorf("after the client's KeyUpdate the edge read %d records under the new key, want 1", seq)
				}
			}
		})
	}
}

// TestClose covers a clean close each way and an abrupt one.
func TestClose(t *testing.T) {
	s := newTestService(t)
	l, conns := listen(t, &Config{Client: s.client, Handshake: s.config()})
	buf := make([]byte, 10)
	for _, version := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		// The client closes cleanly: the edge reads io.EOF.
		client, _ := dial(t, l, s.clientConfig(tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, version, true))
		server := accept(t, conns)
		client.Close()
		if _, err := server.Read(buf); err != io.EOF {
			t.Errorf("%x: after close_notify the edge read %v, want io.EOF", version, err)
		}
		// The edge closes cleanly: the client reads io.EOF.
		client, _ = dial(t, l, s.clientConfig(tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, version, true))
		server = accept(t, conns)
		server.Close()
		if _, err := client.Read(buf); err != io.EOF {
			t.Errorf("%x: after the edge closed the client read %v, want io.EOF", version, err)
		}
		// The client's TCP connection just ends: a possible truncation.
		client, cc := dial(t, l, s.clientConfig(tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, version, true))
		server = accept(t, conns)
		cc.Conn.Close()
		if _, err := server.Read(buf); err != io.ErrUnexpectedEOF {
			t.Errorf("%x: after an abrupt close the edge read %v, want io.ErrUnexpectedEOF", version, err)
		}
		_ = client
	}
}

// TestHandshakesDoNotBlockAccept leaves one client silent and another
// halfway through its ClientHello: a third completes meanwhile, while
// they still wait, and the stuck ones are dropped at the handshake
// timeout.
func TestHandshakesDoNotBlockAccept(t *testing.T) {
	s := newTestService(t)
	// The third's handshake (through the service, on a loaded machine)
	// must come well within it, as the timeout bounds it too.
	l, conns := listen(t, &Config{Client: s.client, Handshake: s.config(), HandshakeTimeout: 3 * time.Second})
	silent, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	partial, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer partial.Close()
	partial.Write([]byte{22, 3, 1, 0, 200, 1, 0})

	client, _ := dial(t, l, s.clientConfig(0, tls.VersionTLS13, true))
	server := accept(t, conns)
	exchange(t, client, server, []byte("not blocked"))

	// Still open: the third did not wait for them to time out.
	for _, c := range []net.Conn{silent, partial} {
		c.SetReadDeadline(time.Now().Add(time.Millisecond))
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("a stuck handshake ended before the third completed: %v", err)
		}
	}
	for _, c := range []net.Conn{silent, partial} {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadAll(c); err != nil {
			t.Errorf("a stuck handshake was not closed at the timeout: %v", err)
		}
	}
}

// TestFailedHandshake: the engine refuses a TLS 1.2-only client when the
// config allows only TLS 1.3; the client gets the alert and the edge
// closes the connection.
func TestFailedHandshake(t *testing.T) {
	s := newTestService(t)
	hcfg := s.config()
	hcfg.MinVersion = pb.TLSVersion_TLS_VERSION_1_3
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer inner.Close()
	errc := make(chan error, 1)
	go func() {
		raw, err := inner.Accept()
		if err != nil {
			errc <- err
			return
		}
		_, err = Server(context.Background(), raw, &Config{Client: s.client, Handshake: hcfg})
		errc <- err
	}()
	raw, err := net.Dial("tcp", inner.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	client := tls.Client(raw, s.clientConfig(tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.VersionTLS12, true))
	if err := client.Handshake(); err == nil || !strings.Contains(err.Error(), "protocol version") {
		t.Errorf("client handshake: %v, want a protocol_version alert", err)
	}
	var herr *HandshakeError
	if err := <-errc; !errors.As(err, &herr) || herr.Alert != "protocol_version" {
		t.Errorf("edge: %v, want a protocol_version HandshakeError", err)
	}
	raw.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := raw.Read(make([]byte, 10)); err != io.EOF {
		t.Errorf("after the alert the edge left the connection open: %v", err)
	}
}

// flakyListener fails its first Accept as a process out of file
// descriptors does.
type flakyListener struct {
	net.Listener
	failed bool
}

func (l *flakyListener) Accept() (net.Conn, error) {
	if !l.failed {
		l.failed = true
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept", syscall.EMFILE)}
	}
	return l.Listener.Accept()
}

// TestAcceptRetries: a passing accept error (EMFILE) does not end the
// listener; closing it does.
func TestAcceptRetries(t *testing.T) {
	s := newTestService(t)
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := NewListener(&flakyListener{Listener: inner}, &Config{Client: s.client, Handshake: s.config()})
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			t.Errorf("accept: %v", err)
		}
		accepted <- c
	}()
	client, _ := dial(t, l, s.clientConfig(0, tls.VersionTLS13, true))
	server := (<-accepted).(*Conn)
	exchange(t, client, server, []byte("after EMFILE"))
	server.Close()
	l.Close()
	if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("accept after close: %v", err)
	}
}
