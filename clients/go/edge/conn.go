package edge

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/engine/record"
)

// ConnectionState is what the handshake negotiated, in the shape of
// tls.ConnectionState.
type ConnectionState struct {
	Version            uint16
	CipherSuite        uint16
	CurveID            tls.CurveID // the key exchange group
	ServerName         string
	NegotiatedProtocol string
	// PeerCertificates is the client's chain, leaf first, verified by the
	// engine against the configured roots.
	PeerCertificates     []*x509.Certificate
	SignatureScheme      tls.SignatureScheme
	KeyID                string
	KeyVersion           uint32
	HelloRetryRequest    bool
	ExtendedMasterSecret bool
	// DidResume reports a session resumed from a ticket (TLS 1.3 PSK, TLS
	// 1.2 RFC 5077): no certificate was sent and no private-key operation
	// made; the ticket may have been issued by another edge.
	DidResume bool
	// RecordPlaintextLimit is the most plaintext the edge puts in one
	// record: 2^14, or fewer as the client's record_size_limit says (RFC
	// 8449).
	RecordPlaintextLimit int
	// Steps is the handshake as relayed, step by step.
	Steps []Step
}

// TLS alert descriptions the record layer sends or understands (RFC 8446
// §6).
const (
	alertCloseNotify       uint8 = 0
	alertUnexpectedMessage uint8 = 10
	alertIllegalParameter  uint8 = 47
	alertDecodeError       uint8 = 50
	alertInternalError     uint8 = 80
	alertUserCanceled      uint8 = 90
	alertNoRenegotiation   uint8 = 100
	alertLevelWarning      uint8 = 1
	alertLevelFatal        uint8 = 2
)

// Handshake message types handled after the handshake.
const (
	typeClientHello uint8 = 1
	typeKeyUpdate   uint8 = 24
)

const (
	// maxUselessRecords bounds consecutive records that carry no
	// application data (empty records, warnings, KeyUpdates), so a peer
	// cannot keep Read spinning; crypto/tls uses the same limit.
	maxUselessRecords = 100
	// maxPostHandshakeMessage bounds a buffered post-handshake message
	// but for a renegotiating ClientHello (record.MaxClientHello).
	maxPostHandshakeMessage = 1 << 16
	// keyUpdateAfter is how many records a TLS 1.3 write key protects
	// before the edge updates it: well within the AES-GCM limit of
	// 2^24.5 records (RFC 8446 §5.5), also when Write checks it only
	// between batches (writeBatch) of records of 63 bytes.
	keyUpdateAfter = 1 << 24
	// writeBatch is how many bytes of plaintext one Write hands the socket
	// at once: eight full records, or more records as small as the
	// client's record_size_limit asks.
	writeBatch = 8 * record.MaxPlaintext
	// initialReadBuffer and fullReadBuffer size a connection's buffer of
	// received bytes.
	initialReadBuffer = 4 << 10
	fullReadBuffer    = 2 * (record.HeaderLen + record.MaxCiphertextTLS12)
)

// alertError is a fatal record-layer condition found by the edge itself.
type alertError struct {
	alert uint8
	text  string
}

func (e *alertError) Error() string { return "edge: " + e.text }

// RemoteAlertError is a fatal alert received from the client.
type RemoteAlertError struct{ Alert uint8 }

func (e *RemoteAlertError) Error() string {
	return "edge: remote error: " + record.AlertName(e.Alert)
}

// Conn is a TLS connection whose handshake ran in handshaked and whose
// record layer runs here. Read and Write may be called concurrently with
// each other.
type Conn struct {
	raw   net.Conn
	state ConnectionState
	tls13 bool

	in struct {
		sync.Mutex
		cipher *record.Cipher
		buf    []byte // raw bytes: buf[r:w] are unparsed
		r, w   int
		plain  []byte // decrypted application data not yet returned
		hs     []byte // a partial post-handshake message
		err    error  // sticky: io.EOF after close_notify, or fatal
	}
	out struct {
		sync.Mutex
		cipher *record.Cipher
		buf    []byte
		err    error // sticky: set by a fatal alert or close_notify
		// maxPlain is the most plaintext of a record (RecordPlaintextLimit).
		maxPlain int
	}
	closeOnce sync.Once
	closeErr  error
}

