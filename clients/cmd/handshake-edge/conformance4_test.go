package main

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/cryptobyte"

	"github.com/handshaked/handshaked/internal/engine/record"
	"github.com/handshaked/handshaked/internal/testenv"
)

// A fourth round of probes in the manner of tlsfuzzer's scripts, for what
// the first three leave out: ALPN negotiated by the edge, the record size
// limit a client asks for (RFC 8449), an extension the engine does not
// implement and must pass over (post_handshake_auth), TLS_FALLBACK_SCSV where it must not fire,
// ClientHellos whose length disagrees with their fields, record types
// nobody defined, compression methods, KeyUpdates that ask for no answer
// or span records, and the NewSessionTickets a TLS 1.3 client gets.

// Extension code points of this round (RFC 7301, RFC 8449, RFC 8446
// Section 4.2).
const (
	extALPN            uint16 = 16
	extRecordSizeLimit uint16 = 28
	extPostHandshake   uint16 = 49
)

// alertNoApplicationProtocol is RFC 7301, Section 3.2's alert.
const alertNoApplicationProtocol = 120

// alpnExt is the data of an application_layer_protocol_negotiation
// extension offering protos (RFC 7301, Section 3.1).
func alpnExt(protos ...string) []byte {
	var b cryptobyte.Builder
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
		for _, p := range protos {
			b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(p)) })
		}
	})
	return b.BytesOrPanic()
}

// hello12 is crypto/tls's TLS 1.2 ClientHello for the ECDSA key, taken
// apart.
func hello12(t *testing.T, f *fixture) *helloMsg {
	t.Helper()
	return parseHello(t, clientHello(t, &tls.Config{ServerName: f.ecdsa.Name, MaxVersion: tls.VersionTLS12}))
}

// sendHello writes the ClientHello message msg, in records of 2^14 bytes,
// on a new connection to addr.
func sendHello(t *testing.T, addr string, msg []byte) net.Conn {
	t.Helper()
	c := dialRaw(t, addr)
	_, err := c.Write(fragments(msg, 1<<14))
	require.NoError(t, err)
	return c
}

// TestProbeEdgeALPN is tlsfuzzer's test-alpn-negotiation.py against an
// edge configured with -alpn h2,http/1.1: RFC 7301, Section 3.2, the
// server picks one of the client's protocols (the edge's first in its own
// order) and names it alone; with none in common it refuses with
// no_application_protocol; a malformed extension is decode_error (Section
// 3.1: ProtocolName<1..2^8-1>, ProtocolNameList<2..2^16-1>, and no bytes
// past the list).
func TestProbeEdgeALPN(t *testing.T) {
	f := newFixture(t)
	base12 := hello12(t, f)
	// The extension of the length tests: a list of http/1.1 and http/2,
	// whose list length is at [1] and the last name's length at [11].
	two := alpnExt("http/1.1", "http/2")
	changed := func(i int, v byte) []byte {
		b := slices.Clone(two)
		b[i] = v
		return b
	}
	chosen := []struct {
		name   string
		offer  []byte
		answer string // "": no ALPN in the answer
	}{
		{"3.2 http/1.1 alone gets http/1.1", alpnExt("http/1.1"), "http/1.1"},
		{"3.2 a prefix of http/1.1 then http/1.1 gets http/1.1", alpnExt("http/1.", "http/1.1"), "http/1.1"},
		{"3.2 the server's preference among the client's", alpnExt("http/1.1", "h2"), "h2"},
		{"3.2 unknown names before h2 are passed over", alpnExt("spdy/3", "\xff\x00", "h2"), "h2"},
		{"3.1 no extension gets none", nil, ""},
	}
	refused := []struct {
		name  string
		offer []byte
		alert uint8
	}{
		{"3.2 a prefix of http/1.1 alone is no_application_protocol", alpnExt("http/1."), alertNoApplicationProtocol},
		{"3.2 http/1.X is no_application_protocol", alpnExt("http/1.X"), alertNoApplicationProtocol},
		{"3.2 names in another case are no_application_protocol", alpnExt("H2", "HTTP/1.1"), alertNoApplicationProtocol},
		{"3.1 an empty name is decode_error", alpnExt(""), alertDecodeError},
		{"3.1 an empty name after a good one is decode_error", alpnExt("h2", ""), alertDecodeError},
		{"3.1 an empty list is decode_error", []byte{0, 0}, alertDecodeError},
		{"3.1 an empty extension is decode_error", []byte{}, alertDecodeError},
		{"3.1 list length short of the extension is decode_error", changed(1, 9), alertDecodeError},
		{"3.1 list length past the extension is decode_error", changed(1, 18), alertDecodeError},
		{"3.1 last name's length past the list is decode_error", changed(11, 8), alertDecodeError},
	}
	probeEdgesWith(t, f, []string{"-alpn", "h2,http/1.1"}, func(t *testing.T, addr string) {
		for _, tc := range chosen {
			t.Run("RFC 7301 "+tc.name+" in TLS 1.2", func(t *testing.T) {
				h := base12
				if tc.offer != nil {
					h = h.set(extALPN, tc.offer)
				}
				sh := readServerHello(t, sendHello(t, addr, h.marshal()))
				data, ok := sh.lookup(extALPN)
				if tc.answer == "" {
					assert.False(t, ok, "ALPN in the ServerHello: % x", data)
					return
				}
				assert.Equal(t, alpnExt(tc.answer), data, "ServerHello ALPN")
			})
			t.Run("RFC 7301 "+tc.name+" in TLS 1.3", func(t *testing.T) {
				c := dialClient13(t, f, addr)
				h := c.hello
				if tc.offer != nil {
					h = h.set(extALPN, tc.offer)
				}
				c.send(h)
				fl := c.serverFlight()
				ee := &serverHello{exts: encryptedExtensions(t, fl.msgs)}
				data, ok := ee.lookup(extALPN)
				if tc.answer == "" {
					assert.False(t, ok, "ALPN in the EncryptedExtensions: % x", data)
				} else {
					assert.Equal(t, alpnExt(tc.answer), data, "EncryptedExtensions ALPN")
				}
				fl.finish(t).expectServes(t)
			})
		}
		for _, tc := range refused {
			expectExtensionRefused(t, f, addr, base12, "RFC 7301 "+tc.name, extALPN, tc.offer, tc.alert)
		}
	})
}

// expectExtensionRefused checks, as subtests named after name, that a
// ClientHello with extension ext's data set to data is refused with the
// plaintext alert, in TLS 1.2 (base12 so changed) and TLS 1.3.
func expectExtensionRefused(t *testing.T, f *fixture, addr string, base12 *helloMsg, name string, ext uint16, data []byte, alert uint8) {
	t.Run(name+" in TLS 1.2", func(t *testing.T) {
		expectPlainAlert(t, sendHello(t, addr, base12.set(ext, data).marshal()), alert)
	})
	t.Run(name+" in TLS 1.3", func(t *testing.T) {
		c := dialClient13(t, f, addr)
		c.send(c.hello.set(ext, data))
		expectPlainAlert(t, c.raw, alert)
	})
}

