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
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"syscall"
	"time"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
)

// Service is what the edge needs from handshaked; *handshaked.Client has
// it.
type Service interface {
	HandshakeStream(ctx context.Context) (pb.Handshake_StreamClient, error)
	StartHandshake(ctx context.Context, cfg *pb.HandshakeConfig, input []byte) (*pb.HandshakeStep, error)
	StepHandshake(ctx context.Context, id string, input []byte) (*pb.HandshakeStep, error)
	AbortHandshake(ctx context.Context, id string) error
}

// Config says how to terminate TLS.
type Config struct {
	// Client reaches the handshaked service.
	Client Service
	// Handshake is the server configuration: keys, versions, suites,
	// groups, ALPN, client authentication.
	Handshake *pb.HandshakeConfig
	// Unary steps the handshake with StartHandshake/StepHandshake instead
	// of the bidirectional stream (for instance through a proxy that does
	// not carry streams).
	Unary bool
	// HandshakeTimeout bounds each handshake, reading the client included
	// (default 10 s).
	HandshakeTimeout time.Duration
	// MaxHandshakes caps the handshakes a Listener runs at once (default
	// 1024); further connections wait in the kernel's accept queue.
	MaxHandshakes int
	// Logger receives failed handshakes (default slog.Default()).
	Logger *slog.Logger
}

func (c *Config) timeout() time.Duration {
	if c.HandshakeTimeout > 0 {
		return c.HandshakeTimeout
	}
	return 10 * time.Second
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

type unaryStepper struct {
	cfg *pb.HandshakeConfig
	svc Service
	id  string
}

func (u *unaryStepper) step(ctx context.Context, input []byte) (*pb.HandshakeStep, error) {
	if u.id == "" {
		out, err := u.svc.StartHandshake(ctx, u.cfg, input)
		u.id = out.GetId()
		return out, err
	}
	return u.svc.StepHandshake(ctx, u.id, input)
}

func (u *unaryStepper) abort() {
	if u.id == "" {
		return
	}
	// The handshake's own context may be what expired.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	u.svc.AbortHandshake(ctx, u.id)
}

// Server runs the TLS handshake of raw through the service and returns the
// connection with its record layer. On failure raw is closed, after the
// engine's alert record if it produced one.
func Server(ctx context.Context, raw net.Conn, cfg *Config) (*Conn, error) {
	c, err := handshake(ctx, raw, cfg)
	if err != nil {
		raw.Close()
		return nil, err
	}
	return c, nil
}

// handshakeBufferLen is the most a handshake reads from the client at once.
const handshakeBufferLen = 16 << 10

// handshakeBuffers recycles read buffers: a busy edge starts many
// handshakes a second, and each buffer is needed only while it runs.
var handshakeBuffers = sync.Pool{New: func() any { return new([handshakeBufferLen]byte) }}

func handshake(ctx context.Context, raw net.Conn, cfg *Config) (*Conn, error) {
	deadline := time.Now().Add(cfg.timeout())
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	if err := raw.SetDeadline(deadline); err != nil {
		return nil, fmt.Errorf("edge: %w", err)
	}
	var st stepper
	if cfg.Unary {
		st = &unaryStepper{cfg: cfg.Handshake, svc: cfg.Client}
	} else {
		stream, err := cfg.Client.HandshakeStream(ctx)
		if err != nil {
			return nil, fmt.Errorf("edge: %w", err)
		}
		st = &streamStepper{cfg: cfg.Handshake, stream: stream}
	}
	var steps []Step
	bufp := handshakeBuffers.Get().(*[handshakeBufferLen]byte)
	defer handshakeBuffers.Put(bufp)
	buf := bufp[:]
	for {
		n, err := raw.Read(buf)
		if n == 0 {
			st.abort()
			return nil, fmt.Errorf("edge: reading the client's handshake: %w", err)
		}
		start := time.Now()
		out, err := st.step(ctx, buf[:n])
		if err != nil {
			st.abort()
			return nil, fmt.Errorf("edge: handshake step: %w", err)
		}
		steps = append(steps, Step{In: n, Out: len(out.GetOutput()), Duration: time.Since(start), Trace: out.GetTrace()})
		if _, err := raw.Write(out.GetOutput()); err != nil {
			st.abort()
			return nil, fmt.Errorf("edge: writing to the client: %w", err)
		}
		switch out.GetState() {
		case pb.HandshakeState_HANDSHAKE_STATE_FAILED:
			a := out.GetAlert()
			raw.Write(a.GetRecord())
			return nil, &HandshakeError{Alert: a.GetName(), Reason: a.GetReason()}
		case pb.HandshakeState_HANDSHAKE_STATE_COMPLETE:
			if err := raw.SetDeadline(time.Time{}); err != nil {
				return nil, fmt.Errorf("edge: %w", err)
			}
			return newConn(raw, out.GetSession(), out.GetLeftover(), steps)
		case pb.HandshakeState_HANDSHAKE_STATE_NEED_INPUT:
		default:
			st.abort()
			return nil, fmt.Errorf("edge: handshake step in state %v", out.GetState())
		}
	}
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
// concurrently, so a slow or silent client never blocks another.
type Listener struct {
	inner net.Listener
	cfg   *Config
	conns chan *Conn
	done  chan struct{}
	errc  chan error
	sem   chan struct{}
	once  sync.Once
}

// NewListener starts accepting on inner.
func NewListener(inner net.Listener, cfg *Config) *Listener {
	max := cfg.MaxHandshakes
	if max <= 0 {
		max = 1024
	}
	l := &Listener{inner: inner, cfg: cfg, conns: make(chan *Conn), done: make(chan struct{}), errc: make(chan error, 1), sem: make(chan struct{}, max)}
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
		select {
		case l.sem <- struct{}{}:
		case <-l.done:
			return
		}
		raw, err := l.inner.Accept()
		if err != nil {
			<-l.sem
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
		go func() {
			defer func() { <-l.sem }()
			ctx, cancel := context.WithCancel(context.Background())
			go func() {
				select {
				case <-l.done:
					cancel()
				case <-ctx.Done():
				}
			}()
			c, err := Server(ctx, raw, l.cfg)
			cancel()
			if err != nil {
				l.logger().Info("TLS handshake failed", "remote", raw.RemoteAddr().String(), "err", err)
				return
			}
			select {
			case l.conns <- c:
			case <-l.done:
				c.Close()
			}
		}()
	}
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
		err = l.inner.Close()
	})
	return err
}

// Addr is the inner listener's address.
func (l *Listener) Addr() net.Addr { return l.inner.Addr() }

var errClosed = errors.New("edge: use of closed connection")