// newConn is the connection of session s, with leftover read from the
// client already; in, if not nil, is the TLS 1.2 cipher the client's
// records open under, built by the edge to verify its Finished.
func newConn(raw net.Conn, s *pb.Session, leftover []byte, in *record.Cipher, steps []Step) (*Conn, error) {
	peers, err := parsePeerCertificates(s.GetPeerCertificates())
	if err != nil {
		return nil, err
	}
	c := &Conn{raw: raw, tls13: s.GetVersion() == tls.VersionTLS13}
	c.state = ConnectionState{
		Version: uint16(s.GetVersion()), CipherSuite: uint16(s.GetCipherSuite()), CurveID: tls.CurveID(s.GetGroup()),
		ServerName: s.GetServerName(), NegotiatedProtocol: s.GetAlpnProtocol(), PeerCertificates: peers,
		SignatureScheme: tls.SignatureScheme(s.GetSignatureScheme()), KeyID: s.GetKey().GetKey(), KeyVersion: s.GetKey().GetVersion(),
		HelloRetryRequest: s.GetHelloRetryRequest(), ExtendedMasterSecret: s.GetExtendedMasterSecret(), DidResume: s.GetResumed(), Steps: steps,
		RecordPlaintextLimit: recordPlaintextLimit(s),
	}
	c.out.maxPlain = c.state.RecordPlaintextLimit
	suite, k := uint16(s.GetCipherSuite()), s.GetKeys()
	switch s.GetVersion() {
	case tls.VersionTLS13:
		// The server sequence is past the NewSessionTicket the engine
		// protected after the handshake, if it issued one.
		if c.in.cipher, err = record.NewTLS13Cipher(suite, k.GetClientApplicationTrafficSecret(), k.GetClientSequence()); err == nil {
			c.out.cipher, err = record.NewTLS13Cipher(suite, k.GetServerApplicationTrafficSecret(), k.GetServerSequence())
		}
	case tls.VersionTLS12:
		c.in.cipher = in
		if in == nil {
			c.in.cipher, err = record.NewTLS12Cipher(suite, k.GetClientWriteKey(), k.GetClientWriteIv(), k.GetClientSequence())
		}
		if err == nil {
			c.out.cipher, err = record.NewTLS12Cipher(suite, k.GetServerWriteKey(), k.GetServerWriteIv(), k.GetServerSequence())
		}
	default:
		err = fmt.Errorf("version %#04x", s.GetVersion())
	}
	if err != nil {
		return nil, fmt.Errorf("edge: session keys: %w", err)
	}
	// Small to start with: many connections carry short requests; the
	// buffer grows to its full size for the first large record. With
	// nothing read yet, it waits for the first Read (a connection that
	// only writes never needs one).
	if len(leftover) > 0 {
		c.in.buf = make([]byte, max(initialReadBuffer, len(leftover)))
		c.in.w = copy(c.in.buf, leftover)
	}
	return c, nil
}

// recordPlaintextLimit is what the service says one record of the edge's
// may carry: 0, from a service that predates record_size_limit (RFC
// 8449), is the protocol's 2^14, and so is anything above it.
func recordPlaintextLimit(s *pb.Session) int {
	n := int(s.GetRecordPlaintextLimit())
	if n == 0 || n > record.MaxPlaintext {
		return record.MaxPlaintext
	}
	return n
}

// ConnectionState returns the negotiated parameters.
func (c *Conn) ConnectionState() ConnectionState { return c.state }

// NetConn returns the underlying TCP connection.
func (c *Conn) NetConn() net.Conn { return c.raw }

// Read reads application data. It returns io.EOF after the client's
// close_notify, and io.ErrUnexpectedEOF if the connection ends without one.
func (c *Conn) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	c.in.Lock()
	defer c.in.Unlock()
	useless := 0
	for len(c.in.plain) == 0 {
		if c.in.err != nil {
			return 0, c.in.err
		}
		if useless > maxUselessRecords {
			c.in.err = c.fatal(&alertError{alertUnexpectedMessage, "too many records without application data"})
			return 0, c.in.err
		}
		useless++
		if err := c.readRecord(); err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return 0, err // a deadline: the connection is still usable
			}
			c.in.err = err
			return 0, err
		}
	}
	n := copy(b, c.in.plain)
	c.in.plain = c.in.plain[n:]
	return n, nil
}

