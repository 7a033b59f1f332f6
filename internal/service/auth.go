package service

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
	rpccode "google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/audit"
	"github.com/handshaked/handshaked/internal/authz"
	"github.com/handshaked/handshaked/internal/grpckeepalive"
	"github.com/handshaked/handshaked/internal/keyvault"
)

// target is a key a call acts on.
type target struct {
	id      string
	version uint32
	// labels of a key the call creates; an existing key's are looked up.
	labels map[string]string
	isNew  bool
}

// rule says what a method needs. Rights are per key: the caller needs one
// of the rights in right on every key keys names. right 0 means any
// authenticated caller; keys nil means the method names no key, which
// only an admin passes unless right is 0.
type rule struct {
	right authz.Right
	keys  func(msg any) []target
}

// rules is the one place that says who may call what. A method missing here
// is for admins only, so a new RPC is closed until someone decides. Stream
// rules apply to every message the caller sends.
var rules = map[string]rule{
	pb.KeyVault_CreateKey_FullMethodName:                       {authz.Manage, newKey},
	pb.KeyVault_ImportKey_FullMethodName:                       {authz.Manage, newKey},
	pb.KeyVault_GetKey_FullMethodName:                          {authz.Use | authz.Manage, namedKey},
	pb.KeyVault_ListKeys_FullMethodName:                        {0, nil},
	pb.KeyVault_RotateKey_FullMethodName:                       {authz.Manage, namedKey},
	pb.KeyVault_EnableKeyVersion_FullMethodName:                {authz.Manage, namedKey},
	pb.KeyVault_DisableKeyVersion_FullMethodName:               {authz.Manage, namedKey},
	pb.KeyVault_DestroyKeyVersion_FullMethodName:               {authz.Manage, namedKey},
	pb.KeyVault_GetPublicKey_FullMethodName:                    {authz.Use | authz.Manage, namedKey},
	pb.KeyVault_AttachCertificateChain_FullMethodName:          {authz.Manage, namedKey},
	pb.KeyVault_CreateCertificateSigningRequest_FullMethodName: {authz.Manage, namedKey},
	pb.KeyVault_Decrypt_FullMethodName:                         {authz.Use, namedKey},
	pb.KeyVault_Sign_FullMethodName:                            {authz.Use, namedKey},
	// A ticket holds session secrets: only a caller that may use the key
	// the session was authenticated with seals or opens its tickets.
	pb.KeyVault_SealTicket_FullMethodName: {authz.Use, namedKey},
	pb.KeyVault_OpenTicket_FullMethodName: {authz.Use, namedKey},
	pb.KeyVault_SignStream_FullMethodName: {authz.Use, func(m any) []target {
		if r, ok := m.(*pb.SignStreamRequest); ok {
			if d := r.GetDecrypt(); d != nil {
				return namedKey(d)
			}
			return namedKey(r.GetRequest())
		}
		return []target{{}}
	}},
	// Each operation of a batch needs use on its key: the handler checks
	// them one by one (guard.batchItem), so one refusal fails only its own.
	pb.KeyVault_Batch_FullMethodName:       {authz.Use, func(any) []target { return []target{} }},
	pb.KeyVault_BatchStream_FullMethodName: {authz.Use, func(any) []target { return []target{} }},
	pb.Handshake_StartHandshake_FullMethodName: {authz.Use, func(m any) []target {
		if r, ok := m.(*pb.StartHandshakeRequest); ok {
			return handshakeKeys(r)
		}
		return []target{{}}
	}},
	// Sessions belong to the identity that started them, and each step
	// needs use on the session's keys by the policy in force at that step:
	// the handlers check both (Handshake.authorize).
	pb.Handshake_StepHandshake_FullMethodName:  {},
	pb.Handshake_GetHandshake_FullMethodName:   {},
	pb.Handshake_AbortHandshake_FullMethodName: {},
	pb.Handshake_Stream_FullMethodName: {authz.Use, func(m any) []target {
		r, ok := m.(*pb.StreamRequest)
		if !ok {
			return []target{{}}
		}
		if _, input := r.GetRequest().(*pb.StreamRequest_Input); input {
			// Bytes for the handshake the start named: guardedStream checks
			// use on its keys again for each of them.
			return []target{}
		}
		return handshakeKeys(r.GetStart())
	}},
	// Each request of a Multiplex stream is admitted by the handler as a
	// message of a handshake Stream would be (guard.muxItem), so that a
	// refusal ends its own handshake, not the stream with all the others.
	pb.Handshake_Multiplex_FullMethodName: {},
	// The vault as a whole (its KEK, its backups): admins only.
	pb.Admin_GetKEKStatus_FullMethodName: adminOnly,
	pb.Admin_RotateKEK_FullMethodName:    adminOnly,
	pb.Admin_Backup_FullMethodName:       adminOnly,
	pb.Admin_Restore_FullMethodName:      adminOnly,
}

