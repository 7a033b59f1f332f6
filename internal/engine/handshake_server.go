package engine

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/hmac"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"slices"
	"strconv"
	"time"

	"github.com/handshaked/handshaked/internal/engine/record"
	"github.com/handshaked/handshaked/internal/sigscheme"
)

// processClientHello parses the first ClientHello, negotiates the version
// and hands over to the TLS 1.2 or TLS 1.3 server flight.
func (h *Handshake) processClientHello(body, raw []byte) error {
	var ch clientHelloMsg
	if !ch.unmarshal(body) {
		ev := h.event(Received, "ClientHello")
		ev.add("error", "malformed")
		h.note(ev)
		return fail(alertDecodeError, "malformed ClientHello")
	}
	h.noteClientHello(&ch)
	if err := ch.checkHostNames(); err != nil {
		return err
	}
	if err := h.takeRecordSizeLimit(&ch); err != nil {
		return err
	}
	vers, err := h.negotiateVersion(&ch)
	if err != nil {
		return err
	}
	h.vers = vers
	// RFC 6066, Section 3 forbids IP literals in host_name, yet clients
	// that take the name from the URL send them (wrk, for one). The name
	// then says nothing a certificate could match, so it counts as absent
	// (no acknowledgement, the default certificate), as crypto/tls and
	// OpenSSL servers treat it; any other malformed name is refused.
	if isIPLiteral(ch.serverName) {
		ch.serverName = ""
	}
	if ch.serverName != "" && !validHostname(ch.serverName) {
		return fail(alertIllegalParameter, "server_name %q is not a valid host name", ch.serverName)
	}
	// RFC 7507, Section 3: a fallback retry must not land below our best.
	if _, hi := h.cfg.versions(); vers < hi && slices.Contains(ch.cipherSuites, scsvFallback) {
		return fail(alertInappropriateFallback, "client fell back to %s while %s is available", versionName(vers), versionName(hi))
	}
	// RFC 5746, Section 3.6: an initial handshake carries empty
	// renegotiation_info.
	if len(ch.secureRenegotiation) != 0 {
		return fail(alertHandshakeFailure, "non-empty renegotiation_info in an initial handshake")
	}
	h.clientVersion = ch.vers
	h.clientRandom = slices.Clone(ch.random)
	h.serverName = ch.serverName
	if vers == tls.VersionTLS13 {
		return h.serverHello13(&ch, raw)
	}
	return h.serverHello12(&ch, raw)
}

// checkHostNames refuses a server_name list of more than one host_name:
// RFC 6066, Section 3 forbids it and names no alert. The list decodes, so
// it is not decode_error; a second name of the same type is a field
// inconsistent with another, RFC 8446, Section 6.2's illegal_parameter
// (tlsfuzzer's test-invalid-server-name-extension.py expects it).
func (m *clientHelloMsg) checkHostNames() error {
	if m.hostNames > 1 {
		return fail(alertIllegalParameter, "server_name with %d host_names", m.hostNames)
	}
	return nil
}

// versionSSL30 is SSL 3.0's version number (crypto/tls's is deprecated).
const versionSSL30 = 0x0300

