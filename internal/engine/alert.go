package engine

import (
	"errors"
	"fmt"

	"github.com/handshaked/handshaked/internal/engine/record"
)

// Alert is a TLS alert description (RFC 8446, Section 6; RFC 5246, Section 7.2).
type Alert uint8

const (
	alertLevelWarning = 1
	alertLevelFatal   = 2
)

const (
	alertCloseNotify            Alert = 0
	alertUnexpectedMessage      Alert = 10
	alertBadRecordMAC           Alert = 20
	alertRecordOverflow         Alert = 22
	alertHandshakeFailure       Alert = 40
	alertBadCertificate         Alert = 42
	alertUnsupportedCertificate Alert = 43
	alertCertificateExpired     Alert = 45
	alertIllegalParameter       Alert = 47
	alertUnknownCA              Alert = 48
	alertDecodeError            Alert = 50
	alertDecryptError           Alert = 51
	alertProtocolVersion        Alert = 70
	alertInternalError          Alert = 80
	alertInappropriateFallback  Alert = 86
	alertUserCanceled           Alert = 90
	alertNoRenegotiation        Alert = 100
	alertMissingExtension       Alert = 109
	alertUnsupportedExtension   Alert = 110
	alertUnrecognizedName       Alert = 112
	alertCertificateRequired    Alert = 116
	alertNoApplicationProtocol  Alert = 120
)

// String returns the RFC name of the alert, e.g. "handshake_failure".
func (a Alert) String() string {
	return record.AlertName(uint8(a))
}

// alertError is a handshake failure: the alert to send and a reason for the
// operator. Reasons describe what was wrong with the peer's messages; they never
// contain key material.
type alertError struct {
	alert  Alert
	reason string
	err    error // optional cause, e.g. from KeyOps or x509
}

func (e *alertError) Error() string {
	if e.err != nil {
		return e.reason + ": " + e.err.Error()
	}
	return e.reason
}

func (e *alertError) Unwrap() error { return e.err }

// fail builds an alertError with a formatted reason.
func fail(a Alert, format string, args ...any) error {
	return &alertError{alert: a, reason: fmt.Sprintf(format, args...)}
}

// failWrap builds an alertError that keeps err as its cause.
func failWrap(a Alert, err error, format string, args ...any) error {
	return &alertError{alert: a, reason: fmt.Sprintf(format, args...), err: err}
}

// alertOf returns the alert to send for err: the one it carries, or
// internal_error for anything else (the engine's own faults).
func alertOf(err error) Alert {
	var ae *alertError
	if errors.As(err, &ae) {
		return ae.alert
	}
	var ra interface{ Alert() uint8 }
	if errors.As(err, &ra) {
		return Alert(ra.Alert())
	}
	return alertInternalError
}