var adminOnly = rule{right: authz.Admin}

// exempt methods answer anyone, unlimited: health checks must keep working
// under overload and without a client certificate, and reflection shows
// only the API's shape, which /openapi.json publishes anyway.
func exempt(method string) bool {
	return strings.HasPrefix(method, "/grpc.health.v1.Health/") || strings.HasPrefix(method, "/grpc.reflection.")
}

// namedKey is the key of a request with key (and maybe version) fields.
func namedKey(m any) []target {
	r, ok := m.(interface{ GetKey() string })
	if !ok {
		return []target{{}}
	}
	t := target{id: r.GetKey()}
	if v, ok := m.(interface{ GetVersion() uint32 }); ok {
		t.version = v.GetVersion()
	}
	return []target{t}
}

// newKey is the key a create or import request makes, with its labels.
func newKey(m any) []target {
	r, ok := m.(interface {
		GetId() string
		GetLabels() map[string]string
	})
	if !ok {
		return []target{{}}
	}
	return []target{{id: r.GetId(), labels: r.GetLabels(), isNew: true}}
}

func handshakeKeys(r *pb.StartHandshakeRequest) []target {
	refs := r.GetConfig().GetKeys()
	ts := make([]target, 0, len(refs))
	for _, k := range refs {
		ts = append(ts, target{id: k.GetKey(), version: k.GetVersion()})
	}
	return ts
}

// guard is where every API call is limited, authorized and audited, in
// that order, before its handler runs.
type guard struct {
	vault       *keyvault.Vault
	policy      *authz.Store // nil: development mode, nobody is authenticated
	audit       *audit.Log   // nil: no audit log
	rate        *rateLimiter // per identity; nil: no rate limit
	inFlight    *callerCaps  // unary calls; nil: no cap
	streams     *callerCaps  // open streams; nil: no cap
	idleTimeout time.Duration
	callTimeout time.Duration
	// Callers without an identity in production: a rate for all of them
	// and one per source address, and caps on their (exempt) streams.
	unauthAll     *rate.Limiter
	unauthHost    *rateLimiter
	unauthStreams *callerCaps

	refusedCalls *prometheus.CounterVec
	auditErrors  prometheus.Counter
}

func newGuard(vault *keyvault.Vault, opts Options, reg prometheus.Registerer) *guard {
	l := opts.Limits
	g := &guard{
		vault:       vault,
		policy:      opts.Policy,
		audit:       opts.Audit,
		callTimeout: cmp.Or(l.CallTimeout, DefaultCallTimeout),
		idleTimeout: cmp.Or(l.StreamIdleTimeout, DefaultStreamIdleTimeout),
		inFlight:    newCallerCaps(int64(l.MaxInFlight), int64(quarter(l.MaxInFlight, l.MaxInFlightPerCaller))),
		streams:     newCallerCaps(int64(l.MaxStreams), int64(quarter(l.MaxStreams, l.MaxStreamsPerCaller))),
		refusedCalls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "handshaked_calls_refused_total",
			Help: "API calls refused before they ran, by reason (rate_limit, in_flight, streams, stream_idle, unauthenticated_rate_limit); refused TLS handshakes left out of the audit log past the rate limit (tls_refusal_not_audited).",
		}, []string{"reason"}),
		auditErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "handshaked_audit_write_errors_total",
			Help: "Audit entries that could not be written.",
		}),
	}
	reg.MustRegister(g.refusedCalls, g.auditErrors)
	if l.Rate > 0 {
		g.rate = newRateLimiter(l.Rate, l.Burst)
	}
	if g.policy != nil {
		r := cmp.Or(l.UnauthenticatedRate, DefaultUnauthenticatedRate)
		g.unauthAll = rate.NewLimiter(rate.Limit(r), max(int(2*r), 1))
		g.unauthHost = newRateLimiter(r/4, max(int(r/2), 1))
		g.unauthStreams = newCallerCaps(maxUnauthenticatedStreams, maxUnauthenticatedStreamsPerHost)
	}
	return g
}