// negotiateVersion picks the version: from supported_versions when present
// (RFC 8446, Section 4.2.1, in the client's order), else from legacy_version
// (RFC 5246, Appendix E.1), which can only yield TLS 1.2.
func (h *Handshake) negotiateVersion(ch *clientHelloMsg) (uint16, error) {
	lo, hi := h.cfg.versions()
	// RFC 8446, Appendix D.5: "Any endpoint receiving a Hello message with
	// ClientHello.legacy_version [...] set to 0x0300 MUST abort the
	// handshake with a "protocol_version" alert."
	if ch.vers <= versionSSL30 {
		return 0, fail(alertProtocolVersion, "ClientHello legacy_version %#04x is SSL 3.0 or older", ch.vers)
	}
	if ch.has(extensionSupportedVersions) {
		for _, v := range ch.supportedVersions {
			if v < lo || v > hi {
				continue
			}
			// RFC 8446, Section 4.1.2: in a TLS 1.3 ClientHello "the
			// legacy_version field MUST be set to 0x0303". Refused, as
			// OpenSSL does: such a client is broken or a probe.
			if v == tls.VersionTLS13 && ch.vers < tls.VersionTLS12 {
				return 0, fail(alertProtocolVersion, "TLS 1.3 ClientHello with legacy_version %#04x, below 0x0303", ch.vers)
			}
			return v, nil
		}
		return 0, fail(alertProtocolVersion, "no common version: client supports %s, server %s-%s",
			list(ch.supportedVersions, versionName), versionName(lo), versionName(hi))
	}
	if ch.vers >= tls.VersionTLS12 && lo <= tls.VersionTLS12 {
		return tls.VersionTLS12, nil
	}
	return 0, fail(alertProtocolVersion, "client offers only %s, server needs %s or later", versionName(ch.vers), versionName(lo))
}

// certificateOrder lists the certificates to try, in order: those valid for
// the client's server_name, then the rest, the default (first) leading.
// The caller does not modify the list.
func (h *Handshake) certificateOrder(serverName string) []int {
	certs := h.cfg.Certificates
	if len(certs) == 1 {
		// The one certificate is the order whatever the name: matching it
		// (x509's VerifyHostname) cost every handshake of a configuration
		// with one key about a microsecond for nothing.
		return onlyCertificate
	}
	order := make([]int, 0, len(certs))
	if serverName != "" {
		for i := range certs {
			if certs[i].leaf.VerifyHostname(serverName) == nil {
				order = append(order, i)
			}
		}
	}
	for i := range certs {
		if !slices.Contains(order, i) {
			order = append(order, i)
		}
	}
	return order
}

// onlyCertificate is the order of a configuration with one certificate.
var onlyCertificate = []int{0}

// negotiateALPN picks the first of the server's protocols the client offers,
// RFC 7301, Section 3.2.
func negotiateALPN(server, client []string) (string, error) {
	if len(server) == 0 || len(client) == 0 {
		return "", nil
	}
	for _, p := range server {
		if slices.Contains(client, p) {
			return p, nil
		}
	}
	return "", fail(alertNoApplicationProtocol, "no common application protocol: client offers %q", client)
}

// randomBytes reads n bytes from the configured source.
func (h *Handshake) randomBytes(n int) ([]byte, error) {
	b := make([]byte, n)
	if _, err := io.ReadFull(h.cfg.rand(), b); err != nil {
		return nil, failWrap(alertInternalError, err, "reading random bytes")
	}
	return b, nil
}

var errNoKeyOps = fail(alertInternalError, "no KeyOps given to Step")

// keyOpsError keeps a KeyOps error as the cause of a failure but not in its
// text, which becomes StepResult.Reason and goes to the edge: the KeyOps
// implementation belongs to the caller, which has the error already, and
// its words (a key backend's) are not the engine's to pass on. Only a
// cancelled or expired context, the caller's own doing, is named.
type keyOpsError struct{ err error }

func (e keyOpsError) Error() string {
	for _, ctxErr := range []error{context.Canceled, context.DeadlineExceeded} {
		if errors.Is(e.err, ctxErr) {
			return "key operation failed: " + ctxErr.Error()
		}
	}
	return "key operation failed"
}

func (e keyOpsError) Unwrap() error { return e.err }

// sign asks KeyOps for a signature with the selected certificate's key.
func (h *Handshake) sign(what string, message []byte) ([]byte, error) {
	if h.keys == nil {
		return nil, errNoKeyOps
	}
	sig, err := h.keys.Sign(h.ctx, h.cfg.Certificates[h.cert].KeyRef, h.scheme, message)
	if err != nil {
		return nil, failWrap(alertInternalError, keyOpsError{err}, "signing %s with %v", what, h.scheme)
	}
	return sig, nil
}

