package engine

import (
	"crypto/tls"
	"encoding/binary"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/handshaked/handshaked/internal/engine/record"
)

// TLS 1.2 session resumption with RFC 5077 session tickets.
//
// Full handshake: the server acknowledges the client's SessionTicket
// extension in its ServerHello and sends a NewSessionTicket, sealing the
// master secret, before its ChangeCipherSpec (RFC 5077, Section 3.3).
// Abbreviated handshake: the ClientHello carries a ticket that opens and
// fits; the server answers with ServerHello, NewSessionTicket,
// ChangeCipherSpec and Finished at once, then waits for the client's
// ChangeCipherSpec and Finished (RFC 5246, Section 7.3; RFC 5077, Section
// 3.1). It makes no private-key operation and sends no certificate.

// tickets12 reports whether TLS 1.2 tickets are on.
func (c *Config) tickets12() bool { return c.Tickets != nil && !c.DisableTLS12Tickets }

// issueTicket12 reports whether a TLS 1.2 handshake with this client gets a
// ticket: the client asked with the SessionTicket extension (RFC 5077,
// Section 3.2) and the session has the extended master secret. A session
// without it gets none, since RFC 7627, Section 5.3 has the server abort
// (SHOULD) its resumption: a ticket would only break the next connection.
func (h *Handshake) issueTicket12(ch *clientHelloMsg) bool {
	return h.cfg.tickets12() && ch.ticketSupported && ch.extendedMasterSecret
}

// resume12 resumes the session of the client's ticket if it opens and fits
// this handshake: it then sends the server's abbreviated flight. When it
// returns false, the caller does a full handshake; refused says why the
// offered ticket was not taken (for the trace), "" when none was offered.
func (h *Handshake) resume12(ch *clientHelloMsg, raw []byte) (resumed bool, refused string, err error) {
	switch {
	case len(ch.sessionTicket) == 0:
		return false, "", nil
	case !h.cfg.tickets12():
		return false, "TLS 1.2 tickets are off", nil
	}
	t, why, ok := h.openTicket(ch.sessionTicket)
	if !ok {
		return false, why, nil
	}
	defer t.wipe()
	cert, why, err := h.ticketFits12(ch, t)
	if err != nil || why != "" {
		return false, why, err
	}
	return true, "", h.abbreviatedHandshake12(ch, raw, t, cert)
}

// ticketFits12 checks a ticket's session against the new ClientHello and
// the configuration, and picks the certificate the session is reported
// under. It returns why a full handshake must be done instead, or the
// failure RFC 7627, Section 5.3 demands.
func (h *Handshake) ticketFits12(ch *clientHelloMsg, t *ticketState) (cert int, why string, err error) {
	if t.vers != tls.VersionTLS12 {
		return 0, "ticket of another TLS version", nil
	}
	if len(t.secret) != masterSecretLength {
		return 0, "ticket does not decode", nil
	}
	// RFC 5246, Section 7.4.1.2: the resumed session's cipher suite must be
	// among the client's, and still one the server enables.
	if !slices.Contains(ch.cipherSuites, t.suite) {
		return 0, "client does not offer the ticket's cipher suite " + tls.CipherSuiteName(t.suite), nil
	}
	suite, ok := suite12ByID(t.suite)
	if !ok || !slices.Contains(h.cfg.suites12(), t.suite) {
		return 0, "the ticket's cipher suite " + tls.CipherSuiteName(t.suite) + " is not enabled", nil
	}
	// RFC 6066, Section 3: "A server that implements this extension MUST
	// NOT accept the request to resume the session if the server_name
	// extension contains a different name. Instead, it proceeds with a full
	// handshake to establish a new session." Host names compare without
	// case (RFC 4343).
	if !strings.EqualFold(t.serverName, ch.serverName) {
		return 0, "ticket for another server name", nil
	}
	cert = -1
	for _, i := range h.certificateOrder(ch.serverName) {
		if kexFitsKey(suite.kex, h.cfg.Certificates[i].leaf.PublicKeyAlgorithm) {
			cert = i
			break
		}
	}
	if cert < 0 {
		return 0, "no certificate fits the ticket's cipher suite", nil
	}
	if why := h.ticketClientAuth(t); why != "" {
		return 0, why, nil
	}
	// RFC 7627, Section 5.3, last: only a ticket the server would resume
	// gets this far.
	switch {
	case t.ems && !ch.extendedMasterSecret:
		// "If the original session used the "extended_master_secret"
		// extension but the new ClientHello does not contain it, the server
		// MUST abort the abbreviated handshake."
		return 0, "", fail(alertHandshakeFailure, "session ticket has the extended master secret, the ClientHello does not offer it (RFC 7627, Section 5.3)")
	case !t.ems && ch.extendedMasterSecret:
		// "If the original session did not use the "extended_master_secret"
		// extension but the new ClientHello contains the extension, then
		// the server MUST NOT perform the abbreviated handshake. Instead,
		// it SHOULD continue with a full handshake [...]".
		return 0, "ticket without the extended master secret, which the client now offers (RFC 7627, Section 5.3)", nil
	case !t.ems:
		// "If neither the original session nor the new ClientHello uses the
		// extension, the server SHOULD abort the handshake." The engine
		// issues no such ticket (see issueTicket12).
		return 0, "", fail(alertHandshakeFailure, "session ticket and ClientHello without the extended master secret (RFC 7627, Section 5.3)")
	}
	return cert, "", nil
}

