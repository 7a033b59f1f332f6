// Package edge terminates TLS for servers without a TLS stack of their own.
// The handshake runs in handshaked (the private keys stay in its vault):
// the edge relays the client's raw bytes to the service's Handshake API and
// writes back what each step returns. When the handshake completes, the
// edge gets the session keys and runs the record layer itself, with the
// engine's record-protection package (internal/engine/record).
//
//	client, err := handshaked.Dial(addr, handshaked.WithTLS(mtlsConfig))
//	l := edge.NewListener(tcpListener, &edge.Config{Client: client, Handshake: cfg})
//	http.Serve(l, handler) // each accepted net.Conn speaks plaintext
package edge

import (
	"container/list"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"

	handshaked "github.com/handshaked/handshaked/clients/go"
	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/engine/record"
)

// Service is what the edge needs from handshaked; *handshaked.Client has
// it.
type Service interface {
	MultiplexedHandshake(cfg *pb.HandshakeConfig) *handshaked.MultiplexedHandshake
	HandshakeStream(ctx context.Context) (pb.Handshake_StreamClient, error)
	StartStatelessHandshake(ctx context.Context, cfg *pb.HandshakeConfig, input []byte) (*pb.HandshakeStep, error)
	StepStatelessHandshake(ctx context.Context, id string, token, input []byte) (*pb.HandshakeStep, error)
}

// Config says how to terminate TLS.
type Config struct {
	// Client reaches the handshaked service.
	Client Service
	// Handshake is the server configuration: keys, versions, suites,
	// groups, ALPN, client authentication. With caller_verifies_finished
	// the service completes a TLS 1.3 handshake without client
	// authentication, and a TLS 1.2 resumption, in one round trip, and the
	// edge verifies the client's Finished itself before it uses the
	// session keys.
	Handshake *pb.HandshakeConfig
	// GetHandshake, when set, gives the server configuration for each new
	// connection in place of Handshake, e.g. with the client CA bundle in
	// force: it is called once the connection's ClientHello has arrived,
	// before anything is opened in the service, and the handshake keeps
	// what it got to its end. It is called concurrently; it should return
	// the same *pb.HandshakeConfig for as long as the configuration stays,
	// and never modify one it has returned (the Listener keeps a copy of
	// the last one asking for the trace or not, as Trace says). A nil
	// result is Handshake.
	GetHandshake func() *pb.HandshakeConfig
	// By default handshakes share the Client's long-lived Multiplex
	// streams (handshaked.MultiplexedHandshake; a Stream each with a
	// TracerProvider, or from a service without Multiplex).
	//
	// Unary steps the handshake with stateless StartHandshake and
	// StepHandshake calls instead of the streams: the service
	// keeps nothing between steps, each carries the state token of the one
	// before, so each step may go to any replica and one that fails is
	// retried on another (*handshaked.Client does, on UNAVAILABLE). Also for
	// a proxy that does not carry streams.
	Unary bool
	// HandshakeTimeout bounds each handshake, from the moment the
	// connection is accepted, reading the client included (default 10 s).
	HandshakeTimeout time.Duration
	// ClientHelloTimeout bounds how long a new connection may take to send
	// its whole ClientHello (default 5 s, and never more than
	// HandshakeTimeout). Until then the connection costs only the edge:
	// nothing is opened in the service.
	ClientHelloTimeout time.Duration
	// MaxHandshakes caps the handshakes a Listener runs in the service at
	// once (default 128, well below the service's per-caller caps, so that
	// handshakes past it wait here instead of failing there). A connection
	// whose ClientHello has arrived waits for one of these slots.
	MaxHandshakes int
	// MaxPendingHandshakes caps a Listener's connections that have not yet
	// got a slot in the service: those still sending their ClientHello and
	// those waiting for a slot (default 1024). When it is full, accepting
	// one more closes the oldest, so a flood of silent or slow clients
	// cannot lock out clients that send their ClientHello promptly.
	MaxPendingHandshakes int
	// Logger receives failed handshakes (default slog.Default()).
	Logger *slog.Logger
	// TracerProvider, when set, makes each handshake an "edge.handshake"
	// span whose trace the service's spans continue (give the Client's
	// gRPC connection the OpenTelemetry stats handler to carry it). Each
	// handshake then has a Stream of its own, which carries its span's
	// context to the service.
	TracerProvider trace.TracerProvider
	// Trace keeps the handshake messages of each step, decoded by the
	// engine, in ConnectionState().Steps[].Trace. Without it the edge
	// asks the service to leave them out (HandshakeConfig.omit_trace): an
	// edge serving traffic has no use for them, and building, sending and
	// decoding them was a good part of the CPU each handshake cost.
	Trace bool
}

