package service

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/engine"
	"github.com/handshaked/handshaked/internal/keyvault"
)

// maxStepInput bounds the client bytes of one step: a whole TLS 1.3 client
// flight with a large certificate chain fits several times over.
const maxStepInput = 256 << 10

// HandshakeOptions bound the handshake sessions the service holds.
type HandshakeOptions struct {
	// MaxSessions caps sessions held at once, unary and streamed; past it
	// StartHandshake fails with RESOURCE_EXHAUSTED. Default 10000.
	MaxSessions int
	// SessionTTL is how long a unary session lives after it starts. Default 30s.
	SessionTTL time.Duration
}

// Handshake serves the Handshake API: the engine, stepped remotely, with the
// vault doing the private-key operations.
type Handshake struct {
	pb.UnimplementedHandshakeServer
	vault    *keyvault.Vault
	keys     vaultKeyOps
	sessions *sessionStore
	metrics  *handshakeMetrics
}

// NewHandshake returns the Handshake API over vault.
func NewHandshake(vault *keyvault.Vault, opts HandshakeOptions, metrics *handshakeMetrics) *Handshake {
	if opts.MaxSessions <= 0 {
		opts.MaxSessions = 10000
	}
	if opts.SessionTTL <= 0 {
		opts.SessionTTL = 30 * time.Second
	}
	return &Handshake{
		vault:    vault,
		keys:     vaultKeyOps{vault},
		sessions: newSessionStore(opts, metrics),
		metrics:  metrics,
	}
}

// session is one handshake held between unary calls. Its engine state is
// dropped once the handshake ends; what is kept answers GetHandshake.
type session struct {
	id, owner string
	expires   time.Time

	mu    sync.Mutex
	hs    *engine.Handshake // nil once complete or failed
	final *pb.HandshakeStep // the outcome, without keys, once ended
}

// sessionStore holds unary sessions and counts streamed ones against the
// same cap.
type sessionStore struct {
	max     int
	ttl     time.Duration
	metrics *handshakeMetrics

	mu        sync.Mutex
	byID      map[string]*session
	streams   int
	lastSweep time.Time
}

func newSessionStore(opts HandshakeOptions, metrics *handshakeMetrics) *sessionStore {
	return &sessionStore{max: opts.MaxSessions, ttl: opts.SessionTTL, metrics: metrics, byID: map[string]*session{}}
}

var errTooManySessions = status.Error(codes.ResourceExhausted, "too many handshake sessions held; retry later")

// sweepLocked forgets expired sessions. It runs at most four times per TTL,
// when sessions are added, so its cost is amortized over the adds.
func (st *sessionStore) sweepLocked(now time.Time) {
	if now.Sub(st.lastSweep) < st.ttl/4 {
		return
	}
	st.lastSweep = now
	for id, s := range st.byID {
		if now.After(s.expires) {
			delete(st.byID, id)
		}
	}
}

func (st *sessionStore) heldLocked() int { return len(st.byID) + st.streams }

func (st *sessionStore) add(owner string, hs *engine.Handshake) (*session, error) {
	b := make([]byte, 16)
	rand.Read(b)
	now := time.Now()
	s := &session{id: hex.EncodeToString(b), owner: owner, expires: now.Add(st.ttl), hs: hs}
	st.mu.Lock()
	defer st.mu.Unlock()
	st.sweepLocked(now)
	if st.heldLocked() >= st.max {
		return nil, errTooManySessions
	}
	st.byID[s.id] = s
	st.metrics.sessions.Set(float64(st.heldLocked()))
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

func (st *sessionStore) remove(id string) {
	st.mu.Lock()
	delete(st.byID, id)
	st.metrics.sessions.Set(float64(st.heldLocked()))
	st.mu.Unlock()
}

// reserveStream counts a streamed session against the cap until release.
func (st *sessionStore) reserveStream() (release func(), err error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.sweepLocked(time.Now())
	if st.heldLocked() >= st.max {
		return nil, errTooManySessions
	}
	st.streams++
	st.metrics.sessions.Set(float64(st.heldLocked()))
	return func() {
		st.mu.Lock()
		st.streams--
		st.metrics.sessions.Set(float64(st.heldLocked()))
		st.mu.Unlock()
	}, nil
}

func checkInput(in []byte) error {
	if len(in) > maxStepInput {
		return invalid("input: more than %d bytes in one step", maxStepInput)
	}
	return nil
}

// start validates a start request and builds its handshake.
func (h *Handshake) start(ctx context.Context, req *pb.StartHandshakeRequest) (*engine.Handshake, error) {
	if err := checkInput(req.GetInput()); err != nil {
		return nil, err
	}
	cfg, err := engineConfig(ctx, h.vault, req.GetConfig())
	if err != nil {
		return nil, err
	}
	hs, err := newHandshake(cfg)
	if err != nil {
		return nil, err
	}
	h.metrics.startedTotal.Inc()
	return hs, nil
}

// step runs one engine step and converts its outcome.
func (h *Handshake) step(ctx context.Context, id string, hs *engine.Handshake, input []byte) *pb.HandshakeStep {
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
	return stepToProto(id, &res, input, sess)
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
func (h *Handshake) stepSession(ctx context.Context, s *session, input []byte) *pb.HandshakeStep {
	out := h.step(ctx, s.id, s.hs, input)
	out.ExpireTime = timestamppb.New(s.expires)
	if out.GetState() != pb.HandshakeState_HANDSHAKE_STATE_NEED_INPUT {
		s.hs = nil // free the engine state; keep only the outcome
		s.final = ended(out)
		s.final.ExpireTime = out.GetExpireTime()
	}
	return out
}

func (h *Handshake) StartHandshake(ctx context.Context, req *pb.StartHandshakeRequest) (*pb.HandshakeStep, error) {
	hs, err := h.start(ctx, req)
	if err != nil {
		return nil, err
	}
	s, err := h.sessions.add(callerIdentity(ctx), hs)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(req.GetInput()) == 0 {
		return &pb.HandshakeStep{Id: s.id, State: pb.HandshakeState_HANDSHAKE_STATE_NEED_INPUT, ExpireTime: timestamppb.New(s.expires)}, nil
	}
	return h.stepSession(ctx, s, req.GetInput()), nil
}

func (h *Handshake) StepHandshake(ctx context.Context, req *pb.StepHandshakeRequest) (*pb.HandshakeStep, error) {
	if err := checkInput(req.GetInput()); err != nil {
		return nil, err
	}
	s, err := h.sessions.get(callerIdentity(ctx), req.GetId())
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.hs == nil {
		return nil, status.Errorf(codes.FailedPrecondition, "handshake %q has ended (%v)", s.id, s.final.GetState())
	}
	return h.stepSession(ctx, s, req.GetInput()), nil
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
	h.sessions.remove(s.id)
	return &pb.AbortHandshakeResponse{}, nil
}

// Stream runs one handshake for the life of the stream. The session is not
// in the store (no id to step it by), but it counts against the same cap.
func (h *Handshake) Stream(stream pb.Handshake_StreamServer) error {
	ctx := stream.Context()
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	start := first.GetStart()
	if start == nil {
		return invalid("the first message of a stream must be start")
	}
	hs, err := h.start(ctx, start)
	if err != nil {
		return err
	}
	release, err := h.sessions.reserveStream()
	if err != nil {
		return err
	}
	defer release()
	input := start.GetInput()
	for {
		if len(input) > 0 {
			out := h.step(ctx, "", hs, input)
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