// TestProbeEdgeRecordSizeLimit is tlsfuzzer's test-record-size-limit.py
// (RFC 8449): the server answers record_size_limit with its own limit, the
// protocol's (2^14 in the TLS 1.2 ServerHello; 2^14+1 in the TLS 1.3
// EncryptedExtensions, never in its ServerHello, Section 4), and from then
// on every protected record it sends, of the handshake (TLS 1.3 from the
// EncryptedExtensions, the NewSessionTicket) and of the application data
// the edge writes with the session keys, carries no more plaintext than
// the client's limit (in TLS 1.3 the limit counts the inner content type).
// The session works: what goes to the backend in full records comes back
// in records of the limit. What the server takes is unchanged: a record
// over 2^14 bytes of plaintext is record_overflow. A value below 64 is
// illegal_parameter; a body other than one uint16 is decode_error.
func TestProbeEdgeRecordSizeLimit(t *testing.T) {
	f := newTicketFixture(t)
	base12 := parseHello(t, clientHello(t, &tls.Config{ServerName: f.ecdsa.Name, MaxVersion: tls.VersionTLS12,
		CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256}}))
	limits := []uint16{64, 65, 100, 1000, 1 << 14, 1<<14 + 1, 1<<16 - 1}
	refused := []struct {
		name  string
		data  []byte
		alert uint8
	}{
		{"63, below the minimum, is illegal_parameter", []byte{0, 63}, alertIllegalParameter},
		{"0 is illegal_parameter", []byte{0, 0}, alertIllegalParameter},
		{"of one byte is decode_error", []byte{1}, alertDecodeError},
		{"of three bytes is decode_error", []byte{0, 64, 0}, alertDecodeError},
		{"empty is decode_error", []byte{}, alertDecodeError},
	}
	// More than a record's worth for the backend to echo, so the edge's
	// writes span records whatever the limit.
	big := make([]byte, record.MaxPlaintext)
	for i := range big {
		big[i] = byte('a' + i%26)
	}
	echoed := string(slices.Concat(big, big[:100]))
	probeEdges(t, f, func(t *testing.T, addr string) {
		for _, limit := range limits {
			value := []byte{byte(limit >> 8), byte(limit)}
			t.Run("RFC 8449 4 record_size_limit "+strconv.Itoa(int(limit))+" in TLS 1.2", func(t *testing.T) {
				c := &recordTap{Conn: dialRaw(t, addr)}
				p, flight := handshake12(t, c, base12.set(extRecordSizeLimit, value).marshal(), ecdh.X25519(), nil)
				assert.Equal(t, []byte{0x40, 0}, parseServerHello(t, flight).ext(extRecordSizeLimit), "the server's limit in its ServerHello: 2^14")
				p.send(t, record.ApplicationData, big, big[:100])
				p.expectEcho(t, echoed)
				// TLS 1.2: the limit is the plaintext alone (RFC 8449,
				// Section 4); a GCM record adds an 8-byte explicit nonce
				// and a 16-byte tag (RFC 5288, Section 3).
				c.expectWithin(t, min(int(limit), 1<<14), 8+16)
			})
			t.Run("RFC 8449 4 record_size_limit "+strconv.Itoa(int(limit))+" in TLS 1.3", func(t *testing.T) {
				c := dialClient13(t, f, addr)
				tap := &recordTap{Conn: c.raw}
				c.raw = tap
				c.send(c.hello.withSuites(suite13).set(extPSKModes, []byte{1, 1}).set(extRecordSizeLimit, value))
				fl := c.serverFlight()
				_, ok := fl.hello.lookup(extRecordSizeLimit)
				assert.False(t, ok, "record_size_limit in the TLS 1.3 ServerHello (RFC 8449, Section 4: in EncryptedExtensions)")
				ee := &serverHello{exts: encryptedExtensions(t, fl.msgs)}
				assert.Equal(t, []byte{0x40, 1}, ee.ext(extRecordSizeLimit), "the server's limit in EncryptedExtensions: 2^14+1")
				p := fl.finish(t)
				p.send(t, record.ApplicationData, big, big[:100])
				o := p.readUntil(t, len(echoed), 0)
				assert.Equal(t, echoed, string(o.data))
				assert.Positive(t, o.tickets, "NewSessionTickets, which the limit binds too")
				// TLS 1.3: TLSInnerPlaintext, content type included, and
				// the 16-byte tag (RFC 8446, Section 5.2).
				tap.expectWithin(t, min(int(limit), 1<<14+1), 16)
			})
		}
		for _, tc := range refused {
			expectExtensionRefused(t, f, addr, base12, "RFC 8449 4 record_size_limit "+tc.name, extRecordSizeLimit, tc.data, tc.alert)
		}
		// RFC 8449, Section 4: the server's limit is the protocol's, so a
		// record over it is record_overflow as without the extension
		// (RFC 8446, Section 5.2; RFC 5246, Section 6.2.3).
		t.Run("RFC 8449 4 a record over the server's limit is record_overflow in TLS 1.2", func(t *testing.T) {
			p, _ := handshake12(t, dialRaw(t, addr), base12.set(extRecordSizeLimit, []byte{0, 64}).marshal(), ecdh.X25519(), nil)
			p.sendRaw(t, record.ApplicationData, make([]byte, 1<<14+1))
			p.expectAlert(t, alertRecordOverflow)
		})
		t.Run("RFC 8449 4 a record over the server's limit is record_overflow in TLS 1.3", func(t *testing.T) {
			c := dialClient13(t, f, addr)
			c.send(c.hello.set(extRecordSizeLimit, []byte{0, 64}))
			p := c.serverFlight().finish(t)
			p.sendRaw(t, record.ApplicationData, append(make([]byte, 1<<14+1), byte(record.ApplicationData)))
			p.expectAlert(t, alertRecordOverflow)
		})
	})
}

// recordTap is a client's TCP connection that notes the length of each
// protected record it reads (TLS 1.3: outer type application_data; TLS
// 1.2: any type after the change_cipher_spec).
type recordTap struct {
	net.Conn
	buf       []byte
	ccs       bool
	protected []int
}

func (c *recordTap) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.buf = append(c.buf, b[:n]...)
	for len(c.buf) >= record.HeaderLen {
		end := record.HeaderLen + (int(c.buf[3])<<8 | int(c.buf[4]))
		if len(c.buf) < end {
			break
		}
		switch typ := record.ContentType(c.buf[0]); {
		case typ == record.ChangeCipherSpec:
			c.ccs = true
		case typ == record.ApplicationData, c.ccs:
			c.protected = append(c.protected, end-record.HeaderLen)
		}
		c.buf = c.buf[end:]
	}
	return n, err
}

// expectWithin checks that every protected record read carried at most
// limit bytes: its length less overhead.
func (c *recordTap) expectWithin(t *testing.T, limit, overhead int) {
	t.Helper()
	require.NotEmpty(t, c.protected, "no protected record read")
	for i, n := range c.protected {
		assert.LessOrEqual(t, n-overhead, limit, "protected record %d of %d", i, len(c.protected))
	}
}

// TestProbeEdgeFallbackSCSV is tlsfuzzer's test-fallback-scsv.py: RFC
// 7507, Section 3, TLS_FALLBACK_SCSV is refused with inappropriate_fallback
// only when the server supports a version above the client's; where the
// client's best is the server's best the handshake goes on. The suite's
// place in the list does not matter.
func TestProbeEdgeFallbackSCSV(t *testing.T) {
	f := newFixture(t)
	base12 := hello12(t, f)
	scsv := []byte{0x56, 0x00}
	backend, _ := echoBackend(t)
	for _, m := range edgeModes {
		def, _ := f.start(t, slices.Concat([]string{"-backend", backend}, m.args)...)
		only12, _ := f.start(t, slices.Concat([]string{"-backend", backend, "-max-version", "1.2"}, m.args)...)
		t.Run(m.name, func(t *testing.T) {
			t.Run("RFC 7507 3 SCSV first in a TLS 1.2 ClientHello is inappropriate_fallback", func(t *testing.T) {
				h := base12.clone()
				h.suites = slices.Concat(scsv, h.suites)
				expectPlainAlert(t, sendHello(t, def, h.marshal()), alertInappropriateFallback)
			})
			t.Run("RFC 7507 3 SCSV in a TLS 1.3 ClientHello completes TLS 1.3", func(t *testing.T) {
				c := dialClient13(t, f, def)
				h := c.hello.clone()
				h.suites = slices.Concat(h.suites, scsv)
				c.send(h)
				c.serverFlight().finish(t).expectServes(t)
			})
			t.Run("RFC 7507 3 SCSV in a TLS 1.2 ClientHello to a TLS 1.2 server is answered", func(t *testing.T) {
				h := base12.clone()
				h.suites = slices.Concat(h.suites, scsv)
				sh := readServerHello(t, sendHello(t, only12, h.marshal()))
				assert.Equal(t, uint16(tls.VersionTLS12), sh.version)
			})
		})
	}
}

// withBodyLength is the handshake message msg with body as its body and
// n in its length field.
func withBodyLength(msg, body []byte, n int) []byte {
	return append([]byte{msg[0], byte(n >> 16), byte(n >> 8), byte(n)}, body...)
}