func (g *guard) refused(reason string) { g.refusedCalls.WithLabelValues(reason).Inc() }

// admit applies the rate limits. Refused calls are counted, not audited:
// they did nothing, and a flood of them must not fill the disk. A caller
// without an identity in production is refused here, audited within the
// tight rate of such callers.
func (g *guard) admit(ctx context.Context, method string, msg any) error {
	identity := callerIdentity(ctx)
	if g.policy != nil && identity == "" {
		if wait := g.takeUnauthenticated(peerHost(metaOf(ctx).peer)); wait > 0 {
			g.refused("unauthenticated_rate_limit")
			return rateLimited(wait)
		}
		err := status.Error(codes.Unauthenticated, "no client certificate: this API needs mutual TLS with a certificate from the configured CA")
		// The entry names the request's key only if it is of a valid
		// size: the caller's bytes reach the disk bounded.
		if sizeError(msg) != nil {
			msg = nil
		}
		g.record(ctx, g.entry(ctx, method, msg), time.Now(), nil, err)
		return err
	}
	if g.rate != nil {
		if wait := g.rate.take(identity, time.Now()); wait > 0 {
			g.refused("rate_limit")
			return rateLimited(wait)
		}
	}
	return nil
}

// takeUnauthenticated takes a token for a caller without an identity from
// host's bucket and from the one of all such callers; 0 if both had one,
// else how long until the one that had none does.
func (g *guard) takeUnauthenticated(host string) time.Duration {
	now := time.Now()
	if wait := g.unauthHost.take(host, now); wait > 0 {
		return wait
	}
	return takeToken(g.unauthAll, now)
}

// authorize checks the caller's rights for one request message.
func (g *guard) authorize(ctx context.Context, r rule, msg any) error {
	if g.policy == nil || r.right == 0 {
		return nil
	}
	targets := []target{{}}
	if r.keys != nil {
		targets = r.keys(msg)
	}
	return g.allowed(ctx, r.right, targets)
}

// allowed checks that the caller holds one of right on every target, by
// the policy in force now.
func (g *guard) allowed(ctx context.Context, right authz.Right, targets []target) error {
	if g.policy == nil {
		return nil
	}
	identity := callerIdentity(ctx)
	p := g.policy.Policy()
	for _, t := range targets {
		key := authz.Key{ID: t.id, Labels: t.labels}
		if t.id != "" && (t.isNew || p.UsesLabels()) {
			// A key that does not exist has no labels; if a grant by id
			// covers it, the handler says NOT_FOUND, and otherwise the
			// caller learns nothing about whether it exists.
			if k, err := g.vault.Get(ctx, t.id); err == nil {
				existing := authz.Key{ID: k.ID, Labels: k.Labels}
				if t.isNew && !p.Allows(identity, existing, authz.Use|authz.Manage) {
					// Creating over a key the caller cannot see is refused
					// as any key it has no right on, not ALREADY_EXISTS.
					return denied(identity, right, t.id)
				}
				if !t.isNew {
					key = existing
				}
			}
		}
		if !p.Allows(identity, key, right) {
			return denied(identity, right, t.id)
		}
	}
	return nil
}

func denied(identity string, right authz.Right, id string) error {
	return status.Errorf(codes.PermissionDenied, "%q needs %v on key %q", identity, right, id)
}

// visible reports whether the caller may see key in a listing: whether it
// holds some right on it.
func (g *guard) visible(ctx context.Context, k *keyvault.Key) bool {
	return g.policy == nil || g.policy.Policy().Allows(callerIdentity(ctx), authz.Key{ID: k.ID, Labels: k.Labels}, authz.Use|authz.Manage)
}

