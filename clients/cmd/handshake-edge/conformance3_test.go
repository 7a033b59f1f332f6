package main

import (
	"bytes"
	"crypto"
	"crypto/ecdh"
	"crypto/mlkem"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"net"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/cryptobyte"

	"github.com/handshaked/handshaked/internal/engine/record"
	"github.com/handshaked/handshaked/internal/testenv"
)

// Still more probes in the manner of tlsfuzzer's scripts, for what the
// probes of conformance_test.go and conformance2_test.go leave out: what
// a client writes in the same segment as its Finished, the Finished of a
// TLS 1.2 resumption (which the edge checks itself with -one-round-trip),
// message headers that alone decide the answer, groups the edge does not
// do or does only in TLS 1.3 (the ML-KEM hybrids), shared secrets with
// leading zeros, record versions, and extensions it must not answer.

// TestProbeEdgeWithFinished13 writes records right after the client's TLS
// 1.3 Finished, in its TCP segment: the engine hands them to the edge as
// leftover (multiplex, -unary), or the edge's own check of the Finished
// does (-one-round-trip), and the record layer must take them as it takes
// any record after the handshake. The edge issues tickets, so with
// -one-round-trip it holds one back until the Finished is checked.
func TestProbeEdgeWithFinished13(t *testing.T) {
	f := newTicketFixture(t)
	seal := func(p *peer, typ record.ContentType, b []byte, padding int) []byte {
		rec, err := p.out.Seal(nil, typ, b, padding)
		require.NoError(t, err)
		return rec
	}
	probeEdges(t, f, func(t *testing.T, addr string) {
		// tlsfuzzer's test-tls13-ccs.py, "CCS message after Finished
		// message": RFC 8446, Section 5 drops a change_cipher_spec only
		// "before the peer's Finished message has been received".
		t.Run("5 change_cipher_spec right after the Finished is unexpected_message", func(t *testing.T) {
			p := dialPeerWith(t, f, addr, tls.VersionTLS13, peerHooks{last: func(p *peer, flight []byte) []byte {
				return slices.Concat(flight, compatCCS)
			}})
			p.expectAlert(t, alertUnexpectedMessage)
		})
		// tlsfuzzer's test-tls13-zero-length-data.py: RFC 8446, Section
		// 5.4, "Zero-length fragments of Application Data MAY be sent".
		t.Run("5.4 zero-length application_data with the Finished is accepted", func(t *testing.T) {
			p := dialPeerWith(t, f, addr, tls.VersionTLS13, peerHooks{last: func(p *peer, flight []byte) []byte {
				return slices.Concat(flight, seal(p, record.ApplicationData, nil, 0), seal(p, record.ApplicationData, []byte("ping"), 0))
			}})
			p.expectEcho(t, "ping")
		})
		// tlsfuzzer's test-tls13-record-padding.py, "set-max-length-padding":
		// the inner plaintext filled to 2^14+1 bytes (RFC 8446, Section 5.4).
		t.Run("5.4 application_data padded to 2^14 bytes with the Finished is accepted", func(t *testing.T) {
			p := dialPeerWith(t, f, addr, tls.VersionTLS13, peerHooks{last: func(p *peer, flight []byte) []byte {
				return slices.Concat(flight, seal(p, record.ApplicationData, []byte("ping"), record.MaxPlaintext-len("ping")))
			}})
			p.expectEcho(t, "ping")
		})
	})
}

// resumed12 runs a full TLS 1.2 handshake with the edge at addr for its
// session, then resumes it (RFC 5246, Section 7.3) with the client's
// second flight, ChangeCipherSpec then Finished, replaced by what flight
// returns: fin is crypto/tls's Finished message and out the client's write
// cipher from sequence number 0, which the peer writes with afterwards. A
// resuming client finishes last, so crypto/tls's handshake completes
// whatever the edge thinks of the flight; the peer reads its answer.
func resumed12(t *testing.T, f *fixture, addr string, flight func(fin []byte, out *record.Cipher) []byte) *peer {
	t.Helper()
	return resumed12With(t, f, addr, func(p *peer, fin []byte) []byte { return flight(fin, p.out) })
}

