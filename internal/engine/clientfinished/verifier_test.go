package clientfinished_test

import (
	"bytes"
	"crypto/tls"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/engine/clientfinished"
	"github.com/handshaked/handshaked/internal/engine/record"
)

const suite = tls.TLS_AES_128_GCM_SHA256

var (
	key      = bytes.Repeat([]byte{7}, 16)
	iv       = bytes.Repeat([]byte{9}, 12)
	verify   = bytes.Repeat([]byte{0xf1}, 32)
	finished = append([]byte{20, 0, 0, 32}, verify...)
	ccs      = []byte{20, 3, 3, 0, 1, 1}
)

// client seals the client's records under the handshake key from sequence
// number 0, as a TLS 1.3 client does after the server's flight.
type client struct {
	t *testing.T
	c *record.Cipher
}

func newClient(t *testing.T) *client {
	c, err := record.NewTLS13KeyCipher(suite, key, iv, 0)
	require.NoError(t, err)
	return &client{t, c}
}

func (c *client) seal(typ record.ContentType, pt []byte) []byte {
	rec, err := c.c.Seal(nil, typ, pt, 0)
	require.NoError(c.t, err)
	return rec
}

func newVerifier(t *testing.T, skipEarly bool) *clientfinished.Verifier {
	v, err := clientfinished.New(suite, finished, key, iv, skipEarly)
	require.NoError(t, err)
	return v
}

// earlyData is a 0-RTT record under keys the server never derived.
func earlyData(t *testing.T) []byte {
	c, err := record.NewTLS13KeyCipher(suite, bytes.Repeat([]byte{1}, 16), iv, 0)
	require.NoError(t, err)
	rec, err := c.Seal(nil, record.ApplicationData, []byte("GET / HTTP/1.1\r\n"), 0)
	require.NoError(t, err)
	return rec
}

func TestVerifierAccepts(t *testing.T) {
	tail := []byte("application data records follow")
	tests := []struct {
		name      string
		skipEarly bool
		flight    func(c *client) []byte
	}{
		{name: "Finished", flight: func(c *client) []byte { return c.seal(record.Handshake, finished) }},
		{name: "after change_cipher_spec", flight: func(c *client) []byte { return slices.Concat(ccs, c.seal(record.Handshake, finished)) }},
		// RFC 8446, Section 5.1: a handshake message may span records.
		{name: "fragmented", flight: func(c *client) []byte {
			return slices.Concat(c.seal(record.Handshake, finished[:3]), c.seal(record.Handshake, finished[3:20]), c.seal(record.Handshake, finished[20:]))
		}},
		{name: "padded", flight: func(c *client) []byte {
			rec, err := c.c.Seal(nil, record.Handshake, finished, 100)
			require.NoError(t, err)
			return rec
		}},
		// RFC 8446, Section 4.2.10: refused 0-RTT data is skipped.
		{name: "after refused early data", skipEarly: true, flight: func(c *client) []byte {
			return slices.Concat(earlyData(t), ccs, earlyData(t), c.seal(record.Handshake, finished))
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			flight := slices.Concat(tc.flight(newClient(t)), tail)
			// Whole, and byte by byte.
			v := newVerifier(t, tc.skipEarly)
			done, rest, err := v.Feed(slices.Clone(flight))
			require.NoError(t, err)
			require.True(t, done)
			assert.Equal(t, tail, rest, "the bytes after the Finished's record")

			assert.Equal(t, tail, feedBytewise(t, newVerifier(t, tc.skipEarly), flight))
		})
	}
}