// withTraceChoice returns c with its Handshake configuration asking what
// the edge asks of every handshake (edgeAsks): c itself if it does
// already, else a copy (the caller's configuration is left as it is).
func (c *Config) withTraceChoice() *Config {
	if c.edgeAsks(c.Handshake) {
		return c
	}
	out := *c
	out.Handshake = proto.CloneOf(c.Handshake)
	if out.Handshake == nil {
		out.Handshake = &pb.HandshakeConfig{}
	}
	c.setEdgeAsks(out.Handshake)
	return &out
}

// edgeAsks reports whether h asks what the edge asks of every handshake:
// the trace or not, as c.Trace says, and the client's record_size_limit
// answered, which Conn.Write keeps to (RFC 8449).
func (c *Config) edgeAsks(h *pb.HandshakeConfig) bool {
	return c.Trace == !h.GetOmitTrace() && h.GetCallerHonorsRecordSizeLimit()
}

// setEdgeAsks makes h ask what edgeAsks checks.
func (c *Config) setEdgeAsks(h *pb.HandshakeConfig) {
	h.OmitTrace, h.CallerHonorsRecordSizeLimit = !c.Trace, true
}

// handshakeFor is the configuration for a new connection's handshake:
// GetHandshake's or Handshake, asking what the edge asks (edgeAsks). A
// copy made for it is kept in last, if given, for as long as GetHandshake
// gives the same configuration.
func (c *Config) handshakeFor(last *atomic.Pointer[tracedConfig]) *pb.HandshakeConfig {
	var h *pb.HandshakeConfig
	if c.GetHandshake != nil {
		h = c.GetHandshake()
	}
	if h == nil {
		return c.Handshake // already asks what the edge asks (withTraceChoice)
	}
	if c.edgeAsks(h) {
		return h
	}
	if last != nil {
		if t := last.Load(); t != nil && t.given == h {
			return t.sent
		}
	}
	sent := proto.CloneOf(h)
	c.setEdgeAsks(sent)
	if last != nil {
		last.Store(&tracedConfig{given: h, sent: sent})
	}
	return sent
}

// tracedConfig is a configuration GetHandshake gave and its copy asking
// what the edge asks.
type tracedConfig struct{ given, sent *pb.HandshakeConfig }

// startSpan starts a handshake's span; without a TracerProvider it records
// nothing.
func (c *Config) startSpan(ctx context.Context, raw net.Conn) (context.Context, trace.Span) {
	if c.TracerProvider == nil {
		return ctx, trace.SpanFromContext(ctx) // a no-op span
	}
	return c.TracerProvider.Tracer("github.com/handshaked/handshaked/clients/go/edge").Start(ctx, "edge.handshake",
		trace.WithSpanKind(trace.SpanKindServer), trace.WithAttributes(attribute.String("client.address", raw.RemoteAddr().String())))
}

// endSpan ends it with the outcome: what was negotiated, or the error
// (whose text holds no secret).
func endSpan(span trace.Span, c *Conn, err error) {
	switch {
	case !span.IsRecording():
		// Tracing off: the outcome would cost every handshake its
		// attributes for nothing.
	case err != nil:
		span.SetStatus(codes.Error, err.Error())
	default:
		st := c.ConnectionState()
		span.SetAttributes(attribute.String("tls.version", tls.VersionName(st.Version)),
			attribute.String("tls.cipher_suite", record.SuiteName(st.CipherSuite)), attribute.String("tls.server_name", st.ServerName))
	}
	span.End()
}

func (c *Config) timeout() time.Duration {
	if c.HandshakeTimeout > 0 {
		return c.HandshakeTimeout
	}
	return 10 * time.Second
}