// fits12 reports whether suite s can be used with certificate cert for this
// client, leaving the signature scheme to the caller. An ECDSA certificate
// must be on a curve the client lists in supported_groups: in TLS 1.2 that
// extension also names the curves the client verifies signatures on (RFC
// 8422, Sections 5.1 and 5.3), and OpenSSL aborts with "wrong curve"
// otherwise.
func fits12(s cipherSuite12, cert *Certificate, ch *clientHelloMsg, ecdheOK bool) bool {
	if !kexFitsKey(s.kex, cert.leaf.PublicKeyAlgorithm) {
		return false
	}
	if s.kex == kexRSA {
		return true
	}
	if pub, ok := cert.leaf.PublicKey.(*ecdsa.PublicKey); ok && ch.has(extensionSupportedGroups) {
		if id, known := curveID(pub.Curve); !known || !slices.Contains(ch.supportedGroups, id) {
			return false
		}
	}
	return ecdheOK
}

// kexFitsKey reports whether a TLS 1.2 key exchange can use a certificate
// key of type alg: RSA encryption or an RSA signature, or an ECDSA or EdDSA
// signature (RFC 8422, Section 2).
func kexFitsKey(kex keyExchange, alg x509.PublicKeyAlgorithm) bool {
	switch kex {
	case kexRSA, kexECDHERSA:
		return alg == x509.RSA
	case kexECDHEECDSA:
		return alg == x509.ECDSA || alg == x509.Ed25519
	}
	return false
}

