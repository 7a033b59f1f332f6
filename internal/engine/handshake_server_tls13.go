package engine

import (
	"bytes"
	"crypto/tls"
	"slices"
	"strconv"

	"github.com/handshaked/handshaked/internal/engine/record"
)

// negotiation13 is what a TLS 1.3 ClientHello settles besides the version.
type negotiation13 struct {
	suite  uint16
	group  tls.CurveID
	cert   int // -1 until chosen: after the PSK is checked when the client may resume
	scheme tls.SignatureScheme
	alpn   string
}

// negotiate13 checks a TLS 1.3 ClientHello and picks the suite, group,
// certificate, signature scheme and ALPN protocol (RFC 8446, Section 4.1.1).
func (h *Handshake) negotiate13(ch *clientHelloMsg) (negotiation13, error) {
	var n negotiation13
	// RFC 8446, Section 4.1.2: legacy_compression_methods is exactly {null}.
	if !bytes.Equal(ch.compressionMethods, []byte{compressionNone}) {
		return n, fail(alertIllegalParameter, "TLS 1.3 ClientHello offers compression")
	}
	// RFC 8446, Section 4.2.11: "Servers MUST check that it is the last
	// extension and otherwise fail the handshake with an
	// "illegal_parameter" alert."
	if ch.pskNotLast() {
		return n, fail(alertIllegalParameter, "pre_shared_key is not the last extension")
	}
	// RFC 8446, Section 4.2.9: "If clients offer "pre_shared_key" without a
	// "psk_key_exchange_modes" extension, servers MUST abort the
	// handshake." The offer is ignored otherwise, but not this.
	if ch.pskOffered && !ch.has(extensionPSKModes) {
		return n, fail(alertMissingExtension, "pre_shared_key without psk_key_exchange_modes")
	}
	// RFC 8446, Section 9.2: supported_groups and key_share come together,
	// and without pre_shared_key a ClientHello carries signature_algorithms
	// and supported_groups; else the server "MUST abort the handshake with
	// a "missing_extension" alert".
	if ch.has(extensionSupportedGroups) != ch.has(extensionKeyShare) {
		return n, fail(alertMissingExtension, "TLS 1.3 ClientHello with only one of supported_groups and key_share")
	}
	switch {
	case !ch.pskOffered:
		for _, ext := range []uint16{extensionSignatureAlgorithms, extensionSupportedGroups} {
			if !ch.has(ext) {
				return n, fail(alertMissingExtension, "TLS 1.3 ClientHello without extension %d", ext)
			}
		}
	case !ch.has(extensionSupportedGroups):
		// A well-formed PSK-only offer (psk_ke); the server resumes only
		// with (EC)DHE, so nothing is left to negotiate (RFC 8446, Section
		// 6.2). signature_algorithms is checked when a certificate is
		// chosen: a resumption needs none (selectCertificate13).
		return n, fail(alertHandshakeFailure, "TLS 1.3 ClientHello offers only a PSK (no supported_groups), and the server resumes no session that way")
	}
	// RFC 8446, Section 4.2.8: one share per group, each for an offered group.
	var offered, shared codePoints
	for _, g := range ch.supportedGroups {
		offered.add(uint16(g))
	}
	for _, ks := range ch.keyShares {
		if !offered.has(uint16(ks.group)) {
			return n, fail(alertIllegalParameter, "key share for %v, which supported_groups does not list", ks.group)
		}
		if !shared.add(uint16(ks.group)) {
			return n, fail(alertIllegalParameter, "two key shares for %v", ks.group)
		}
	}
	for _, id := range serverPreference(h.cfg.suites13(), ch.cipherSuites) {
		if slices.Contains(ch.cipherSuites, id) {
			n.suite = id
			break
		}
	}
	if n.suite == 0 {
		return n, fail(alertHandshakeFailure, "no TLS 1.3 cipher suite in common")
	}
	var ok bool
	if n.group, ok = selectGroup13(h.cfg.groups(), ch); !ok {
		return n, fail(alertHandshakeFailure, "no key exchange group in common")
	}
	var err error
	if n.alpn, err = negotiateALPN(h.cfg.NextProtos, ch.alpnProtocols); err != nil {
		return n, err
	}
	n.cert = -1
	if h.mayResume13(ch) {
		// The certificate waits until the PSK is checked: a resumption
		// needs none, and asks nothing of KeyOps.
		return n, nil
	}
	return n, h.selectCertificate13(ch, &n)
}

