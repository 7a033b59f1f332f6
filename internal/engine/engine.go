// Package engine implements the server side of the TLS 1.2 (RFC 5246) and
// TLS 1.3 (RFC 8446) handshakes as a sans-I/O state machine.
//
// The caller relays the client's raw bytes to Handshake.Step and writes back
// StepResult.Output. The engine never touches a socket and never holds a
// private key: signatures and RSA premaster decryption go through KeyOps. On
// Complete, Handshake.Session returns the negotiated parameters and the
// session keys, so that the caller can run the record layer itself (see the
// record subpackage).
//
// With Config.Tickets, the engine issues session tickets and resumes from
// them (TLS 1.3 PSK with (EC)DHE, RFC 8446, Section 2.2; TLS 1.2, RFC 5077):
// TicketKeys seals what a resumption needs, so that any server holding the
// same ticket keys resumes any other's sessions. A TLS 1.3 ticket goes out
// in the Output of the completing Step, protected under the server's
// application traffic key, and Session.ServerSeq counts it (with
// Config.CallerVerifiesFinished, in Session.PendingFinished.Output, for the
// caller to write once it has verified the client's Finished). A ticket
// that does not open or fit gives a full handshake, never an error.
//
// A Handshake keeps its state in plain values (byte slices, integers, hash
// states): no goroutines, channels or callbacks. Between two Steps it can be
// saved with MarshalBinary and continued elsewhere with RestoreHandshake.
package engine

import (
	"context"
	"crypto"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/handshaked/handshaked/internal/engine/record"
	"github.com/handshaked/handshaked/internal/sigscheme"
)

// KeyOps performs the private-key operations of a handshake. The key vault
// implements it; the engine never sees key bytes.
type KeyOps interface {
	// Sign signs message, the whole to-be-signed content, with the key named
	// keyRef under scheme; the implementation hashes as the scheme says
	// (RSASSA-PSS with salt length equal to the hash length for rsa_pss_*).
	Sign(ctx context.Context, keyRef string, scheme tls.SignatureScheme, message []byte) ([]byte, error)
	// SignatureSchemes returns the schemes the key named keyRef can sign
	// with at TLS version vers (tls.VersionTLS12 or tls.VersionTLS13), most
	// preferred first. The key, not the engine, knows what it can produce
	// (RFC 8446, Section 4.2.3 binds an ECDSA scheme to a curve in TLS 1.3
	// only; a hardware key may lack RSA-PSS); the engine picks among them
	// the one the client prefers.
	SignatureSchemes(ctx context.Context, keyRef string, vers uint16) ([]tls.SignatureScheme, error)
	// DecryptPremaster decrypts a TLS 1.2 RSA EncryptedPreMasterSecret with
	// implicit rejection (RFC 5246, Section 7.4.7.1): it always returns 48
	// bytes, a substitute that looks random (and is the same for the same
	// ciphertext, so asking twice tells nothing) when the padding or the
	// version (clientVersion, the ClientHello's legacy_version) is wrong, and
	// fails only for operational reasons, never for properties of the
	// ciphertext.
	DecryptPremaster(ctx context.Context, keyRef string, ciphertext []byte, clientVersion uint16) ([]byte, error)
}

// Certificate is a certificate chain and the reference of its private key.
// Build it with NewCertificate, which parses the leaf once.
type Certificate struct {
	Chain  [][]byte // DER, leaf first
	KeyRef string   // passed to KeyOps

	leaf    *x509.Certificate
	subject string // for traces
}

// NewCertificate parses the leaf of chain and checks that its key type is one
// the engine can sign with (RSA, ECDSA P-256/P-384/P-521, Ed25519).
func NewCertificate(chain [][]byte, keyRef string) (Certificate, error) {
	if len(chain) == 0 {
		return Certificate{}, errors.New("engine: empty certificate chain")
	}
	leaf, err := x509.ParseCertificate(chain[0])
	if err != nil {
		return Certificate{}, fmt.Errorf("engine: parsing leaf certificate: %w", err)
	}
	if sigscheme.ForKey(leaf.PublicKey, tls.VersionTLS12) == nil {
		return Certificate{}, fmt.Errorf("engine: unsupported %v public key in leaf certificate", leaf.PublicKeyAlgorithm)
	}
	return Certificate{Chain: chain, KeyRef: keyRef, leaf: leaf, subject: leaf.Subject.String()}, nil
}