// Defaults of Config.
const (
	DefaultClientHelloTimeout   = 5 * time.Second
	DefaultMaxHandshakes        = 128
	DefaultMaxPendingHandshakes = 1024
)

func (c *Config) clientHelloTimeout() time.Duration {
	d := DefaultClientHelloTimeout
	if c.ClientHelloTimeout > 0 {
		d = c.ClientHelloTimeout
	}
	return min(d, c.timeout())
}

// Step is one step of a handshake as the edge saw it, for tracing.
type Step struct {
	// In and Out are the bytes read from the client and written back.
	In, Out int
	// Duration is the time the service took to answer.
	Duration time.Duration
	// Trace lists the handshake messages consumed and produced, decoded by
	// the engine (never secrets).
	Trace []*pb.TraceEvent
}

// HandshakeError is a handshake that failed in the engine; its alert has
// been sent to the client.
type HandshakeError struct {
	Alert  string // e.g. "handshake_failure"
	Reason string
}

func (e *HandshakeError) Error() string {
	return fmt.Sprintf("edge: handshake failed: %s: %s", e.Alert, e.Reason)
}

// stepper is one handshake session in the service.
type stepper interface {
	step(ctx context.Context, input []byte) (*pb.HandshakeStep, error)
	// abort ends an unfinished session.
	abort()
}

type streamStepper struct {
	cfg    *pb.HandshakeConfig
	stream pb.Handshake_StreamClient
}

func (s *streamStepper) step(_ context.Context, input []byte) (*pb.HandshakeStep, error) {
	req := &pb.StreamRequest{Request: &pb.StreamRequest_Input{Input: input}}
	if s.cfg != nil {
		// The first message carries the config with the ClientHello,
		// saving a round trip.
		req.Request = &pb.StreamRequest_Start{Start: &pb.StartHandshakeRequest{Config: s.cfg, Input: input}}
		s.cfg = nil
	}
	if err := s.stream.Send(req); err != nil {
		return nil, err
	}
	return s.stream.Recv()
}

// abort is a no-op: the session ends with the stream, whose context the
// caller cancels.
func (s *streamStepper) abort() {}

// muxStepper steps a handshake on the Client's shared Multiplex streams.
type muxStepper struct {
	h *handshaked.MultiplexedHandshake
}

func (s muxStepper) step(ctx context.Context, input []byte) (*pb.HandshakeStep, error) {
	return s.h.Step(ctx, input)
}

func (s muxStepper) abort() { s.h.Abort() }

// unaryStepper steps a stateless handshake: the service holds nothing of
// it, the state token of each step goes with the next.
type unaryStepper struct {
	cfg   *pb.HandshakeConfig
	svc   Service
	id    string
	token []byte
}

func (u *unaryStepper) step(ctx context.Context, input []byte) (out *pb.HandshakeStep, err error) {
	if u.id == "" {
		out, err = u.svc.StartStatelessHandshake(ctx, u.cfg, input)
	} else {
		out, err = u.svc.StepStatelessHandshake(ctx, u.id, u.token, input)
	}
	u.id, u.token = out.GetId(), out.GetStateToken()
	return out, err
}

// abort has nothing to end: the service keeps nothing of a stateless
// handshake, which is over when the edge stops stepping it.
func (u *unaryStepper) abort() {}

// Server runs the TLS handshake of raw through the service and returns the
// connection with its record layer. Nothing is opened in the service before
// the client's whole ClientHello has arrived. On failure raw is closed,
// after the engine's alert record if it produced one.
func Server(ctx context.Context, raw net.Conn, cfg *Config) (*Conn, error) {
	cfg = cfg.withTraceChoice()
	deadline := time.Now().Add(cfg.timeout())
	hello, err := readClientHello(raw, cfg)
	if err != nil {
		raw.Close()
		return nil, err
	}
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	c, err := handshake(ctx, raw, cfg, cfg.handshakeFor(nil), hello, deadline, func() {})
	if err != nil {
		raw.Close()
		return nil, err
	}
	return c, nil
}

