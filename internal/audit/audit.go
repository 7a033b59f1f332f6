// Package audit writes handshaked's audit log: one JSON object per line for
// every key use, every change, and every refused caller.
//
// An entry names who did what to which key and how it ended. It has no field
// for bytes: keys, plaintexts, premasters, signature inputs and session
// secrets have nowhere to go.
package audit

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"
)

// Entry is one audit record.
type Entry struct {
	Time      time.Time `json:"time"`
	RequestID string    `json:"request_id,omitempty"`
	// Caller is the authenticated identity; empty when there is none
	// (development mode, or a refused caller).
	Caller string `json:"caller"`
	// Peer is the network address the call came from.
	Peer string `json:"peer,omitempty"`
	// Operation is the API method ("KeyVault.Sign") or a service event
	// ("tls.client_certificate", "policy.reload").
	Operation string `json:"operation"`
	// Key and Version name the key acted on; for a handshake, the key that
	// authenticated it once it completed.
	Key     string `json:"key,omitempty"`
	Version uint32 `json:"version,omitempty"`
	// Keys are the keys a handshake was allowed to choose from, "id" or
	// "id/version".
	Keys []string `json:"keys,omitempty"`
	// Scheme is the signature scheme or the negotiated cipher suite; Mode
	// the decryption mode.
	Scheme string `json:"scheme,omitempty"`
	Mode   string `json:"mode,omitempty"`
	// Handshake is the handshake session id.
	Handshake string `json:"handshake,omitempty"`
	// Outcome is the gRPC status code name: "OK", "PERMISSION_DENIED", ...
	Outcome string `json:"outcome"`
	// Detail says why a caller was refused, or how a handshake step ended.
	Detail     string  `json:"detail,omitempty"`
	DurationMS float64 `json:"duration_ms"`
	// Reference is the caller's correlation reference of a batch, on the
	// entry of the batch and of each of its operations.
	Reference string `json:"reference,omitempty"`
}

// Log writes entries as JSON lines. It is safe for concurrent use; each
// entry is a single write, so lines never interleave.
type Log struct {
	path string // "" when writing to a stream that cannot be reopened

	mu sync.Mutex
	w  io.Writer
	f  *os.File // the open file when path != ""
}

// New returns a log writing to w (stdout, or a buffer in tests).
func New(w io.Writer) *Log { return &Log{w: w} }

// Open appends to the file at path, creating it with mode 0600. "-" is
// stdout.
func Open(path string) (*Log, error) {
	if path == "-" {
		return New(os.Stdout), nil
	}
	f, err := openFile(path)
	if err != nil {
		return nil, err
	}
	return &Log{path: path, w: f, f: f}, nil
}

func openFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("audit log: %w", err)
	}
	return f, nil
}

// Bounds of an entry's fields. Some come from what a caller sent (key ids,
// session ids); whatever it sent, a line stays within a few kilobytes.
const (
	maxFieldBytes  = 256
	maxDetailBytes = 512
	maxKeys        = 16
)

// truncate cuts s to at most n bytes, at a rune boundary, and says how much
// it cut.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…[" + strconv.Itoa(len(s)-cut) + " more bytes]"
}

// bounded is a copy of e with every field within its bound.
func (e *Entry) bounded() *Entry {
	b := *e
	for _, f := range []*string{&b.RequestID, &b.Caller, &b.Peer, &b.Operation, &b.Key, &b.Scheme, &b.Mode, &b.Handshake, &b.Outcome} {
		*f = truncate(*f, maxFieldBytes)
	}
	b.Detail = truncate(b.Detail, maxDetailBytes)
	if len(e.Keys) > 0 {
		n := min(len(e.Keys), maxKeys)
		b.Keys = make([]string, 0, n+1)
		for _, k := range e.Keys[:n] {
			b.Keys = append(b.Keys, truncate(k, maxFieldBytes))
		}
		if len(e.Keys) > n {
			b.Keys = append(b.Keys, "…["+strconv.Itoa(len(e.Keys)-n)+" more keys]")
		}
	}
	return &b
}

// Write appends e as one line, each field cut to its bound.
func (l *Log) Write(e *Entry) error {
	b, err := json.Marshal(e.bounded())
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	b = append(b, '\n')
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, err := l.w.Write(b); err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	return nil
}

// Reopen closes the file and opens path again, for an operator who has
// rotated it (moved it away and sent SIGHUP). Writing to stdout, it does
// nothing. If the file cannot be opened the old one stays in use.
func (l *Log) Reopen() error {
	if l.path == "" {
		return nil
	}
	f, err := openFile(l.path)
	if err != nil {
		return err
	}
	l.mu.Lock()
	old := l.f
	l.w, l.f = f, f
	l.mu.Unlock()
	return old.Close()
}

// Close closes the file, if any.
func (l *Log) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	l.w = io.Discard
	return err
}
