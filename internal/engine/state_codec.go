package engine

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding"
	"errors"
	"fmt"

	"golang.org/x/crypto/cryptobyte"

	"github.com/handshaked/handshaked/internal/engine/record"
)

// The pending state of a handshake encodes to a compact binary form, so that
// the Step after next can run on another replica: everything but the Config,
// which the restoring side supplies. It contains secrets (handshake traffic
// secrets, the TLS 1.2 master secret and keys): whoever stores it must
// protect it like a private key, e.g. seal it with an AEAD.

// Version 2: a TLS 1.3 write cipher is under the application traffic
// secret; the dropped change_cipher_spec count. Version 3: per-version
// handshake states (state12_*, state13_*), numbered anew. Version 4: 16 bits
// of flags, with the resumption flag; the TLS 1.3 master secret kept for
// the resumption master secret; the TLS 1.2 abbreviated handshake states
// and the ticket promised in a full one. Version 5: the client's
// record_size_limit (RFC 8449) after the ClientHello's legacy_version. A
// handshake without one, or whose limit no longer counts (see
// MarshalBinary), is saved as version 4, which replicas of the previous
// release read, and version 4 reads as no limit. A state this
// release saves has flagFingerprintRecordLimit, which the previous release
// ignores, unless the previous release made its ClientHello fingerprint.
const stateCodecVersion = 5

// stateCodecNoRecordLimit is the version of a state whose client sent no
// record_size_limit, or one that no longer counts.
const stateCodecNoRecordLimit = 4

// stateFlags pack the booleans of the state.
const (
	flagEMS = 1 << iota
	flagClientAuth
	flagDidHRR
	flagSentCCS
	flagSkipEarlyData
	flagKeepRaw
	flagReadCipher
	flagWriteCipher
	flagResumed
	flagIssueTicket
	// flagFingerprintRecordLimit: the ClientHello fingerprint (hrrHello)
	// counts record_size_limit (RFC 8449); clear in the states of the
	// release before, which knew nothing of the extension.
	flagFingerprintRecordLimit
)

var errNotPending = errors.New("engine: only a handshake waiting for input can be saved")

// MarshalBinary encodes a handshake that waits for input (State NeedInput
// after its last Step). See RestoreHandshake.
func (h *Handshake) MarshalBinary() ([]byte, error) {
	if h.state == stateComplete || h.state == stateFailed {
		return nil, errNotPending
	}
	var flags uint16
	set := func(bit uint16, on bool) {
		if on {
			flags |= bit
		}
	}
	set(flagEMS, h.ems)
	set(flagClientAuth, h.clientAuth)
	set(flagDidHRR, h.didHRR)
	set(flagSentCCS, h.sentCCS)
	set(flagSkipEarlyData, h.skipEarlyData)
	set(flagKeepRaw, h.transcript != nil && h.transcript.keep)
	set(flagReadCipher, h.readCipher != nil)
	set(flagWriteCipher, h.writeCipher != nil)
	set(flagResumed, h.resumed)
	set(flagIssueTicket, h.issueTicket)
	set(flagFingerprintRecordLimit, !h.hrrHelloWithoutLimit)
	var suiteID uint16
	if h.suite != nil {
		suiteID = h.suite.ID
	}
	var transcriptState, transcriptRaw []byte
	if h.transcript != nil {
		var err error
		if transcriptState, err = h.transcript.state.(encoding.BinaryMarshaler).MarshalBinary(); err != nil {
			return nil, fmt.Errorf("engine: saving transcript: %w", err)
		}
		transcriptRaw = h.transcript.raw
	}
	var ecdheKey []byte
	if h.ecdheKey != nil {
		ecdheKey = h.ecdheKey.Bytes()
	}
	// The client's record_size_limit is saved (version 5) only while it
	// counts: until it is answered (waiting for the second ClientHello)
	// and while it holds records below 2^14. Else the state is version 4,
	// which a replica of the previous release reads, so that during a
	// rolling upgrade a handshake of a client that sends the protocol's
	// maximum (GnuTLS, Firefox) may go on there.
	limit := h.recordLimit
	if h.state != state13SecondClientHello && h.maxFragment() == record.MaxPlaintext {
		limit = 0
	}
	var b cryptobyte.Builder
	codecVersion := uint8(stateCodecVersion)
	if limit == 0 {
		codecVersion = stateCodecNoRecordLimit
	}
	b.AddUint8(codecVersion)
	b.AddUint8(uint8(h.state))
	b.AddUint16(flags)
	b.AddUint8(h.droppedCCS)
	for _, v := range []uint16{h.vers, suiteID, uint16(h.kex), uint16(h.group), uint16(h.cert), uint16(h.scheme), h.clientVersion} {
		b.AddUint16(v)
	}
	if limit != 0 {
		b.AddUint16(limit)
	}
	b.AddUint32(uint32(h.skippedEarlyData))
	if h.readCipher != nil {
		b.AddUint64(h.readCipher.Seq())
	}
	if h.writeCipher != nil {
		b.AddUint64(h.writeCipher.Seq())
	}
	for _, v := range [][]byte{[]byte(h.serverName), []byte(h.alpn), h.clientRandom, h.serverRandom, h.sessionID,
		h.hrrHello, ecdheKey, h.masterSecret, h.clientKey, h.clientIV, h.serverKey, h.serverIV,
		h.clientHandshake, h.clientTraffic, h.serverTraffic, h.exporterSecret, h.master13, transcriptState} {
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(v) })
	}
	for _, v := range [][]byte{h.inBuf, h.hsBuf, transcriptRaw} {
		b.AddUint24LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(v) })
	}
	b.AddUint24LengthPrefixed(func(b *cryptobyte.Builder) {
		for _, c := range h.peerCerts {
			b.AddUint24LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(c) })
		}
	})
	return b.Bytes()
}