// maxFirstFlight bounds the bytes of the records that carry it, for a
// ClientHello fragmented into many small records (the rest then follows in
// later steps). With the record that crosses it, the first step stays
// within the service's bound on one step's input (256 KiB).
const maxFirstFlight = 192 << 10

// errNoClientHello is a connection that ended, or timed out, before its
// ClientHello was complete.
var errNoClientHello = errors.New("edge: no ClientHello")

// readClientHello reads the client's records up to the end of its first
// handshake message, within the ClientHello timeout, and returns them. It
// only decides when the service can have the bytes, never whether they are
// valid: anything that cannot begin a ClientHello (another record type, a
// bad length, another message) is returned as soon as its record header is
// in, for the engine to answer with the alert it calls for (RFC 8446 §5.1,
// §4.1.2).
func readClientHello(raw net.Conn, cfg *Config) ([]byte, error) {
	if err := raw.SetReadDeadline(time.Now().Add(cfg.clientHelloTimeout())); err != nil {
		return nil, fmt.Errorf("edge: %w", err)
	}
	var (
		flight []byte
		msg    [4]byte // the handshake message header, as it arrives
		got    int     // handshake bytes received
	)
	for len(flight) < maxFirstFlight {
		// Nothing is allocated for a client until its first bytes come.
		var hdr [record.HeaderLen]byte
		if _, err := io.ReadFull(raw, hdr[:]); err != nil {
			return nil, fmt.Errorf("%w: %w", errNoClientHello, err)
		}
		flight = append(flight, hdr[:]...)
		n := int(hdr[3])<<8 | int(hdr[4])
		if record.ContentType(hdr[0]) != record.Handshake || n == 0 || n > record.MaxPlaintext {
			return flight, nil
		}
		flight = slices.Grow(flight, n)
		body := flight[len(flight) : len(flight)+n]
		if _, err := io.ReadFull(raw, body); err != nil {
			return nil, fmt.Errorf("%w: %w", errNoClientHello, err)
		}
		flight = flight[:len(flight)+n]
		if got < len(msg) {
			copy(msg[got:], body)
		}
		got += n
		if got < len(msg) {
			continue
		}
		length := int(msg[1])<<16 | int(msg[2])<<8 | int(msg[3])
		if msg[0] != typeClientHello || length > record.MaxClientHello || got >= len(msg)+length {
			return flight, nil
		}
	}
	return flight, nil
}

// handshakeBufferLen is the most a handshake reads from the client at once.
const handshakeBufferLen = 16 << 10

// handshakeBuffers recycles read buffers: a busy edge starts many
// handshakes a second, and each buffer is needed only while it runs.
var handshakeBuffers = sync.Pool{New: func() any { return new([handshakeBufferLen]byte) }}