// entry starts the audit entry of a call (nil without an audit log).
func (g *guard) entry(ctx context.Context, method string, msg any) *audit.Entry {
	if g.audit == nil {
		return nil
	}
	m := metaOf(ctx)
	e := &audit.Entry{
		Time:      time.Now().UTC(),
		RequestID: m.requestID,
		Caller:    callerIdentity(ctx),
		Peer:      m.peer,
		Operation: methodLabel(method),
	}
	describeRequest(e, msg)
	return e
}

// record completes e with how the call went and writes it.
func (g *guard) record(ctx context.Context, e *audit.Entry, start time.Time, resp any, err error) {
	if e == nil {
		return
	}
	e.DurationMS = float64(time.Since(start).Microseconds()) / 1000
	st := status.Convert(err)
	e.Outcome = codeName(st.Code())
	switch st.Code() {
	case codes.OK:
		describeResponse(e, resp)
	case codes.Unauthenticated, codes.PermissionDenied, codes.InvalidArgument:
		e.Detail = st.Message()
	}
	if werr := g.audit.Write(e); werr != nil {
		g.auditErrors.Inc()
		slog.ErrorContext(ctx, "audit entry not written", "err", werr, "operation", e.Operation, "request_id", e.RequestID)
	}
}

// codeName is the canonical name of a status code, PERMISSION_DENIED
// rather than Go's PermissionDenied.
func codeName(c codes.Code) string { return rpccode.Code(c).String() }

func (g *guard) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
	if exempt(info.FullMethod) {
		return handler(ctx, req)
	}
	if r, ok := req.(*pb.ImportKeyRequest); ok {
		// The vault keeps the parsed key; this decoded copy of the PEM is
		// wiped when the call ends, whatever its outcome (the transport's
		// own buffers are beyond reach).
		defer clear(r.PrivateKeyPem)
	}
	start := time.Now()
	if err := g.admit(ctx, info.FullMethod, req); err != nil {
		return nil, err
	}
	if err := g.checkSizes(ctx, info.FullMethod, req); err != nil {
		return nil, err
	}
	identity := callerIdentity(ctx)
	weight := g.weight(req)
	if !g.inFlight.acquire(identity, weight) {
		g.refused("in_flight")
		return nil, errTooBusy
	}
	defer g.inFlight.release(identity, weight)
	e := g.entry(ctx, info.FullMethod, req)
	defer func() { g.record(ctx, e, start, resp, err) }()

	r, ok := rules[info.FullMethod]
	if !ok {
		r = adminOnly
	}
	if err := g.authorize(ctx, r, req); err != nil {
		return nil, err
	}
	ctx, cancel := withCallTimeout(ctx, g.callTimeout)
	defer cancel()
	return handler(ctx, req)
}

// checkSizes refuses, before authorization and before the request is
// described in the audit log, what no valid request holds: a key id or
// handshake id longer than any, more keys than a handshake may offer. The
// audit entry of the refusal names none of the request's fields.
func (g *guard) checkSizes(ctx context.Context, method string, msg any) error {
	err := sizeError(msg)
	if err != nil {
		g.record(ctx, g.entry(ctx, method, nil), time.Now(), nil, err)
	}
	return err
}

// maxIDBytes bounds key ids (the vault allows 63 bytes) and handshake ids
// (32 hex digits) before either is looked at.
const maxIDBytes = 64

func checkID(field, id string) error {
	if len(id) > maxIDBytes {
		return invalid("%s: more than %d bytes", field, maxIDBytes)
	}
	return nil
}

func sizeError(msg any) error {
	switch r := msg.(type) {
	case *pb.SignStreamRequest:
		if d := r.GetDecrypt(); d != nil {
			return sizeError(d)
		}
		return sizeError(r.GetRequest())
	case *pb.BatchRequest:
		return checkBatch(r)
	case *pb.BatchStreamRequest:
		return checkBatch(r.GetBatch())
	case *pb.StreamRequest:
		if s := r.GetStart(); s != nil {
			return sizeError(s)
		}
	case *pb.MultiplexRequest:
		if s := r.GetStart(); s != nil {
			return sizeError(s)
		}
	case *pb.StartHandshakeRequest:
		refs := r.GetConfig().GetKeys()
		if err := checkKeyCount(len(refs)); err != nil {
			return err
		}
		for _, k := range refs {
			if err := checkID("config.keys.key", k.GetKey()); err != nil {
				return err
			}
		}
	case interface{ GetKey() string }:
		return checkID("key", r.GetKey())
	case interface{ GetId() string }:
		return checkID("id", r.GetId())
	}
	return nil
}