// resumed12With is resumed12 whose flight gets the peer, its keys set, for
// records the record layer would not write.
func resumed12With(t *testing.T, f *fixture, addr string, flight func(p *peer, fin []byte) []byte) *peer {
	t.Helper()
	logs := &testenv.Buffer{}
	cfg := &tls.Config{ServerName: f.ecdsa.Name, RootCAs: f.ecdsa.Pool, MaxVersion: tls.VersionTLS12, KeyLogWriter: logs,
		ClientSessionCache: tls.NewLRUClientSessionCache(1)}
	full := tls.Client(dialRaw(t, addr), cfg)
	require.NoError(t, full.Handshake())
	full.Close()
	// The resumed session keeps the master secret; crypto/tls logs it for
	// the full handshake only.
	master := testenv.KeyLog(t, logs)["CLIENT_RANDOM"][1]

	tap := &tapConn{Conn: dialRaw(t, addr)}
	p := &peer{raw: tap}
	var clientRandom []byte
	writes := 0
	tap.write = func(b []byte) []byte {
		switch writes++; writes {
		case 1: // the ClientHello
			clientRandom = slices.Clone(b[record.HeaderLen+4+2 : record.HeaderLen+4+2+32])
			return b
		case 2:
		default:
			return b
		}
		// ServerHello: version, random, session ID, cipher suite.
		hello := tap.readSoFar()[record.HeaderLen+4:]
		serverRandom := hello[2 : 2+32]
		sid := int(hello[2+32])
		p.suite = uint16(hello[2+32+1+sid])<<8 | uint16(hello[2+32+1+sid+1])
		s, ok := record.SuiteByID(p.suite)
		require.True(t, ok)
		var sk, siv []byte
		p.key, sk, p.iv, siv = record.NewSecret12(s.Hash, master).KeyBlock(clientRandom, serverRandom, s.KeyLen, s.FixedIVLen)
		recs := splitPlainRecords(t, b)
		require.Len(t, recs, 2, "the second flight is not ChangeCipherSpec and Finished")
		require.Equal(t, serverRecord{record.ChangeCipherSpec, []byte{1}}, recs[0])
		in, err := record.NewTLS12Cipher(p.suite, p.key, p.iv, 0)
		require.NoError(t, err)
		typ, fin, err := in.Open(recs[1].typ, 0x0303, recs[1].body)
		require.NoError(t, err, "the client's Finished does not open: not the session's master secret")
		require.Equal(t, record.Handshake, typ)
		p.out, err = record.NewTLS12Cipher(p.suite, p.key, p.iv, 0)
		require.NoError(t, err)
		// The server's Finished came first under its keys.
		p.in, err = record.NewTLS12Cipher(p.suite, sk, siv, 1)
		require.NoError(t, err)
		return flight(p, slices.Clone(fin))
	}
	c := tls.Client(tap, cfg)
	require.NoError(t, c.Handshake())
	require.True(t, c.ConnectionState().DidResume, "not resumed")
	require.NotNil(t, p.out, "the client wrote no second flight")
	return p
}