// selectCertificate13 picks the certificate and signature scheme of a full
// handshake.
func (h *Handshake) selectCertificate13(ch *clientHelloMsg, n *negotiation13) error {
	// RFC 8446, Section 4.2.3: "If a server is authenticating via a
	// certificate and the client has not sent a "signature_algorithms"
	// extension, then the server MUST abort the handshake with a
	// "missing_extension" alert". A ClientHello with pre_shared_key may
	// leave it out (Section 9.2), until its PSK is not taken.
	if !ch.has(extensionSignatureAlgorithms) {
		return fail(alertMissingExtension, "TLS 1.3 ClientHello without signature_algorithms, and the server authenticates with a certificate")
	}
	for _, idx := range h.certificateOrder(ch.serverName) {
		keySchemes, err := h.keySchemes(idx, tls.VersionTLS13)
		if err != nil {
			return err
		}
		var found bool
		if n.scheme, found = selectSignatureScheme(keySchemes, ch.signatureAlgorithms); found {
			n.cert = idx
			return nil
		}
	}
	return fail(alertHandshakeFailure, "no certificate signs with a scheme the client accepts")
}

// serverHello13 answers the first TLS 1.3 ClientHello: with a
// HelloRetryRequest if the client sent no share for the chosen group,
// otherwise with the server's whole flight.
func (h *Handshake) serverHello13(ch *clientHelloMsg, raw []byte) error {
	n, err := h.negotiate13(ch)
	if err != nil {
		return err
	}
	h.suite, _ = record.SuiteByID(n.suite)
	h.transcript = newTranscript(h.suite.Hash, false)
	h.sessionID = slices.Clone(ch.sessionID)
	share := ch.keyShare(n.group)
	if share == nil {
		return h.sendHelloRetryRequest(ch, raw, n)
	}
	return h.sendServerFlight13(ch, raw, n, share)
}

// sendHelloRetryRequest asks the client for a share for n.group, RFC 8446,
// Section 4.1.4. The server keeps no cookie: the pending state remembers the
// group and a digest of the first ClientHello.
func (h *Handshake) sendHelloRetryRequest(ch *clientHelloMsg, raw []byte, n negotiation13) error {
	h.transcript.restartWithMessageHash(raw)
	h.group = n.group
	h.didHRR = true
	h.hrrHello = helloFingerprint(ch, true)
	// RFC 8446, Section 4.2.10: refused 0-RTT data may follow; it is skipped
	// unread until the second ClientHello.
	h.skipEarlyData = ch.earlyData
	hrr := serverHelloMsg{
		random:           helloRetryRequestRandom,
		sessionID:        h.sessionID,
		cipherSuite:      n.suite,
		supportedVersion: tls.VersionTLS13,
		selectedGroup:    n.group,
	}
	ev := h.event(Sent, "HelloRetryRequest")
	ev.add("cipher_suite", record.SuiteName(n.suite))
	ev.add("selected_group", n.group.String())
	h.sendMessage(hrr.marshal(), ev)
	if err := h.sendCompatChangeCipherSpec(); err != nil {
		return err
	}
	if err := h.flush(); err != nil {
		return err
	}
	h.state = state13SecondClientHello
	return nil
}

// sendCompatChangeCipherSpec sends the middlebox-compatibility
// change_cipher_spec after the server's first handshake message, when the
// client asked for compatibility mode with a legacy_session_id (RFC 8446,
// Appendix D.4).
func (h *Handshake) sendCompatChangeCipherSpec() error {
	if len(h.sessionID) == 0 || h.sentCCS {
		return h.flush()
	}
	h.sentCCS = true
	return h.sendChangeCipherSpec()
}