// serverHello12 answers a ClientHello with the TLS 1.2 server flight:
// ServerHello, Certificate, [ServerKeyExchange], [CertificateRequest],
// ServerHelloDone (RFC 5246, Section 7.3).
func (h *Handshake) serverHello12(ch *clientHelloMsg, raw []byte) error {
	if !slices.Contains(ch.compressionMethods, compressionNone) {
		return fail(alertHandshakeFailure, "client does not offer null compression")
	}
	// RFC 8422, Section 5.1.2: "If the client sends the extension and the
	// extension does not contain the uncompressed point format, and the
	// client has used the Supported Groups extension to indicate support
	// for any of the curves defined in this specification, then the server
	// MUST abort the handshake and return an illegal_parameter alert."
	if ch.has(extensionSupportedPoints) && !slices.Contains(ch.supportedPoints, pointFormatUncompressed) &&
		slices.ContainsFunc(ch.supportedGroups, rfc8422Curve) {
		return fail(alertIllegalParameter, "ec_point_formats without the uncompressed format")
	}
	resumed, refused, err := h.resume12(ch, raw)
	if err != nil || resumed {
		return err
	}
	group, haveGroup := selectGroup12(h.cfg.groups(), ch)
	// RFC 8422, Section 5.1.2: uncompressed points are the only format.
	ecdheOK := haveGroup && (!ch.has(extensionSupportedPoints) || slices.Contains(ch.supportedPoints, pointFormatUncompressed))

	var suite cipherSuite12
	found := false
	for _, idx := range h.certificateOrder(ch.serverName) {
		// The key is asked once, when the first ECDHE suite needs a scheme.
		var keySchemes []tls.SignatureScheme
		asked := false
		for _, id := range serverPreference(h.cfg.suites12(), ch.cipherSuites) {
			if !slices.Contains(ch.cipherSuites, id) {
				continue
			}
			s, _ := suite12ByID(id)
			if !fits12(s, &h.cfg.Certificates[idx], ch, ecdheOK) {
				continue
			}
			if s.kex == kexRSA {
				suite, h.cert, h.scheme, found = s, idx, 0, true
				break
			}
			if !asked {
				var err error
				if keySchemes, err = h.keySchemes(idx, tls.VersionTLS12); err != nil {
					return err
				}
				asked = true
			}
			if scheme, ok := selectSignatureScheme(keySchemes, ch.signatureAlgorithms); ok {
				suite, h.cert, h.scheme, found = s, idx, scheme, true
				break
			}
		}
		if found {
			break
		}
	}
	if !found {
		return fail(alertHandshakeFailure, "no TLS 1.2 cipher suite fits both the client and a certificate")
	}
	alpn, err := negotiateALPN(h.cfg.NextProtos, ch.alpnProtocols)
	if err != nil {
		return err
	}
	h.alpn = alpn
	h.issueTicket = h.issueTicket12(ch)
	h.kex = suite.kex
	if suite.kex != kexRSA {
		h.group = group
	}
	h.suite, _ = record.SuiteByID(suite.id)
	h.ems = ch.extendedMasterSecret
	h.clientAuth = h.cfg.ClientAuth != ClientAuthOff
	h.transcript = newTranscript(h.suite.Hash, h.clientAuth)
	h.transcript.write(raw)

	if err := h.newServerRandom12(); err != nil {
		return err
	}
	hello := serverHelloMsg{
		random:               h.serverRandom,
		cipherSuite:          suite.id,
		secureRenegotiation:  ch.secureRenegotiationSupported,
		extendedMasterSecret: h.ems,
		// RFC 8422, Section 5.2: only in answer to the client's
		// ec_point_formats, as any ServerHello extension (RFC 5246,
		// Section 7.4.1.4).
		supportedPoints: h.kex != kexRSA && ch.has(extensionSupportedPoints),
		serverNameAck:   ch.serverName != "",
		alpnProtocol:    alpn,
		sessionTicket:   h.issueTicket,
		recordSizeLimit: h.recordSizeLimitAnswer(),
	}
	ev := h.traceServerHello12(&hello, ch)
	if refused != "" && !ev.omitted {
		ev.add("resumption", "refused: "+refused)
	}
	h.sendMessage(hello.marshal(), ev)

	cert := &h.cfg.Certificates[h.cert]
	h.sendMessage((&certificateMsg{certificates: cert.Chain}).marshal(), h.traceServerCertificate(cert))

	if h.kex != kexRSA {
		if err := h.sendServerKeyExchange(); err != nil {
			return err
		}
	}
	if h.clientAuth {
		h.sendCertificateRequest()
	}
	h.sendMessage(marshalServerHelloDone(), h.event(Sent, "ServerHelloDone"))
	if err := h.flush(); err != nil {
		return err
	}
	h.state = state12ClientKeyExchange
	if h.clientAuth {
		h.state = state12ClientCertificate
	}
	return nil
}

// newServerRandom12 draws ServerHello.random, with the downgrade sentinel
// of a server able to do TLS 1.3 (RFC 8446, Section 4.1.3).
func (h *Handshake) newServerRandom12() error {
	var err error
	if h.serverRandom, err = h.randomBytes(32); err != nil {
		return err
	}
	if _, hi := h.cfg.versions(); hi == tls.VersionTLS13 {
		copy(h.serverRandom[24:], downgradeCanaryTLS12)
	}
	return nil
}

// traceServerHello12 decodes a TLS 1.2 ServerHello for the trace.
func (h *Handshake) traceServerHello12(hello *serverHelloMsg, ch *clientHelloMsg) TraceEvent {
	ev := h.event(Sent, "ServerHello")
	ev.add("version", versionName(h.vers))
	ev.add("cipher_suite", record.SuiteName(hello.cipherSuite))
	if hello.alpnProtocol != "" {
		ev.add("alpn", hello.alpnProtocol)
	}
	if hello.extendedMasterSecret {
		ev.add("extended_master_secret", "true")
	} else {
		ev.add("extended_master_secret", "not offered by the client: master secret not bound to the handshake (RFC 7627)")
	}
	ev.add("secure_renegotiation", strconv.FormatBool(ch.secureRenegotiationSupported))
	if hello.sessionTicket {
		ev.add("session_ticket", "a new ticket follows")
	}
	if hello.recordSizeLimit != 0 {
		ev.add("record_size_limit", strconv.Itoa(int(hello.recordSizeLimit)))
	}
	if _, hi := h.cfg.versions(); hi == tls.VersionTLS13 {
		ev.add("downgrade_sentinel", "DOWNGRD\\x01")
	}
	return ev
}