// TestProbeEdgeTLS12ResumedFinished changes the Finished of a resuming
// TLS 1.2 client (tlsfuzzer's test-fuzzed-finished.py and
// test-message-skipping.py for the abbreviated handshake): the engine
// checks it (multiplex, -unary) or the edge does (-one-round-trip), and
// each must answer with the same alert, under the server's keys since its
// Finished went first.
func TestProbeEdgeTLS12ResumedFinished(t *testing.T) {
	f := newTicketFixture(t)
	ccs := []byte{20, 3, 3, 0, 1, 1}
	seal := func(c *record.Cipher, typ record.ContentType, b []byte) []byte {
		rec, err := c.Seal(nil, typ, b, 0)
		require.NoError(t, err)
		return rec
	}
	accepted := []struct {
		name   string
		flight func(fin []byte, out *record.Cipher) []byte
	}{
		{"RFC 5246 6.2.1 the Finished across two records resumes", func(fin []byte, out *record.Cipher) []byte {
			return slices.Concat(ccs, seal(out, record.Handshake, fin[:5]), seal(out, record.Handshake, fin[5:]))
		}},
		{"RFC 5246 6.2.1 the Finished in one-byte records resumes", func(fin []byte, out *record.Cipher) []byte {
			w := slices.Clone(ccs)
			for i := range fin {
				w = append(w, seal(out, record.Handshake, fin[i:i+1])...)
			}
			return w
		}},
	}
	refused := []struct {
		name   string
		flight func(fin []byte, out *record.Cipher) []byte
		alert  uint8
	}{
		// RFC 5246, Section 7.4.9: "Recipients of Finished messages MUST
		// verify that the contents are correct"; a wrong verify_data is
		// decrypt_error (Section 7.2.2), a verify_data of another length
		// than 12 bytes decode_error.
		{"RFC 5246 7.4.9 wrong verify_data is decrypt_error", func(fin []byte, out *record.Cipher) []byte {
			fin[len(fin)-1] ^= 1
			return slices.Concat(ccs, seal(out, record.Handshake, fin))
		}, alertDecryptError},
		{"RFC 5246 7.4.9 Finished of 11 bytes is decode_error", func(fin []byte, out *record.Cipher) []byte {
			return slices.Concat(ccs, seal(out, record.Handshake, hsMsg(20, fin[4:len(fin)-1]...)))
		}, alertDecodeError},
		{"RFC 5246 7.4.9 Finished of 13 bytes is decode_error", func(fin []byte, out *record.Cipher) []byte {
			return slices.Concat(ccs, seal(out, record.Handshake, hsMsg(20, append(fin[4:], 0)...)))
		}, alertDecodeError},
		{"RFC 5246 7.4.9 empty Finished is decode_error", func(fin []byte, out *record.Cipher) []byte {
			return slices.Concat(ccs, seal(out, record.Handshake, hsMsg(20)))
		}, alertDecodeError},
		// RFC 5246, Section 7.3: after the ChangeCipherSpec the client
		// sends its Finished, nothing else.
		{"RFC 5246 7.3 HelloRequest before the Finished is unexpected_message", func(fin []byte, out *record.Cipher) []byte {
			return slices.Concat(ccs, seal(out, record.Handshake, hsMsg(0)), seal(out, record.Handshake, fin))
		}, alertUnexpectedMessage},
		{"RFC 5246 7.3 application data before the Finished is unexpected_message", func(fin []byte, out *record.Cipher) []byte {
			return slices.Concat(ccs, seal(out, record.ApplicationData, []byte("early")), seal(out, record.Handshake, fin))
		}, alertUnexpectedMessage},
		// tlsfuzzer's test-ccs.py, "two bytes long CCS": the message is
		// one byte of value 1 (RFC 5246, Section 7.1).
		{"RFC 5246 7.1 change_cipher_spec of two bytes is unexpected_message", func(fin []byte, out *record.Cipher) []byte {
			return slices.Concat([]byte{20, 3, 3, 0, 2, 1, 1}, seal(out, record.Handshake, fin))
		}, alertUnexpectedMessage},
		// A ChangeCipherSpec once the handshake is over is out of place
		// (RFC 5246, Section 7.1), in the same segment as the Finished as
		// after it. Past the client's ChangeCipherSpec every record is
		// under its keys (Section 6.2.3): one in the clear does not
		// authenticate.
		{"RFC 5246 7.1 protected change_cipher_spec right after the Finished is unexpected_message", func(fin []byte, out *record.Cipher) []byte {
			return slices.Concat(ccs, seal(out, record.Handshake, fin), seal(out, record.ChangeCipherSpec, []byte{1}))
		}, alertUnexpectedMessage},
		{"RFC 5246 6.2.3 plaintext change_cipher_spec right after the Finished is bad_record_mac", func(fin []byte, out *record.Cipher) []byte {
			return slices.Concat(ccs, seal(out, record.Handshake, fin), ccs)
		}, alertBadRecordMAC},
		{"RFC 5246 7.4.1.1 HelloRequest after the Finished in its record is unexpected_message", func(fin []byte, out *record.Cipher) []byte {
			return slices.Concat(ccs, seal(out, record.Handshake, slices.Concat(fin, hsMsg(0))))
		}, alertUnexpectedMessage},
	}
	// A Finished whose header says another length than 12 bytes is
	// decode_error once the header is in: the rest of it is not worth
	// waiting for.
	for _, n := range finishedLengths(12) {
		refused = append(refused, struct {
			name   string
			flight func(fin []byte, out *record.Cipher) []byte
			alert  uint8
		}{fmt.Sprintf("RFC 5246 7.4.9 Finished whose header says %d bytes, 12 sent, is decode_error", n), func(fin []byte, out *record.Cipher) []byte {
			return slices.Concat(ccs, seal(out, record.Handshake, withLength(fin, n)))
		}, alertDecodeError})
	}
	refused = append(refused, struct {
		name   string
		flight func(fin []byte, out *record.Cipher) []byte
		alert  uint8
	}{"RFC 5246 7.3 the header of a HelloRequest of 100 bytes before the Finished is unexpected_message", func(fin []byte, out *record.Cipher) []byte {
		return slices.Concat(ccs, seal(out, record.Handshake, withLength(hsMsg(0, 0), 100)))
	}, alertUnexpectedMessage})
	probeEdges(t, f, func(t *testing.T, addr string) {
		for _, tc := range accepted {
			t.Run(tc.name, func(t *testing.T) {
				p := resumed12(t, f, addr, tc.flight)
				p.expectServes(t)
			})
		}
		for _, tc := range refused {
			t.Run(tc.name, func(t *testing.T) {
				p := resumed12(t, f, addr, tc.flight)
				p.expectAlert(t, tc.alert)
			})
		}
	})
}

// finishedLengths are lengths a Finished message header may claim that
// verify_data of size bytes cannot have: one more, past the engine's
// bound on a handshake message (2^16), and the most a header holds.
func finishedLengths(size int) []int { return []int{size + 1, 1<<16 + 1, 1<<24 - 1} }

// withLength is the handshake message msg with n in its header's length.
func withLength(msg []byte, n int) []byte {
	return append([]byte{msg[0], byte(n >> 16), byte(n >> 8), byte(n)}, msg[4:]...)
}

