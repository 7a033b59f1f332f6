package engine

import (
	"crypto/tls"
	"fmt"
	"strconv"
	"strings"

	"github.com/handshaked/handshaked/internal/engine/record"
)

// Direction says who sent a traced message.
type Direction int

const (
	Received Direction = iota // from the client
	Sent                      // to the client
)

func (d Direction) String() string {
	if d == Sent {
		return "sent"
	}
	return "received"
}

// TraceEvent is one message consumed or produced, decoded: its type and its
// salient fields (versions, suites, groups, SNI, ALPN, signature schemes,
// certificate subjects). It never carries key material.
type TraceEvent struct {
	Direction Direction
	Message   string // "ClientHello", "ChangeCipherSpec", "Alert", ...
	Fields    []TraceField

	// omitted: the event of a step whose trace is omitted
	// (Handshake.OmitTrace), which keeps no fields and is not kept.
	omitted bool
}

// TraceField is one decoded field of a traced message.
type TraceField struct {
	Key, Value string
}

// String renders the event on one line, e.g.
// "received ClientHello server_name=example.com alpn=h2,http/1.1".
func (e TraceEvent) String() string {
	var b strings.Builder
	b.WriteString(e.Direction.String())
	b.WriteByte(' ')
	b.WriteString(e.Message)
	for _, f := range e.Fields {
		fmt.Fprintf(&b, " %s=%s", f.Key, f.Value)
	}
	return b.String()
}

func (e *TraceEvent) add(key, value string) {
	if !e.omitted {
		e.Fields = append(e.Fields, TraceField{key, value})
	}
}

// event starts an event of the step's trace. Build its fields with add:
// those of a step whose trace is omitted are dropped as they come, and a
// value that takes work to compute (text from numbers, lists, subjects)
// is worth computing only when ev.omitted is false.
func (h *Handshake) event(d Direction, message string) TraceEvent {
	return TraceEvent{Direction: d, Message: message, omitted: h.omitTrace}
}

// note adds ev to the step's trace, unless the trace is omitted.
func (h *Handshake) note(ev TraceEvent) {
	if !h.omitTrace {
		h.trace = append(h.trace, ev)
	}
}

var messageNames = map[uint8]string{
	typeHelloRequest:        "HelloRequest",
	typeClientHello:         "ClientHello",
	typeServerHello:         "ServerHello",
	typeNewSessionTicket:    "NewSessionTicket",
	typeEndOfEarlyData:      "EndOfEarlyData",
	typeEncryptedExtensions: "EncryptedExtensions",
	typeCertificate:         "Certificate",
	typeServerKeyExchange:   "ServerKeyExchange",
	typeCertificateRequest:  "CertificateRequest",
	typeServerHelloDone:     "ServerHelloDone",
	typeCertificateVerify:   "CertificateVerify",
	typeClientKeyExchange:   "ClientKeyExchange",
	typeFinished:            "Finished",
	typeKeyUpdate:           "KeyUpdate",
}

func messageName(typ uint8) string {
	if n, ok := messageNames[typ]; ok {
		return n
	}
	return "handshake message type " + strconv.Itoa(int(typ))
}

func versionName(v uint16) string {
	switch v {
	case tls.VersionTLS13:
		return "TLS 1.3"
	case tls.VersionTLS12:
		return "TLS 1.2"
	case tls.VersionTLS11:
		return "TLS 1.1"
	case tls.VersionTLS10:
		return "TLS 1.0"
	case 0x0300:
		return "SSL 3.0"
	}
	return fmt.Sprintf("0x%04x", v)
}

// list formats values with f, comma-separated.
func list[T any](values []T, f func(T) string) string {
	parts := make([]string, len(values))
	for i, v := range values {
		parts[i] = f(v)
	}
	return strings.Join(parts, ",")
}

func stringer[T fmt.Stringer](v T) string { return v.String() }

func (h *Handshake) alertEvent(d Direction, level uint8, a Alert) TraceEvent {
	lvl := "fatal"
	if level == alertLevelWarning {
		lvl = "warning"
	}
	ev := h.event(d, "Alert")
	ev.add("level", lvl)
	ev.add("description", a.String())
	return ev
}

// noteClientHello traces the ClientHello fields that drive negotiation.
func (h *Handshake) noteClientHello(ch *clientHelloMsg) {
	if h.omitTrace {
		return
	}
	ev := h.event(Received, "ClientHello")
	ev.add("legacy_version", versionName(ch.vers))
	if len(ch.supportedVersions) > 0 {
		ev.add("supported_versions", list(ch.supportedVersions, versionName))
	}
	ev.add("cipher_suites", list(ch.cipherSuites, record.SuiteName))
	if ch.serverName != "" {
		ev.add("server_name", ch.serverName)
	}
	if len(ch.alpnProtocols) > 0 {
		ev.add("alpn", strings.Join(ch.alpnProtocols, ","))
	}
	if len(ch.supportedGroups) > 0 {
		ev.add("supported_groups", list(ch.supportedGroups, stringer))
	}
	if ch.has(extensionKeyShare) {
		ev.add("key_shares", list(ch.keyShares, func(ks keyShare) string { return ks.group.String() }))
	}
	if len(ch.signatureAlgorithms) > 0 {
		ev.add("signature_algorithms", list(ch.signatureAlgorithms, stringer))
	}
	ev.add("extended_master_secret", strconv.FormatBool(ch.extendedMasterSecret))
	switch {
	case len(ch.sessionTicket) > 0:
		ev.add("session_ticket", strconv.Itoa(len(ch.sessionTicket))+" bytes")
	case ch.ticketSupported:
		ev.add("session_ticket", "empty (asks for a ticket)")
	}
	ev.add("secure_renegotiation", strconv.FormatBool(ch.secureRenegotiationSupported))
	if len(ch.sessionID) > 0 {
		ev.add("legacy_session_id", strconv.Itoa(len(ch.sessionID))+" bytes")
	}
	if len(ch.pskModes) > 0 {
		ev.add("psk_key_exchange_modes", list(ch.pskModes, pskModeName))
	}
	if ch.pskOffered {
		ev.add("pre_shared_key", strconv.Itoa(len(ch.pskIdentities))+" identities")
	}
	if ch.earlyData {
		ev.add("early_data", "offered (refused)")
	}
	if ch.has(extensionRecordSizeLimit) {
		ev.add("record_size_limit", strconv.Itoa(int(ch.recordSizeLimit)))
	}
	h.note(ev)
}

func pskModeName(m uint8) string {
	switch m {
	case pskModeKE:
		return "psk_ke"
	case pskModeDHEKE:
		return "psk_dhe_ke"
	}
	return "mode " + strconv.Itoa(int(m))
}

// traceCertificates gives the length of a chain and the subjects of its
// first certificates.
func (h *Handshake) traceCertificates(d Direction, count int, subjects []string) TraceEvent {
	ev := h.event(d, "Certificate")
	if ev.omitted {
		return ev
	}
	ev.add("certificates", strconv.Itoa(count))
	for i, s := range subjects {
		ev.add("subject["+strconv.Itoa(i)+"]", s)
	}
	return ev
}