func (g *guard) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx := ss.Context()
	identity := callerIdentity(ctx)
	if exempt(info.FullMethod) {
		// Health watches and reflection answer anyone, but each stream
		// holds memory: callers without an identity are capped per source
		// address and in all, the others as any stream.
		caps, caller := g.streams, identity
		if g.policy != nil && identity == "" {
			caps, caller = g.unauthStreams, peerHost(metaOf(ctx).peer)
		}
		if !caps.acquire(caller, 1) {
			g.refused("streams")
			return errTooManyStreams
		}
		defer caps.release(caller, 1)
		return handler(srv, ss)
	}
	if err := g.admit(ctx, info.FullMethod, nil); err != nil {
		return err
	}
	if !g.streams.acquire(identity, 1) {
		g.refused("streams")
		return errTooManyStreams
	}
	defer g.streams.release(identity, 1)
	r, ok := rules[info.FullMethod]
	if !ok {
		r = adminOnly
	}
	gs := &guardedStream{ServerStream: ss, g: g, rule: r, method: info.FullMethod}
	gs.ctx = context.WithValue(ctx, idleWatchKey{}, &gs.idle)
	gs.idle.start(g.idleTimeout, func() { g.refused("stream_idle") })
	err := gs.serve(srv, info, handler)
	gs.completePending(nil, err)
	return err
}

// guardedStream limits, authorizes and audits each message a caller sends
// on a stream. A message's audit entry is completed by the next response
// the handler sends (or by the end of the stream), which for SignStream is
// that message's answer and for a handshake stream that step's outcome.
type guardedStream struct {
	grpc.ServerStream
	ctx    context.Context // the stream's, with its idle watch for streamWork
	g      *guard
	rule   rule
	method string
	// session holds the keys a handshake stream's start named: each input
	// message needs use on them by the policy in force when it comes.
	session []target

	mu      sync.Mutex
	pending []pendingEntry

	idle idleWatch
}

// idleWatch finds a stream idle when its caller has sent nothing for the
// idle timeout while the handler waited for it with every request
// answered, or has read nothing for the idle timeout while the handler (or
// the one worker sending for it) waited to send: an idle stream, or one
// whose caller stops reading once flow control is full, must not hold its
// place, its goroutines and a handshake's session for the life of the
// connection. A stream whose handler still owes the caller answers is not
// idle, however long it waits for the next message: a batch, or an
// operation on a slow key backend, may outlast the timeout. The handler
// waits in RecvMsg and SendMsg itself (no hand-off per message to a
// goroutine that could be left waiting); the guard ends the stream with
// the watch's status when it fires (guardedStream.serve). The timer is not
// reset per message: it fires once per timeout and looks at how long the
// current waits have lasted, arming itself again for the rest. A pipeline
// stream waits to receive and to send at once: each wait has its own
// start, so that one ending does not hide the other still going on.
type idleWatch struct {
	timeout time.Duration
	// since is, per waitKind, when the handler began the current wait, in
	// nanoseconds after epoch (now); 0 while it is not waiting. Sends are
	// serialized by their callers (one worker sends a pipeline's answers
	// at a time), so one start per kind is enough.
	since [waitKinds]atomic.Int64
	epoch time.Time
	// owed counts the answers the handler owes the caller (owe); free is
	// when it last fell, so that a wait to receive begun while answers were
	// owed counts from when the last of them was sent.
	owed atomic.Int64
	free atomic.Int64

	mu    sync.Mutex // orders timer rearming and firing with stop
	timer *time.Timer
	ended bool
	// idled is closed when the watch finds the stream idle, for the wait
	// of kind firedBy (set before).
	idled   chan struct{}
	firedBy waitKind
}

// waitKind is what a handler waits for in an idleWatch.
type waitKind int

const (
	receiving waitKind = iota // the caller's next message
	sending                   // the caller to read, for room to send
	waitKinds                 // how many kinds there are
)

type idleWatchKey struct{}