// processSecondClientHello checks the ClientHello that answers a
// HelloRetryRequest (RFC 8446, Section 4.1.2) and continues the handshake.
func (h *Handshake) processSecondClientHello(body, raw []byte) error {
	var ch clientHelloMsg
	if !ch.unmarshal(body) {
		return fail(alertDecodeError, "malformed second ClientHello")
	}
	h.noteClientHello(&ch)
	if err := ch.checkHostNames(); err != nil {
		return err
	}
	h.skipEarlyData = false
	if vers, err := h.negotiateVersion(&ch); err != nil || vers != tls.VersionTLS13 {
		return fail(alertIllegalParameter, "second ClientHello does not offer TLS 1.3")
	}
	if len(ch.keyShares) != 1 || ch.keyShares[0].group != h.group {
		return fail(alertIllegalParameter, "second ClientHello lacks exactly one key share for %v", h.group)
	}
	if ch.earlyData {
		return fail(alertIllegalParameter, "early_data in the second ClientHello")
	}
	// RFC 8446, Section 4.1.2 allows "a "cookie" extension if one was
	// provided in the HelloRetryRequest"; ours never carries one.
	if ch.has(extensionCookie) {
		return fail(alertIllegalParameter, "cookie in the second ClientHello, which the HelloRetryRequest did not send")
	}
	if !bytes.Equal(helloFingerprint(&ch, !h.hrrHelloWithoutLimit), h.hrrHello) {
		return fail(alertIllegalParameter, "second ClientHello changed more than the key share")
	}
	if h.hrrHelloWithoutLimit {
		if err := h.takeRecordSizeLimit(&ch); err != nil {
			return err
		}
	}
	h.hrrHello = nil
	n, err := h.negotiate13(&ch)
	if err != nil {
		return err
	}
	if n.suite != h.suite.ID {
		return fail(alertIllegalParameter, "second ClientHello changed the cipher suite")
	}
	n.group = h.group
	return h.sendServerFlight13(&ch, raw, n, ch.keyShares[0].data)
}