// handshake runs the handshake through the service with the server
// configuration hcfg, hello (the client's first flight) first, within deadline, which ctx already carries. It
// calls serviceDone once the service has nothing more to do for it, if
// before the end: when the edge verifies the client's Finished itself.
func handshake(ctx context.Context, raw net.Conn, cfg *Config, hcfg *pb.HandshakeConfig, hello []byte, deadline time.Time, serviceDone func()) (c *Conn, err error) {
	ctx, span := cfg.startSpan(ctx, raw)
	defer func() { endSpan(span, c, err) }()
	if err := raw.SetDeadline(deadline); err != nil {
		return nil, fmt.Errorf("edge: %w", err)
	}
	var st stepper
	switch {
	case cfg.Unary:
		st = &unaryStepper{cfg: hcfg, svc: cfg.Client}
	case cfg.TracerProvider == nil:
		st = muxStepper{cfg.Client.MultiplexedHandshake(hcfg)}
	default:
		// The span's context goes to the service in the new stream's
		// metadata: the service's spans continue the edge's trace.
		stream, err := cfg.Client.HandshakeStream(ctx)
		if err != nil {
			return nil, fmt.Errorf("edge: %w", err)
		}
		st = &streamStepper{cfg: hcfg, stream: stream}
	}
	var steps []Step
	// plain: the client still reads our records in the clear.
	plain := true
	bufp := handshakeBuffers.Get().(*[handshakeBufferLen]byte)
	defer handshakeBuffers.Put(bufp)
	buf := bufp[:]
	for input := hello; ; {
		if input == nil {
			n, err := readFlight(raw, buf)
			if n == 0 {
				st.abort()
				return nil, fmt.Errorf("edge: reading the client's handshake: %w", err)
			}
			input = buf[:n]
		}
		start := time.Now()
		out, err := st.step(ctx, input)
		if err != nil {
			st.abort()
			if plain {
				// RFC 8446, Section 6.2: a fatal error SHOULD be
				// announced; the service failing is internal_error, not
				// the client's doing. Only in the clear: once the
				// service protects our records, their keys are its own.
				raw.Write(internalErrorAlert)
			}
			return nil, fmt.Errorf("edge: handshake step: %w", err)
		}
		steps = append(steps, Step{In: len(input), Out: len(out.GetOutput()), Duration: time.Since(start), Trace: out.GetTrace()})
		input = nil
		if err := writeOutput(raw, out.GetOutput()); err != nil {
			st.abort()
			return nil, err
		}
		plain = plain && !startsProtection(out.GetOutput())
		switch out.GetState() {
		case pb.HandshakeState_HANDSHAKE_STATE_FAILED:
			a := out.GetAlert()
			raw.Write(a.GetRecord())
			return nil, &HandshakeError{Alert: a.GetName(), Reason: a.GetReason()}
		case pb.HandshakeState_HANDSHAKE_STATE_COMPLETE:
			leftover := out.GetLeftover()
			var in *record.Cipher
			if out.GetSession().GetKeys().GetClientFinished() != nil {
				// The service left the client's Finished to the edge
				// (finished.go), within the handshake's deadline: its
				// part is over.
				serviceDone()
				if leftover, in, err = finishAtEdge(raw, out.GetSession(), leftover, buf); err != nil {
					return nil, err
				}
			}
			if err := raw.SetDeadline(time.Time{}); err != nil {
				return nil, fmt.Errorf("edge: %w", err)
			}
			return newConn(raw, out.GetSession(), leftover, in, steps)
		case pb.HandshakeState_HANDSHAKE_STATE_NEED_INPUT:
		default:
			st.abort()
			return nil, fmt.Errorf("edge: handshake step in state %v", out.GetState())
		}
	}
}

// writeOutput writes the service's records b to the client. Nothing is
// written when b is empty, as after a client Finished in TLS 1.2: a
// write(2) of no bytes is a system call, for nothing, in every handshake.
func writeOutput(raw net.Conn, b []byte) error {
	if len(b) == 0 {
		return nil
	}
	if _, err := raw.Write(b); err != nil {
		return fmt.Errorf("edge: writing to the client: %w", err)
	}
	return nil
}

// internalErrorAlert is a plaintext fatal internal_error alert (RFC 8446,
// Section 6.2).
var internalErrorAlert = []byte{byte(record.Alert), 3, 3, 0, 2, alertLevelFatal, alertInternalError}

// startsProtection reports whether the server's records b switch it to
// protected records: a change_cipher_spec (TLS 1.2, RFC 5246, Section 7.1;
// in TLS 1.3 the compatibility one comes just before the first protected
// record, RFC 8446, Appendix D.4) or a protected TLS 1.3 record, whose outer
// type is application_data (RFC 8446, Section 5.2).
func startsProtection(b []byte) bool {
	for len(b) > 0 {
		typ, _, _, n, err := record.Parse(b, record.MaxCiphertextTLS13)
		if err != nil || n == 0 {
			return true // not records to read: nothing more in the clear
		}
		if typ == record.ChangeCipherSpec || typ == record.ApplicationData {
			return true
		}
		b = b[n:]
	}
	return false
}

// parsePeerCertificates parses the client's chain, which the engine has
// verified against the configured roots.
func parsePeerCertificates(ders [][]byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for _, der := range ders {
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("edge: client certificate: %w", err)
		}
		certs = append(certs, cert)
	}
	return certs, nil
}