// streamWork is the idleWatch of the stream whose context is ctx, for its
// handler to tell it of the answers it owes (owe); nil, which owes
// nothing, on a stream without one.
func streamWork(ctx context.Context) *idleWatch {
	w, _ := ctx.Value(idleWatchKey{}).(*idleWatch)
	return w
}

// start arms the watch; refused counts a stream it finds idle.
func (w *idleWatch) start(timeout time.Duration, refused func()) {
	w.timeout, w.epoch, w.idled = timeout, time.Now(), make(chan struct{})
	w.mu.Lock()
	defer w.mu.Unlock()
	w.timer = time.AfterFunc(timeout, func() { w.check(refused) })
}

// now is the time in nanoseconds after epoch, plus one: a wait starting
// at the epoch is still a wait.
func (w *idleWatch) now() int64 { return int64(time.Since(w.epoch)) + 1 }

// wait marks the start (true) or the end (false) of a wait of kind k.
func (w *idleWatch) wait(k waitKind, waiting bool) {
	var since int64
	if waiting {
		since = w.now()
	}
	w.since[k].Store(since)
}

// owe counts n more answers owed to the caller, a request taken on (n <
// 0: answers sent, or requests that get none). While some are owed, a
// wait for the caller's next message is not idle.
func (w *idleWatch) owe(n int) {
	if w == nil {
		return
	}
	if n < 0 {
		// Before the count falls: check, which reads it first, never
		// sees none owed with an older free.
		w.free.Store(w.now())
	}
	w.owed.Add(int64(n))
}

// check fires the watch if a current wait has lasted the timeout, else
// looks again when the one that began first would have.
func (w *idleWatch) check(refused func()) {
	next := w.timeout
	now := w.now()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ended {
		return
	}
	for k := range waitKinds {
		since := w.since[k].Load()
		if since == 0 {
			continue
		}
		if k == receiving {
			if w.owed.Load() > 0 {
				continue // the service works for the caller, it does not wait for it
			}
			since = max(since, w.free.Load())
		}
		waited := time.Duration(now - since)
		if waited >= w.timeout {
			w.firedBy, w.ended = k, true
			refused()
			close(w.idled)
			return
		}
		next = min(next, w.timeout-waited)
	}
	w.timer.Reset(next)
}

// stop ends the watch once the handler has returned.
func (w *idleWatch) stop() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.ended = true
	w.timer.Stop()
}

// err is the status of a stream the watch found idle.
func (w *idleWatch) err() error {
	what := "the caller sent no message"
	if w.firedBy == sending {
		what = "the caller read nothing sent to it"
	}
	// DEADLINE_EXCEEDED: the service's deadline for the caller's next
	// message (or for it to read) ran out. The caller may open a new
	// stream at once, which FAILED_PRECONDITION would tell it not to do
	// before it has fixed something.
	return status.Errorf(codes.DeadlineExceeded, "stream idle for longer than the service's stream idle timeout (%v): %s", w.timeout, what)
}

// serve runs the handler on a goroutine of its own and returns its error,
// or the idle status once the watch finds the stream idle. The handler
// then waits in RecvMsg or SendMsg, which return only when done or at the
// end of the stream; a status they fail with is sent as the stream's (as
// grpc-go's "context canceled"), so it must not be they that end it. The
// stream ends when this returns: grpc-go sends the status returned, then
// ends the stream's context, with which the handler's wait fails (sending
// nothing more) and its goroutine ends; localConn ends it the same way.
// The handler runs inside recoverStream, so that a panic on its goroutine
// still fails this call only.
func (s *guardedStream) serve(srv any, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	done := make(chan error, 1)
	go func() { done <- recoverStream(srv, s, info, handler) }()
	select {
	case err := <-done:
		s.idle.stop()
		return err
	case <-s.idle.idled:
		return s.idle.err()
	}
}

func (s *guardedStream) Context() context.Context { return s.ctx }

type pendingEntry struct {
	e     *audit.Entry
	start time.Time
}

// recv waits for the caller's next message, at most the idle timeout.
func (s *guardedStream) recv(m any) error {
	s.idle.wait(receiving, true)
	err := s.ServerStream.RecvMsg(m)
	s.idle.wait(receiving, false)
	return err
}