// TestProbeEdgeClientHelloLength is tlsfuzzer's
// test-truncating-of-client-hello.py: a TLS 1.2 ClientHello with bytes
// added after its extensions, or cut from its end, its message length
// saying so. RFC 8446, Section 4.1.2 and RFC 5246, Section 7.4.1.2 fix
// the ClientHello's fields; RFC 8446, Section 6.2, decode_error: "the
// length of the message was incorrect". The edge reads the whole message
// before the service parses it, so each must come back decode_error.
// (Past 131396 bytes the message is refused on its header, decode_error
// too, TestProbeEdgeClientHello.)
func TestProbeEdgeClientHelloLength(t *testing.T) {
	f := newFixture(t)
	msg := hello12(t, f).marshal()
	body := msg[4:]
	type variant struct {
		name string
		msg  []byte
	}
	var variants []variant
	for _, pad := range []struct {
		n int
		b byte
	}{{1, 0}, {2, 0}, {3, 0}, {1, 0xff}, {2, 0xff}, {3, 0xff}, {256, 0}, {4096, 0}, {1 << 16, 0}} {
		padded := append(slices.Clone(body), slices.Repeat([]byte{pad.b}, pad.n)...)
		variants = append(variants, variant{fmt.Sprintf("%d bytes of %#x after the extensions", pad.n, pad.b), withBodyLength(msg, padded, len(padded))})
	}
	for _, cut := range []int{1, 2, 3, 4, 5, 6, 7, 8, 13, 32, 39, 47, len(body) - 1, len(body)} {
		variants = append(variants, variant{fmt.Sprintf("%d bytes cut from the end", cut), withBodyLength(msg, body[:len(body)-cut], len(body)-cut)})
	}
	// An empty extensions block followed by an extension (renegotiation_info)
	// within the message: past the block, so not an extension.
	h := hello12(t, f)
	h.exts = nil
	bare := h.marshal()
	past := append(slices.Clone(bare[4:]), 0xff, 0x01, 0x00, 0x01, 0x00)
	variants = append(variants, variant{"an extension past the extensions block", withBodyLength(bare, past, len(past))})
	probeEdges(t, f, func(t *testing.T, addr string) {
		for _, v := range variants {
			t.Run("RFC 5246 7.4.1.2 "+v.name+" is decode_error", func(t *testing.T) {
				expectPlainAlert(t, sendHello(t, addr, v.msg), alertDecodeError)
			})
		}
	})
}

// TestProbeEdgeContentTypes is tlsfuzzer's test-invalid-content-type.py:
// RFC 8446, Section 5, "If a TLS implementation receives an unexpected
// record type, it MUST terminate the connection with an
// "unexpected_message" alert"; RFC 5246, Section 6, likewise for a type it
// does not know. Types nobody assigned (0, 25, 255) before the ClientHello,
// and after the handshake in the clear or protected.
func TestProbeEdgeContentTypes(t *testing.T) {
	f := newFixture(t)
	types := []byte{0, 25, 255}
	probeEdges(t, f, func(t *testing.T, addr string) {
		for _, typ := range types {
			t.Run(fmt.Sprintf("RFC 8446 5 record of type %d before the ClientHello is unexpected_message", typ), func(t *testing.T) {
				c := dialRaw(t, addr)
				c.Write([]byte{typ, 3, 3, 0, 2, 1, 0})
				expectPlainAlert(t, c, alertUnexpectedMessage)
			})
			if typ == 0 {
				continue // inner content type 0 is padding (RFC 8446, Section 5.4), probed in round 1
			}
			expectRefused(t, f, addr, tls.VersionTLS13, []refusedRecords{
				{fmt.Sprintf("RFC 8446 5 plaintext record of type %d after the handshake is unexpected_message", typ), func(t *testing.T, p *peer) {
					p.raw.Write([]byte{typ, 3, 3, 0, 2, 1, 0})
				}, alertUnexpectedMessage},
				{fmt.Sprintf("RFC 8446 5 protected record of inner type %d is unexpected_message", typ), func(t *testing.T, p *peer) {
					p.sendRaw(t, 0, []byte{1, 0, typ})
				}, alertUnexpectedMessage},
			})
			expectRefused(t, f, addr, tls.VersionTLS12, []refusedRecords{
				{fmt.Sprintf("RFC 5246 6 protected record of type %d is unexpected_message", typ), func(t *testing.T, p *peer) {
					p.sendRaw(t, record.ContentType(typ), []byte{1, 0})
				}, alertUnexpectedMessage},
			})
		}
	})
}

// TestProbeEdgeCompressionMethods is tlsfuzzer's
// test-invalid-compression-methods.py: RFC 5246, Section 7.4.1.2, the
// list "MUST contain" null, wherever it is, and a server that finds none
// it supports refuses with handshake_failure (Section 7.4.1.3); RFC 8446,
// Section 4.1.2, a TLS 1.3 ClientHello with anything but [null] is
// illegal_parameter.
func TestProbeEdgeCompressionMethods(t *testing.T) {
	f := newFixture(t)
	base12 := hello12(t, f)
	with := func(h *helloMsg, methods ...byte) []byte {
		h = h.clone()
		h.compression = methods
		return h.marshal()
	}
	all := make([]byte, 255)
	for i := range all {
		all[i] = byte(i + 1) // null last
	}
	all[254] = 0
	probeEdges(t, f, func(t *testing.T, addr string) {
		t.Run("RFC 5246 7.4.1.2 DEFLATE then null is answered without compression", func(t *testing.T) {
			sh := readServerHello(t, sendHello(t, addr, with(base12, 1, 0)))
			assert.Equal(t, uint16(tls.VersionTLS12), sh.version)
		})
		t.Run("RFC 5246 7.4.1.2 255 methods, null last, is answered", func(t *testing.T) {
			readServerHello(t, sendHello(t, addr, with(base12, all...)))
		})
		t.Run("RFC 5246 7.4.1.3 DEFLATE alone is handshake_failure", func(t *testing.T) {
			expectPlainAlert(t, sendHello(t, addr, with(base12, 1)), alertHandshakeFailure)
		})
		t.Run("RFC 8446 4.1.2 TLS 1.3 with null then DEFLATE is illegal_parameter", func(t *testing.T) {
			c := dialClient13(t, f, addr)
			h := c.hello.clone()
			h.compression = []byte{0, 1}
			c.send(h)
			expectPlainAlert(t, c.raw, alertIllegalParameter)
		})
	})
}

// TestProbeEdgePostHandshakeAuth13 is tlsfuzzer's
// test-tls13-post-handshake-auth.py against an edge that asks for no
// client certificate: RFC 8446, Section 4.2.6, a client offers
// post_handshake_auth and "Servers MUST NOT send a post-handshake
// CertificateRequest to clients which do not offer this extension"; a
// server that does not authenticate clients sends none at all, does not
// answer the extension (it is the client's alone), and takes a
// Certificate or CertificateVerify it did not ask for as
// unexpected_message (Section 4.6.2 and 4).
func TestProbeEdgePostHandshakeAuth13(t *testing.T) {
	f := newFixture(t)
	probeEdges(t, f, func(t *testing.T, addr string) {
		// handshake completes a handshake offering post_handshake_auth.
		handshake := func(t *testing.T) *peer {
			c := dialClient13(t, f, addr)
			c.send(c.hello.set(extPostHandshake, nil))
			fl := c.serverFlight()
			ee := &serverHello{exts: encryptedExtensions(t, fl.msgs)}
			_, ok := ee.lookup(extPostHandshake)
			assert.False(t, ok, "post_handshake_auth in the EncryptedExtensions")
			assert.NotContains(t, messageTypes(fl.msgs), byte(13), "CertificateRequest in the handshake")
			return fl.finish(t)
		}
		t.Run("4.2.6 offered, no CertificateRequest comes after the handshake", func(t *testing.T) {
			p := handshake(t)
			// readUntil fails on any handshake message but
			// NewSessionTicket and KeyUpdate.
			p.expectServes(t)
		})
		t.Run("4.6.2 an unrequested empty Certificate is unexpected_message", func(t *testing.T) {
			p := handshake(t)
			// certificate_request_context<0..255> empty, certificate_list empty.
			p.send(t, record.Handshake, hsMsg(11, 0, 0, 0, 0))
			p.expectAlert(t, alertUnexpectedMessage)
		})
		t.Run("4.6.2 an unrequested CertificateVerify is unexpected_message", func(t *testing.T) {
			p := handshake(t)
			p.send(t, record.Handshake, hsMsg(15, 0x04, 0x03, 0, 2, 0x30, 0))
			p.expectAlert(t, alertUnexpectedMessage)
		})
	})
}