// readRecord reads, opens and handles one record. Callers hold c.in.
func (c *Conn) readRecord() error {
	maxLen := record.MaxCiphertextTLS12
	if c.tls13 {
		maxLen = record.MaxCiphertextTLS13
	}
	var (
		typ     record.ContentType
		version uint16
		body    []byte
		n       int
		err     error
	)
	for {
		typ, version, body, n, err = record.Parse(c.in.buf[c.in.r:c.in.w], maxLen)
		if err != nil {
			return c.fatal(err)
		}
		if n > 0 {
			break
		}
		if c.in.r > 0 {
			c.in.w = copy(c.in.buf, c.in.buf[c.in.r:c.in.w])
			c.in.r = 0
		}
		if c.in.w == len(c.in.buf) {
			// Room for two whole records, so a record never has to wait
			// for the buffer to be compacted more than once; the first
			// buffer is small.
			size := max(fullReadBuffer, len(c.in.buf))
			if c.in.buf == nil {
				size = initialReadBuffer
			}
			grown := make([]byte, size)
			copy(grown, c.in.buf[:c.in.w])
			c.in.buf = grown
		}
		m, err := c.raw.Read(c.in.buf[c.in.w:])
		c.in.w += m
		if m == 0 && err != nil {
			if err == io.EOF {
				// RFC 8446 §6.1: a connection that ends without
				// close_notify may have been truncated.
				return io.ErrUnexpectedEOF
			}
			return err
		}
	}
	c.in.r += n
	inner, plain, err := c.in.cipher.Open(typ, version, body)
	if err != nil {
		return c.fatal(err)
	}
	if c.tls13 && len(c.in.hs) > 0 && inner != record.Handshake {
		// RFC 8446 §5.1: handshake messages must not be interleaved with
		// other record types. TLS 1.2 allows it (RFC 5246 §6.2.1: "Data
		// of different TLS record layer content types MAY be
		// interleaved"), as between the fragments of a renegotiating
		// ClientHello.
		return c.fatal(&alertError{alertUnexpectedMessage, "record interleaved with a fragmented handshake message"})
	}
	switch inner {
	case record.ApplicationData:
		c.in.plain = plain
		return nil
	case record.Alert:
		return c.handleAlert(plain)
	case record.Handshake:
		return c.handlePostHandshake(plain)
	}
	return c.fatal(&alertError{alertUnexpectedMessage, fmt.Sprintf("%v record after the handshake", inner)})
}

func (c *Conn) handleAlert(b []byte) error {
	if len(b) != 2 {
		return c.fatal(&alertError{alertDecodeError, fmt.Sprintf("%d-byte alert", len(b))})
	}
	switch {
	case b[1] == alertCloseNotify:
		return io.EOF
	case b[1] == alertUserCanceled, !c.tls13 && b[0] == alertLevelWarning:
		// RFC 8446 §6.1: user_canceled is followed by close_notify; in
		// TLS 1.2 other warnings carry on (RFC 5246 §7.2).
		return nil
	}
	// A fatal alert from the peer: nothing more may be sent (RFC 8446
	// §6.2), not even close_notify.
	c.out.Lock()
	c.out.err = errClosed
	c.out.Unlock()
	return &RemoteAlertError{Alert: b[1]}
}

