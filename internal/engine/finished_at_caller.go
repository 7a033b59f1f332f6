package engine

import "github.com/handshaked/handshaked/internal/engine/record"

// One service round trip per TLS 1.3 handshake and TLS 1.2 resumption
// (Config.CallerVerifiesFinished).
//
// Without client authentication the client's second flight is only its
// Finished, whose verify_data is HMAC(finished_key, Transcript-Hash(
// ClientHello...server Finished)) under the client handshake traffic secret
// (RFC 8446, Section 4.4.4): once the server's flight is built nothing the
// client may still send changes it. So the engine completes there and hands
// the caller the Finished it expects, the client handshake traffic key and
// IV to open the records carrying it, and the session; the caller (the edge)
// verifies the Finished itself, in constant time, before it uses a session
// key, and writes the NewSessionTicket only then (Section 4.6.1: "after the
// server has received the client Finished message").
//
// What the caller learns one round trip earlier than otherwise: the
// application traffic and exporter secrets, before the client has proven it
// holds the handshake keys, and the client handshake traffic key. The
// caller gets the same application secrets one step later anyway, and the
// handshake key opens only the client's second flight, which without client
// authentication is the Finished the caller already knows: nothing the
// client sends is revealed that the caller would not see, and nothing lets
// anyone but the caller impersonate the server (the private key never
// leaves the vault; the finished keys stay here). A client that never sends
// a valid Finished gets no ticket and no application data.

// The same holds for a TLS 1.2 abbreviated handshake (a resumption from a
// ticket, RFC 5246, Section 7.3; RFC 5077, Section 3.1): the server's
// flight (ServerHello, NewSessionTicket, ChangeCipherSpec, Finished) comes
// first, and all the client may send after it is its ChangeCipherSpec and
// its Finished, PRF(master_secret, "client finished", Hash(ClientHello...
// server Finished)) (Section 7.4.9), fixed by then. The records carrying it
// open under the client write key of the session, from sequence number 0.
// What the caller learns one round trip earlier: the session's write keys,
// which it gets a step later anyway; the client write key opens only the
// Finished the caller already knows, the master secret (from which the
// client's Finished or a ticket could be made) stays here, and the new
// ticket goes out in the server's flight as it does without the option
// (the protocol puts it before the server's Finished). A client that never
// sends a valid Finished gets no byte of application data.

// PendingFinished is the client's Finished a caller verifies itself.
type PendingFinished struct {
	// Message is the whole Finished handshake message expected: type,
	// length and verify_data.
	Message []byte
	// Key and IV, in TLS 1.3, are the client handshake traffic key and IV
	// (RFC 8446, Section 7.3): the records carrying the Finished open
	// under them from sequence number 0. In TLS 1.2 they are nil: the
	// records after the client's ChangeCipherSpec open under the Session's
	// ClientKey and ClientIV from sequence number 0.
	Key, IV []byte
	// Output is what to write to the client once the Finished is verified
	// (in TLS 1.3 a NewSessionTicket under the server application traffic
	// key; the Session's ServerSeq counts it; nothing in TLS 1.2); on a
	// wrong Finished it is dropped and the alert goes out at server
	// sequence number 0 in TLS 1.3, at the Session's ServerSeq (1, after
	// the server's Finished) in TLS 1.2.
	Output []byte
	// SkipEarlyData: the client offered 0-RTT data, which the server
	// refused, so records that do not open under Key may come first (RFC
	// 8446, Section 4.2.10).
	SkipEarlyData bool
}

// completeAtCaller completes the handshake after the server's flight with
// the client's Finished still to verify by the caller.
func (h *Handshake) completeAtCaller() error {
	expected := marshalFinished(finishedVerifyData13(h.suite.Hash, h.clientHandshake, h.transcript.sum()))
	p := &PendingFinished{Message: expected, SkipEarlyData: h.skipEarlyData}
	p.Key, p.IV = record.TrafficKeys(h.suite, h.clientHandshake)
	ev := h.event(Received, "Finished")
	ev.add("verified_by", "caller")
	h.note(ev)
	// The ticket is built now, but goes out only after the caller has
	// verified the Finished.
	flight := h.out
	h.out = nil
	err := h.complete13(expected)
	p.Output, h.out = h.out, flight
	if err != nil {
		return err
	}
	h.session.PendingFinished = p
	return nil
}

// completeAtCaller12 completes a TLS 1.2 abbreviated handshake after the
// server's flight, with the client's ChangeCipherSpec and Finished still to
// verify by the caller.
func (h *Handshake) completeAtCaller12() {
	p := &PendingFinished{Message: marshalFinished(h.clientFinished12())}
	for _, msg := range []string{"ChangeCipherSpec", "Finished"} {
		ev := h.event(Received, msg)
		ev.add("verified_by", "caller")
		h.note(ev)
	}
	h.complete12(p)
}