// Leaf returns the parsed leaf certificate.
func (c *Certificate) Leaf() *x509.Certificate { return c.leaf }

// ClientAuthMode says whether the server asks for a client certificate.
type ClientAuthMode int

const (
	// ClientAuthOff sends no CertificateRequest.
	ClientAuthOff ClientAuthMode = iota
	// ClientAuthOptional requests a certificate and verifies it if one is sent.
	ClientAuthOptional
	// ClientAuthRequired requests a certificate and fails without a valid one.
	ClientAuthRequired
)

// Config is the server configuration of a handshake. It is read, never
// written, by the engine; one Config may serve any number of handshakes
// concurrently but must not change while they run.
type Config struct {
	// Certificates to choose from by SNI (RFC 6066): the first whose leaf
	// is valid for the client's server_name and fits what the client
	// supports; the first of all is the default.
	Certificates []Certificate
	// MinVersion and MaxVersion bound the protocol version. Zero means TLS
	// 1.2 and TLS 1.3; nothing below TLS 1.2 is ever negotiated.
	MinVersion, MaxVersion uint16
	// CipherSuites are the TLS 1.2 suites in order of preference; nil means
	// all supported ones, ECDHE first and RSA key exchange last.
	CipherSuites []uint16
	// CipherSuitesTLS13 are the TLS 1.3 suites in order of preference; nil
	// means AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305.
	CipherSuitesTLS13 []uint16
	// Groups are the key exchange groups in order of preference; nil means
	// X25519MLKEM768 (TLS 1.3 only), X25519, P-256, P-384, P-521.
	Groups []tls.CurveID
	// NextProtos are the ALPN protocols in order of preference (RFC 7301).
	NextProtos []string
	// ClientAuth selects client certificate authentication, verified against
	// ClientCAs (required unless ClientAuth is ClientAuthOff).
	ClientAuth ClientAuthMode
	ClientCAs  *x509.CertPool
	// Rand is the source of the hello randoms; nil means crypto/rand.
	Rand io.Reader
	// Time returns the current time for certificate and ticket checks; nil
	// means time.Now.
	Time func() time.Time

	// Tickets seals and opens session tickets; nil means the server neither
	// issues nor accepts any (every handshake is a full one).
	Tickets TicketKeys
	// DisableTLS12Tickets turns TLS 1.2 tickets (RFC 5077) off while TLS 1.3
	// ones stay: a TLS 1.2 ticket carries the master secret, so a stolen
	// ticket key decrypts the sessions of every ticket it sealed, whereas a
	// TLS 1.3 psk_dhe_ke resumption keeps forward secrecy.
	DisableTLS12Tickets bool
	// TicketLifetime is how long a ticket may be used after it was issued;
	// zero means, and no value may exceed, 7 days (RFC 8446, Section 4.6.1).
	TicketLifetime time.Duration

	// CallerVerifiesFinished completes a TLS 1.3 handshake that asks for no
	// client certificate, and a TLS 1.2 abbreviated handshake (resumed from
	// a ticket), as soon as the server's flight is built: the client's
	// Finished is fixed by then, so Session.PendingFinished carries the
	// Finished expected (and in TLS 1.3 the key to read it), and the caller
	// verifies it before it uses the session keys (see finished_at_caller.go).
	// A full TLS 1.2 handshake, whose client Finished comes before the
	// server's, and TLS 1.3 with a CertificateRequest complete on the
	// client's Finished as without it.
	CallerVerifiesFinished bool

	// CallerHonorsRecordSizeLimit: the caller keeps the records it
	// protects within Session.RecordPlaintextLimit, so a client's
	// record_size_limit is answered and in force (RFC 8449, Section 4).
	// Without it the extension is ignored, unanswered: a caller that knows
	// nothing of the limit writes records of 2^14, which a client must
	// take when its limit was not negotiated.
	CallerHonorsRecordSizeLimit bool
}

func (c *Config) rand() io.Reader {
	if c.Rand != nil {
		return c.Rand
	}
	return rand.Reader
}

func (c *Config) now() time.Time {
	if c.Time != nil {
		return c.Time()
	}
	return time.Now()
}

func (c *Config) versions() (lo, hi uint16) {
	lo, hi = c.MinVersion, c.MaxVersion
	if lo == 0 {
		lo = tls.VersionTLS12
	}
	if hi == 0 {
		hi = tls.VersionTLS13
	}
	return lo, hi
}

