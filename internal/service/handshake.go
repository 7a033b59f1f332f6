package service

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"sync"
	"time"

	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/audit"
	"github.com/handshaked/handshaked/internal/engine"
	"github.com/handshaked/handshaked/internal/keyvault"
)

// maxStepInput bounds the client bytes of one step: a whole TLS 1.3 client
// flight with a large certificate chain fits several times over.
const maxStepInput = 256 << 10

// maxSessionInput bounds the client bytes one handshake takes in all, and
// so what its engine may buffer.
const maxSessionInput = 2 * maxStepInput

// HandshakeOptions bound the handshake sessions the service holds.
type HandshakeOptions struct {
	// MaxSessions caps sessions held at once, unary and streamed, for all
	// callers together; MaxSessionsPerCaller for one identity (0: a quarter
	// of MaxSessions). Past either StartHandshake fails with
	// RESOURCE_EXHAUSTED. Default 10000.
	MaxSessions          int
	MaxSessionsPerCaller int
	// SessionTTL is how long a unary session lives after it starts. Default 30s.
	SessionTTL time.Duration
	// MaxInput caps the client bytes held by unfinished handshakes (what
	// their engines buffer at most), for all callers together; one identity
	// may hold a quarter of it. Default 64 MiB.
	MaxInput int64
	// Deployment names the fleet whose replicas continue each other's
	// stateless handshakes (stateless.go): another deployment's step tokens
	// never restore, even under the same keys.
	Deployment string
}

// Handshake serves the Handshake API: the engine, stepped remotely, with the
// vault doing the private-key operations.
type Handshake struct {
	pb.UnimplementedHandshakeServer
	vault    *keyvault.Vault
	certs    certificates
	keys     vaultKeyOps
	sessions *sessionStore
	metrics  *handshakeMetrics
	tracer   trace.Tracer
	// authorize checks that the caller may still use a session's keys, by
	// the policy in force at each step; nil: no policy.
	authorize func(ctx context.Context, keys []target) error
	// muxItem admits each request of a Multiplex stream
	// (handshake_mux.go).
	muxItem muxItemGuard
	// tickets seals and opens the session tickets of handshakes
	// (tickets.go); nil: none are issued or accepted.
	tickets       *keyvault.TicketKeys
	ticketMetrics *ticketMetrics
	// tokens seal the state of stateless handshakes (stateless.go).
	tokens *keyvault.TicketKeys
}

// NewHandshake returns the Handshake API over vault.
func NewHandshake(vault *keyvault.Vault, opts HandshakeOptions, metrics *handshakeMetrics) *Handshake {
	return newHandshakeAPI(vault, opts, metrics, nil)
}

// newHandshakeAPI is NewHandshake with the audit log of its step-token key
// changes.
func newHandshakeAPI(vault *keyvault.Vault, opts HandshakeOptions, metrics *handshakeMetrics, log *audit.Log) *Handshake {
	opts.MaxSessions = cmp.Or(max(opts.MaxSessions, 0), 10000)
	opts.SessionTTL = cmp.Or(max(opts.SessionTTL, 0), 30*time.Second)
	opts.MaxInput = cmp.Or(max(opts.MaxInput, 0), 64<<20)
	h := &Handshake{
		tokens:   newStepTokenKeys(vault, opts.Deployment, opts.SessionTTL, log),
		vault:    vault,
		keys:     vaultKeyOps{vault: vault, tracer: noTracer, metrics: newKeyMetrics(nil)},
		sessions: newSessionStore(opts, metrics),
		metrics:  metrics,
		tracer:   noTracer,
	}
	// For the life of the vault: the certificates are of its keys.
	vault.Subscribe(h.certs.forget)
	return h
}

// setTracerProvider turns tracing on: see handshake_trace.go.
func (h *Handshake) setTracerProvider(tp trace.TracerProvider) {
	h.tracer = tp.Tracer(tracerName)
	h.keys.tracer = h.tracer
}

// session is one handshake held between unary calls. Its engine state is
// dropped once the handshake ends; what is kept answers GetHandshake.
type session struct {
	id, owner string
	keys      []target // the keys the start named, for authorize
	expires   time.Time
	expiry    *time.Timer
	span      trace.Span // of the whole handshake, ended with it
	trace     bool       // steps carry their trace (no HandshakeConfig.omit_trace)

	mu    sync.Mutex
	hs    *engine.Handshake // nil once complete or failed
	input int64             // client bytes held against the input caps
	final *pb.HandshakeStep // the outcome, without keys, once ended
}