// abbreviatedHandshake12 resumes the session of t: ServerHello,
// [NewSessionTicket], ChangeCipherSpec, Finished (RFC 5246, Section 7.3;
// RFC 5077, Section 3.1).
func (h *Handshake) abbreviatedHandshake12(ch *clientHelloMsg, raw []byte, t *ticketState, cert int) error {
	alpn, err := negotiateALPN(h.cfg.NextProtos, ch.alpnProtocols)
	if err != nil {
		return err
	}
	// RFC 7301, Section 3.1: ALPN is a property of the connection, not the
	// session; the resumed handshake negotiates it anew.
	h.alpn = alpn
	h.resumed = true
	h.cert, h.scheme = cert, 0
	s, _ := suite12ByID(t.suite)
	h.kex, h.group = s.kex, t.group
	h.suite, _ = record.SuiteByID(t.suite)
	h.ems = t.ems
	h.masterSecret, h.master12 = slices.Clone(t.secret), nil
	if len(t.peerCerts) > 0 {
		h.peerCerts = t.peerCerts
	}
	h.transcript = newTranscript(h.suite.Hash, false)
	h.transcript.write(raw)
	if err := h.newServerRandom12(); err != nil {
		return err
	}
	issue := h.issueTicket12(ch)
	hello := serverHelloMsg{
		random: h.serverRandom,
		// RFC 5077, Section 3.4: "If the server accepts the ticket and the
		// Session ID is not empty, then it MUST respond with the same
		// Session ID present in the ClientHello."
		sessionID:   ch.sessionID,
		cipherSuite: t.suite,
		// RFC 5746, Section 3.6 applies to resumed handshakes as well
		// (Section 3): the empty renegotiation_info answers the client's.
		secureRenegotiation: ch.secureRenegotiationSupported,
		// RFC 7627, Section 5.3: the abbreviated handshake echoes it.
		extendedMasterSecret: true,
		supportedPoints:      h.kex != kexRSA && ch.has(extensionSupportedPoints),
		// RFC 6066, Section 3: "When resuming a session, the server MUST
		// NOT include a server_name extension in the server hello."
		alpnProtocol: alpn,
		// A fresh ticket for every resumption (RFC 5077, Section 3.3), so
		// that the same ticket does not link the client's connections.
		sessionTicket: issue,
		// RFC 8449, Section 4: "During renegotiation or resumption, the
		// record size limit is renegotiated."
		recordSizeLimit: h.recordSizeLimitAnswer(),
	}
	ev := h.traceServerHello12(&hello, ch)
	ev.add("resumption", "accepted")
	h.sendMessage(hello.marshal(), ev)
	if issue {
		// The new ticket keeps the session's creation time: the lifetime
		// bounds how long one master secret lives, however often resumed.
		h.sendNewSessionTicket12(t.created)
	}
	h.clientKey, h.serverKey, h.clientIV, h.serverIV = h.masterPRF().KeyBlock(h.clientRandom, h.serverRandom, h.suite.KeyLen, h.suite.FixedIVLen)
	if err := h.sendServerFinished12(); err != nil {
		return err
	}
	if h.cfg.CallerVerifiesFinished {
		h.completeAtCaller12()
		return nil
	}
	h.state = state12ResumeChangeCipherSpec
	return nil
}