// TestProbeEdgeKeyUpdate13 is more of tlsfuzzer's
// test-tls13-keyupdate.py than TestProbeEdgeKeyUpdates: RFC 8446, Section
// 4.6.3, update_not_requested gets no KeyUpdate back, and a KeyUpdate may
// be fragmented (Section 5.1: only a message before a key change must end
// its record; its fragments are all under the old key).
func TestProbeEdgeKeyUpdate13(t *testing.T) {
	f := newFixture(t)
	probeEdges(t, f, func(t *testing.T, addr string) {
		for _, tc := range []struct {
			name    string
			records [][]byte
			answer  int // KeyUpdates the edge sends
		}{
			{"4.6.3 update_not_requested gets no KeyUpdate", [][]byte{{24, 0, 0, 1, 0}}, 0},
			{"4.6.3 update_requested gets one KeyUpdate", [][]byte{{24, 0, 0, 1, 1}}, 1},
			{"5.1 a KeyUpdate in two records is taken", [][]byte{{24, 0}, {0, 1, 1}}, 1},
			{"5.1 a KeyUpdate in five one-byte records is taken", [][]byte{{24}, {0}, {0}, {1}, {0}}, 0},
		} {
			t.Run(tc.name, func(t *testing.T) {
				p := dialPeer(t, f, addr, tls.VersionTLS13)
				p.send(t, record.ApplicationData, []byte("before|"))
				p.send(t, record.Handshake, tc.records...)
				require.NoError(t, p.out.Update())
				p.send(t, record.ApplicationData, []byte("after"))
				o := p.readUntil(t, len("before|after"), 0)
				require.False(t, o.closed, "the edge closed the connection; alerts % x", o.alerts)
				assert.Equal(t, "before|after", string(o.data))
				assert.Equal(t, tc.answer, o.keyUpdates, "KeyUpdates from the edge")
			})
		}
	})
}

// newSessionTicket is a TLS 1.3 NewSessionTicket as the client reads it
// (RFC 8446, Section 4.6.1).
type newSessionTicket struct {
	lifetime, ageAdd uint32
	nonce, ticket    []byte
	exts             []helloExt
}

// readTickets reads the edge's records until it has echoed want, and
// returns the NewSessionTickets it sent before.
func readTickets(t *testing.T, p *peer, want string) []newSessionTicket {
	t.Helper()
	var tickets []newSessionTicket
	var data []byte
	for len(data) < len(want) {
		recs, closed := readRecords(t, p.raw, 1)
		require.False(t, closed, "the edge closed the connection")
		typ, plain, err := p.in.Open(recs[0].typ, 0x0303, recs[0].body)
		require.NoError(t, err)
		if typ == record.ApplicationData {
			data = append(data, plain...)
			continue
		}
		require.Equal(t, record.Handshake, typ)
		// One message a record: the edge writes each ticket alone.
		s := cryptobyte.String(plain)
		var msgType uint8
		var body, nonce, ticket, exts cryptobyte.String
		var nst newSessionTicket
		require.True(t, s.ReadUint8(&msgType) && msgType == 4 && s.ReadUint24LengthPrefixed(&body) && s.Empty(), "want a NewSessionTicket, got % x", plain)
		require.True(t, body.ReadUint32(&nst.lifetime) && body.ReadUint32(&nst.ageAdd) && body.ReadUint8LengthPrefixed(&nonce) &&
			body.ReadUint16LengthPrefixed(&ticket) && body.ReadUint16LengthPrefixed(&exts) && body.Empty(), "NewSessionTicket")
		nst.nonce, nst.ticket, nst.exts = slices.Clone(nonce), slices.Clone(ticket), parseExtensions(t, exts)
		tickets = append(tickets, nst)
	}
	assert.Equal(t, want, string(data))
	return tickets
}

// TestProbeEdgeTickets13 is tlsfuzzer's test-tls13-count-tickets.py, with
// RFC 8446, Section 4.6.1's rules for each ticket checked: a lifetime of
// at most seven days, a non-empty ticket, a fresh ticket_age_add and a
// nonce unique on the connection; the edge refuses all early data, so it
// offers none (early_data, Section 4.2.10). Section 4.2.9: tickets are
// for the modes the client offered, and handshaked resumes with psk_dhe_ke
// only, so a client offering psk_ke only gets none ("Servers SHOULD NOT
// send NewSessionTicket with tickets that are not compatible with the
// advertised modes"), nor one offering no mode.
func TestProbeEdgeTickets13(t *testing.T) {
	f := newTicketFixture(t)
	probeEdges(t, f, func(t *testing.T, addr string) {
		tickets := func(t *testing.T, modes []byte) []newSessionTicket {
			c := dialClient13(t, f, addr)
			h := c.hello
			if modes != nil {
				h = h.set(extPSKModes, modes)
			}
			c.send(h)
			p := c.serverFlight().finish(t)
			p.send(t, record.ApplicationData, []byte("ping"))
			return readTickets(t, p, "ping")
		}
		t.Run("4.6.1 tickets for psk_dhe_ke", func(t *testing.T) {
			got := tickets(t, []byte{1, 1})
			require.NotEmpty(t, got, "no NewSessionTicket")
			seenNonce := map[string]bool{}
			seenAgeAdd := map[uint32]bool{}
			for i, nst := range got {
				assert.LessOrEqual(t, nst.lifetime, uint32(604800), "ticket %d: ticket_lifetime over seven days", i)
				assert.NotZero(t, nst.lifetime, "ticket %d: a lifetime of 0 says discard it at once", i)
				assert.NotEmpty(t, nst.ticket, "ticket %d: empty ticket", i)
				assert.False(t, seenNonce[string(nst.nonce)], "ticket %d: ticket_nonce repeated on the connection", i)
				assert.False(t, seenAgeAdd[nst.ageAdd], "ticket %d: ticket_age_add repeated", i)
				seenNonce[string(nst.nonce)], seenAgeAdd[nst.ageAdd] = true, true
				for _, e := range nst.exts {
					assert.NotEqual(t, extEarlyData, e.typ, "ticket %d: early_data offered by a server that refuses it", i)
				}
			}
			t.Logf("%d NewSessionTickets", len(got))
		})
		t.Run("4.2.9 psk_ke only gets no ticket", func(t *testing.T) {
			assert.Empty(t, tickets(t, []byte{1, 0}))
		})
		t.Run("4.2.9 no psk_key_exchange_modes gets no ticket", func(t *testing.T) {
			assert.Empty(t, tickets(t, nil))
		})
	})
}

// sealExplicit is the TLS 1.2 AES-GCM record of typ and plaintext at
// sequence number seq under the client's keys, with explicit as its
// nonce_explicit (RFC 5288, Section 3) in place of the sequence number
// record.Cipher writes.
func (p *peer) sealExplicit(t *testing.T, seq uint64, typ record.ContentType, plaintext, explicit []byte) []byte {
	t.Helper()
	block, err := aes.NewCipher(p.key)
	require.NoError(t, err)
	aead, err := cipher.NewGCM(block)
	require.NoError(t, err)
	// RFC 5246, Section 6.2.3.3: seq_num, type, version and length.
	aad := binary.BigEndian.AppendUint64(nil, seq)
	aad = append(aad, byte(typ), 3, 3, byte(len(plaintext)>>8), byte(len(plaintext)))
	n := len(explicit) + len(plaintext) + aead.Overhead()
	rec := append([]byte{byte(typ), 3, 3, byte(n >> 8), byte(n)}, explicit...)
	return aead.Seal(rec, slices.Concat(p.iv, explicit), plaintext, aad)
}