func (s *guardedStream) RecvMsg(m any) error {
	if err := s.recv(m); err != nil {
		return err
	}
	if s.method == pb.Handshake_Multiplex_FullMethodName {
		return nil // admitted request by request: guard.muxItem
	}
	ctx := s.Context()
	if s.g.rate != nil {
		if wait := s.g.rate.take(callerIdentity(ctx), time.Now()); wait > 0 {
			s.g.refused("rate_limit")
			return rateLimited(wait)
		}
	}
	if err := s.g.checkSizes(ctx, s.method, m); err != nil {
		return err
	}
	start := time.Now()
	e := s.g.entry(ctx, s.method, m)
	err := s.g.authorize(ctx, s.rule, m)
	if r, ok := m.(*pb.StreamRequest); ok && err == nil {
		if st := r.GetStart(); st != nil {
			s.session = handshakeKeys(st)
		} else {
			err = s.g.allowed(ctx, authz.Use, s.session)
		}
	}
	if err != nil {
		s.g.record(ctx, e, start, nil, err)
		return err
	}
	s.mu.Lock()
	s.pending = append(s.pending, pendingEntry{e, start})
	s.mu.Unlock()
	return nil
}

// SendMsg sends m, waiting at most the idle timeout for the caller to
// read what was sent before it.
func (s *guardedStream) SendMsg(m any) error {
	s.idle.wait(sending, true)
	err := s.ServerStream.SendMsg(m)
	s.idle.wait(sending, false)
	if s.method == pb.KeyVault_SignStream_FullMethodName || s.method == pb.KeyVault_BatchStream_FullMethodName {
		// SignStream and BatchStream answer every request, in order,
		// several in flight (signstream.go): an answer completes its own
		// request's entry.
		s.completeOldest(m, err)
	} else {
		s.completePending(m, err)
	}
	return err
}

func (s *guardedStream) completeOldest(resp any, err error) {
	s.mu.Lock()
	if len(s.pending) == 0 {
		s.mu.Unlock()
		return
	}
	p := s.pending[0]
	s.pending = s.pending[1:]
	s.mu.Unlock()
	s.g.record(s.Context(), p.e, p.start, resp, err)
}

func (s *guardedStream) completePending(resp any, err error) {
	s.mu.Lock()
	pending := s.pending
	s.pending = nil
	s.mu.Unlock()
	for _, p := range pending {
		s.g.record(s.Context(), p.e, p.start, resp, err)
	}
}

// describeRequest fills in what a request says about the keys and
// algorithms it uses. It reads names and numbers only, never bytes.
func describeRequest(e *audit.Entry, msg any) {
	switch r := msg.(type) {
	case *pb.SignRequest:
		e.Key, e.Version, e.Scheme = r.GetKey(), r.GetVersion(), r.GetScheme().String()
	case *pb.DecryptRequest:
		e.Key, e.Version, e.Mode = r.GetKey(), r.GetVersion(), r.GetMode().String()
	case *pb.SignStreamRequest:
		if d := r.GetDecrypt(); d != nil {
			describeRequest(e, d)
		} else {
			describeRequest(e, r.GetRequest())
		}
	case *pb.BatchRequest:
		e.Reference = r.GetReference()
	case *pb.BatchStreamRequest:
		e.Reference = r.GetBatch().GetReference()
	case *pb.CreateKeyRequest:
		e.Key = r.GetId()
	case *pb.ImportKeyRequest:
		e.Key = r.GetId()
	case *pb.StartHandshakeRequest:
		for _, k := range r.GetConfig().GetKeys() {
			ref := k.GetKey()
			if k.GetVersion() != 0 {
				ref += "/" + strconv.FormatUint(uint64(k.GetVersion()), 10)
			}
			e.Keys = append(e.Keys, ref)
		}
	case *pb.StreamRequest:
		if start := r.GetStart(); start != nil {
			describeRequest(e, start)
		}
	case *pb.MultiplexRequest:
		if start := r.GetStart(); start != nil {
			describeRequest(e, start)
		}
		e.Handshake = muxHandshakeRef(r.GetHandshake())
	case interface{ GetId() string }: // Step, Get and AbortHandshake
		e.Handshake = r.GetId()
	case interface{ GetKey() string }:
		t := namedKey(msg)[0]
		e.Key, e.Version = t.id, t.version
	}
}