// handlePostHandshake handles handshake messages after the handshake:
// KeyUpdate in TLS 1.3, a renegotiating ClientHello in TLS 1.2. A message
// is refused on its header when the header decides (another type, a
// KeyUpdate that is not one byte), as the engine does during the
// handshake, rather than after waiting for a body that changes nothing.
func (c *Conn) handlePostHandshake(b []byte) error {
	c.in.hs = append(c.in.hs, b...)
	for len(c.in.hs) >= 4 {
		typ := c.in.hs[0]
		length := int(c.in.hs[1])<<16 | int(c.in.hs[2])<<8 | int(c.in.hs[3])
		switch {
		case c.tls13 && typ == typeKeyUpdate:
			// RFC 8446 §4.6.3: KeyUpdate holds one byte, request_update.
			if length != 1 {
				return c.fatal(&alertError{alertDecodeError, fmt.Sprintf("%d-byte KeyUpdate", length)})
			}
		case !c.tls13 && typ == typeClientHello:
		default:
			return c.fatal(&alertError{alertUnexpectedMessage, fmt.Sprintf("post-handshake message type %d", typ)})
		}
		// A renegotiating ClientHello may be as long as a first one
		// (record.MaxClientHello, RFC 5246 §7.4.1.2): it gets the same
		// warning.
		limit := maxPostHandshakeMessage
		if typ == typeClientHello {
			limit = record.MaxClientHello
		}
		if length > limit {
			return c.fatal(&alertError{alertUnexpectedMessage, fmt.Sprintf("%d-byte post-handshake message", length)})
		}
		if len(c.in.hs) < 4+length {
			return nil
		}
		msg := c.in.hs[4 : 4+length]
		c.in.hs = c.in.hs[4+length:]
		if typ == typeKeyUpdate {
			if err := c.handleKeyUpdate(msg[0]); err != nil {
				return err
			}
			continue
		}
		// The engine refuses renegotiation; say so and carry on (RFC
		// 5246 §7.2.2, RFC 5746 §4.4 lets the client decide).
		if err := c.sendAlert(alertLevelWarning, alertNoRenegotiation); err != nil {
			return err
		}
	}
	if len(c.in.hs) == 0 {
		c.in.hs = nil
	}
	return nil
}

// handleKeyUpdate implements RFC 8446 §4.6.3 for a KeyUpdate whose
// request_update is req.
func (c *Conn) handleKeyUpdate(req byte) error {
	// RFC 8446 §4.6.3: a request_update other than update_not_requested
	// or update_requested is illegal_parameter.
	if req > 1 {
		return c.fatal(&alertError{alertIllegalParameter, fmt.Sprintf("KeyUpdate request_update %d", req)})
	}
	// RFC 8446 §5.1: a message before a key change must end its record.
	if len(c.in.hs) > 0 {
		return c.fatal(&alertError{alertUnexpectedMessage, "KeyUpdate not at the end of its record"})
	}
	if err := c.in.cipher.Update(); err != nil {
		return c.fatal(err)
	}
	if req == 1 { // update_requested
		c.out.Lock()
		defer c.out.Unlock()
		if c.out.err == nil {
			return c.keyUpdateLocked(false)
		}
	}
	return nil
}

// KeyUpdate updates the write key (TLS 1.3, RFC 8446 §4.6.3) and, with
// requestPeer, asks the client to update its own.
func (c *Conn) KeyUpdate(requestPeer bool) error {
	if !c.tls13 {
		return errors.New("edge: KeyUpdate needs TLS 1.3")
	}
	c.out.Lock()
	defer c.out.Unlock()
	if c.out.err != nil {
		return c.out.err
	}
	return c.keyUpdateLocked(requestPeer)
}

func (c *Conn) keyUpdateLocked(requestPeer bool) error {
	msg := []byte{typeKeyUpdate, 0, 0, 1, 0}
	if requestPeer {
		msg[4] = 1
	}
	if err := c.writeRecordLocked(record.Handshake, msg); err != nil {
		return err
	}
	if err := c.out.cipher.Update(); err != nil {
		c.out.err = err
		return fmt.Errorf("edge: %w", err)
	}
	return nil
}

// writeRecordLocked seals and sends one record. Callers hold c.out.
func (c *Conn) writeRecordLocked(typ record.ContentType, b []byte) error {
	var err error
	c.out.buf, err = c.out.cipher.Seal(c.out.buf[:0], typ, b, 0)
	if err != nil {
		c.out.err = err
		return fmt.Errorf("edge: %w", err)
	}
	if _, err := c.raw.Write(c.out.buf); err != nil {
		c.out.err = err
		return err
	}
	return nil
}