// sessionStore holds unary sessions and counts streamed ones against the
// same caps.
type sessionStore struct {
	ttl     time.Duration
	metrics *handshakeMetrics
	slots   *callerCaps // sessions, unary and streamed
	input   *callerCaps // bytes of client input of unfinished sessions

	mu   sync.Mutex
	byID map[string]*session
	held int // sessions, unary and streamed
}

func newSessionStore(opts HandshakeOptions, metrics *handshakeMetrics) *sessionStore {
	return &sessionStore{
		ttl: opts.SessionTTL, metrics: metrics, byID: map[string]*session{},
		slots: newCallerCaps(int64(opts.MaxSessions), int64(quarter(opts.MaxSessions, opts.MaxSessionsPerCaller))),
		input: newCallerCaps(opts.MaxInput, max(opts.MaxInput/4, 1)),
	}
}

var (
	errTooManySessions = status.Error(codes.ResourceExhausted, "too many handshake sessions held for this caller or in all; retry later")
	errTooMuchInput    = status.Error(codes.ResourceExhausted, "too much unfinished handshake input held for this caller or in all; retry later")
)

// count moves the number of sessions held, and the gauge with it.
func (st *sessionStore) count(delta int) {
	st.mu.Lock()
	st.held += delta
	st.metrics.sessions.Set(float64(st.held))
	st.mu.Unlock()
}

func (st *sessionStore) add(owner string, keys []target, hs *engine.Handshake, withTrace bool, span trace.Span) (*session, error) {
	if !st.slots.acquire(owner, 1) {
		return nil, errTooManySessions
	}
	b := make([]byte, 16)
	rand.Read(b)
	s := &session{id: hex.EncodeToString(b), owner: owner, keys: keys, expires: time.Now().Add(st.ttl), hs: hs, trace: withTrace, span: span}
	st.mu.Lock()
	// A session leaves the store when it expires, not at some later
	// call: its slot, its input and the gauge follow at once.
	s.expiry = time.AfterFunc(st.ttl, func() { st.remove(s) })
	st.byID[s.id] = s
	st.held++
	st.metrics.sessions.Set(float64(st.held))
	st.mu.Unlock()
	return s, nil
}

// get finds a live session of owner. Another caller's session is NOT_FOUND,
// not PERMISSION_DENIED: ids of other callers' sessions are not confirmed.
func (st *sessionStore) get(owner, id string) (*session, error) {
	st.mu.Lock()
	s, ok := st.byID[id]
	st.mu.Unlock()
	if !ok || s.owner != owner || time.Now().After(s.expires) {
		return nil, status.Errorf(codes.NotFound, "handshake %q not found (never started, expired or aborted)", id)
	}
	return s, nil
}

// remove drops s, once, and frees what it held.
func (st *sessionStore) remove(s *session) {
	st.mu.Lock()
	_, ok := st.byID[s.id]
	delete(st.byID, s.id)
	st.mu.Unlock()
	if !ok {
		return
	}
	s.expiry.Stop()
	st.count(-1)
	st.slots.release(s.owner, 1)
	s.mu.Lock()
	if s.hs != nil { // still running: expired or aborted
		endHandshakeSpan(s.span, pb.HandshakeState_HANDSHAKE_STATE_UNSPECIFIED)
	}
	s.hs = nil
	st.drop(s.owner, &s.input)
	s.mu.Unlock()
}

// reserve counts a streamed session, or a stateless step in flight, against
// the caps until release.
func (st *sessionStore) reserve(owner string) (release func(), err error) {
	if !st.slots.acquire(owner, 1) {
		return nil, errTooManySessions
	}
	st.count(1)
	return func() {
		st.count(-1)
		st.slots.release(owner, 1)
	}, nil
}

// take counts n more client bytes of a handshake of owner that has been
// given *held bytes so far.
func (st *sessionStore) take(owner string, held *int64, n int) error {
	if *held+int64(n) > maxSessionInput {
		return invalid("input: more than %d bytes for one handshake", maxSessionInput)
	}
	if !st.input.acquire(owner, int64(n)) {
		return errTooMuchInput
	}
	*held += int64(n)
	return nil
}