var errBadState = errors.New("engine: malformed saved handshake")

// RestoreHandshake rebuilds a handshake saved by MarshalBinary. cfg must be
// the configuration the handshake started with (the same certificates in
// the same order); the saved state refers to it by index.
func RestoreHandshake(cfg *Config, data []byte) (*Handshake, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	h := &Handshake{cfg: cfg}
	s := cryptobyte.String(data)
	var codecVersion, state uint8
	var flags, suiteID, kex, group, cert, scheme uint16
	if !s.ReadUint8(&codecVersion) || (codecVersion != stateCodecVersion && codecVersion != stateCodecNoRecordLimit) ||
		!s.ReadUint8(&state) || !s.ReadUint16(&flags) || !s.ReadUint8(&h.droppedCCS) ||
		!s.ReadUint16(&h.vers) || !s.ReadUint16(&suiteID) || !s.ReadUint16(&kex) || !s.ReadUint16(&group) ||
		!s.ReadUint16(&cert) || !s.ReadUint16(&scheme) || !s.ReadUint16(&h.clientVersion) ||
		(codecVersion == stateCodecVersion && (!s.ReadUint16(&h.recordLimit) || h.recordLimit < minRecordSizeLimit)) {
		return nil, errBadState
	}
	h.state, h.kex, h.group, h.cert, h.scheme = handshakeState(state), keyExchange(kex), tls.CurveID(group), int(cert), tls.SignatureScheme(scheme)
	h.ems, h.clientAuth, h.didHRR = flags&flagEMS != 0, flags&flagClientAuth != 0, flags&flagDidHRR != 0
	h.sentCCS, h.skipEarlyData = flags&flagSentCCS != 0, flags&flagSkipEarlyData != 0
	h.resumed, h.issueTicket = flags&flagResumed != 0, flags&flagIssueTicket != 0
	// During a rolling upgrade the first ClientHello may have gone to a
	// replica of the previous release, which ignored the client's
	// record_size_limit: the second ClientHello's is then the one to keep.
	h.hrrHelloWithoutLimit = flags&flagFingerprintRecordLimit == 0
	var skipped uint32
	var readSeq, writeSeq uint64
	if !s.ReadUint32(&skipped) ||
		(flags&flagReadCipher != 0 && !s.ReadUint64(&readSeq)) ||
		(flags&flagWriteCipher != 0 && !s.ReadUint64(&writeSeq)) {
		return nil, errBadState
	}
	h.skippedEarlyData = int(skipped)
	var serverName, alpn, ecdheKey, transcriptState, transcriptRaw []byte
	for _, v := range []*[]byte{&serverName, &alpn, &h.clientRandom, &h.serverRandom, &h.sessionID,
		&h.hrrHello, &ecdheKey, &h.masterSecret, &h.clientKey, &h.clientIV, &h.serverKey, &h.serverIV,
		&h.clientHandshake, &h.clientTraffic, &h.serverTraffic, &h.exporterSecret, &h.master13, &transcriptState} {
		if !readCopy(&s, v, (*cryptobyte.String).ReadUint16LengthPrefixed) {
			return nil, errBadState
		}
	}
	for _, v := range []*[]byte{&h.inBuf, &h.hsBuf, &transcriptRaw} {
		if !readCopy(&s, v, (*cryptobyte.String).ReadUint24LengthPrefixed) {
			return nil, errBadState
		}
	}
	var certs cryptobyte.String
	if !s.ReadUint24LengthPrefixed(&certs) || !s.Empty() {
		return nil, errBadState
	}
	for !certs.Empty() {
		var c []byte
		if !readCopy(&certs, &c, (*cryptobyte.String).ReadUint24LengthPrefixed) {
			return nil, errBadState
		}
		h.peerCerts = append(h.peerCerts, c)
	}
	h.serverName, h.alpn = string(serverName), string(alpn)
	if err := h.restoreDerived(suiteID, flags, readSeq, writeSeq, ecdheKey, transcriptState, transcriptRaw); err != nil {
		return nil, err
	}
	return h, nil
}