// describeResponse adds what only the answer knows: the version a call
// resolved to, a handshake's state and the key that completed it.
func describeResponse(e *audit.Entry, resp any) {
	switch r := resp.(type) {
	case *pb.SignResponse:
		e.Version = r.GetVersion()
	case *pb.DecryptResponse:
		e.Version = r.GetVersion()
	case *pb.SignStreamResponse:
		switch {
		case r.GetError() != nil:
			e.Outcome = codeName(codes.Code(r.GetError().GetCode()))
		case r.GetDecrypt() != nil:
			e.Version = r.GetDecrypt().GetVersion()
		default:
			e.Version = r.GetResponse().GetVersion()
		}
	case *pb.Key:
		if e.Version == 0 {
			e.Version = r.GetPrimaryVersion()
		}
	case *pb.OpenTicketResponse:
		e.Detail = "ticket rejected"
		if r.GetAccepted() {
			e.Detail = "ticket accepted"
		}
	case *pb.MultiplexAbort:
		e.Detail = "aborted"
	case *pb.HandshakeStep:
		if r.GetId() != "" {
			e.Handshake = r.GetId()
		}
		e.Detail = r.GetState().String()
		if r.GetSession().GetResumed() {
			e.Detail += " resumed"
		}
		if a := r.GetAlert(); a != nil && a.GetName() != "" {
			e.Detail += " alert=" + a.GetName()
		}
		if s := r.GetSession(); s != nil {
			e.Key, e.Version, e.Scheme = s.GetKey().GetKey(), s.GetKey().GetVersion(), s.GetCipherSuiteName()
		}
	}
}

// secure sets up what production mode adds to a server (TLS, reloading,
// the audit log) and returns the gRPC server's transport options and the
// guard that limits, authorizes and audits calls (newCalls puts it in the
// chain of both transports). In development mode only the limits apply.
func (s *Server) secure(vault *keyvault.Vault, opts Options, reg prometheus.Registerer) ([]grpc.ServerOption, *guard, error) {
	if (opts.TLS == nil) != (opts.Policy == nil) {
		return nil, nil, errors.New("service: TLS and a policy go together (client certificates are the identities the policy names)")
	}
	s.audit = opts.Audit
	s.reloader = &reloader{audit: opts.Audit}
	s.pollCtx, s.stopPoll = context.WithCancel(context.Background())
	g := newGuard(vault, opts, reg)
	serverOpts := []grpc.ServerOption{
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionAge: MaxConnectionAge, MaxConnectionAgeGrace: maxConnectionAgeGrace}),
		// The SDK pings idle connections; gRPC's default policy would
		// answer with GOAWAY too_many_pings.
		grpc.KeepaliveEnforcementPolicy(grpckeepalive.Enforcement()),
		// Past the in-flight cap calls are refused, but each stream still
		// costs a goroutine until then; this bounds them per connection.
		grpc.MaxConcurrentStreams(maxStreamsPerConnection),
		grpc.ConnectionTimeout(cmp.Or(opts.Limits.HandshakeTimeout, DefaultHandshakeTimeout)),
	}
	if opts.TLS == nil {
		return serverOpts, g, nil
	}
	src, err := newTLSSource(*opts.TLS, func(peer string, err error) {
		// Refused handshakes are audited at the rate of callers without an
		// identity, so a flood of them cannot fill the disk.
		if g.takeUnauthenticated(peerHost(peer)) > 0 {
			g.refusedCalls.WithLabelValues("tls_refusal_not_audited").Inc()
			return
		}
		g.record(context.Background(), &audit.Entry{Time: time.Now().UTC(), Peer: peer, Operation: "tls.client_certificate"},
			time.Now(), nil, status.Error(codes.Unauthenticated, err.Error()))
	})
	if err != nil {
		return nil, nil, err
	}
	s.tls = src
	s.reloader.add("tls", opts.TLS.paths(), src.reload)
	s.reloader.add("policy", []string{opts.Policy.Path()}, opts.Policy.Reload)
	s.interval = opts.ReloadInterval
	if s.interval == 0 {
		s.interval = DefaultReloadInterval
	}
	creds := credentials.NewTLS(&tls.Config{GetConfigForClient: src.configFor([]string{"h2"})})
	return append(serverOpts, grpc.Creds(creds)), g, nil
}