// TestProbeEdgeFinishedHeader13: in place of the client's TLS 1.3
// Finished, a message header that alone decides the answer, its body
// shorter than the header says: a Finished whose length is not Hash.length
// (RFC 8446, Section 4.4.4) is decode_error, another message
// unexpected_message, as soon as the header is in, whether the engine or
// the edge (-one-round-trip) checks it, rather than a wait for bytes that
// change nothing (tlsfuzzer's test-tls13-finished.py pads and truncates
// the Finished).
func TestProbeEdgeFinishedHeader13(t *testing.T) {
	f := newFixture(t)
	tests := []struct {
		name    string
		message func(fin []byte) []byte
		alert   uint8
	}{
		{"4 the header of a KeyUpdate of 100 bytes is unexpected_message", func([]byte) []byte { return withLength(hsMsg(24, 0), 100) }, alertUnexpectedMessage},
	}
	for _, n := range finishedLengths(sha256.Size) {
		tests = append(tests, struct {
			name    string
			message func(fin []byte) []byte
			alert   uint8
		}{fmt.Sprintf("4.4.4 Finished whose header says %d bytes, 32 sent, is decode_error", n), func(fin []byte) []byte { return withLength(fin, n) }, alertDecodeError})
	}
	probeEdges(t, f, func(t *testing.T, addr string) {
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				p := dialPeerWith(t, f, addr, tls.VersionTLS13, peerHooks{last: func(p *peer, flight []byte) []byte {
					fin, hs := clientFinished13(t, p, flight)
					rec, err := hs().Seal(nil, record.Handshake, tc.message(fin), 0)
					require.NoError(t, err)
					return slices.Concat(compatCCS, rec)
				}})
				p.expectAlert(t, tc.alert)
			})
		}
	})
}

// Groups the edge does not do (RFC 8446, Section 4.2.7; RFC 7748; RFC
// 7919).
const (
	groupX448      uint16 = 0x001e
	groupFFDHE2048 uint16 = 0x0100
)

// TestProbeEdgeUnsupportedGroups13 offers the edge key shares for groups
// it does not do, beside groups it does (tlsfuzzer's
// test-tls13-crfg-curves.py, test-tls13-ffdhe-groups.py and
// test-tls13-unrecognised-groups.py): RFC 8446, Section 4.2.8, a server
// uses a share of a group it selects, passes over the others, and asks
// with a HelloRetryRequest for a share of a group it supports that the
// client listed.
func TestProbeEdgeUnsupportedGroups13(t *testing.T) {
	f := newFixture(t)
	share := func(n int) []byte {
		b := make([]byte, n)
		rand.Read(b)
		return b
	}
	probeEdges(t, f, func(t *testing.T, addr string) {
		t.Run("4.2.8 a share for X448 only gets a HelloRetryRequest for X25519", func(t *testing.T) {
			c := dialClient13(t, f, addr)
			first := c.hello.set(extGroups, u16list(groupX448, groupX25519, groupP256))
			c.send(first.set(extKeyShare, keyShare(groupX448, share(56))))
			hrr := c.retried()
			require.Equal(t, []byte{0, 0x1d}, hrr.ext(extKeyShare), "HelloRetryRequest selected_group")
			c.send(first.set(extKeyShare, keyShare(groupX25519, c.share())))
			p := c.serverFlight().finish(t)
			p.expectServes(t)
		})
		for _, tc := range []struct {
			name   string
			groups []uint16
			shares []any
		}{
			{"4.2.8 a share for ffdhe2048 before the X25519 one is passed over", []uint16{groupFFDHE2048, groupX25519},
				[]any{groupFFDHE2048, share(256)}},
			{"4.2.8 a share for X448 before the X25519 one is passed over", []uint16{groupX448, groupX25519},
				[]any{groupX448, share(56)}},
			// Code points nobody registered (RFC 8446, Section 4.2.7).
			{"4.2.7 unknown groups and their shares before X25519 are passed over", []uint16{0xfe01, 0x7777, groupX25519},
				[]any{uint16(0xfe01), share(32), uint16(0x7777), share(100)}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				c := dialClient13(t, f, addr)
				c.send(c.hello.set(extGroups, u16list(tc.groups...)).set(extKeyShare, keyShare(append(tc.shares, groupX25519, c.share())...)))
				p := c.serverFlight().finish(t)
				p.expectServes(t)
			})
		}
	})
}

// extEncryptThenMAC is RFC 7366's extension.
const extEncryptThenMAC uint16 = 22

// TestProbeEdgeEncryptThenMAC offers encrypt_then_mac (tlsfuzzer's
// test-encrypt-then-mac.py): RFC 7366, Section 3, a server that "selects
// a stream or Authenticated Encryption with Associated Data (AEAD)
// ciphersuite, it MUST NOT send an encrypt-then-MAC response extension";
// every suite of the edge is AEAD, and TLS 1.3 has no such extension.
func TestProbeEdgeEncryptThenMAC(t *testing.T) {
	f := newFixture(t)
	hello12 := parseHello(t, clientHello(t, &tls.Config{ServerName: f.ecdsa.Name, MaxVersion: tls.VersionTLS12})).set(extEncryptThenMAC, nil)
	probeEdges(t, f, func(t *testing.T, addr string) {
		t.Run("RFC 7366 3 TLS 1.2 ServerHello without encrypt_then_mac", func(t *testing.T) {
			c := dialRaw(t, addr)
			_, err := c.Write(fragments(hello12.marshal(), 1<<14))
			require.NoError(t, err)
			sh := readServerHello(t, c)
			require.Equal(t, uint16(tls.VersionTLS12), sh.version)
			_, ok := sh.lookup(extEncryptThenMAC)
			assert.False(t, ok, "encrypt_then_mac answered for %s", tls.CipherSuiteName(sh.suite))
		})
		t.Run("RFC 7366 3 TLS 1.3 EncryptedExtensions without encrypt_then_mac", func(t *testing.T) {
			c := dialClient13(t, f, addr)
			c.send(c.hello.set(extEncryptThenMAC, nil))
			fl := c.serverFlight()
			for _, e := range encryptedExtensions(t, fl.msgs) {
				assert.NotEqual(t, extEncryptThenMAC, e.typ, "encrypt_then_mac answered")
			}
			p := fl.finish(t)
			p.expectServes(t)
		})
	})
}