// sendServerFlight13 sends ServerHello, EncryptedExtensions,
// [CertificateRequest], Certificate, CertificateVerify and Finished, and
// derives the handshake and application traffic secrets (RFC 8446, Sections
// 2 and 7.1).
func (h *Handshake) sendServerFlight13(ch *clientHelloMsg, raw []byte, n negotiation13, clientShare []byte) error {
	ev := h.event(Sent, "ServerHello")
	ev.add("version", versionName(tls.VersionTLS13))
	ev.add("cipher_suite", record.SuiteName(n.suite))
	ev.add("key_share", n.group.String())
	psk, err := h.selectPSK(ch, raw, &n, &ev)
	if err != nil {
		return err
	}
	var pskSecret []byte
	if psk != nil {
		// RFC 8446, Section 2.2: a resumed handshake authenticates with the
		// PSK; the certificate is the one SNI would select, for the record.
		h.resumed, h.peerCerts = true, psk.ticket.peerCerts
		n.cert, n.scheme = h.certificateOrder(ch.serverName)[0], 0
		pskSecret = psk.ticket.secret
		defer psk.ticket.wipe()
	} else if n.cert < 0 {
		if err := h.selectCertificate13(ch, &n); err != nil {
			return err
		}
	}
	h.group, h.cert, h.scheme, h.alpn = n.group, n.cert, n.scheme, n.alpn
	hash := h.suite.Hash
	shared, serverShare, err := serverKeyShare13(n.group, h.cfg.rand(), clientShare)
	if err != nil {
		return failWrap(alertIllegalParameter, err, "client key share for %v", n.group)
	}
	h.transcript.write(raw)
	if h.serverRandom, err = h.randomBytes(32); err != nil {
		return err
	}
	hello := serverHelloMsg{
		random:           h.serverRandom,
		sessionID:        h.sessionID,
		cipherSuite:      n.suite,
		supportedVersion: tls.VersionTLS13,
		serverShare:      keyShare{group: n.group, data: serverShare},
	}
	if psk != nil {
		hello.pskSelected, hello.pskIdentity = true, psk.identity
	}
	h.sendMessage(hello.marshal(), ev)
	if err := h.sendCompatChangeCipherSpec(); err != nil {
		return err
	}

	early := newEarlySecret13(hash, pskSecret)
	handshakeSecret := early.handshakeSecret(shared)
	early.wipe()
	clear(shared)
	var serverHandshake []byte
	h.clientHandshake, serverHandshake = handshakeSecret.trafficSecrets(h.transcript.sum())
	defer clear(serverHandshake)
	if h.writeCipher, err = h.newCipher(serverHandshake, nil, nil, 0); err != nil {
		return err
	}
	if h.readCipher, err = h.newCipher(h.clientHandshake, nil, nil, 0); err != nil {
		return err
	}

	// RFC 6066, Section 3: "When resuming a session, the server MUST NOT
	// include a server_name extension in the server hello."
	ee := encryptedExtensionsMsg{serverNameAck: ch.serverName != "" && !h.resumed, alpnProtocol: n.alpn, recordSizeLimit: h.recordSizeLimitAnswer()}
	ev = h.event(Sent, "EncryptedExtensions")
	if n.alpn != "" {
		ev.add("alpn", n.alpn)
	}
	if ee.serverNameAck {
		ev.add("server_name", "acknowledged")
	}
	if ee.recordSizeLimit != 0 {
		ev.add("record_size_limit", strconv.Itoa(int(ee.recordSizeLimit)))
	}
	h.sendMessage(ee.marshal(), ev)

	// RFC 8446, Section 4.3.2: "Servers which are authenticating with a
	// PSK MUST NOT send the CertificateRequest message in the main
	// handshake"; nor Certificate and CertificateVerify (Section 2.2).
	if !h.resumed {
		if err := h.sendCertificateFlight13(); err != nil {
			return err
		}
	}

	h.sendMessage(marshalFinished(finishedVerifyData13(hash, serverHandshake, h.transcript.sum())), h.event(Sent, "Finished"))
	if err := h.flush(); err != nil {
		return err
	}

	master := handshakeSecret.masterSecret()
	handshakeSecret.wipe()
	finishedHash := h.transcript.sum()
	h.clientTraffic, h.serverTraffic = master.trafficSecrets(finishedHash)
	h.exporterSecret = master.exporterMasterSecret(finishedHash)
	if h.cfg.Tickets != nil && slices.Contains(ch.pskModes, pskModeDHEKE) {
		// A ticket will follow the client's Finished, which the resumption
		// master secret covers: the master secret waits for it. A client
		// without psk_dhe_ke could not use the ticket (RFC 8446, Section
		// 4.2.9: servers "SHOULD NOT send NewSessionTicket with tickets that
		// are not compatible with the advertised modes").
		h.master13 = master.secret
	} else {
		master.wipe()
	}
	// From its Finished on, the server writes under the server application
	// traffic secret (RFC 8446, Section 7.1 and Appendix A.2): an alert it
	// sends about the client's second flight is protected with it, because
	// the client switched its read key on our Finished. The server handshake
	// traffic secret has no use left.
	if h.writeCipher, err = h.newCipher(h.serverTraffic, nil, nil, 0); err != nil {
		return err
	}

	// RFC 8446, Section 4.2.10: 0-RTT data the server does not accept is
	// skipped until a record opens under the handshake keys.
	h.skipEarlyData = ch.earlyData && !h.didHRR
	// The server's flight ends one wait for the client and begins the
	// next: the compatibility change_cipher_spec records are counted
	// afresh, as clientfinished counts those after the server's flight
	// when the caller checks the Finished, so that both refuse the same.
	h.droppedCCS = 0
	h.state = state13ClientFinished
	switch {
	case h.clientAuth:
		h.state = state13ClientCertificate
	case h.cfg.CallerVerifiesFinished:
		return h.completeAtCaller()
	}
	return nil
}