// TestProbeEdgeGCMExplicitNonces12 is tlsfuzzer's test-aes-gcm-nonces.py:
// RFC 5288, Section 3, the client chooses each record's nonce_explicit
// (the sequence number is one choice, "MAY"), and the server takes it
// from the record. For the client's Finished of a full handshake (which
// the service opens) and of a resumption (which with -one-round-trip the
// edge opens), and for the records after them (the edge's record layer).
func TestProbeEdgeGCMExplicitNonces12(t *testing.T) {
	f := newTicketFixture(t)
	nonces := []struct {
		name  string
		nonce func(seq uint64) []byte
	}{
		{"zero", func(uint64) []byte { return make([]byte, 8) }},
		{"all ones", func(uint64) []byte { return slices.Repeat([]byte{0xff}, 8) }},
		{"random", func(uint64) []byte {
			b := make([]byte, 8)
			rand.Read(b)
			return b
		}},
		{"counting down", func(seq uint64) []byte { return binary.BigEndian.AppendUint64(nil, ^seq) }},
	}
	probeEdges(t, f, func(t *testing.T, addr string) {
		for _, n := range nonces {
			t.Run("RFC 5288 3 nonce_explicit "+n.name+" in the Finished and after", func(t *testing.T) {
				p := dialPeerWith(t, f, addr, tls.VersionTLS12, peerHooks{last: func(p *peer, flight []byte) []byte {
					recs := splitPlainRecords(t, flight)
					require.Equal(t, record.ChangeCipherSpec, recs[len(recs)-2].typ, "the client's last flight")
					in, err := record.NewTLS12Cipher(p.suite, p.key, p.iv, 0)
					require.NoError(t, err)
					typ, fin, err := in.Open(record.Handshake, 0x0303, recs[len(recs)-1].body)
					require.NoError(t, err)
					require.Equal(t, record.Handshake, typ)
					out := flight[:len(flight)-record.HeaderLen-len(recs[len(recs)-1].body)]
					return append(slices.Clone(out), p.sealExplicit(t, 0, record.Handshake, fin, n.nonce(0))...)
				}})
				var w []byte
				for i, part := range []string{"one|", "two|", "three"} {
					seq := p.out.Seq() + uint64(i)
					w = append(w, p.sealExplicit(t, seq, record.ApplicationData, []byte(part), n.nonce(seq))...)
				}
				_, err := p.raw.Write(w)
				require.NoError(t, err)
				p.expectEcho(t, "one|two|three")
			})
			t.Run("RFC 5288 3 nonce_explicit "+n.name+" in the resumed Finished and after", func(t *testing.T) {
				p := resumed12With(t, f, addr, func(p *peer, fin []byte) []byte {
					return slices.Concat(compatCCS, p.sealExplicit(t, 0, record.Handshake, fin, n.nonce(0)))
				})
				// The Finished was record 0 under the client's keys.
				w := p.sealExplicit(t, 1, record.ApplicationData, []byte("resumed"), n.nonce(1))
				_, err := p.raw.Write(w)
				require.NoError(t, err)
				p.expectEcho(t, "resumed")
			})
		}
	})
}

// coalesce12 is the client's TLS 1.2 last flight with its handshake
// records before the ChangeCipherSpec (Certificate, ClientKeyExchange,
// CertificateVerify) rewritten by join, which gets their messages.
func coalesce12(t *testing.T, flight []byte, join func(msgs []byte) []byte) []byte {
	t.Helper()
	var msgs, rest []byte
	for i, r := range splitPlainRecords(t, flight) {
		if r.typ != record.Handshake {
			rest = flight
			for range i {
				n := int(rest[3])<<8 | int(rest[4])
				rest = rest[record.HeaderLen+n:]
			}
			break
		}
		msgs = append(msgs, r.body...)
	}
	require.Equal(t, []byte{11, 16, 15}, messageTypes(msgs), "Certificate, ClientKeyExchange, CertificateVerify")
	return append(join(msgs), rest...)
}

// coalesce13 is the client's TLS 1.3 last flight (change_cipher_spec,
// then Certificate, CertificateVerify and Finished under the client
// handshake traffic key, RFC 8446, Section 4.4) with the protected
// messages rewritten by join, which gets them and a new cipher from
// sequence number 0.
func coalesce13(t *testing.T, p *peer, flight []byte, join func(msgs []byte, hs *record.Cipher) []byte) []byte {
	t.Helper()
	secret := testenv.KeyLogSecret(t, p.logs, "CLIENT_HANDSHAKE_TRAFFIC_SECRET")
	in, err := record.NewTLS13Cipher(p.suite, secret, 0)
	require.NoError(t, err)
	var plain, msgs []byte
	for _, r := range splitPlainRecords(t, flight) {
		if r.typ != record.ApplicationData {
			plain = record.Append(plain, r.typ, 0x0303, r.body)
			continue
		}
		typ, m, err := in.Open(r.typ, 0x0303, r.body)
		require.NoError(t, err)
		require.Equal(t, record.Handshake, typ)
		msgs = append(msgs, m...)
	}
	require.Equal(t, []byte{11, 15, 20}, messageTypes(msgs), "Certificate, CertificateVerify, Finished")
	out, err := record.NewTLS13Cipher(p.suite, secret, 0)
	require.NoError(t, err)
	return append(plain, join(msgs, out)...)
}

// clientAuthHandshake runs crypto/tls's handshake of version with the
// client certificates certs against the edge at addr, its last flight
// (from the Certificate on) replaced by what rewrite makes of it, the
// peer's keys set, and returns the client, its deadline 20 seconds away,
// and the handshake's error.
func clientAuthHandshake(t *testing.T, f *fixture, addr string, version uint16, certs []tls.Certificate, rewrite func(p *peer, flight []byte) []byte) (*tls.Conn, error) {
	t.Helper()
	tap, p, label := tappedPeer(t, addr, version)
	logs := p.logs
	rewritten := false
	tap.write = func(b []byte) []byte {
		if rewritten || !bytes.Contains(logs.Bytes(), []byte(label)) {
			return b
		}
		rewritten = true
		p.keys(t, tap.readSoFar())
		return rewrite(p, b)
	}
	require.NoError(t, tap.SetDeadline(time.Now().Add(20*time.Second)))
	c := tls.Client(tap, &tls.Config{ServerName: f.ecdsa.Name, RootCAs: f.ecdsa.Pool, Certificates: certs,
		MinVersion: version, MaxVersion: version, KeyLogWriter: logs})
	err := c.Handshake()
	require.True(t, rewritten, "the client's last flight was not rewritten")
	return c, err
}

