package record_test

import (
	"crypto/tls"
	"errors"
	"fmt"

	"github.com/handshaked/handshaked/internal/engine/record"
)

// A TLS 1.3 read loop over bytes as they arrive from the peer: parse whole
// records, open them in place, act on the inner type, and pick the alert
// from the error when something is wrong.
func Example() {
	secret := make([]byte, 32) // the peer's application traffic secret
	peer, _ := record.NewTLS13Cipher(tls.TLS_AES_128_GCM_SHA256, secret, 0)
	in, _ := record.NewTLS13Cipher(tls.TLS_AES_128_GCM_SHA256, secret, 0)

	var wire []byte
	wire, _ = peer.Seal(wire, record.ApplicationData, []byte("hello"), 0)
	wire, _ = peer.Seal(wire, record.Handshake, []byte{24, 0, 0, 1, 0}, 32) // KeyUpdate, padded
	peer.Update()
	wire, _ = peer.Seal(wire, record.ApplicationData, []byte("after the update"), 0)
	wire, _ = peer.Seal(wire, record.ApplicationData, []byte("tampered"), 0)
	wire[len(wire)-1] ^= 1

	for len(wire) > 0 {
		typ, version, body, n, err := record.Parse(wire, record.MaxCiphertextTLS13)
		if err == nil && n == 0 {
			break // read more from the network
		}
		if err == nil {
			typ, body, err = in.Open(typ, version, body)
		}
		var recErr *record.Error
		if errors.As(err, &recErr) {
			fmt.Printf("%v: send alert %d\n", err, recErr.Alert())
			return
		}
		fmt.Printf("%v %q\n", typ, body)
		if typ == record.Handshake && body[0] == 24 {
			in.Update() // RFC 8446 §4.6.3: the receiver updates too
		}
		wire = wire[n:]
	}
	// Output:
	// application_data "hello"
	// handshake "\x18\x00\x00\x01\x00"
	// application_data "after the update"
	// record: bad record MAC: send alert 20
}
