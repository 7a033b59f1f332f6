package engine

import (
	"crypto/hmac"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"hash"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/cryptobyte"

	"github.com/handshaked/handshaked/internal/engine/record"
)

// TLS 1.3 resumption, RFC 8446, Sections 2.2, 4.2.11 and 4.6.1: the server
// issues one NewSessionTicket after the client's Finished, and accepts a
// ticket in a later ClientHello's pre_shared_key with psk_dhe_ke only, so
// that a resumed session keeps forward secrecy. A client offering psk_ke
// alone gets a full handshake. Early data is never accepted.

// maxPSKIdentitiesTried bounds the offered identities the server tries to
// open: each may cost a call to the vault, and a client offers one or two.
const maxPSKIdentitiesTried = 4

// pskSelection is the PSK a ClientHello resumes with.
type pskSelection struct {
	ticket   *ticketState
	identity uint16 // index into the client's identities
}

// mayResume13 reports whether the ClientHello might resume: the server
// takes tickets and the client offers one with psk_dhe_ke.
func (h *Handshake) mayResume13(ch *clientHelloMsg) bool {
	return h.cfg.Tickets != nil && ch.pskOffered && slices.Contains(ch.pskModes, pskModeDHEKE)
}

// selectPSK picks the first offered ticket that opens and fits the
// handshake negotiated so far (RFC 8446, Section 4.2.11), and verifies its
// binder over the truncated ClientHello, raw being the whole message. It
// returns nil, with the reason in the trace, when the handshake is a full
// one: no tickets configured, psk_ke only, or no ticket fits. A binder that
// does not verify aborts the handshake (Section 4.2.11: "If this value is
// not present or does not validate, the server MUST abort the handshake").
func (h *Handshake) selectPSK(ch *clientHelloMsg, raw []byte, n *negotiation13, ev *TraceEvent) (*pskSelection, error) {
	if h.cfg.Tickets == nil || !ch.pskOffered {
		return nil, nil
	}
	// RFC 8446, Section 4.2.11: the binders are "one for each value in the
	// identities list and in the same order"; crypto/tls refuses a
	// mismatch with illegal_parameter too.
	if len(ch.pskIdentities) != len(ch.pskBinders) {
		return nil, fail(alertIllegalParameter, "%d PSK identities but %d binders", len(ch.pskIdentities), len(ch.pskBinders))
	}
	// RFC 8446, Section 4.2.9: the server "MUST NOT select a key exchange
	// mode that is not listed by the client". Only psk_dhe_ke is offered.
	if !slices.Contains(ch.pskModes, pskModeDHEKE) {
		ev.add("resumption", "refused: psk_dhe_ke not offered")
		return nil, nil
	}
	var reasons []string
	for i, id := range ch.pskIdentities[:min(len(ch.pskIdentities), maxPSKIdentitiesTried)] {
		t, why, ok := h.openTicket(id.identity)
		if ok {
			if why = h.ticketFits13(t, ch, n, id.obfuscatedTicketAge); why != "" {
				t.wipe()
				ok = false
			}
		}
		if !ok {
			reasons = append(reasons, why)
			continue
		}
		if err := h.verifyBinder(t.secret, raw, ch, ch.pskBinders[i]); err != nil {
			t.wipe()
			return nil, err
		}
		if !ev.omitted {
			ev.add("resumption", "accepted identity "+strconv.Itoa(i))
		}
		return &pskSelection{ticket: t, identity: uint16(i)}, nil
	}
	if !ev.omitted {
		ev.add("resumption", "refused: "+strings.Join(reasons, ", "))
	}
	return nil, nil
}

// ticketFits13 says why a ticket that opened cannot resume this handshake,
// "" if it can.
func (h *Handshake) ticketFits13(t *ticketState, ch *clientHelloMsg, n *negotiation13, obfuscatedAge uint32) string {
	if t.vers != tls.VersionTLS13 {
		return "ticket of another TLS version"
	}
	// RFC 8446, Section 4.6.1: "Any ticket MUST only be resumed with a
	// cipher suite that has the same KDF hash algorithm as that used to
	// establish the original connection."
	if orig, ok := record.SuiteByID(t.suite); !ok || !orig.TLS13 || orig.Hash != h.suite.Hash {
		return "ticket for a cipher suite with another hash"
	}
	// RFC 8446, Section 4.6.1: clients "SHOULD only resume if the SNI
	// value matches the one used in the original session"; the server
	// holds them to it, and to the ALPN protocol, so that a resumed session
	// is one the server would have negotiated with the same certificate and
	// application.
	if !strings.EqualFold(t.serverName, ch.serverName) {
		return "ticket for another server name"
	}
	if t.alpn != n.alpn {
		return "ticket for another ALPN protocol"
	}
	// RFC 8446, Section 4.2.11: the obfuscated age is the client's view of
	// the ticket's age plus ticket_age_add, modulo 2^32, in milliseconds.
	// It must be within the lifetime and agree with the server's view.
	clientAge := time.Duration(obfuscatedAge-t.ageAdd) * time.Millisecond
	serverAge := h.cfg.now().Sub(t.created)
	if clientAge >= h.cfg.ticketLifetime() {
		return "ticket age beyond its lifetime"
	}
	if d := clientAge - serverAge; d > maxTicketClockSkew || d < -maxTicketClockSkew {
		return "obfuscated_ticket_age does not match the ticket"
	}
	return h.ticketClientAuth(t)
}