// TestProbeEdgeClientAuthFlights is tlsfuzzer's test-conversation.py and
// test-record-layer-fragmentation.py for a client that authenticates with
// a certificate (-client-auth require): its flight of several handshake
// messages all in one record, or each byte in a record of its own. RFC
// 5246, Section 6.2.1 and RFC 8446, Section 5.1: "multiple client
// messages of the same ContentType MAY be coalesced into a single
// TLSPlaintext record, or a single message MAY be fragmented across
// several records", so long as (TLS 1.3) a message before a key change
// ends its record: the Finished may share a record with the messages
// before it.
func TestProbeEdgeClientAuthFlights(t *testing.T) {
	f := newFixture(t)
	_, caFile, client := clientCA(t, "client-4")
	certs := []tls.Certificate{client}

	oneRecord12 := func(msgs []byte) []byte { return record.Append(nil, record.Handshake, 0x0303, msgs) }
	bytes12 := func(msgs []byte) []byte { return fragments(msgs, 1) }
	oneRecord13 := func(msgs []byte, hs *record.Cipher) []byte {
		rec, err := hs.Seal(nil, record.Handshake, msgs, 0)
		require.NoError(t, err)
		return rec
	}
	bytes13 := func(msgs []byte, hs *record.Cipher) []byte {
		var w []byte
		for i := range msgs {
			var err error
			w, err = hs.Seal(w, record.Handshake, msgs[i:i+1], 0)
			require.NoError(t, err)
		}
		return w
	}
	tests := []struct {
		name    string
		version uint16
		rewrite func(p *peer, flight []byte) []byte
	}{
		{"RFC 5246 6.2.1 Certificate, ClientKeyExchange and CertificateVerify in one record", tls.VersionTLS12,
			func(_ *peer, flight []byte) []byte { return coalesce12(t, flight, oneRecord12) }},
		{"RFC 5246 6.2.1 Certificate, ClientKeyExchange and CertificateVerify in one-byte records", tls.VersionTLS12,
			func(_ *peer, flight []byte) []byte { return coalesce12(t, flight, bytes12) }},
		{"RFC 8446 5.1 Certificate, CertificateVerify and Finished in one record", tls.VersionTLS13,
			func(p *peer, flight []byte) []byte { return coalesce13(t, p, flight, oneRecord13) }},
		{"RFC 8446 5.1 Certificate, CertificateVerify and Finished in one-byte records", tls.VersionTLS13,
			func(p *peer, flight []byte) []byte { return coalesce13(t, p, flight, bytes13) }},
	}
	backend, _ := echoBackend(t)
	for _, m := range edgeModes {
		addr, _ := f.start(t, slices.Concat([]string{"-backend", backend, "-client-auth", "require", "-client-ca", caFile}, m.args)...)
		t.Run(m.name, func(t *testing.T) {
			for _, tc := range tests {
				t.Run(tc.name, func(t *testing.T) {
					c, err := clientAuthHandshake(t, f, addr, tc.version, certs, tc.rewrite)
					require.NoError(t, err)
					_, err = c.Write([]byte("ping"))
					require.NoError(t, err)
					got := make([]byte, 4)
					_, err = io.ReadFull(c, got)
					require.NoError(t, err, "the edge refused the flight")
					assert.Equal(t, "ping", string(got))
				})
			}
		})
	}
}

// TestProbeEdgeFreshValues is tlsfuzzer's test-serverhello-random.py and
// test-ecdhe-rsa-key-share-random.py: each handshake gets a ServerHello
// random of its own (RFC 8446, Section 4.1.3; RFC 5246, Section 7.4.1.2)
// and an ephemeral key share of its own (RFC 8422, Section 5.4 and RFC
// 8446, Section 4.2.8: ephemeral, or the key exchange loses its forward
// secrecy, RFC 8446, Appendix E.1); and a TLS 1.2 client's session ID,
// which names no session the edge keeps (it resumes by ticket only), is
// never echoed, which would tell the client the session resumed (RFC
// 5246, Section 7.4.1.3).
func TestProbeEdgeFreshValues(t *testing.T) {
	f := newFixture(t)
	base12 := hello12(t, f)
	const n = 8
	probeEdges(t, f, func(t *testing.T, addr string) {
		t.Run("TLS 1.2 random, ECDHE point and session ID", func(t *testing.T) {
			randoms, points := map[string]bool{}, map[string]bool{}
			for range n {
				h := base12.clone()
				h.sessionID = make([]byte, 32)
				rand.Read(h.sessionID)
				flight := readFlight12(t, sendHello(t, addr, h.marshal()))
				random := flight[4+2 : 4+2+32]
				sid := flight[4+2+32+1 : 4+2+32+1+int(flight[4+2+32])]
				assert.NotEqual(t, h.sessionID, sid, "RFC 5246 7.4.1.3 the client's session ID echoed in a full handshake")
				_, point := serverKeyExchange12(t, flight)
				assert.False(t, randoms[string(random)], "RFC 5246 7.4.1.2 ServerHello random repeated")
				assert.False(t, points[string(point)], "RFC 8422 5.4 ECDHE point repeated")
				randoms[string(random)], points[string(point)] = true, true
			}
		})
		t.Run("TLS 1.3 random and key share", func(t *testing.T) {
			randoms, shares := map[string]bool{}, map[string]bool{}
			for range n {
				c := dialClient13(t, f, addr)
				c.send(c.hello)
				sh := readServerHello(t, c.raw)
				share := sh.ext(extKeyShare)
				require.NotEmpty(t, share, "no key_share in the ServerHello")
				assert.False(t, randoms[string(sh.random)], "RFC 8446 4.1.3 ServerHello random repeated")
				assert.False(t, shares[string(share)], "RFC 8446 4.2.8 server key share repeated")
				randoms[string(sh.random)], shares[string(share)] = true, true
			}
		})
	})
}

// TestProbeEdgeRecordPadding13 is more of tlsfuzzer's
// test-tls13-record-padding.py than round 3 took: RFC 8446, Section 5.4,
// any record may be padded, a handshake or alert record as well as
// application data, up to an inner plaintext of 2^14+1 bytes; one byte
// more is record_overflow. The client's Finished is checked by the service
// (multiplex, -unary) or by the edge (-one-round-trip), the records after
// it by the edge's record layer.
func TestProbeEdgeRecordPadding13(t *testing.T) {
	f := newFixture(t)
	// finishWith writes the client's last flight as write makes it: hs
	// writes under the client handshake traffic key, fin is the Finished.
	finishWith := func(t *testing.T, addr string, write func(hs *peer, fin []byte)) *peer {
		return dialPeerWith(t, f, addr, tls.VersionTLS13, peerHooks{last: func(p *peer, flight []byte) []byte {
			fin, _ := clientFinished13(t, p, flight)
			secret := testenv.KeyLogSecret(t, p.logs, "CLIENT_HANDSHAKE_TRAFFIC_SECRET")
			s, ok := record.SuiteByID(p.suite)
			require.True(t, ok)
			hs := &peer{raw: p.raw.(*tapConn).Conn, tls13: true, suite: p.suite}
			hs.key, hs.iv = record.TrafficKeys(s, secret)
			var err error
			hs.out, err = record.NewTLS13Cipher(p.suite, secret, 0)
			require.NoError(t, err)
			write(hs, fin)
			return nil
		}})
	}
	full := func(msg []byte) int { return record.MaxPlaintext - len(msg) }
	probeEdges(t, f, func(t *testing.T, addr string) {
		t.Run("5.4 the Finished padded to 2^14+1 bytes is accepted", func(t *testing.T) {
			p := finishWith(t, addr, func(hs *peer, fin []byte) {
				rec, err := hs.out.Seal(nil, record.Handshake, fin, full(fin))
				require.NoError(t, err)
				_, err = hs.raw.Write(rec)
				require.NoError(t, err)
			})
			p.expectServes(t)
		})
		t.Run("5.4 the Finished padded to 2^14+2 bytes is record_overflow", func(t *testing.T) {
			p := finishWith(t, addr, func(hs *peer, fin []byte) {
				hs.sendRaw(t, 0, append(slices.Concat(fin, []byte{byte(record.Handshake)}), make([]byte, full(fin)+1)...))
			})
			p.expectAlert(t, alertRecordOverflow)
		})
		t.Run("5.4 a KeyUpdate padded to 2^14+1 bytes is taken", func(t *testing.T) {
			p := dialPeer(t, f, addr, tls.VersionTLS13)
			ku := []byte{24, 0, 0, 1, 1}
			rec, err := p.out.Seal(nil, record.Handshake, ku, full(ku))
			require.NoError(t, err)
			require.NoError(t, p.out.Update())
			rec, err = p.out.Seal(rec, record.ApplicationData, []byte("after"), 0)
			require.NoError(t, err)
			_, err = p.raw.Write(rec)
			require.NoError(t, err)
			o := p.readUntil(t, len("after"), 0)
			require.False(t, o.closed, "the edge closed the connection; alerts % x", o.alerts)
			assert.Equal(t, "after", string(o.data))
			assert.Equal(t, 1, o.keyUpdates)
		})
		t.Run("5.4 close_notify padded to 2^14+1 bytes is answered with close_notify", func(t *testing.T) {
			p := dialPeer(t, f, addr, tls.VersionTLS13)
			rec, err := p.out.Seal(nil, record.Alert, []byte{1, 0}, full([]byte{1, 0}))
			require.NoError(t, err)
			_, err = p.raw.Write(rec)
			require.NoError(t, err)
			o := p.readUntil(t, 0, 1)
			assert.Equal(t, [][]byte{{1, 0}}, o.alerts)
		})
	})
}