// sendServerKeyExchange generates the ephemeral ECDHE key and sends its
// public value signed over both randoms, RFC 8422, Section 5.4.
func (h *Handshake) sendServerKeyExchange() error {
	key, err := generateKey12(h.group, h.cfg.rand())
	if err != nil {
		return failWrap(alertInternalError, err, "generating ECDHE key")
	}
	h.ecdheKey = key
	skx := serverKeyExchangeMsg{group: h.group, publicKey: key.PublicKey().Bytes(), signatureAlgorithm: h.scheme}
	params := skx.params()
	signed := make([]byte, 0, 64+len(params))
	signed = append(signed, h.clientRandom...)
	signed = append(signed, h.serverRandom...)
	signed = append(signed, params...)
	if skx.signature, err = h.sign("ServerKeyExchange", signed); err != nil {
		return err
	}
	ev := h.event(Sent, "ServerKeyExchange")
	ev.add("group", h.group.String())
	ev.add("signature_scheme", h.scheme.String())
	h.sendMessage(skx.marshal(), ev)
	return nil
}

// sendCertificateRequest asks for a client certificate (RFC 8446, Section
// 4.3.2; RFC 5246, Section 7.4.4), naming the accepted CAs.
func (h *Handshake) sendCertificateRequest() {
	req := certificateRequestMsg{
		tls13:               h.vers == tls.VersionTLS13,
		signatureAlgorithms: clientAuthSchemes(h.vers),
		//lint:ignore SA1019 Subjects is deprecated only for system pools, which ClientCAs never is.
		certificateAuthorities: h.cfg.ClientCAs.Subjects(),
	}
	ev := h.event(Sent, "CertificateRequest")
	if !ev.omitted {
		ev.add("signature_algorithms", list(req.signatureAlgorithms, stringer))
		ev.add("certificate_authorities", strconv.Itoa(len(req.certificateAuthorities)))
	}
	h.sendMessage(req.marshal(), ev)
}

func (h *Handshake) traceServerCertificate(cert *Certificate) TraceEvent {
	return h.traceCertificates(Sent, len(cert.Chain), []string{cert.subject})
}

// processClientCertificate12 handles the TLS 1.2 client Certificate (RFC
// 5246, Section 7.4.6); its CertificateVerify, if any, follows the
// ClientKeyExchange.
func (h *Handshake) processClientCertificate12(body, raw []byte) error {
	var msg certificateMsg
	if !msg.unmarshal(body) {
		return fail(alertDecodeError, "malformed client Certificate")
	}
	if err := h.acceptClientCertificate(&msg, raw, alertHandshakeFailure); err != nil {
		return err
	}
	h.state = state12ClientKeyExchange
	return nil
}

// acceptClientCertificate takes the client's chain in either version: an
// empty one is allowed unless ClientAuthRequired (then the handshake fails
// with noCertificate, RFC 8446, Section 4.4.2.4; RFC 5246, Section 7.4.6);
// otherwise the chain must verify against ClientCAs.
func (h *Handshake) acceptClientCertificate(msg *certificateMsg, raw []byte, noCertificate Alert) error {
	h.transcript.write(raw)
	if len(msg.certificates) == 0 {
		h.note(h.traceCertificates(Received, 0, nil))
		if h.cfg.ClientAuth == ClientAuthRequired {
			return fail(noCertificate, "client sent no certificate")
		}
		return nil
	}
	certs, err := verifyClientChain(h.cfg, msg.certificates)
	if !h.omitTrace {
		subjects := make([]string, len(certs))
		for i, c := range certs {
			subjects[i] = c.Subject.String()
		}
		h.note(h.traceCertificates(Received, len(msg.certificates), subjects))
	}
	if err != nil {
		return err
	}
	h.peerCerts = make([][]byte, len(msg.certificates))
	for i, c := range msg.certificates {
		h.peerCerts[i] = slices.Clone(c)
	}
	h.peerKey = certs[0].PublicKey
	return nil
}