// TestProbeEdgeLargeSecondClientHello: RFC 8446, Section 4.1.2 lets the
// second ClientHello after a HelloRetryRequest add a padding extension
// (RFC 7685); one that takes it over 2^16 bytes, as
// tlsfuzzer's test-tls13-hrr.py pads, reaches the engine through the edge's
// steps rather than its read of the first ClientHello, and its bound is the
// same (record.MaxClientHello).
func TestProbeEdgeLargeSecondClientHello(t *testing.T) {
	f := newFixture(t)
	const extPadding uint16 = 21
	probeEdges(t, f, func(t *testing.T, addr string) {
		for _, size := range []int{1 << 14, 100} {
			t.Run(fmt.Sprintf("4.1.2 a second ClientHello padded over 2^16 bytes in %d-byte records completes", size), func(t *testing.T) {
				c := dialClient13(t, f, addr)
				first := c.hello.without(extPadding)
				c.send(first.set(extKeyShare, keyShare()))
				c.retried()
				second := first.set(extPadding, make([]byte, maxExtensions-first.extensionsLen()-4)).marshal()
				require.Greater(t, len(second), 1<<16+4)
				c.transcript.Write(second)
				_, err := c.raw.Write(fragments(second, size))
				require.NoError(t, err)
				p := c.serverFlight().finish(t)
				p.expectServes(t)
			})
		}
	})
}

// TestProbeEdgeKeyUpdates: tlsfuzzer's test-tls13-keyupdate.py, "multiple
// KeyUpdate messages": 32 KeyUpdates with update_requested before any
// data, each under the key the one before it made (RFC 8446, Section
// 4.6.3), get a KeyUpdate each from the edge before its next data.
func TestProbeEdgeKeyUpdates(t *testing.T) {
	f := newFixture(t)
	probeEdges(t, f, func(t *testing.T, addr string) {
		p := dialPeer(t, f, addr, tls.VersionTLS13)
		const n = 32
		for range n {
			p.send(t, record.Handshake, []byte{24, 0, 0, 1, 1})
			require.NoError(t, p.out.Update())
		}
		p.send(t, record.ApplicationData, []byte("after"))
		o := p.readUntil(t, len("after"), 0)
		require.False(t, o.closed, "the edge closed the connection; alerts % x", o.alerts)
		assert.Equal(t, "after", string(o.data))
		assert.Equal(t, n, o.keyUpdates, "KeyUpdates from the edge")
	})
}

// TestProbeEdgeRecordVersions13: tlsfuzzer's
// test-tls13-version-negotiation.py, "tls 1.3 negotiation with SSL 3.x in
// record layer": a TLS 1.3 client whose every record, the ClientHello's
// as the protected ones, says SSL 3.0 to TLS 1.2 in its
// legacy_record_version. RFC 8446, Section 5.1: the field "MUST be ignored
// for all purposes" (but for the additional data, Section 5.2, which
// covers the header as sent).
func TestProbeEdgeRecordVersions13(t *testing.T) {
	f := newFixture(t)
	s, ok := record.SuiteByID(suite13)
	require.True(t, ok)
	probeEdges(t, f, func(t *testing.T, addr string) {
		for _, v := range []uint16{0x0300, 0x0301, 0x0302, 0x0303} {
			t.Run(fmt.Sprintf("5.1 legacy_record_version %#04x completes", v), func(t *testing.T) {
				c := dialClient13(t, f, addr)
				msg := c.hello.marshal()
				c.transcript.Write(msg)
				c.sentHello = c.hello
				_, err := c.raw.Write(record.Append(nil, record.Handshake, v, msg))
				require.NoError(t, err)
				fl := c.serverFlight()
				p := fl.p
				p.sendRawAs(t, 0, v, append(slices.Clone(fl.finished), byte(record.Handshake)))
				p.out = fl.appOut
				p.key, p.iv = record.TrafficKeys(s, fl.appSecret)
				p.sendRawAs(t, 0, v, append([]byte("after"), byte(record.ApplicationData)))
				p.expectEcho(t, "after")
			})
		}
	})
}