// reversed is h with its extensions in the opposite order (h offers no
// pre_shared_key, which must stay last, RFC 8446, Section 4.2.11).
func reversed(h *helloMsg) *helloMsg {
	c := h.clone()
	slices.Reverse(c.exts)
	return c
}

// TestProbeEdgeShuffledExtensions is tlsfuzzer's
// test-tls13-shuffled-extentions.py: RFC 8446, Section 4.2, "Extensions
// in the ClientHello may be sent in any order" (pre_shared_key aside,
// which crypto/tls's ClientHello here does not carry); RFC 5246, Section
// 7.4.1.4 puts no order on them either.
func TestProbeEdgeShuffledExtensions(t *testing.T) {
	f := newFixture(t)
	base12 := hello12(t, f)
	probeEdges(t, f, func(t *testing.T, addr string) {
		t.Run("RFC 8446 4.2 extensions in reverse order complete TLS 1.3", func(t *testing.T) {
			c := dialClient13(t, f, addr)
			c.send(reversed(c.hello))
			c.serverFlight().finish(t).expectServes(t)
		})
		t.Run("RFC 5246 7.4.1.4 extensions in reverse order get a TLS 1.2 ServerHello", func(t *testing.T) {
			sh := readServerHello(t, sendHello(t, addr, reversed(base12).marshal()))
			assert.Equal(t, uint16(tls.VersionTLS12), sh.version)
		})
	})
}

// serverNames is the data of a server_name extension with the entries,
// name type then name, given (RFC 6066, Section 3).
func serverNames(entries ...any) []byte {
	var b cryptobyte.Builder
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
		for i := 0; i < len(entries); i += 2 {
			b.AddUint8(entries[i].(uint8))
			b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(entries[i+1].(string))) })
		}
	})
	return b.BytesOrPanic()
}

// serverCertificate is the first certificate of the Certificate message in
// the TLS 1.2 flight.
func serverCertificate(t *testing.T, flight []byte) []byte {
	t.Helper()
	for flight[0] != 11 {
		flight = flight[4+(int(flight[1])<<16|int(flight[2])<<8|int(flight[3])):]
	}
	s := cryptobyte.String(flight[4:])
	var list, cert cryptobyte.String
	require.True(t, s.ReadUint24LengthPrefixed(&list) && list.ReadUint24LengthPrefixed(&cert), "Certificate")
	return cert
}

// TestProbeEdgeServerName is tlsfuzzer's
// test-invalid-server-name-extension.py, against an edge with two keys
// (the ECDSA one first, the default). RFC 6066, Section 3: the host name
// picks the certificate (compared without regard to case, RFC 4343); a
// name the server does not know may end the handshake with a fatal
// unrecognized_name or let it go on, and the edge goes on with its
// default certificate and no alert (a warning is "NOT RECOMMENDED";
// tlsfuzzer expects one by default, so its "incorrect SNI" fails against
// the edge); name types other than host_name are passed over; a host
// name is a DNS name in ASCII without a trailing dot, so one with other
// bytes is illegal_parameter; a malformed extension is decode_error. Two
// host_names (which the ServerNameList "MUST NOT contain"; RFC 6066 names
// no alert) are illegal_parameter, as tlsfuzzer expects: the list decodes,
// and the second name is a field inconsistent with the first (RFC 8446,
// Section 6.2).
func TestProbeEdgeServerName(t *testing.T) {
	f := newFixture(t)
	base12 := parseHello(t, clientHello(t, &tls.Config{ServerName: f.rsa.Name, MaxVersion: tls.VersionTLS12}))
	const hostName uint8 = 0
	chosen := []struct {
		name string
		sni  []byte
		cert []byte
	}{
		{"the RSA key's name gets its certificate", serverNames(hostName, f.rsa.Name), f.rsa.Chain[0]},
		{"RFC 4343 the name in capitals gets the same", serverNames(hostName, "RSA.TEST"), f.rsa.Chain[0]},
		{"an unknown name gets the default certificate", serverNames(hostName, "www."+f.rsa.Name), f.ecdsa.Chain[0]},
		{"an unknown name type before the host_name is passed over", serverNames(uint8(1), string(make([]byte, 24)), hostName, f.rsa.Name), f.rsa.Chain[0]},
		{"an unknown name type after the host_name is passed over", serverNames(hostName, f.rsa.Name, uint8(1), string(make([]byte, 24))), f.rsa.Chain[0]},
	}
	refused := []struct {
		name  string
		sni   []byte
		alert uint8
	}{
		{"an empty extension is decode_error", []byte{}, alertDecodeError},
		{"an empty list is decode_error", []byte{0, 0}, alertDecodeError},
		{"an empty host_name is decode_error", serverNames(hostName, ""), alertDecodeError},
		{"data after the host_name in its list is decode_error", []byte{0, 4, 0, 0, 1, 'e', 'x'}, alertDecodeError},
		{"a list length past the extension is decode_error", []byte{0xff, 0xff, 0xff, 0xff}, alertDecodeError},
		{"two host_names are illegal_parameter", serverNames(hostName, f.rsa.Name, hostName, "www."+f.rsa.Name), alertIllegalParameter},
		{"a NUL in the name is illegal_parameter", serverNames(hostName, "rsa.tes\x00t"), alertIllegalParameter},
		{"a BEL in the name is illegal_parameter", serverNames(hostName, "rsa.tes\x07t"), alertIllegalParameter},
		{"UTF-8 in the name is illegal_parameter", serverNames(hostName, "rsa.tes\xc4\x85t"), alertIllegalParameter},
		{"ANSI escapes after the name are illegal_parameter", serverNames(hostName, f.rsa.Name+"\x1b[31mBAD\x1b[0;37m"), alertIllegalParameter},
		{"a trailing dot is illegal_parameter", serverNames(hostName, f.rsa.Name+"."), alertIllegalParameter},
	}
	probeEdges(t, f, func(t *testing.T, addr string) {
		for _, tc := range chosen {
			t.Run("RFC 6066 3 "+tc.name, func(t *testing.T) {
				flight := readFlight12(t, sendHello(t, addr, base12.set(extServerName, tc.sni).marshal()))
				assert.Equal(t, tc.cert, serverCertificate(t, flight), "the server's certificate")
			})
		}
		for _, tc := range refused {
			t.Run("RFC 6066 3 "+tc.name, func(t *testing.T) {
				expectPlainAlert(t, sendHello(t, addr, base12.set(extServerName, tc.sni).marshal()), tc.alert)
			})
		}
	})
}