// processClientKeyExchange derives the TLS 1.2 master secret and keys from
// the client's key exchange (RFC 5246, Section 7.4.7; RFC 8422, Section 5.7).
func (h *Handshake) processClientKeyExchange(body, raw []byte) error {
	payload, ok := parseClientKeyExchange(body, h.kex == kexRSA)
	if !ok {
		return fail(alertDecodeError, "malformed ClientKeyExchange")
	}
	var preMaster []byte
	ev := h.event(Received, "ClientKeyExchange")
	if h.kex == kexRSA {
		ev.add("key_exchange", "RSA")
		// Bleichenbacher (RFC 5246, Section 7.4.7.1): a padding or version
		// error must be indistinguishable from success, in alerts and in
		// timing. KeyOps substitutes 48 pseudorandom bytes in that case and never
		// reports it; the handshake continues with whatever it returns, so a
		// wrong premaster only shows when the client's Finished record fails
		// to authenticate under the derived keys, exactly as for any other
		// wrong key. An error here is operational (the vault is unreachable),
		// never a property of the ciphertext.
		if h.keys == nil {
			return errNoKeyOps
		}
		// A ciphertext that is not of the modulus size cannot decrypt (RFC
		// 8017, Section 7.2.2, step 1). Its length is public, so there is
		// nothing to hide, but RFC 5246, Section 7.4.7.1 still has the
		// server "continue the handshake with a randomly generated premaster
		// secret" and send no alert of its own, as for any ciphertext that
		// fails (tlsfuzzer's test-invalid-rsa-key-exchange-messages.py
		// expects the Finished's bad_record_mac); the random premaster is
		// drawn here, with no key operation.
		if pub, ok := h.cfg.Certificates[h.cert].leaf.PublicKey.(*rsa.PublicKey); ok && len(payload) == pub.Size() {
			var err error
			preMaster, err = h.keys.DecryptPremaster(h.ctx, h.cfg.Certificates[h.cert].KeyRef, payload, h.clientVersion)
			if err != nil {
				return failWrap(alertInternalError, keyOpsError{err}, "premaster decryption")
			}
		} else {
			preMaster = make([]byte, masterSecretLength)
			if _, err := io.ReadFull(h.cfg.rand(), preMaster); err != nil {
				return failWrap(alertInternalError, err, "random premaster")
			}
		}
		if len(preMaster) != masterSecretLength {
			return fail(alertInternalError, "premaster decryption returned %d bytes, want 48", len(preMaster))
		}
	} else {
		if !ev.omitted {
			ev.add("key_exchange", "ECDHE "+h.group.String())
		}
		peer, err := h.ecdheKey.Curve().NewPublicKey(payload)
		if err == nil {
			preMaster, err = h.ecdheKey.ECDH(peer)
		}
		h.ecdheKey = nil
		if err != nil {
			return failWrap(alertIllegalParameter, err, "invalid client ECDHE public key")
		}
	}
	h.note(ev)
	h.transcript.write(raw)
	h.masterSecret, h.master12 = masterSecret(h.suite.Hash, preMaster, h.ems, h.transcript.sum(), h.clientRandom, h.serverRandom), nil
	clear(preMaster)
	h.clientKey, h.serverKey, h.clientIV, h.serverIV = h.masterPRF().KeyBlock(h.clientRandom, h.serverRandom, h.suite.KeyLen, h.suite.FixedIVLen)
	h.state = state12ChangeCipherSpec
	if h.peerKey != nil {
		h.state = state12ClientCertificateVerify
	}
	return nil
}