// sendCertificateFlight13 sends [CertificateRequest], Certificate and
// CertificateVerify: the server authentication of a full handshake.
func (h *Handshake) sendCertificateFlight13() error {
	h.clientAuth = h.cfg.ClientAuth != ClientAuthOff
	if h.clientAuth {
		h.sendCertificateRequest()
	}
	cert := &h.cfg.Certificates[h.cert]
	h.sendMessage((&certificateMsg{tls13: true, certificates: cert.Chain}).marshal(), h.traceServerCertificate(cert))

	cv := certificateVerifyMsg{signatureAlgorithm: h.scheme}
	var err error
	if cv.signature, err = h.sign("CertificateVerify", signedMessage13(serverSignatureContext, h.transcript.sum())); err != nil {
		return err
	}
	ev := h.event(Sent, "CertificateVerify")
	ev.add("signature_scheme", h.scheme.String())
	h.sendMessage(cv.marshal(), ev)
	return nil
}

// processClientCertificate13 handles the TLS 1.3 client Certificate (RFC
// 8446, Section 4.4.2); a CertificateVerify follows a non-empty one.
func (h *Handshake) processClientCertificate13(body, raw []byte) error {
	msg := certificateMsg{tls13: true}
	if !msg.unmarshal(body) {
		return fail(alertDecodeError, "malformed client Certificate")
	}
	// RFC 8446, Section 4.4.2: "Extensions in the Certificate message from
	// the client MUST correspond to extensions in the CertificateRequest
	// message from the server", which asks for none; Section 4.2 refuses an
	// unrequested one with unsupported_extension.
	if msg.entryExtensions {
		return fail(alertUnsupportedExtension, "client Certificate carries extensions the CertificateRequest did not ask for")
	}
	if err := h.acceptClientCertificate(&msg, raw, alertCertificateRequired); err != nil {
		return err
	}
	h.state = state13ClientFinished
	if h.peerKey != nil {
		h.state = state13ClientCertificateVerify
	}
	return nil
}

// processClientCertificateVerify13 checks the client's signature over the
// transcript, RFC 8446, Section 4.4.3.
func (h *Handshake) processClientCertificateVerify13(body, raw []byte) error {
	if err := h.verifyClientCertificateVerify(body, tls.VersionTLS13, signedMessage13(clientSignatureContext, h.transcript.sum())); err != nil {
		return err
	}
	h.transcript.write(raw)
	h.state = state13ClientFinished
	return nil
}

// processClientFinished13 verifies the client's Finished under the client
// handshake traffic secret (RFC 8446, Section 4.4.4) and completes the
// handshake: the server's flight went out with its ServerHello. With
// tickets on and a client that lists psk_dhe_ke, a NewSessionTicket
// follows in the Output.
func (h *Handshake) processClientFinished13(body, raw []byte) error {
	if err := h.checkClientFinished(body, finishedVerifyData13(h.suite.Hash, h.clientHandshake, h.transcript.sum())); err != nil {
		return err
	}
	return h.complete13(raw)
}

// complete13 completes a TLS 1.3 handshake whose client Finished is
// clientFinished (the whole message): it issues the ticket, which the
// resumption master secret binds to that Finished, and records the session.
func (h *Handshake) complete13(clientFinished []byte) error {
	if h.master13 != nil && h.cfg.Tickets != nil { // tickets may have been turned off since a restore
		h.transcript.write(clientFinished)
		master := masterSecret13{secret13{h.suite.Hash, h.master13}}
		resumptionMaster := master.resumptionMasterSecret(h.transcript.sum())
		master.wipe()
		h.master13 = nil
		err := h.sendNewSessionTicket(resumptionMaster)
		clear(resumptionMaster)
		if err != nil {
			return err
		}
	}
	s := h.newSession()
	s.ExtendedMasterSecret = true // the transcript is always bound
	// Fresh application traffic secrets start at sequence number 0.
	s.ClientTrafficSecret, s.ServerTrafficSecret, s.ExporterMasterSecret = h.clientTraffic, h.serverTraffic, h.exporterSecret
	s.ClientKey, s.ClientIV = record.TrafficKeys(h.suite, h.clientTraffic)
	s.ServerKey, s.ServerIV = record.TrafficKeys(h.suite, h.serverTraffic)
	s.ServerSeq = h.writeCipher.Seq() // past the NewSessionTicket, if any
	h.complete(s)
	return nil
}