// readCopy reads a length-prefixed value into a fresh slice (nil if empty),
// so that the handshake does not keep the caller's buffer.
func readCopy(s *cryptobyte.String, out *[]byte, read func(*cryptobyte.String, *cryptobyte.String) bool) bool {
	var v cryptobyte.String
	if !read(s, &v) {
		return false
	}
	if len(v) > 0 {
		*out = append([]byte(nil), v...)
	}
	return true
}

// restoreDerived rebuilds what the encoding leaves out because it follows
// from the rest: the suite, ciphers, transcript hash, ECDHE key and the
// client's public key.
func (h *Handshake) restoreDerived(suiteID, flags uint16, readSeq, writeSeq uint64, ecdheKey, transcriptState, transcriptRaw []byte) error {
	if h.state >= stateComplete || h.cert >= len(h.cfg.Certificates) ||
		h.state.version() != h.vers {
		return errBadState
	}
	if suiteID != 0 {
		var ok bool
		if h.suite, ok = record.SuiteByID(suiteID); !ok || h.suite.TLS13 != (h.vers == tls.VersionTLS13) {
			return errBadState
		}
	}
	if transcriptState != nil {
		if h.suite == nil {
			return errBadState
		}
		h.transcript = newTranscript(h.suite.Hash, flags&flagKeepRaw != 0)
		if err := h.transcript.state.(encoding.BinaryUnmarshaler).UnmarshalBinary(transcriptState); err != nil {
			return fmt.Errorf("%w: transcript: %w", errBadState, err)
		}
		h.transcript.raw = transcriptRaw
	}
	if ecdheKey != nil {
		curve := ecdhCurve(h.group)
		if curve == nil {
			return errBadState
		}
		key, err := curve.NewPrivateKey(ecdheKey)
		if err != nil {
			return fmt.Errorf("%w: ECDHE key: %w", errBadState, err)
		}
		h.ecdheKey = key
	}
	if len(h.peerCerts) > 0 {
		leaf, err := x509.ParseCertificate(h.peerCerts[0])
		if err != nil {
			return fmt.Errorf("%w: client certificate: %w", errBadState, err)
		}
		h.peerKey = leaf.PublicKey
	}
	if !h.consistent(flags) {
		return errBadState
	}
	var err error
	if flags&flagReadCipher != 0 {
		if h.readCipher, err = h.newCipher(h.clientHandshake, h.clientKey, h.clientIV, readSeq); err != nil {
			return fmt.Errorf("%w: %w", errBadState, err)
		}
	}
	if flags&flagWriteCipher != 0 {
		// TLS 1.3 saves only after the server's Finished, when it writes
		// under the application traffic secret.
		if h.writeCipher, err = h.newCipher(h.serverTraffic, h.serverKey, h.serverIV, writeSeq); err != nil {
			return fmt.Errorf("%w: %w", errBadState, err)
		}
	}
	return nil
}

// consistent checks that the restored state has what its handshake state
// needs, so that a damaged encoding fails here rather than in a later Step.
func (h *Handshake) consistent(flags uint16) bool {
	switch {
	case h.state == stateClientHello:
		return h.transcript == nil
	case h.suite == nil || h.transcript == nil || len(h.clientRandom) != 32:
		return false
	case h.state == state13SecondClientHello:
		return h.didHRR && len(h.hrrHello) == sha256.Size && groupSupported(h.group)
	case h.vers == tls.VersionTLS13:
		return len(h.clientHandshake) == h.suite.Hash.Size() && len(h.serverTraffic) == h.suite.Hash.Size() &&
			(h.master13 == nil || len(h.master13) == h.suite.Hash.Size()) &&
			(h.state != state13ClientCertificateVerify || h.peerKey != nil) &&
			(!h.resumed || (h.state == state13ClientFinished && !h.clientAuth)) // no CertificateRequest when resumed
	case h.state == state12ClientCertificate || h.state == state12ClientKeyExchange:
		return h.kex == kexRSA || (h.kex != 0 && h.kex <= kexECDHEECDSA && h.ecdheKey != nil)
	case h.state == state12ClientCertificateVerify:
		return h.peerKey != nil
	case h.state == state12ResumeChangeCipherSpec || h.state == state12ResumeClientFinished:
		// The abbreviated handshake waits with the server's write keys.
		return h.resumed && flags&flagWriteCipher != 0 && len(h.masterSecret) == masterSecretLength
	}
	return !h.resumed && len(h.masterSecret) == masterSecretLength // ChangeCipherSpec or Finished
}