// drop frees the input bytes of a handshake that has ended.
func (st *sessionStore) drop(owner string, held *int64) {
	st.input.release(owner, *held)
	*held = 0
}

func checkInput(in []byte) error {
	if len(in) > maxStepInput {
		return invalid("input: more than %d bytes in one step", maxStepInput)
	}
	return nil
}

// start validates a start request and builds its handshake.
func (h *Handshake) start(ctx context.Context, req *pb.StartHandshakeRequest) (*engine.Handshake, *engine.Config, error) {
	if err := checkInput(req.GetInput()); err != nil {
		return nil, nil, err
	}
	cfg, err := engineConfig(ctx, h.vault, &h.certs, req.GetConfig())
	if err != nil {
		return nil, nil, err
	}
	h.withTickets(cfg, req.GetConfig())
	hs, err := newHandshake(cfg)
	if err != nil {
		return nil, nil, err
	}
	h.metrics.startedTotal.Inc()
	return hs, cfg, nil
}

// step runs one engine step and converts its outcome, with its trace
// unless the handshake's configuration said to omit it. ctx carries the
// handshake's span; the step's span is its child.
func (h *Handshake) step(ctx context.Context, id string, hs *engine.Handshake, withTrace bool, input []byte, opts ...trace.SpanStartOption) *pb.HandshakeStep {
	handshake := trace.SpanFromContext(ctx)
	ctx, span := h.tracer.Start(ctx, "handshake.step", opts...)
	defer span.End()
	// The engine decodes the messages into a trace only for its readers:
	// the caller (no omit_trace) and the spans, when recorded (traceStep).
	hs.OmitTrace(!withTrace && !span.IsRecording() && !handshake.IsRecording())
	begin := time.Now()
	res := hs.Step(ctx, h.keys, input)
	h.metrics.stepSeconds.Observe(time.Since(begin).Seconds())
	var sess *engine.Session
	switch res.State {
	case engine.Complete:
		sess, _ = hs.Session()
		h.metrics.completed(sess)
	case engine.Failed:
		h.metrics.failed(res.AlertDescription)
	}
	traceStep(span, handshake, &res, input, sess)
	return stepToProto(id, &res, input, sess, withTrace)
}

// ended is what GetHandshake shows of an ended handshake: the outcome,
// without output, trace or keys.
func ended(step *pb.HandshakeStep) *pb.HandshakeStep {
	out := &pb.HandshakeStep{Id: step.GetId(), State: step.GetState(), Alert: step.GetAlert()}
	if s := step.GetSession(); s != nil {
		out.Session = proto.Clone(s).(*pb.Session)
		out.Session.Keys = nil
	}
	return out
}

// stepSession steps a held session; the caller holds s.mu.
func (h *Handshake) stepSession(ctx context.Context, s *session, input []byte) (*pb.HandshakeStep, error) {
	if s.hs == nil {
		if s.final == nil { // removed: expired or aborted meanwhile
			return nil, status.Errorf(codes.NotFound, "handshake %q not found (never started, expired or aborted)", s.id)
		}
		return nil, status.Errorf(codes.FailedPrecondition, "handshake %q has ended (%v)", s.id, s.final.GetState())
	}
	if err := h.sessions.take(s.owner, &s.input, len(input)); err != nil {
		return nil, err
	}
	// The step belongs to the session's trace; the call that carried it
	// is linked.
	call := trace.LinkFromContext(ctx)
	out := h.step(trace.ContextWithSpan(ctx, s.span), s.id, s.hs, s.trace, input, trace.WithLinks(call))
	out.ExpireTime = timestamppb.New(s.expires)
	if out.GetState() != pb.HandshakeState_HANDSHAKE_STATE_NEED_INPUT {
		endHandshakeSpan(s.span, out.GetState())
		s.hs = nil // free the engine state; keep only the outcome
		h.sessions.drop(s.owner, &s.input)
		s.final = ended(out)
		s.final.ExpireTime = out.GetExpireTime()
	}
	return out, nil
}