func (c *Conn) sendAlert(level, desc uint8) error {
	c.out.Lock()
	defer c.out.Unlock()
	if c.out.err != nil {
		return c.out.err
	}
	return c.writeRecordLocked(record.Alert, []byte{level, desc})
}

// fatal sends the alert err calls for and closes the connection: after a
// fatal alert nothing more is sent (RFC 8446 §6.2). It returns err.
func (c *Conn) fatal(err error) error {
	desc := alertInternalError
	var rerr *record.Error
	var aerr *alertError
	switch {
	case errors.As(err, &rerr):
		desc = rerr.Alert()
	case errors.As(err, &aerr):
		desc = aerr.alert
	}
	c.out.Lock()
	if c.out.err == nil {
		c.writeRecordLocked(record.Alert, []byte{alertLevelFatal, desc})
		c.out.err = errClosed
	}
	c.out.Unlock()
	c.raw.Close()
	return fmt.Errorf("edge: %w", err)
}

// Write writes application data in records of at most 2^14 bytes (RFC
// 8446 §5.1), or of the client's record_size_limit (RFC 8449 §4:
// RecordPlaintextLimit).
func (c *Conn) Write(b []byte) (int, error) {
	c.out.Lock()
	defer c.out.Unlock()
	if c.out.err != nil {
		return 0, c.out.err
	}
	n := 0
	for len(b) > 0 {
		if c.tls13 && c.out.cipher.Seq() >= keyUpdateAfter {
			if err := c.keyUpdateLocked(false); err != nil {
				return n, err
			}
		}
		buf := c.out.buf[:0]
		batched := 0
		for batched < writeBatch && len(b) > 0 {
			chunk := b[:min(len(b), c.out.maxPlain)]
			var err error
			if buf, err = c.out.cipher.Seal(buf, record.ApplicationData, chunk, 0); err != nil {
				c.out.err = err
				return n, fmt.Errorf("edge: %w", err)
			}
			b = b[len(chunk):]
			batched += len(chunk)
		}
		c.out.buf = buf
		if _, err := c.raw.Write(buf); err != nil {
			c.out.err = err
			return n, err
		}
		n += batched
	}
	return n, nil
}

// closeNotifyTimeout bounds how long Close waits to send close_notify.
const closeNotifyTimeout = 5 * time.Second

// sendCloseNotify sends close_notify unless a write is blocked (then the
// close is abrupt rather than stuck) or the connection already failed.
func (c *Conn) sendCloseNotify() error {
	if !c.out.TryLock() {
		return nil
	}
	defer c.out.Unlock()
	if c.out.err != nil {
		return nil
	}
	c.raw.SetWriteDeadline(time.Now().Add(closeNotifyTimeout))
	err := c.writeRecordLocked(record.Alert, []byte{alertLevelWarning, alertCloseNotify})
	c.out.err = errClosed
	return err
}

// Close sends close_notify (RFC 8446 §6.1) and closes the connection.
func (c *Conn) Close() error {
	c.closeOnce.Do(func() {
		c.sendCloseNotify()
		c.closeErr = c.raw.Close()
	})
	return c.closeErr
}

// CloseWrite sends close_notify and shuts down the writing side, for a
// proxy that relays a half-close.
func (c *Conn) CloseWrite() error {
	if err := c.sendCloseNotify(); err != nil {
		return err
	}
	if cw, ok := c.raw.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// LocalAddr returns the local address.
func (c *Conn) LocalAddr() net.Addr { return c.raw.LocalAddr() }

// RemoteAddr returns the client's address.
func (c *Conn) RemoteAddr() net.Addr { return c.raw.RemoteAddr() }

// SetDeadline sets the read and write deadlines of the connection.
func (c *Conn) SetDeadline(t time.Time) error { return c.raw.SetDeadline(t) }

// SetReadDeadline sets the read deadline.
func (c *Conn) SetReadDeadline(t time.Time) error { return c.raw.SetReadDeadline(t) }

// SetWriteDeadline sets the write deadline.
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.raw.SetWriteDeadline(t) }