// processClientCertificateVerify12 checks the client's TLS 1.2
// CertificateVerify, a signature over the raw handshake messages so far
// (RFC 5246, Section 7.4.8).
func (h *Handshake) processClientCertificateVerify12(body, raw []byte) error {
	if err := h.verifyClientCertificateVerify(body, tls.VersionTLS12, h.transcript.raw); err != nil {
		return err
	}
	h.transcript.dropRaw()
	h.transcript.write(raw)
	h.state = state12ChangeCipherSpec
	return nil
}

// verifyClientCertificateVerify checks the client's proof of possession of
// its certificate key: a signature over signed with a scheme offered for
// vers that fits the key.
func (h *Handshake) verifyClientCertificateVerify(body []byte, vers uint16, signed []byte) error {
	var cv certificateVerifyMsg
	if !cv.unmarshal(body) {
		return fail(alertDecodeError, "malformed client CertificateVerify")
	}
	ev := h.event(Received, "CertificateVerify")
	ev.add("signature_scheme", cv.signatureAlgorithm.String())
	h.note(ev)
	if !slices.Contains(clientAuthSchemes(vers), cv.signatureAlgorithm) ||
		!sigscheme.Fits(cv.signatureAlgorithm, h.peerKey, vers) {
		return fail(alertIllegalParameter, "client signed with %v, not offered or not fitting its key", cv.signatureAlgorithm)
	}
	if err := verifySignature(cv.signatureAlgorithm, h.peerKey, signed, cv.signature); err != nil {
		return failWrap(alertDecryptError, err, "invalid client CertificateVerify signature")
	}
	return nil
}

// processClientFinished12 verifies the client's TLS 1.2 Finished, sends the
// server's ChangeCipherSpec and Finished and completes the handshake (RFC
// 5246, Section 7.4.9).
func (h *Handshake) processClientFinished12(body, raw []byte) error {
	if err := h.checkClientFinished(body, finishedVerifyData12(h.masterPRF(), "client finished", h.transcript.sum())); err != nil {
		return err
	}
	h.transcript.write(raw)
	if h.issueTicket {
		h.sendNewSessionTicket12(time.Time{})
	}
	if err := h.sendServerFinished12(); err != nil {
		return err
	}
	h.complete12(nil)
	return nil
}

// sendServerFinished12 sends the server's ChangeCipherSpec and Finished,
// which ends the full handshake and starts the abbreviated one (RFC 5246,
// Sections 7.1 and 7.4.9).
func (h *Handshake) sendServerFinished12() error {
	verifyData := finishedVerifyData12(h.masterPRF(), "server finished", h.transcript.sum())
	if err := h.sendChangeCipherSpec(); err != nil {
		return err
	}
	c, err := h.newCipher(nil, h.serverKey, h.serverIV, 0)
	if err != nil {
		return err
	}
	h.writeCipher = c
	h.sendMessage(marshalFinished(verifyData), h.event(Sent, "Finished"))
	return h.flush()
}

// complete12 completes a TLS 1.2 handshake once both Finished messages are
// through, or, with pending, once the server's are, leaving the client's to
// the caller (completeAtCaller12).
func (h *Handshake) complete12(pending *PendingFinished) {
	s := h.newSession()
	s.ExtendedMasterSecret = h.ems
	s.ClientKey, s.ClientIV, s.ServerKey, s.ServerIV = h.clientKey, h.clientIV, h.serverKey, h.serverIV
	s.ServerSeq = h.writeCipher.Seq()
	if pending != nil {
		// The client's Finished, which the caller opens, takes its
		// record 0.
		s.ClientSeq, s.PendingFinished = 1, pending
	} else {
		s.ClientSeq = h.readCipher.Seq()
	}
	h.complete(s)
}