// readFlight12 reads the edge's TLS 1.2 flight of a full ECDHE handshake,
// ServerHello to ServerHelloDone (RFC 5246, Section 7.3), and returns its
// messages.
func readFlight12(t *testing.T, c net.Conn) []byte {
	t.Helper()
	var flight []byte
	for !bytes.HasSuffix(flight, []byte{14, 0, 0, 0}) {
		recs, _ := readRecords(t, c, 1)
		require.Len(t, recs, 1, "the edge closed in its flight")
		require.Equal(t, record.Handshake, recs[0].typ, "the edge sent % x", recs[0].body)
		flight = append(flight, recs[0].body...)
	}
	require.Equal(t, []byte{2, 11, 12, 14}, messageTypes(flight), "ServerHello, Certificate, ServerKeyExchange, ServerHelloDone")
	return flight
}

// serverKeyExchange12 is the named curve and the server's point of the
// ServerKeyExchange in flight (ServerECDHParams, RFC 8422, Section 5.4).
func serverKeyExchange12(t *testing.T, flight []byte) (group uint16, point []byte) {
	t.Helper()
	for flight[0] != 12 {
		flight = flight[4+(int(flight[1])<<16|int(flight[2])<<8|int(flight[3])):]
	}
	params := cryptobyte.String(flight[4:])
	var curveType uint8
	require.True(t, params.ReadUint8(&curveType) && curveType == 3 && params.ReadUint16(&group) &&
		params.ReadUint8LengthPrefixed((*cryptobyte.String)(&point)), "ServerKeyExchange")
	return group, point
}

// handshake12 completes a full TLS 1.2 handshake on c as a client of its
// own making, so that its ClientHello may carry what crypto/tls never
// sends: hello is the ClientHello message, crypto/tls's for
// TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 (or its ECDHE_RSA twin) with
// extended_master_secret, as the probe changed it. The client's ECDHE key on curve (the group the
// server picks) is the first whose premaster keep takes (nil: any). It
// checks the server's ChangeCipherSpec and Finished and returns the peer,
// under the session keys, and the server's flight, ServerHello to
// ServerHelloDone.
func handshake12(t *testing.T, c net.Conn, hello []byte, curve ecdh.Curve, keep func(premaster []byte) bool) (*peer, []byte) {
	t.Helper()
	_, err := c.Write(fragments(hello, 1<<14))
	require.NoError(t, err)
	flight := readFlight12(t, c)
	sh := cryptobyte.String(flight[4:])
	var serverRandom, sid []byte
	var suite uint16
	require.True(t, sh.Skip(2) && sh.ReadBytes(&serverRandom, 32) && sh.ReadUint8LengthPrefixed((*cryptobyte.String)(&sid)) && sh.ReadUint16(&suite))
	require.Contains(t, []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256}, suite)
	_, point := serverKeyExchange12(t, flight)
	server, err := curve.NewPublicKey(point)
	require.NoError(t, err)
	var key *ecdh.PrivateKey
	var premaster []byte
	for premaster == nil || (keep != nil && !keep(premaster)) {
		key, err = curve.GenerateKey(rand.Reader)
		require.NoError(t, err)
		premaster, err = key.ECDH(server)
		require.NoError(t, err)
	}
	public := key.PublicKey().Bytes()
	cke := hsMsg(16, append([]byte{byte(len(public))}, public...)...)

	// RFC 7627, Section 4: the master secret from the session hash, up to
	// the ClientKeyExchange; RFC 5246, Sections 6.3 and 7.4.9: keys and the
	// client's Finished.
	transcript := sha256.New()
	transcript.Write(slices.Concat(hello, flight, cke))
	master := record.PRF12(crypto.SHA256, premaster, "extended master secret", transcript.Sum(nil), 48)
	s, ok := record.SuiteByID(suite)
	require.True(t, ok)
	ck, sk, civ, siv := record.NewSecret12(s.Hash, master).KeyBlock(hello[4+2:4+2+32], serverRandom, s.KeyLen, s.FixedIVLen)
	fin := hsMsg(20, record.PRF12(crypto.SHA256, master, "client finished", transcript.Sum(nil), 12)...)
	transcript.Write(fin)
	p := &peer{raw: c, suite: suite, key: ck, iv: civ}
	p.out, err = record.NewTLS12Cipher(suite, ck, civ, 0)
	require.NoError(t, err)
	p.in, err = record.NewTLS12Cipher(suite, sk, siv, 0)
	require.NoError(t, err)
	sealed, err := p.out.Seal(nil, record.Handshake, fin, 0)
	require.NoError(t, err)
	_, err = c.Write(slices.Concat(fragments(cke, 1<<14), []byte{20, 3, 3, 0, 1, 1}, sealed))
	require.NoError(t, err)

	recs, _ := readRecords(t, c, 2)
	require.Len(t, recs, 2, "the edge closed: % x", recs)
	require.Equal(t, serverRecord{record.ChangeCipherSpec, []byte{1}}, recs[0], "want the server's ChangeCipherSpec")
	typ, serverFin, err := p.in.Open(recs[1].typ, 0x0303, recs[1].body)
	require.NoError(t, err, "the server's Finished does not open: its keys are not the client's")
	require.Equal(t, record.Handshake, typ)
	assert.Equal(t, hsMsg(20, record.PRF12(crypto.SHA256, master, "server finished", transcript.Sum(nil), 12)...), serverFin)
	return p, flight
}