// Listener terminates TLS on the connections of an inner listener. Accept
// returns connections whose handshake is complete; handshakes run
// concurrently, so a slow or silent client never blocks another, and costs
// only the edge: a connection gets a slot in the service (MaxHandshakes)
// only once its whole ClientHello has arrived, and until then it is one of
// at most MaxPendingHandshakes, each bounded by ClientHelloTimeout.
type Listener struct {
	inner   net.Listener
	cfg     *Config
	conns   chan *Conn
	done    chan struct{}
	errc    chan error
	sem     chan struct{} // a slot per handshake in the service
	pending pendingConns
	workers workers                      // run serve
	traced  atomic.Pointer[tracedConfig] // GetHandshake's last, copied for the trace
	// ctx ends at Close, and with it every handshake (no goroutine per
	// connection needed to watch done).
	ctx  context.Context
	stop context.CancelFunc
	once sync.Once
}

// NewListener starts accepting on inner.
func NewListener(inner net.Listener, cfg *Config) *Listener {
	maxUpstream := cfg.MaxHandshakes
	if maxUpstream <= 0 {
		maxUpstream = DefaultMaxHandshakes
	}
	maxPending := cfg.MaxPendingHandshakes
	if maxPending <= 0 {
		maxPending = DefaultMaxPendingHandshakes
	}
	l := &Listener{
		inner: inner, cfg: cfg.withTraceChoice(), conns: make(chan *Conn), done: make(chan struct{}), errc: make(chan error, 1),
		sem: make(chan struct{}, maxUpstream), pending: pendingConns{max: maxPending, list: list.New()},
	}
	l.workers.maxIdle = maxUpstream
	l.ctx, l.stop = context.WithCancel(context.Background())
	go l.acceptLoop()
	return l
}

func (l *Listener) logger() *slog.Logger {
	if l.cfg.Logger != nil {
		return l.cfg.Logger
	}
	return slog.Default()
}

func (l *Listener) acceptLoop() {
	var backoff time.Duration
	for {
		raw, err := l.inner.Accept()
		if err != nil {
			if retry := acceptBackoff(err, &backoff); retry > 0 {
				l.logger().Warn("accept failed; retrying", "err", err, "in", retry)
				select {
				case <-time.After(retry):
					continue
				case <-l.done:
					return
				}
			}
			l.errc <- err
			return
		}
		backoff = 0
		pc, evicted := l.pending.add(raw)
		if evicted != nil {
			l.logger().Debug("too many pending TLS handshakes; closed the oldest", "remote", evicted.RemoteAddr().String())
			evicted.Close()
		}
		l.workers.run(func() { l.serve(pc) })
	}
}

// serve runs the handshake of one accepted connection and hands the
// connection to Accept.
func (l *Listener) serve(pc *pendingConn) {
	raw := pc.Conn
	deadline := time.Now().Add(l.cfg.timeout())
	ctx, cancel := context.WithDeadline(l.ctx, deadline)
	defer cancel()
	hello, err := readClientHello(raw, l.cfg)
	slot := false
	if err == nil {
		// A slot in the service, waited for as one of the pending.
		select {
		case l.sem <- struct{}{}:
			slot = true
		case <-pc.evicted:
		case <-ctx.Done():
			err = fmt.Errorf("edge: waiting for a handshake slot: %w", ctx.Err())
		}
	}
	// The slot is the service's: it is given back as soon as the service is
	// done, before a client Finished the edge verifies itself.
	release := sync.OnceFunc(func() {
		if slot {
			<-l.sem
		}
	})
	if !l.pending.remove(pc) && err == nil {
		err = errors.New("edge: closed as the oldest pending handshake")
	}
	var c *Conn
	if err == nil {
		c, err = handshake(ctx, raw, l.cfg, l.cfg.handshakeFor(&l.traced), hello, deadline, release)
	}
	// Ends the handshake's stream now, not once Accept takes c.
	cancel()
	release()
	switch {
	case errors.Is(err, errNoClientHello) || !slot:
		// A client that never sent a ClientHello, or never got a slot,
		// cost the service nothing; one line each would be a flood.
		raw.Close()
		l.logger().Debug("no TLS handshake", "remote", raw.RemoteAddr().String(), "err", err)
		return
	case err != nil:
		raw.Close()
		l.logger().Info("TLS handshake failed", "remote", raw.RemoteAddr().String(), "err", err)
		return
	}
	select {
	case l.conns <- c:
	case <-l.done:
		c.Close()
	}
}