func (c *Config) suites12() []uint16 {
	if c.CipherSuites != nil {
		return c.CipherSuites
	}
	return defaultCipherSuites12
}

func (c *Config) suites13() []uint16 {
	if c.CipherSuitesTLS13 != nil {
		return c.CipherSuitesTLS13
	}
	return defaultCipherSuitesTLS13
}

func (c *Config) groups() []tls.CurveID {
	if c.Groups != nil {
		return c.Groups
	}
	return defaultGroups
}

// check reports configuration errors that would make every handshake fail.
func (c *Config) check() error {
	if len(c.Certificates) == 0 {
		return errors.New("engine: no certificates configured")
	}
	for i := range c.Certificates {
		if c.Certificates[i].leaf == nil {
			return fmt.Errorf("engine: certificate %d was not built with NewCertificate", i)
		}
	}
	lo, hi := c.versions()
	if lo < tls.VersionTLS12 || hi > tls.VersionTLS13 || lo > hi {
		return fmt.Errorf("engine: version range %#04x-%#04x outside TLS 1.2-1.3", lo, hi)
	}
	for _, id := range c.suites12() {
		if _, ok := suite12ByID(id); !ok {
			return fmt.Errorf("engine: unsupported TLS 1.2 cipher suite %s", tls.CipherSuiteName(id))
		}
	}
	for _, id := range c.suites13() {
		if !slices.Contains(defaultCipherSuitesTLS13, id) {
			return fmt.Errorf("engine: unsupported TLS 1.3 cipher suite %s", tls.CipherSuiteName(id))
		}
	}
	for _, g := range c.groups() {
		if !groupSupported(g) {
			return fmt.Errorf("engine: unsupported group %v", g)
		}
	}
	if c.ClientAuth != ClientAuthOff && c.ClientCAs == nil {
		return errors.New("engine: client authentication needs ClientCAs")
	}
	return c.checkTickets()
}

// State is the outcome of a Step.
type State int

const (
	// NeedInput: write Output (if any) and call Step again with the
	// client's next bytes.
	NeedInput State = iota
	// Complete: write Output; Handshake.Session has the keys.
	Complete
	// Failed: write Alert (if any) and close the connection.
	Failed
)