// processResumedClientFinished12 verifies the client's Finished, which
// follows the server's in the abbreviated handshake (RFC 5246, Section
// 7.4.9), and completes it.
func (h *Handshake) processResumedClientFinished12(body, raw []byte) error {
	if err := h.checkClientFinished(body, h.clientFinished12()); err != nil {
		return err
	}
	h.complete12(nil)
	return nil
}

// clientFinished12 is the client's verify_data of the abbreviated
// handshake, over the transcript up to the server's Finished (RFC 5246,
// Section 7.4.9).
func (h *Handshake) clientFinished12() []byte {
	return finishedVerifyData12(h.masterPRF(), "client finished", h.transcript.sum())
}

// sendNewSessionTicket12 seals the session into a ticket and sends it, RFC
// 5077, Section 3.3; created is the session's creation time, zero for a
// session created now. If sealing fails (the vault is unreachable), the
// handshake goes on with the zero-length ticket the section provides for a
// server that changed its mind after promising one.
func (h *Handshake) sendNewSessionTicket12(created time.Time) {
	now := h.cfg.now()
	if created.IsZero() {
		created = now
	}
	t := ticketState{
		vers:       tls.VersionTLS12,
		suite:      h.suite.ID,
		group:      h.group,
		created:    created,
		secret:     h.masterSecret,
		ems:        h.ems,
		serverName: h.serverName,
		alpn:       h.alpn,
		peerCerts:  h.peerCerts,
	}
	ev := h.event(Sent, "NewSessionTicket")
	ticket, err := h.sealTicket(&t)
	switch {
	case err != nil:
		// The cause stays out of the trace: it is the TicketKeys
		// implementation's, as for KeyOps (see keyOpsError).
		ev.add("ticket", "none (sealing failed)")
	case !ev.omitted:
		ev.add("ticket", strconv.Itoa(len(ticket))+" bytes")
	}
	// ticket_lifetime_hint: the seconds the ticket has left (Section 3.3).
	left := max(h.cfg.ticketLifetime()-now.Sub(created), 0)
	hint := uint32(left / time.Second)
	if !ev.omitted {
		ev.add("lifetime_hint", strconv.FormatUint(uint64(hint), 10)+"s")
	}
	h.sendMessage(marshalNewSessionTicket12(hint, ticket), ev)
}

// marshalNewSessionTicket12 is the TLS 1.2 NewSessionTicket, RFC 5077,
// Section 3.3: uint32 ticket_lifetime_hint; opaque ticket<0..2^16-1>
// (sealTicket bounds it by maxTicketLen). Appended into one buffer of the
// exact size, not built with cryptobyte (whose buffer grew five times), as
// every TLS 1.2 handshake with a ticket makes one.
func marshalNewSessionTicket12(lifetimeHint uint32, ticket []byte) []byte {
	body := 4 + 2 + len(ticket)
	b := appendHandshakeHeader(make([]byte, 0, 4+body), typeNewSessionTicket, body)
	b = binary.BigEndian.AppendUint32(b, lifetimeHint)
	b = binary.BigEndian.AppendUint16(b, uint16(len(ticket)))
	return append(b, ticket...)
}