func (h *Handshake) StartHandshake(ctx context.Context, req *pb.StartHandshakeRequest) (*pb.HandshakeStep, error) {
	if req.GetStateless() {
		return h.startStateless(ctx, req)
	}
	hs, _, err := h.start(ctx, req)
	if err != nil {
		return nil, err
	}
	_, span := h.startHandshakeSpan(ctx, "unary", req)
	s, err := h.sessions.add(callerIdentity(ctx), handshakeKeys(req), hs, !req.GetConfig().GetOmitTrace(), span)
	if err != nil {
		endHandshakeSpan(span, pb.HandshakeState_HANDSHAKE_STATE_UNSPECIFIED)
		return nil, err
	}
	if len(req.GetInput()) == 0 {
		return &pb.HandshakeStep{Id: s.id, State: pb.HandshakeState_HANDSHAKE_STATE_NEED_INPUT, ExpireTime: timestamppb.New(s.expires)}, nil
	}
	s.mu.Lock()
	out, err := h.stepSession(ctx, s, req.GetInput())
	s.mu.Unlock()
	if err != nil {
		h.sessions.remove(s) // refused: nobody learnt its id
	}
	return out, err
}

func (h *Handshake) StepHandshake(ctx context.Context, req *pb.StepHandshakeRequest) (*pb.HandshakeStep, error) {
	if err := checkInput(req.GetInput()); err != nil {
		return nil, err
	}
	if len(req.GetStateToken()) > 0 {
		return h.stepStateless(ctx, req)
	}
	s, err := h.sessions.get(callerIdentity(ctx), req.GetId())
	if err != nil {
		return nil, err
	}
	if h.authorize != nil {
		// A grant revoked since the start ends the session here: the key
		// is not used once more for it.
		if err := h.authorize(ctx, s.keys); err != nil {
			h.sessions.remove(s)
			return nil, err
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return h.stepSession(ctx, s, req.GetInput())
}

func (h *Handshake) GetHandshake(ctx context.Context, req *pb.GetHandshakeRequest) (*pb.HandshakeStep, error) {
	s, err := h.sessions.get(callerIdentity(ctx), req.GetId())
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.final != nil {
		return s.final, nil
	}
	return &pb.HandshakeStep{Id: s.id, State: pb.HandshakeState_HANDSHAKE_STATE_NEED_INPUT, ExpireTime: timestamppb.New(s.expires)}, nil
}

func (h *Handshake) AbortHandshake(ctx context.Context, req *pb.AbortHandshakeRequest) (*pb.AbortHandshakeResponse, error) {
	s, err := h.sessions.get(callerIdentity(ctx), req.GetId())
	if err != nil {
		return nil, err
	}
	h.sessions.remove(s)
	return &pb.AbortHandshakeResponse{}, nil
}

// Stream runs one handshake for the life of the stream. The session is not
// in the store (no id to step it by), but it counts against the same caps.
// The guard checks use on its keys again for every input message.
func (h *Handshake) Stream(stream pb.Handshake_StreamServer) error {
	ctx := stream.Context()
	owner := callerIdentity(ctx)
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	start := first.GetStart()
	if start == nil {
		return invalid("the first message of a stream must be start")
	}
	hs, _, err := h.start(ctx, start)
	if err != nil {
		return err
	}
	release, err := h.sessions.reserve(owner)
	if err != nil {
		return err
	}
	defer release()
	ctx, span := h.startHandshakeSpan(ctx, "stream", start)
	state := pb.HandshakeState_HANDSHAKE_STATE_UNSPECIFIED // ended before an outcome
	defer func() { endHandshakeSpan(span, state) }()
	var held int64
	defer h.sessions.drop(owner, &held)
	input := start.GetInput()
	for {
		if len(input) > 0 {
			if err := h.sessions.take(owner, &held, len(input)); err != nil {
				return err
			}
			out := h.step(ctx, "", hs, !start.GetConfig().GetOmitTrace(), input)
			state = out.GetState()
			if err := stream.Send(out); err != nil {
				return err
			}
			if out.GetState() != pb.HandshakeState_HANDSHAKE_STATE_NEED_INPUT {
				return nil
			}
		}
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if req.GetStart() != nil {
			return invalid("start may only be the first message of a stream")
		}
		if input = req.GetInput(); len(input) == 0 {
			return invalid("input: empty")
		}
		if err := checkInput(input); err != nil {
			return err
		}
	}
}
