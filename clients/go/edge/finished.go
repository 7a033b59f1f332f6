package edge

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"net"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/engine/clientfinished"
	"github.com/handshaked/handshaked/internal/engine/record"
)

// finishAtEdge completes a handshake the service completed before the
// client's Finished (HandshakeConfig.caller_verifies_finished: one service
// round trip per handshake): a TLS 1.3 one, or a TLS 1.2 abbreviated one
// (a resumption from a ticket, RFC 5246 §7.3). It reads the client's
// records from leftover and then raw until its Finished, verified in
// constant time against the one the service expects, and only then writes
// what the service held back (TLS 1.3: the NewSessionTicket) and returns
// the bytes after the Finished for the record layer, with (TLS 1.2) the
// cipher they open under, built once for the Finished. No session key
// protects a byte from or to the application before that: on a missing or
// wrong Finished (or, in TLS 1.2, a missing ChangeCipherSpec before it)
// the connection gets the alert (RFC 8446 §4.4.4, RFC 5246 §7.4.9:
// decrypt_error) under the server's session write key, as the first
// record the client reads under it, and closes. buf is the handshake's
// read buffer.
func finishAtEdge(raw net.Conn, s *pb.Session, leftover, buf []byte) ([]byte, *record.Cipher, error) {
	keys := s.GetKeys()
	p := keys.GetClientFinished()
	suite := uint16(s.GetCipherSuite())
	var (
		v   *clientfinished.Verifier
		err error
	)
	if s.GetVersion() == tls.VersionTLS12 {
		// The records after the client's ChangeCipherSpec open under its
		// write key from sequence number 0.
		v, err = clientfinished.New12(suite, p.GetMessage(), keys.GetClientWriteKey(), keys.GetClientWriteIv())
	} else {
		v, err = clientfinished.New(suite, p.GetMessage(), p.GetClientHandshakeKey(), p.GetClientHandshakeIv(), p.GetSkipEarlyData())
	}
	if err != nil {
		return nil, nil, fmt.Errorf("edge: the service's client Finished: %w", err)
	}
	for in := leftover; ; {
		if len(in) > 0 {
			done, rest, err := v.Feed(in)
			var fe *clientfinished.Error
			switch {
			case errors.As(err, &fe):
				if !fe.Peer {
					raw.Write(finishedAlert(s, fe.Alert))
				}
				return nil, nil, &HandshakeError{Alert: record.AlertName(fe.Alert), Reason: fe.Reason}
			case err != nil:
				return nil, nil, fmt.Errorf("edge: %w", err)
			case done:
				// TLS 1.2 holds nothing back.
				if err := writeOutput(raw, p.GetOutput()); err != nil {
					return nil, nil, err
				}
				// rest may be the pooled read buffer.
				return append([]byte(nil), rest...), v.Cipher12(), nil
			}
		}
		n, err := raw.Read(buf)
		if n == 0 {
			return nil, nil, fmt.Errorf("edge: reading the client's Finished: %w", err)
		}
		in = buf[:n]
	}
}

// finishedAlert is a fatal alert protected under the server's session
// write key, which the client reads with after the server's Finished: in
// TLS 1.3 the application traffic secret at sequence number 0 (RFC 8446
// §7.1, Appendix A.2; nothing was written under it yet), in TLS 1.2 the
// server write key at the sequence number after the server's Finished.
func finishedAlert(s *pb.Session, alert uint8) []byte {
	keys, suite := s.GetKeys(), uint16(s.GetCipherSuite())
	c, err := record.NewTLS13Cipher(suite, keys.GetServerApplicationTrafficSecret(), 0)
	if s.GetVersion() == tls.VersionTLS12 {
		c, err = record.NewTLS12Cipher(suite, keys.GetServerWriteKey(), keys.GetServerWriteIv(), keys.GetServerSequence())
	}
	if err != nil {
		return nil
	}
	rec, err := c.Seal(nil, record.Alert, []byte{2, alert}, 0)
	if err != nil {
		return nil
	}
	return rec
}

// ccsRecord is a TLS 1.3 compatibility change_cipher_spec record (RFC
// 8446, Appendix D.4), as clients write it.
var ccsRecord = []byte{byte(record.ChangeCipherSpec), 3, 3, 0, 1, 1}

// readFlight reads the client's next bytes into buf. A compatibility
// change_cipher_spec that arrives alone (after a HelloRetryRequest, before
// the second ClientHello) is followed by the rest of the flight, so it is
// not worth a service round trip of its own: readFlight reads on until
// more comes, an error or a full buf.
func readFlight(raw net.Conn, buf []byte) (int, error) {
	n, err := raw.Read(buf)
	for err == nil && n < len(buf) && onlyChangeCipherSpec(buf[:n]) {
		var m int
		m, err = raw.Read(buf[n:])
		n += m
	}
	return n, err
}

// onlyChangeCipherSpec reports whether b is whole change_cipher_spec
// records and nothing else.
func onlyChangeCipherSpec(b []byte) bool {
	if len(b) == 0 || len(b)%len(ccsRecord) != 0 {
		return false
	}
	for i := 0; i < len(b); i += len(ccsRecord) {
		if !bytes.Equal(b[i:i+len(ccsRecord)], ccsRecord) {
			return false
		}
	}
	return true
}