func (s State) String() string {
	switch s {
	case NeedInput:
		return "NEED_INPUT"
	case Complete:
		return "COMPLETE"
	case Failed:
		return "FAILED"
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// StepResult is what one Step produced.
type StepResult struct {
	// Output is the bytes to write to the client, in order.
	Output []byte
	// Consumed is how many bytes of the input the engine took: all of them
	// on NeedInput (partial records are buffered inside the Handshake); on
	// Complete, those up to the end of the record carrying the client's
	// Finished, since what follows belongs to the record layer; on Failed,
	// those up to the offending record.
	Consumed int
	State    State
	// On Failed: Alert is the alert record to send (protected once the
	// client holds the server's write keys: in TLS 1.3 the application
	// traffic keys after the server's Finished), nil when the client sent a
	// fatal alert itself; AlertDescription is the alert sent or received;
	// Reason says what went wrong, without secrets.
	Alert            []byte
	AlertDescription Alert
	Reason           string
	// Trace lists the messages consumed and produced in this step; it is
	// empty when the Handshake omits it (OmitTrace).
	Trace []TraceEvent
}

// Session is the result of a completed handshake. It holds session keys:
// keep it away from logs (its String method prints no secret).
type Session struct {
	Version          uint16
	CipherSuite      uint16
	ServerName       string
	ALPN             string
	Group            tls.CurveID         // 0 for RSA key exchange; a resumed TLS 1.2 session's is the original's
	SignatureScheme  tls.SignatureScheme // of the server's signature; 0 for RSA key exchange and resumptions
	CertificateIndex int                 // into Config.Certificates
	KeyRef           string
	PeerCertificates [][]byte // the client's chain, DER, leaf first
	// ExtendedMasterSecret reports RFC 7627 in TLS 1.2 (always true in 1.3).
	ExtendedMasterSecret bool
	DidHelloRetryRequest bool
	// RecordPlaintextLimit is the most plaintext bytes the server may put
	// in one record it protects with the session's keys: record.MaxPlaintext
	// (2^14), or fewer as the client's record_size_limit says (RFC 8449,
	// Section 4; in TLS 1.3 one byte fewer than the limit, which counts
	// the inner content type).
	RecordPlaintextLimit int
	// Resumed reports an abbreviated handshake from a session ticket: no
	// certificate was sent and no private-key operation made.
	// PeerCertificates are those the ticket carried forward; ServerName is
	// the resuming ClientHello's (RFC 8446, Section 4.6.1), equal to the
	// ticket's but for case; ALPN is the connection's (RFC 7301, Section
	// 3.1), in TLS 1.3 also equal to the ticket's.
	Resumed bool

	// Record keys. TLS 1.2: the write keys and fixed IVs of the key block
	// (4-byte salt for AES-GCM, 12 bytes for ChaCha20-Poly1305); TLS 1.3:
	// the keys and IVs of the application traffic secrets.
	ClientKey, ClientIV []byte
	ServerKey, ServerIV []byte
	// ClientSeq and ServerSeq are the next record sequence numbers (1 after
	// the TLS 1.2 Finished messages, 0 in TLS 1.3).
	ClientSeq, ServerSeq uint64

	// TLS 1.3 only: application traffic secrets (for KeyUpdate) and the
	// exporter master secret (RFC 8446, Section 7.5).
	ClientTrafficSecret, ServerTrafficSecret []byte
	ExporterMasterSecret                     []byte

	// PendingFinished, with Config.CallerVerifiesFinished, is the client's
	// Finished the caller must verify before it uses any key above; nil
	// when the engine verified it.
	PendingFinished *PendingFinished
}

// String describes the session without its secrets.
func (s *Session) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s", versionName(s.Version), tls.CipherSuiteName(s.CipherSuite))
	if s.Group != 0 {
		fmt.Fprintf(&b, " group=%v", s.Group)
	}
	if s.ServerName != "" {
		fmt.Fprintf(&b, " sni=%s", s.ServerName)
	}
	if s.ALPN != "" {
		fmt.Fprintf(&b, " alpn=%s", s.ALPN)
	}
	fmt.Fprintf(&b, " cert=%d peer_certs=%d", s.CertificateIndex, len(s.PeerCertificates))
	if s.Resumed {
		b.WriteString(" resumed")
	}
	return b.String()
}

// GoString keeps %#v from printing the keys.
func (s *Session) GoString() string { return "engine.Session{" + s.String() + "}" }

// handshakeState is where the server is in the handshake: which message it
// expects next. Each version has its own states, as BoringSSL's
// state12_*/state13_* and rustls's Expect* types, one handler per state
// (see steps in conn.go), so that a handler never branches on the version
// and a new step (resumption, for one) is a new state.
type handshakeState uint8

const (
	// stateClientHello: the version is not negotiated yet.
	stateClientHello handshakeState = iota

	// TLS 1.2, RFC 5246, Section 7.3.
	state12ClientCertificate
	state12ClientKeyExchange
	state12ClientCertificateVerify
	state12ChangeCipherSpec
	state12ClientFinished
	// Abbreviated handshake, RFC 5246, Section 7.3: after the server's
	// Finished.
	state12ResumeChangeCipherSpec
	state12ResumeClientFinished

	// TLS 1.3, RFC 8446, Section 2.
	state13SecondClientHello
	state13ClientCertificate
	state13ClientCertificateVerify
	state13ClientFinished

	stateComplete
	stateFailed
)

var stateNames = [...]string{
	stateClientHello:               "ClientHello",
	state12ClientCertificate:       "client Certificate",
	state12ClientKeyExchange:       "ClientKeyExchange",
	state12ClientCertificateVerify: "client CertificateVerify",
	state12ChangeCipherSpec:        "ChangeCipherSpec",
	state12ClientFinished:          "client Finished",
	state12ResumeChangeCipherSpec:  "ChangeCipherSpec",
	state12ResumeClientFinished:    "client Finished",
	state13SecondClientHello:       "second ClientHello",
	state13ClientCertificate:       "client Certificate",
	state13ClientCertificateVerify: "client CertificateVerify",
	state13ClientFinished:          "client Finished",
	stateComplete:                  "complete",
	stateFailed:                    "failed",
}

// version is the protocol version a pending state belongs to, 0 before the
// ClientHello is processed.
func (s handshakeState) version() uint16 {
	switch {
	case s >= state12ClientCertificate && s <= state12ResumeClientFinished:
		return tls.VersionTLS12
	case s >= state13SecondClientHello && s <= state13ClientFinished:
		return tls.VersionTLS13
	}
	return 0
}

// Handshake is the server side of one TLS handshake. It is not safe for
// concurrent use: Steps of one handshake are sequential by nature.
//
// The cipher, hash and key objects among its fields are working forms of
// plain values (secrets, sequence numbers, marshalled hash state) that
// MarshalBinary writes out; see state_codec.go.
type Handshake struct {
	cfg   *Config
	state handshakeState

	// Input: at most one partial record, and handshake bytes not yet forming
	// a whole message.
	inBuf []byte
	hsBuf []byte
	// readCipher and writeCipher protect records once keys are in use.
	readCipher, writeCipher *record.Cipher

	// Negotiated parameters and state of either version.
	vers         uint16
	suite        *record.Suite
	group        tls.CurveID
	cert         int
	scheme       tls.SignatureScheme
	serverName   string
	alpn         string
	clientRandom []byte
	serverRandom []byte
	clientAuth   bool // a CertificateRequest was sent
	resumed      bool // from a session ticket
	transcript   *transcript
	peerCerts    [][]byte
	peerKey      crypto.PublicKey
	// recordLimit is the client's record_size_limit, 0 if it sent none
	// (see record_size_limit.go).
	recordLimit uint16

	// What only one version's states use.
	handshake12
	handshake13

	session *Session

	// Per-step scratch, reset by every Step (the context and KeyOps of the
	// Step in progress, and what it produces).
	ctx    context.Context
	keys   KeyOps
	out    []byte
	flight []byte
	trace  []TraceEvent

	// omitTrace: Steps leave StepResult.Trace empty (OmitTrace).
	omitTrace bool
}

// handshake12 is what only the TLS 1.2 states (state12_*) use.
type handshake12 struct {
	kex           keyExchange
	clientVersion uint16 // ClientHello.legacy_version, for the RSA premaster check
	ems           bool   // RFC 7627
	// issueTicket: the ServerHello promised a NewSessionTicket (RFC 5077,
	// Section 3.2).
	issueTicket bool
	// Secrets: the ECDHE key until ClientKeyExchange, the master secret and
	// the key block.
	ecdheKey     *ecdh.PrivateKey
	masterSecret []byte
	// master12 is masterSecret keyed into the PRF (masterPRF), not saved
	// with the state.
	master12            *record.Secret12
	clientKey, clientIV []byte
	serverKey, serverIV []byte
}

// handshake13 is what only the TLS 1.3 states (state13_*) use.
type handshake13 struct {
	didHRR     bool
	sentCCS    bool   // compatibility change_cipher_spec sent
	droppedCCS uint8  // change_cipher_spec records dropped in this wait (maxDroppedCCS)
	sessionID  []byte // echoed, RFC 8446, Section 4.1.3
	hrrHello   []byte // fingerprint of ClientHello1, see helloFingerprint
	// hrrHelloWithoutLimit: a replica of a release that did not know
	// record_size_limit (RFC 8449) sent the HelloRetryRequest and saved
	// the state, so hrrHello leaves the extension out and recordLimit is
	// not the client's (see RestoreHandshake).
	hrrHelloWithoutLimit bool
	// skipEarlyData is set while records may be 0-RTT data the server
	// refused; skippedEarlyData counts their bytes (RFC 8446, Section 4.2.10).
	skipEarlyData    bool
	skippedEarlyData int
	// Secrets: the client handshake traffic secret and the application and
	// exporter secrets (the server's handshake traffic secret lives only
	// while its flight is written).
	clientHandshake []byte
	clientTraffic   []byte
	serverTraffic   []byte
	exporterSecret  []byte
	// master13 is the master secret, kept until the client's Finished when
	// tickets are on: the resumption master secret covers that Finished.
	master13 []byte
}

// NewHandshake starts the server side of a handshake under cfg.
func NewHandshake(cfg *Config) (*Handshake, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	return &Handshake{cfg: cfg}, nil
}

// OmitTrace says whether the Steps that follow leave StepResult.Trace
// empty, which is the default's opposite: decoding every message into
// trace fields (cipher suites, groups, schemes as text) is work that
// nobody reads when the caller neither shows nor records the trace. It
// changes nothing else a Step does or returns, and MarshalBinary does not
// keep it: a restored Handshake traces until told otherwise.
func (h *Handshake) OmitTrace(omit bool) { h.omitTrace = omit }

// Session returns the negotiated session once the handshake is complete.
func (h *Handshake) Session() (*Session, bool) {
	return h.session, h.state == stateComplete
}