// TestProbeEdgeUnimplementedExtensions offers what tlsfuzzer's
// test-ocsp-stapling.py, test-heartbeat.py, test-record-size-limit.py
// (max_fragment_length) and test-tls13-certificate-compression.py offer,
// to a server that implements none of it: each is passed over (RFC 8446,
// Section 4.2: "Implementations MUST NOT send extension responses if the
// remote endpoint did not send the corresponding extension requests",
// and a server that does not implement one sends no response), so the
// ServerHello or EncryptedExtensions answers none, and a TLS 1.2 server
// that staples nothing sends no CertificateStatus (RFC 6066, Section 8).
func TestProbeEdgeUnimplementedExtensions(t *testing.T) {
	f := newFixture(t)
	base12 := hello12(t, f)
	exts := []struct {
		name string
		typ  uint16
		data []byte
	}{
		{"RFC 6066 4 max_fragment_length 2^9", 1, []byte{1}},
		{"RFC 6066 4 max_fragment_length of an undefined value", 1, []byte{5}},
		{"RFC 6066 7 truncated_hmac", 4, nil},
		{"RFC 6066 8 status_request for OCSP", 5, []byte{1, 0, 0, 0, 0}},
		{"RFC 6962 3.3.1 signed_certificate_timestamp", 18, nil},
		{"RFC 6520 2 heartbeat peer_allowed_to_send", 15, []byte{1}},
		{"RFC 8879 3 compress_certificate zlib", 27, []byte{2, 0, 1}},
	}
	probeEdges(t, f, func(t *testing.T, addr string) {
		for _, e := range exts {
			t.Run(e.name+" is not answered in TLS 1.2", func(t *testing.T) {
				c := sendHello(t, addr, base12.set(e.typ, e.data).marshal())
				sh := readServerHello(t, c)
				_, ok := sh.lookup(e.typ)
				assert.False(t, ok, "answered in the ServerHello")
				rest := sh.rest
				for !bytes.HasSuffix(rest, []byte{14, 0, 0, 0}) {
					recs, _ := readRecords(t, c, 1)
					require.Len(t, recs, 1, "the edge closed in its flight")
					rest = append(rest, recs[0].body...)
				}
				assert.Equal(t, []byte{11, 12, 14}, messageTypes(rest), "Certificate, ServerKeyExchange, ServerHelloDone: no CertificateStatus")
			})
			t.Run(e.name+" is not answered in TLS 1.3", func(t *testing.T) {
				c := dialClient13(t, f, addr)
				c.send(c.hello.set(e.typ, e.data))
				fl := c.serverFlight()
				ee := &serverHello{exts: encryptedExtensions(t, fl.msgs)}
				_, ok := ee.lookup(e.typ)
				assert.False(t, ok, "answered in the EncryptedExtensions")
				fl.finish(t).expectServes(t)
			})
		}
	})
}

// TestProbeEdgeClientAlerts is what tlsfuzzer's scripts send when they
// give up early, and test-tls13-unencrypted-alert.py: RFC 8446, Section
// 6.2 (and RFC 5246, Section 7.2.2), after a fatal alert the connection
// closes and nothing is sent back, not even an alert; a close_notify
// (Section 6.1) ends the connection before anything was agreed. Before
// the ClientHello (the edge reads it alone), and in place of the TLS 1.2
// client's second flight, in the clear as a client that rejects the
// server's certificate sends it.
func TestProbeEdgeClientAlerts(t *testing.T) {
	f := newFixture(t)
	base12 := hello12(t, f)
	alerts := []struct {
		name string
		body []byte
	}{
		{"fatal handshake_failure", []byte{2, 40}},
		{"fatal bad_certificate", []byte{2, 42}},
		{"warning close_notify", []byte{1, 0}},
		{"fatal close_notify", []byte{2, 0}},
	}
	// expectClose checks that the edge closes c without a byte more.
	expectClose := func(t *testing.T, c net.Conn) {
		t.Helper()
		recs, closed := readRecords(t, c, 1)
		assert.True(t, closed, "the edge did not close")
		assert.Empty(t, recs, "the edge answered the client's alert")
	}
	probeEdges(t, f, func(t *testing.T, addr string) {
		for _, a := range alerts {
			t.Run("6.2 "+a.name+" before the ClientHello gets the close", func(t *testing.T) {
				c := dialRaw(t, addr)
				_, err := c.Write(record.Append(nil, record.Alert, 0x0301, a.body))
				require.NoError(t, err)
				expectClose(t, c)
			})
			t.Run("RFC 5246 7.2.2 "+a.name+" in place of the second flight gets the close", func(t *testing.T) {
				c := sendHello(t, addr, base12.marshal())
				readFlight12(t, c)
				_, err := c.Write(record.Append(nil, record.Alert, 0x0303, a.body))
				require.NoError(t, err)
				expectClose(t, c)
			})
		}
	})
}

// byteWriter writes each byte in a TCP segment of its own (Go's TCP
// connections disable Nagle's algorithm).
type byteWriter struct{ net.Conn }

func (w byteWriter) Write(b []byte) (int, error) {
	for i := range b {
		if _, err := w.Conn.Write(b[i : i+1]); err != nil {
			return i, err
		}
	}
	return len(b), nil
}

// TestProbeEdgeByteSegments is tlsfuzzer's TCP-buffering checks
// (test-record-layer-fragmentation.py, test-truncating-of-client-hello.py's
// "expect no message" before the rest): every byte the client writes in a
// TCP segment of its own, so the edge, which reads the ClientHello itself
// and with -one-round-trip the client's Finished too, reads records cut
// anywhere. TCP is a byte stream (RFC 9293, Section 3.8.5 leaves segment
// boundaries to the sender) and TLS records may arrive split or coalesced
// (RFC 8446, Section 5). Full and resumed handshakes of each version.
func TestProbeEdgeByteSegments(t *testing.T) {
	f := newTicketFixture(t)
	probeEdges(t, f, func(t *testing.T, addr string) {
		for _, version := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
			cfg := &tls.Config{ServerName: f.ecdsa.Name, RootCAs: f.ecdsa.Pool, MinVersion: version, MaxVersion: version,
				ClientSessionCache: tls.NewLRUClientSessionCache(1)}
			for _, resumed := range []bool{false, true} {
				t.Run(fmt.Sprintf("%s resumed %v", tls.VersionName(version), resumed), func(t *testing.T) {
					c := tls.Client(&tapConn{Conn: byteWriter{dialRaw(t, addr)}}, cfg)
					require.NoError(t, c.SetDeadline(time.Now().Add(20*time.Second)))
					require.NoError(t, c.Handshake())
					_, err := c.Write([]byte("ping"))
					require.NoError(t, err)
					got := make([]byte, 4)
					_, err = io.ReadFull(c, got)
					require.NoError(t, err)
					assert.Equal(t, "ping", string(got))
					// The first handshake reads the ticket the second
					// resumes with.
					assert.Equal(t, resumed, c.ConnectionState().DidResume, "resumed")
				})
			}
		}
	})
}

// TestProbeEdgeEarlyApplicationData12 is tlsfuzzer's
// test-early-application-data.py for a full TLS 1.2 handshake: RFC 5246,
// Section 7.3, "Application data MUST NOT be sent prior to the completion
// of the first handshake", so a record of it in the client's second
// flight, in the clear before the ChangeCipherSpec or protected before the
// Finished, is unexpected_message (round 1 probes the resumed handshake
// and TLS 1.3).
func TestProbeEdgeEarlyApplicationData12(t *testing.T) {
	f := newFixture(t)
	tests := []struct {
		name   string
		flight func(p *peer, cke, ccs, fin []byte) []byte
	}{
		{"RFC 5246 7.3 application data before the ChangeCipherSpec is unexpected_message", func(p *peer, cke, ccs, fin []byte) []byte {
			return slices.Concat(cke, record.Append(nil, record.ApplicationData, 0x0303, []byte("early")), ccs, fin)
		}},
		{"RFC 5246 7.3 application data between the ChangeCipherSpec and the Finished is unexpected_message", func(p *peer, cke, ccs, fin []byte) []byte {
			return slices.Concat(cke, ccs, p.sealExplicit(t, 0, record.ApplicationData, []byte("early"), make([]byte, 8)))
		}},
	}
	probeEdges(t, f, func(t *testing.T, addr string) {
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				tap := &tapConn{Conn: dialRaw(t, addr)}
				logs := &testenv.Buffer{}
				p := &peer{raw: tap, logs: logs}
				tap.write = func(b []byte) []byte {
					if !bytes.Contains(logs.Bytes(), []byte("CLIENT_RANDOM")) {
						return b
					}
					p.keys(t, tap.readSoFar())
					recs := splitPlainRecords(t, b)
					require.Len(t, recs, 3, "ClientKeyExchange, ChangeCipherSpec, Finished")
					var parts [][]byte
					for _, r := range recs {
						parts = append(parts, record.Append(nil, r.typ, 0x0303, r.body))
					}
					return tc.flight(p, parts[0], parts[1], parts[2])
				}
				c := tls.Client(tap, &tls.Config{ServerName: f.ecdsa.Name, RootCAs: f.ecdsa.Pool, MaxVersion: tls.VersionTLS12, KeyLogWriter: logs,
					CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256}})
				require.NoError(t, tap.SetDeadline(time.Now().Add(20*time.Second)))
				assert.ErrorContains(t, c.Handshake(), "remote error: tls: unexpected message")
			})
		}
	})
}