// ticketClientAuth says why the client certificates of a ticket do not
// satisfy the current client authentication policy, "" if they do; then
// t.peerCerts are those the resumed session carries (none when the server
// no longer asks for any). A resumed session is authenticated by its
// original handshake: a policy that requires a certificate needs one in
// the ticket, and the chain must still verify (it may have expired since).
func (h *Handshake) ticketClientAuth(t *ticketState) string {
	switch {
	case h.cfg.ClientAuth == ClientAuthOff:
		t.peerCerts = nil
	case len(t.peerCerts) == 0:
		if h.cfg.ClientAuth == ClientAuthRequired {
			return "ticket without the client certificate the server requires"
		}
	default:
		if _, err := verifyClientChain(h.cfg, t.peerCerts); err != nil {
			return "client certificate of the ticket no longer verifies"
		}
	}
	return ""
}

// verifyBinder checks a PSK binder, RFC 8446, Section 4.2.11.2: HMAC under
// the finished key of the binder key over the transcript up to the
// truncated ClientHello (after a HelloRetryRequest, message_hash(ClientHello1)
// and the HelloRetryRequest come first). The comparison is constant time.
func (h *Handshake) verifyBinder(psk, raw []byte, ch *clientHelloMsg, binder []byte) error {
	early := newEarlySecret13(h.suite.Hash, psk)
	binderKey := early.binderKey()
	early.wipe()
	defer clear(binderKey)
	th := h.transcript.state.(hash.Cloner)
	partial, err := th.Clone()
	if err != nil {
		return failWrap(alertInternalError, err, "transcript hash")
	}
	partial.Write(raw[:len(raw)-ch.pskBindersLen])
	want := finishedVerifyData13(h.suite.Hash, binderKey, partial.Sum(nil))
	if !hmac.Equal(want, binder) {
		return fail(alertDecryptError, "PSK binder does not verify")
	}
	return nil
}

// sendNewSessionTicket issues a ticket after the client's Finished (RFC
// 8446, Section 4.6.1), protected under the server application traffic
// secret like any post-handshake message: the edge writes it with the
// completing Step's Output, and the session's server sequence number starts
// after it. resumptionMaster is over ClientHello...client Finished. A
// ticket that cannot be sealed is not sent; the handshake still completes.
func (h *Handshake) sendNewSessionTicket(resumptionMaster []byte) error {
	// One ticket per connection, with an empty ticket_nonce: each ticket
	// carries its own PSK, so no two share one.
	psk := ticketPSK(h.suite.Hash, resumptionMaster, nil)
	defer clear(psk)
	ageAdd, err := h.randomBytes(4)
	if err != nil {
		return err
	}
	lifetime := h.cfg.ticketLifetime()
	t := &ticketState{
		vers:       tls.VersionTLS13,
		suite:      h.suite.ID,
		created:    h.cfg.now(),
		ageAdd:     binary.BigEndian.Uint32(ageAdd),
		secret:     psk,
		ems:        true,
		serverName: h.serverName,
		alpn:       h.alpn,
		peerCerts:  h.peerCerts,
	}
	ev := h.event(Sent, "NewSessionTicket")
	ticket, err := h.sealTicket(t)
	if err != nil {
		// The cause stays out of the trace: it is the TicketKeys
		// implementation's, as for KeyOps (see keyOpsError).
		why := "ticket sealing failed"
		if errors.Is(err, errTicketTooLong) {
			why = "sealed ticket too long" // a long client certificate chain
		}
		ev.add("error", "not sent: "+why)
		h.note(ev)
		return nil
	}
	if !ev.omitted {
		ev.add("lifetime", lifetime.String())
	}
	h.note(ev)
	h.flight = append(h.flight, marshalNewSessionTicket13(uint32(lifetime/time.Second), t.ageAdd, nil, ticket)...)
	return h.flush()
}

// marshalNewSessionTicket13 encodes a TLS 1.3 NewSessionTicket, RFC 8446,
// Section 4.6.1, without extensions (no early_data: 0-RTT is refused).
func marshalNewSessionTicket13(lifetimeSeconds, ageAdd uint32, nonce, ticket []byte) []byte {
	return marshalHandshake(typeNewSessionTicket, func(b *cryptobyte.Builder) {
		b.AddUint32(lifetimeSeconds)
		b.AddUint32(ageAdd)
		b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(nonce) })
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(ticket) })
		b.AddUint16(0)
	})
}