func TestVerifierRefuses(t *testing.T) {
	tests := []struct {
		name      string
		skipEarly bool
		flight    func(c *client) []byte
		alert     uint8
		peer      bool
	}{
		// RFC 8446, Section 4.4.4.
		{name: "wrong verify_data", alert: clientfinished.AlertDecryptError, flight: func(c *client) []byte {
			bad := slices.Clone(finished)
			bad[len(bad)-1] ^= 0x80
			return c.seal(record.Handshake, bad)
		}},
		// Section 6.2: opaque verify_data[Hash.length].
		{name: "short Finished", alert: clientfinished.AlertDecodeError, flight: func(c *client) []byte {
			return c.seal(record.Handshake, append([]byte{20, 0, 0, 31}, verify[:31]...))
		}},
		{name: "long Finished", alert: clientfinished.AlertDecodeError, flight: func(c *client) []byte {
			return c.seal(record.Handshake, append([]byte{20, 0, 0, 33}, append(verify, 0)...))
		}},
		// Section 4.4.2: without a CertificateRequest, no Certificate.
		{name: "Certificate instead", alert: clientfinished.AlertUnexpectedMessage, flight: func(c *client) []byte {
			return c.seal(record.Handshake, []byte{11, 0, 0, 4, 0, 0, 0, 0})
		}},
		// Section 5.1: keys change after the Finished, which ends its record.
		{name: "data after Finished in its record", alert: clientfinished.AlertUnexpectedMessage, flight: func(c *client) []byte {
			return c.seal(record.Handshake, append(slices.Clone(finished), 20, 0))
		}},
		{name: "application data before Finished", alert: clientfinished.AlertUnexpectedMessage, flight: func(c *client) []byte {
			return c.seal(record.ApplicationData, []byte("GET /"))
		}},
		{name: "unprotected Finished", alert: clientfinished.AlertUnexpectedMessage, flight: func(c *client) []byte {
			return record.Append(nil, record.Handshake, tls.VersionTLS12, finished)
		}},
		// Section 5.2.
		{name: "garbled record", alert: clientfinished.AlertBadRecordMAC, flight: func(c *client) []byte {
			rec := c.seal(record.Handshake, finished)
			rec[len(rec)-3] ^= 1
			return rec
		}},
		{name: "early data not offered", alert: clientfinished.AlertBadRecordMAC, flight: func(c *client) []byte {
			return slices.Concat(earlyData(t), c.seal(record.Handshake, finished))
		}},
		{name: "early data after the first record opened", skipEarly: true, alert: clientfinished.AlertBadRecordMAC, flight: func(c *client) []byte {
			return slices.Concat(c.seal(record.Handshake, finished[:10]), earlyData(t))
		}},
		{name: "too much early data", skipEarly: true, alert: clientfinished.AlertUnexpectedMessage, flight: func(c *client) []byte {
			var out []byte
			for range 1 << 16 / 30 {
				out = append(out, earlyData(t)...)
			}
			return out
		}},
		// Section 5: change_cipher_spec is the single byte 1.
		{name: "malformed change_cipher_spec", alert: clientfinished.AlertUnexpectedMessage, flight: func(c *client) []byte {
			return []byte{20, 3, 3, 0, 1, 2}
		}},
		{name: "too many change_cipher_spec", alert: clientfinished.AlertUnexpectedMessage, flight: func(c *client) []byte {
			return bytes.Repeat(ccs, 17)
		}},
		{name: "change_cipher_spec inside the Finished", alert: clientfinished.AlertUnexpectedMessage, flight: func(c *client) []byte {
			return slices.Concat(c.seal(record.Handshake, finished[:10]), ccs)
		}},
		{name: "plaintext over 2^14", alert: clientfinished.AlertRecordOverflow, flight: func(c *client) []byte {
			return append([]byte{21, 3, 3, 0x40, 0x01}, make([]byte, 1<<14+1)...)
		}},
		{name: "record overflow", alert: clientfinished.AlertRecordOverflow, flight: func(c *client) []byte {
			return []byte{23, 3, 3, 0x41, 0x01}
		}},
		{name: "not TLS", alert: clientfinished.AlertUnexpectedMessage, flight: func(c *client) []byte {
			return []byte("GET / HTTP/1.1\r\n")
		}},
		// The client gives up with an alert: nothing is sent back.
		{name: "client alert", peer: true, alert: 42, flight: func(c *client) []byte {
			return c.seal(record.Alert, []byte{2, 42})
		}},
		{name: "client alert in plaintext", peer: true, alert: 40, flight: func(c *client) []byte {
			return record.Append(nil, record.Alert, tls.VersionTLS12, []byte{2, 40})
		}},
		{name: "malformed alert", alert: clientfinished.AlertDecodeError, flight: func(c *client) []byte {
			return c.seal(record.Alert, []byte{2})
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			expectRefused(t, newVerifier(t, tc.skipEarly), tc.flight(newClient(t)), tc.alert, tc.peer)
		})
	}
}