// TestProbeEdgePaddedSharedSecret12 is tlsfuzzer's
// test-ecdhe-padded-shared-secret.py: in TLS 1.2 the client picks its
// ECDHE key after the server's (RFC 8422, Section 2), so it can pick one
// whose shared secret begins with a zero byte. RFC 8422, Section 5.10 and
// RFC 7748, Section 6.1: the premaster secret is the whole fixed-length
// value, leading zeros kept; a server that strips them derives other keys
// and the client's Finished fails.
func TestProbeEdgePaddedSharedSecret12(t *testing.T) {
	f := newFixture(t)
	curves := []struct {
		name  string
		id    tls.CurveID
		curve ecdh.Curve
	}{
		{"X25519", tls.X25519, ecdh.X25519()},
		{"P-256", tls.CurveP256, ecdh.P256()},
	}
	probeEdges(t, f, func(t *testing.T, addr string) {
		for _, cv := range curves {
			t.Run("RFC 8422 5.10 "+cv.name+" shared secret with a leading zero byte completes", func(t *testing.T) {
				// P-256 too: the ECDSA key's curve must be one the client
				// lists (RFC 8422, Section 5.3).
				hello := clientHello(t, &tls.Config{ServerName: f.ecdsa.Name, MaxVersion: tls.VersionTLS12,
					CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256}, CurvePreferences: []tls.CurveID{cv.id, tls.CurveP256}})
				c := dialRaw(t, addr)
				p, flight := handshake12(t, c, hello, cv.curve, func(premaster []byte) bool { return premaster[0] == 0 })
				group, _ := serverKeyExchange12(t, flight)
				require.Equal(t, uint16(cv.id), group)
				p.expectServes(t)
			})
		}
	})
}

// TestProbeEdgeX25519LowOrder13 is tlsfuzzer's test-tls13-crfg-curves.py,
// "all zero x25519 key share" and "x25519 key share of "1"": both are
// points of small order, whose shared secret is all zeros, which RFC 8446,
// Section 7.4.2 and RFC 7748, Section 6.1 have the server refuse; tlsfuzzer
// expects illegal_parameter.
func TestProbeEdgeX25519LowOrder13(t *testing.T) {
	f := newFixture(t)
	probeEdges(t, f, func(t *testing.T, addr string) {
		for _, tc := range []struct {
			name  string
			share []byte
		}{
			{"all zero", make([]byte, 32)},
			{"1", append([]byte{1}, make([]byte, 31)...)}, // little-endian (RFC 7748, Section 5)
		} {
			t.Run("7.4.2 X25519 share of "+tc.name+" is illegal_parameter", func(t *testing.T) {
				c := dialClient13(t, f, addr)
				c.send(c.hello.set(extGroups, u16list(groupX25519)).set(extKeyShare, keyShare(groupX25519, tc.share)))
				expectPlainAlert(t, c.raw, alertIllegalParameter)
			})
		}
	})
}

// TestProbeEdgeNoHybridIn12 is tlsfuzzer's test-no-mlkem-in-old-tls.py:
// the hybrid groups (X25519MLKEM768 and its kin,
// draft-ietf-tls-ecdhe-mlkem) are TLS 1.3's only; a TLS 1.2 ECDHE
// ServerKeyExchange names an elliptic curve (RFC 8422, Section 5.4), so a
// TLS 1.2 client offering them gets a classical curve, or with nothing
// else handshake_failure (RFC 8422, Section 5.1).
func TestProbeEdgeNoHybridIn12(t *testing.T) {
	f := newFixture(t)
	hybrids := []uint16{0x11eb, 0x11ec, 0x11ed} // SecP256r1MLKEM768, X25519MLKEM768, SecP384r1MLKEM1024
	base := parseHello(t, clientHello(t, &tls.Config{ServerName: f.rsa.Name, MaxVersion: tls.VersionTLS12})).
		withSuites(tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256)
	probeEdges(t, f, func(t *testing.T, addr string) {
		t.Run("RFC 8422 5.1 hybrid groups only is handshake_failure", func(t *testing.T) {
			c := dialRaw(t, addr)
			_, err := c.Write(fragments(base.set(extGroups, u16list(hybrids...)).marshal(), 1<<14))
			require.NoError(t, err)
			expectPlainAlert(t, c, alertHandshakeFailure)
		})
		t.Run("RFC 8422 5.4 hybrid groups first get X25519", func(t *testing.T) {
			c := dialRaw(t, addr)
			_, err := c.Write(fragments(base.set(extGroups, u16list(append(hybrids, groupX25519)...)).marshal(), 1<<14))
			require.NoError(t, err)
			group, _ := serverKeyExchange12(t, readFlight12(t, c))
			assert.Equal(t, groupX25519, group)
		})
	})
}