// workers runs functions on goroutines that are kept, once done, for the
// next: a handshake grows its goroutine's stack (gRPC, protobuf, AES-GCM),
// which a new goroutine per connection pays for again and again
// (runtime.copystack). The one that finished last runs the next, so that
// under a steady load a few warm goroutines do the work and the others'
// stacks shrink at the next collections; past maxIdle waiting, a finished
// goroutine ends.
type workers struct {
	maxIdle int
	mu      sync.Mutex
	idle    []chan func() // of the waiting goroutines, the last to finish last
	stopped bool
}

// run runs f on a waiting goroutine, or on a new one if none waits.
func (w *workers) run(f func()) {
	w.mu.Lock()
	var next chan func()
	if n := len(w.idle); n > 0 {
		next = w.idle[n-1]
		w.idle = w.idle[:n-1]
	}
	w.mu.Unlock()
	if next == nil {
		go w.loop(f, make(chan func(), 1))
		return
	}
	next <- f
}

// loop runs f, then whatever it is given next, until too many wait or
// stop ends them.
func (w *workers) loop(f func(), next chan func()) {
	for f != nil {
		f()
		w.mu.Lock()
		if w.stopped || len(w.idle) >= w.maxIdle {
			w.mu.Unlock()
			return
		}
		w.idle = append(w.idle, next)
		w.mu.Unlock()
		f = <-next
	}
}

// stop ends the waiting goroutines, and the others once done.
func (w *workers) stop() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.stopped = true
	for _, next := range w.idle {
		close(next)
	}
	w.idle = nil
}

// pendingConns are the accepted connections that have no slot in the
// service yet, oldest first.
type pendingConns struct {
	max  int
	mu   sync.Mutex
	list *list.List // of *pendingConn
}

// pendingConn is a connection in pendingConns.
type pendingConn struct {
	net.Conn
	elem    *list.Element
	evicted chan struct{} // closed when it is taken out for a newer one
}

// add adds c; if there were already max, it takes the oldest out and
// returns it too.
func (p *pendingConns) add(c net.Conn) (added, evicted *pendingConn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.list.Len() >= p.max {
		evicted = p.list.Remove(p.list.Front()).(*pendingConn)
		close(evicted.evicted)
	}
	added = &pendingConn{Conn: c, evicted: make(chan struct{})}
	added.elem = p.list.PushBack(added)
	return added, evicted
}

// remove takes c out; false if it was no longer there (evicted).
func (p *pendingConns) remove(c *pendingConn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-c.evicted:
		return false
	default:
	}
	p.list.Remove(c.elem)
	return true
}

// closeAll closes every pending connection.
func (p *pendingConns) closeAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for e := p.list.Front(); e != nil; e = e.Next() {
		e.Value.(*pendingConn).Close()
	}
}

// len is how many connections are pending.
func (p *pendingConns) len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.list.Len()
}

// acceptBackoff says how long to wait before accepting again after err:
// running out of file descriptors or a connection reset before it was
// accepted passes (as net/http also assumes), anything else is final (0).
func acceptBackoff(err error, backoff *time.Duration) time.Duration {
	if !errors.Is(err, syscall.EMFILE) && !errors.Is(err, syscall.ENFILE) && !errors.Is(err, syscall.ECONNABORTED) {
		return 0
	}
	*backoff = min(max(2*(*backoff), 5*time.Millisecond), time.Second)
	return *backoff
}

// Accept returns the next connection whose handshake completed.
func (l *Listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case err := <-l.errc:
		l.errc <- err // every later Accept fails the same way
		return nil, err
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close stops accepting and aborts the handshakes in progress.
func (l *Listener) Close() error {
	err := net.ErrClosed
	l.once.Do(func() {
		close(l.done)
		l.stop()
		err = l.inner.Close()
		l.pending.closeAll()
		l.workers.stop()
	})
	return err
}

// Addr is the inner listener's address.
func (l *Listener) Addr() net.Addr { return l.inner.Addr() }

var errClosed = errors.New("edge: use of closed connection")