func TestVerifierIncomplete(t *testing.T) {
	v := newVerifier(t, false)
	rec := newClient(t).seal(record.Handshake, finished)
	done, rest, err := v.Feed(rec[:len(rec)-1])
	require.NoError(t, err)
	assert.False(t, done)
	assert.Nil(t, rest)
}

func TestNewRefusesBadInput(t *testing.T) {
	_, err := clientfinished.New(suite, []byte{20, 0, 0, 2, 1}, key, iv, false)
	assert.Error(t, err, "not a Finished message")
	_, err = clientfinished.New(suite, finished, key[:15], iv, false)
	assert.Error(t, err, "short key")
	_, err = clientfinished.New(tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, finished, key, iv, false)
	assert.Error(t, err, "TLS 1.2 suite")
}

// FuzzVerifier feeds arbitrary client bytes, in two pieces: the verifier
// never panics, and it accepts only the expected Finished.
func FuzzVerifier(f *testing.F) {
	c, _ := record.NewTLS13KeyCipher(suite, key, iv, 0)
	good, _ := c.Seal(nil, record.Handshake, finished, 0)
	f.Add(slices.Concat(ccs, good, []byte("rest")), true, 3)
	f.Add(good, false, 0)
	f.Add([]byte{23, 3, 3, 0, 17}, true, 5)
	f.Add(slices.Concat(ccs, ccs, []byte{21, 3, 3, 0, 2, 2, 40}), false, 7)
	f.Fuzz(func(t *testing.T, in []byte, skipEarly bool, cut int) {
		v, err := clientfinished.New(suite, finished, key, iv, skipEarly)
		require.NoError(t, err)
		cut = min(max(cut, 0), len(in))
		done, rest, err := v.Feed(slices.Clone(in[:cut]))
		if err == nil && !done {
			done, rest, err = v.Feed(slices.Clone(in[cut:]))
		}
		if done {
			require.NoError(t, err)
			// Nobody without the key makes a record that opens under it:
			// accepted only if the bytes held the Finished sealed above.
			assert.True(t, bytes.Contains(in, good), "accepted without the Finished")
			assert.LessOrEqual(t, len(rest), len(in)-len(good))
		}
	})
}

// TLS 1.2 abbreviated handshake: the client's ChangeCipherSpec, then its
// Finished (12 bytes of verify_data) under the client write key from
// sequence number 0.
const suite12 = tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256

var (
	iv12       = bytes.Repeat([]byte{9}, 4)
	finished12 = append([]byte{20, 0, 0, 12}, verify[:12]...)
)

func newClient12(t *testing.T) *client {
	c, err := record.NewTLS12Cipher(suite12, key, iv12, 0)
	require.NoError(t, err)
	return &client{t, c}
}

func newVerifier12(t *testing.T) *clientfinished.Verifier {
	v, err := clientfinished.New12(suite12, finished12, key, iv12)
	require.NoError(t, err)
	return v
}

func TestVerifier12Accepts(t *testing.T) {
	tail := []byte("application data records follow")
	tests := []struct {
		name   string
		flight func(c *client) []byte
	}{
		{name: "ChangeCipherSpec, Finished", flight: func(c *client) []byte { return slices.Concat(ccs, c.seal(record.Handshake, finished12)) }},
		// RFC 5246, Section 6.2.1: a handshake message may span records.
		{name: "fragmented", flight: func(c *client) []byte {
			return slices.Concat(ccs, c.seal(record.Handshake, finished12[:3]), c.seal(record.Handshake, finished12[3:]))
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			flight := slices.Concat(tc.flight(newClient12(t)), tail)
			v := newVerifier12(t)
			done, rest, err := v.Feed(slices.Clone(flight))
			require.NoError(t, err)
			require.True(t, done)
			assert.Equal(t, tail, rest, "the bytes after the Finished's record")

			assert.Equal(t, tail, feedBytewise(t, newVerifier12(t), flight))
		})
	}
}

