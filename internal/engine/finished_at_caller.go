package engine

import "github.com/handshaked/handshaked/internal/engine/record"

// One service round trip per TLS 1.3 handshake (Config.CallerVerifiesFinished).
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

// PendingFinished is the client's Finished a caller verifies itself.
type PendingFinished struct {
	// Message is the whole Finished handshake message expected: type,
	// length and verify_data.
	Message []byte
	// Key and IV are the client handshake traffic key and IV (RFC 8446,
	// Section 7.3): the records carrying the Finished open under them from
	// sequence number 0.
	Key, IV []byte
	// Output is what to write to the client once the Finished is verified
	// (a NewSessionTicket under the server application traffic key; the
	// Session's ServerSeq counts it); on a wrong Finished it is dropped and
	// the alert goes out at server sequence number 0.
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
	ev := TraceEvent{Direction: Received, Message: "Finished"}
	ev.add("verified_by", "caller")
	h.trace = append(h.trace, ev)
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