// TestProbeEdgeHybridShares13 sends X25519MLKEM768 shares that are not
// one (draft-ietf-tls-ecdhe-mlkem, Section 4.1: the ML-KEM-768
// encapsulation key, 1184 bytes, then the X25519 share): of another
// length, or a key that fails FIPS 203's modulus check (Section 7.2),
// are illegal_parameter as any invalid share (RFC 8446, Section 4.2.8).
func TestProbeEdgeHybridShares13(t *testing.T) {
	f := newFixture(t)
	const groupX25519MLKEM768 uint16 = 0x11ec
	dk, err := mlkem.GenerateKey768()
	require.NoError(t, err)
	ek := dk.EncapsulationKey().Bytes()
	x, err := ecdh.X25519().GenerateKey(rand.Reader)
	require.NoError(t, err)
	good := slices.Concat(ek, x.PublicKey().Bytes())
	// The first coefficient 0xfff, above q = 3329.
	badKey := slices.Clone(good)
	badKey[0], badKey[1] = 0xff, badKey[1]|0x0f
	hello := func(c *client13, share []byte) *helloMsg {
		return c.hello.set(extGroups, u16list(groupX25519MLKEM768, groupX25519)).
			set(extKeyShare, keyShare(groupX25519MLKEM768, share, groupX25519, c.share()))
	}
	probeEdges(t, f, func(t *testing.T, addr string) {
		t.Run("the well-formed share is the one taken", func(t *testing.T) {
			c := dialClient13(t, f, addr)
			c.send(hello(c, good))
			sh := readServerHello(t, c.raw)
			assert.Equal(t, []byte{0x11, 0xec}, sh.ext(extKeyShare)[:2], "ServerHello key_share group")
		})
		for _, tc := range []struct {
			name  string
			share []byte
		}{
			{"one byte short", good[:len(good)-1]},
			{"one byte long", append(slices.Clone(good), 0)},
			{"without its X25519 share", ek},
			{"with an encapsulation key out of range", badKey},
		} {
			t.Run("4.2.8 X25519MLKEM768 share "+tc.name+" is illegal_parameter", func(t *testing.T) {
				c := dialClient13(t, f, addr)
				c.send(hello(c, tc.share))
				expectPlainAlert(t, c.raw, alertIllegalParameter)
			})
		}
	})
}

// TestProbeEdgePostHandshakeHeader13: after the TLS 1.3 handshake the
// edge's record layer refuses a message on its header when the header
// decides, as the engine does before it: a KeyUpdate is one byte (RFC
// 8446, Section 4.6.3), and a client sends no other message then
// (Section 4). The body sent is shorter than the header says.
func TestProbeEdgePostHandshakeHeader13(t *testing.T) {
	f := newFixture(t)
	probeEdges(t, f, func(t *testing.T, addr string) {
		expectRefused(t, f, addr, tls.VersionTLS13, []refusedRecords{
			{"4.6.3 the header of a KeyUpdate of 100 bytes is decode_error", func(t *testing.T, p *peer) {
				p.send(t, record.Handshake, withLength(hsMsg(24, 0), 100))
			}, alertDecodeError},
			{"4 the header of an unknown message of 100 bytes is unexpected_message", func(t *testing.T, p *peer) {
				p.send(t, record.Handshake, withLength(hsMsg(99, 0), 100))
			}, alertUnexpectedMessage},
		})
	})
}

// TestProbeEdgeLargeRenegotiation12: a renegotiating TLS 1.2 ClientHello
// of the largest size its fields allow (131396 bytes, RFC 5246, Section
// 7.4.1.2, as tlsfuzzer's test-client-hello-max-size.py builds it) gets
// the same answer as a small one: the no_renegotiation warning, and the
// data goes on (RFC 5746, Section 4.4).
func TestProbeEdgeLargeRenegotiation12(t *testing.T) {
	f := newFixture(t)
	largest := largestHello(t, clientHello(t, &tls.Config{ServerName: f.ecdsa.Name, MaxVersion: tls.VersionTLS12}))
	probeEdges(t, f, func(t *testing.T, addr string) {
		p := dialPeer(t, f, addr, tls.VersionTLS12)
		var frags [][]byte
		for rest := largest; len(rest) > 0; rest = rest[min(len(rest), record.MaxPlaintext):] {
			frags = append(frags, rest[:min(len(rest), record.MaxPlaintext)])
		}
		p.send(t, record.Handshake, frags...)
		p.send(t, record.ApplicationData, []byte("after"))
		o := p.readUntil(t, len("after"), 1)
		require.False(t, o.closed, "the edge closed the connection; alerts % x", o.alerts)
		assert.Equal(t, [][]byte{{alertWarning, alertNoRenegotiation}}, o.alerts)
		assert.Equal(t, "after", string(o.data))
	})
}