// TestVerifier12Cipher: once a TLS 1.2 Finished is verified, Cipher12 opens
// the client's next record, also after a Finished fragmented over two
// records (its sequence number is then 2, not the session's 1); it is nil
// before, and for TLS 1.3.
func TestVerifier12Cipher(t *testing.T) {
	for _, fragmented := range []bool{false, true} {
		c := newClient12(t)
		var flight []byte
		if fragmented {
			flight = slices.Concat(ccs, c.seal(record.Handshake, finished12[:3]), c.seal(record.Handshake, finished12[3:]))
		} else {
			flight = slices.Concat(ccs, c.seal(record.Handshake, finished12))
		}
		data := c.seal(record.ApplicationData, []byte("after the Finished"))
		v := newVerifier12(t)
		assert.Nil(t, v.Cipher12(), "before the Finished")
		done, rest, err := v.Feed(slices.Concat(flight, data))
		require.NoError(t, err)
		require.True(t, done)
		require.Equal(t, data, rest)
		in := v.Cipher12()
		require.NotNil(t, in, "fragmented=%v", fragmented)
		typ, vers, body, _, err := record.Parse(rest, record.MaxCiphertextTLS12)
		require.NoError(t, err)
		inner, plain, err := in.Open(typ, vers, body)
		require.NoError(t, err, "fragmented=%v", fragmented)
		assert.Equal(t, record.ApplicationData, inner)
		assert.Equal(t, "after the Finished", string(plain))
	}
	v := newVerifier(t, false)
	done, _, err := v.Feed(newClient(t).seal(record.Handshake, finished))
	require.NoError(t, err)
	require.True(t, done)
	assert.Nil(t, v.Cipher12(), "TLS 1.3")
}

func TestVerifier12Refuses(t *testing.T) {
	tests := []struct {
		name   string
		flight func(c *client) []byte
		alert  uint8
		peer   bool
	}{
		// RFC 5246, Section 7.4.9.
		{name: "wrong verify_data", alert: clientfinished.AlertDecryptError, flight: func(c *client) []byte {
			bad := slices.Clone(finished12)
			bad[len(bad)-1] ^= 0x80
			return slices.Concat(ccs, c.seal(record.Handshake, bad))
		}},
		{name: "short Finished", alert: clientfinished.AlertDecodeError, flight: func(c *client) []byte {
			return slices.Concat(ccs, c.seal(record.Handshake, append([]byte{20, 0, 0, 11}, verify[:11]...)))
		}},
		// Section 7.3: ChangeCipherSpec first, then the Finished, protected.
		{name: "no ChangeCipherSpec", alert: clientfinished.AlertUnexpectedMessage, flight: func(c *client) []byte {
			return c.seal(record.Handshake, finished12)
		}},
		{name: "Finished before ChangeCipherSpec", alert: clientfinished.AlertUnexpectedMessage, flight: func(c *client) []byte {
			return slices.Concat(c.seal(record.Handshake, finished12), ccs)
		}},
		{name: "unprotected Finished", alert: clientfinished.AlertUnexpectedMessage, flight: func(c *client) []byte {
			return record.Append(nil, record.Handshake, tls.VersionTLS12, finished12)
		}},
		{name: "unprotected Finished after ChangeCipherSpec", alert: clientfinished.AlertBadRecordMAC, flight: func(c *client) []byte {
			return slices.Concat(ccs, record.Append(nil, record.Handshake, tls.VersionTLS12, finished12))
		}},
		{name: "ChangeCipherSpec twice", alert: clientfinished.AlertUnexpectedMessage, flight: func(c *client) []byte {
			return slices.Concat(ccs, ccs, c.seal(record.Handshake, finished12))
		}},
		{name: "ChangeCipherSpec inside the Finished", alert: clientfinished.AlertUnexpectedMessage, flight: func(c *client) []byte {
			return slices.Concat(ccs, c.seal(record.Handshake, finished12[:5]), ccs)
		}},
		{name: "malformed change_cipher_spec", alert: clientfinished.AlertUnexpectedMessage, flight: func(c *client) []byte {
			return []byte{20, 3, 3, 0, 1, 2}
		}},
		{name: "application data before Finished", alert: clientfinished.AlertUnexpectedMessage, flight: func(c *client) []byte {
			return slices.Concat(ccs, c.seal(record.ApplicationData, []byte("GET /")))
		}},
		{name: "plaintext application data", alert: clientfinished.AlertUnexpectedMessage, flight: func(c *client) []byte {
			return record.Append(nil, record.ApplicationData, tls.VersionTLS12, []byte("GET /"))
		}},
		{name: "data after Finished in its record", alert: clientfinished.AlertUnexpectedMessage, flight: func(c *client) []byte {
			return slices.Concat(ccs, c.seal(record.Handshake, append(slices.Clone(finished12), 20, 0)))
		}},
		{name: "garbled record", alert: clientfinished.AlertBadRecordMAC, flight: func(c *client) []byte {
			rec := c.seal(record.Handshake, finished12)
			rec[len(rec)-3] ^= 1
			return slices.Concat(ccs, rec)
		}},
		// Section 6.2.1 and 6.2.3.
		{name: "plaintext over 2^14", alert: clientfinished.AlertRecordOverflow, flight: func(c *client) []byte {
			return append([]byte{21, 3, 3, 0x40, 0x01}, make([]byte, 1<<14+1)...)
		}},
		{name: "protected record overflow", alert: clientfinished.AlertRecordOverflow, flight: func(c *client) []byte {
			return slices.Concat(ccs, []byte{22, 3, 3, 0x48, 0x01})
		}},
		{name: "client alert", peer: true, alert: 40, flight: func(c *client) []byte {
			return record.Append(nil, record.Alert, tls.VersionTLS12, []byte{2, 40})
		}},
		{name: "protected client alert", peer: true, alert: 42, flight: func(c *client) []byte {
			return slices.Concat(ccs, c.seal(record.Alert, []byte{2, 42}))
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			expectRefused(t, newVerifier12(t), tc.flight(newClient12(t)), tc.alert, tc.peer)
		})
	}
}