// checkClientFinished compares the client's Finished with the expected
// verify_data in constant time; processMessages has checked its length.
func (h *Handshake) checkClientFinished(body, expected []byte) error {
	h.note(h.event(Received, "Finished"))
	if !hmac.Equal(body, expected) {
		return fail(alertDecryptError, "client Finished does not match the transcript")
	}
	return nil
}

// newSession records the negotiated parameters common to both versions; the
// version's Finished handler adds the keys.
func (h *Handshake) newSession() *Session {
	return &Session{
		Version:              h.vers,
		CipherSuite:          h.suite.ID,
		ServerName:           h.serverName,
		ALPN:                 h.alpn,
		Group:                h.group,
		SignatureScheme:      h.scheme,
		CertificateIndex:     h.cert,
		KeyRef:               h.cfg.Certificates[h.cert].KeyRef,
		PeerCertificates:     h.peerCerts,
		RecordPlaintextLimit: h.maxFragment(),
		DidHelloRetryRequest: h.didHRR,
		Resumed:              h.resumed,
	}
}

// complete records the session and drops what the caller does not need.
func (h *Handshake) complete(s *Session) {
	h.session = s
	h.state = stateComplete
	for _, secret := range [][]byte{h.masterSecret, h.clientHandshake, h.master13} {
		clear(secret)
	}
	h.masterSecret, h.master12, h.clientHandshake, h.master13 = nil, nil, nil, nil
	h.transcript, h.readCipher, h.writeCipher = nil, nil, nil
}

// helloFingerprint hashes the ClientHello fields a client must not change
// in its second ClientHello (RFC 8446, Section 4.1.2: everything but
// key_share, early_data, cookie, pre_shared_key and padding). Keeping a
// digest instead of the first ClientHello keeps the pending state small.
func helloFingerprint(ch *clientHelloMsg, withRecordLimit bool) []byte {
	var b bytes.Buffer
	put16 := func(v uint16) { b.WriteByte(byte(v >> 8)); b.WriteByte(byte(v)) }
	putBytes := func(p []byte) { put16(uint16(len(p))); b.Write(p) }
	putBool := func(v bool) {
		if v {
			b.WriteByte(1)
		} else {
			b.WriteByte(0)
		}
	}
	put16(ch.vers)
	putBytes(ch.random)
	putBytes(ch.sessionID)
	putBytes(ch.compressionMethods)
	put16(uint16(len(ch.cipherSuites)))
	for _, v := range ch.cipherSuites {
		put16(v)
	}
	put16(uint16(len(ch.supportedVersions)))
	for _, v := range ch.supportedVersions {
		put16(v)
	}
	put16(uint16(len(ch.supportedGroups)))
	for _, v := range ch.supportedGroups {
		put16(uint16(v))
	}
	for _, l := range [][]tls.SignatureScheme{ch.signatureAlgorithms, ch.signatureAlgorithmsCert} {
		put16(uint16(len(l)))
		for _, v := range l {
			put16(uint16(v))
		}
	}
	put16(uint16(len(ch.alpnProtocols)))
	for _, p := range ch.alpnProtocols {
		putBytes([]byte(p))
	}
	putBytes([]byte(ch.serverName))
	putBytes(ch.supportedPoints)
	putBytes(ch.pskModes)
	putBytes(ch.sessionTicket)
	putBytes(ch.secureRenegotiation)
	for _, v := range []bool{ch.ocspStapling, ch.scts, ch.extendedMasterSecret, ch.ticketSupported, ch.secureRenegotiationSupported} {
		putBool(v)
	}
	// Only when sent, so that the fingerprint of a ClientHello without it
	// is the one a replica of the previous release saved; and not at all
	// to compare with a fingerprint that release made (withRecordLimit
	// false), which leaves the extension out.
	if withRecordLimit && ch.has(extensionRecordSizeLimit) {
		put16(extensionRecordSizeLimit)
		put16(ch.recordSizeLimit)
	}
	sum := sha256.Sum256(b.Bytes())
	return sum[:]
}