func TestNew12RefusesBadInput(t *testing.T) {
	_, err := clientfinished.New12(suite12, []byte{20, 0, 0, 2, 1}, key, iv12)
	assert.Error(t, err, "not a Finished message")
	_, err = clientfinished.New12(suite12, finished12, key, iv)
	assert.Error(t, err, "12-byte IV for AES-GCM")
	_, err = clientfinished.New12(suite, finished12, key, iv12)
	assert.Error(t, err, "TLS 1.3 suite")
}

// FuzzVerifier12 is FuzzVerifier for a TLS 1.2 client.
func FuzzVerifier12(f *testing.F) {
	c, _ := record.NewTLS12Cipher(suite12, key, iv12, 0)
	good, _ := c.Seal(nil, record.Handshake, finished12, 0)
	f.Add(slices.Concat(ccs, good, []byte("rest")), 3)
	f.Add(good, 0)
	f.Add(slices.Concat(ccs, ccs), 6)
	f.Add([]byte{21, 3, 3, 0, 2, 2, 40}, 7)
	f.Fuzz(func(t *testing.T, in []byte, cut int) {
		v, err := clientfinished.New12(suite12, finished12, key, iv12)
		require.NoError(t, err)
		cut = min(max(cut, 0), len(in))
		done, rest, err := v.Feed(slices.Clone(in[:cut]))
		if err == nil && !done {
			done, rest, err = v.Feed(slices.Clone(in[cut:]))
		}
		if done {
			require.NoError(t, err)
			assert.True(t, bytes.Contains(in, good), "accepted without the Finished")
			assert.LessOrEqual(t, len(rest), len(in)-len(good)-len(ccs))
		}
	})
}

// feedBytewise feeds flight to v a byte at a time and returns the bytes it
// gave back after the Finished.
func feedBytewise(t *testing.T, v *clientfinished.Verifier, flight []byte) []byte {
	t.Helper()
	var got []byte
	for i := range flight {
		done, rest, err := v.Feed(flight[i : i+1])
		require.NoError(t, err, "byte %d", i)
		if done {
			got = append(got, rest...)
		}
	}
	return got
}

// expectRefused feeds flight to v and checks that v refuses it with alert,
// one the client sent itself if peer.
func expectRefused(t *testing.T, v *clientfinished.Verifier, flight []byte, alert uint8, peer bool) {
	t.Helper()
	done, _, err := v.Feed(flight)
	require.False(t, done)
	var fe *clientfinished.Error
	require.ErrorAs(t, err, &fe)
	assert.Equal(t, alert, fe.Alert, "%s", fe.Reason)
	assert.Equal(t, peer, fe.Peer)
}
