package service

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
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
	// filter trims a response to what the caller may see.
	filter func(p *authz.Policy, identity string, resp any) any
}

// rules is the one place that says who may call what. A method missing here
// is for admins only, so a new RPC is closed until someone decides. Stream
// rules apply to every message the caller sends.
var rules = map[string]rule{
	pb.KeyVault_CreateKey_FullMethodName:                       {authz.Manage, newKey, nil},
	pb.KeyVault_ImportKey_FullMethodName:                       {authz.Manage, newKey, nil},
	pb.KeyVault_GetKey_FullMethodName:                          {authz.Use | authz.Manage, namedKey, nil},
	pb.KeyVault_ListKeys_FullMethodName:                        {0, nil, visibleKeys},
	pb.KeyVault_RotateKey_FullMethodName:                       {authz.Manage, namedKey, nil},
	pb.KeyVault_EnableKeyVersion_FullMethodName:                {authz.Manage, namedKey, nil},
	pb.KeyVault_DisableKeyVersion_FullMethodName:               {authz.Manage, namedKey, nil},
	pb.KeyVault_DestroyKeyVersion_FullMethodName:               {authz.Manage, namedKey, nil},
	pb.KeyVault_GetPublicKey_FullMethodName:                    {authz.Use | authz.Manage, namedKey, nil},
	pb.KeyVault_AttachCertificateChain_FullMethodName:          {authz.Manage, namedKey, nil},
	pb.KeyVault_CreateCertificateSigningRequest_FullMethodName: {authz.Manage, namedKey, nil},
	pb.KeyVault_Decrypt_FullMethodName:                         {authz.Use, namedKey, nil},
	pb.KeyVault_Sign_FullMethodName:                            {authz.Use, namedKey, nil},
	pb.KeyVault_SignStream_FullMethodName: {authz.Use, func(m any) []target {
		if r, ok := m.(*pb.SignStreamRequest); ok {
			return namedKey(r.GetRequest())
		}
		return []target{{}}
	}, nil},
	pb.Handshake_StartHandshake_FullMethodName: {authz.Use, func(m any) []target {
		if r, ok := m.(*pb.StartHandshakeRequest); ok {
			return handshakeKeys(r)
		}
		return []target{{}}
	}, nil},
	// Sessions belong to the identity that started them (the handlers
	// check that); stepping one needs no right on a key.
	pb.Handshake_StepHandshake_FullMethodName:  {},
	pb.Handshake_GetHandshake_FullMethodName:   {},
	pb.Handshake_AbortHandshake_FullMethodName: {},
	pb.Handshake_Stream_FullMethodName: {authz.Use, func(m any) []target {
		r, ok := m.(*pb.StreamRequest)
		if !ok {
			return []target{{}}
		}
		if _, input := r.GetRequest().(*pb.StreamRequest_Input); input {
			return []target{} // bytes for the handshake the start authorized
		}
		return handshakeKeys(r.GetStart())
	}, nil},
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

// visibleKeys keeps the keys on which the caller holds some right. A page
// may come back shorter than asked, or empty with a next page token.
func visibleKeys(p *authz.Policy, identity string, resp any) any {
	r, ok := resp.(*pb.ListKeysResponse)
	if !ok {
		return resp
	}
	keys := make([]*pb.Key, 0, len(r.GetKeys()))
	for _, k := range r.GetKeys() {
		if p.Allows(identity, authz.Key{ID: k.GetId(), Labels: k.GetLabels()}, authz.Use|authz.Manage) {
			keys = append(keys, k)
		}
	}
	return &pb.ListKeysResponse{Keys: keys, NextPageToken: r.GetNextPageToken()}
}

// guard is where every API call is limited, authorized and audited, in
// that order, before its handler runs.
type guard struct {
	vault       *keyvault.Vault
	policy      *authz.Store // nil: development mode, nobody is authenticated
	audit       *audit.Log   // nil: no audit log
	rate        *rateLimiter // nil: no rate limit
	inFlight    semaphore    // nil: no cap
	callTimeout time.Duration

	refusedCalls *prometheus.CounterVec
	auditErrors  prometheus.Counter
}

func newGuard(vault *keyvault.Vault, opts Options, reg prometheus.Registerer) *guard {
	g := &guard{
		vault:       vault,
		policy:      opts.Policy,
		audit:       opts.Audit,
		callTimeout: opts.Limits.CallTimeout,
		refusedCalls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "handshaked_calls_refused_total",
			Help: "API calls refused before they ran, by reason (rate_limit, in_flight); refused TLS handshakes left out of the audit log past the rate limit (tls_refusal_not_audited).",
		}, []string{"reason"}),
		auditErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "handshaked_audit_write_errors_total",
			Help: "Audit entries that could not be written.",
		}),
	}
	reg.MustRegister(g.refusedCalls, g.auditErrors)
	if g.callTimeout <= 0 {
		g.callTimeout = DefaultCallTimeout
	}
	if opts.Limits.Rate > 0 {
		g.rate = newRateLimiter(opts.Limits.Rate, opts.Limits.Burst)
	}
	if opts.Limits.MaxInFlight > 0 {
		g.inFlight = make(semaphore, opts.Limits.MaxInFlight)
	}
	return g
}

// admit applies the rate limit. Refused calls are counted, not audited:
// they did nothing, and a flood of them must not fill the disk.
func (g *guard) admit(ctx context.Context) error {
	if g.rate != nil && !g.rate.allow(callerIdentity(ctx), time.Now()) {
		g.refusedCalls.WithLabelValues("rate_limit").Inc()
		return errRateLimited
	}
	return nil
}

func (g *guard) acquire() error {
	if !g.inFlight.tryAcquire() {
		g.refusedCalls.WithLabelValues("in_flight").Inc()
		return errTooBusy
	}
	return nil
}

// authorize checks the caller's rights for one request message.
func (g *guard) authorize(ctx context.Context, r rule, msg any) error {
	if g.policy == nil {
		return nil
	}
	identity := callerIdentity(ctx)
	if identity == "" {
		return status.Error(codes.Unauthenticated, "no client certificate: this API needs mutual TLS with a certificate from the configured CA")
	}
	if r.right == 0 {
		return nil
	}
	targets := []target{{}}
	if r.keys != nil {
		targets = r.keys(msg)
	}
	p := g.policy.Policy()
	for _, t := range targets {
		key := authz.Key{ID: t.id, Labels: t.labels}
		if !t.isNew && t.id != "" && p.UsesLabels() {
			// A key that does not exist has no labels; if a grant by id
			// covers it, the handler says NOT_FOUND, and otherwise the
			// caller learns nothing about whether it exists.
			if k, err := g.vault.Get(ctx, t.id); err == nil {
				key.Labels = k.Labels
			}
		}
		if !p.Allows(identity, key, r.right) {
			return status.Errorf(codes.PermissionDenied, "%q needs %v on key %q", identity, r.right, t.id)
		}
	}
	return nil
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
		Operation: strings.Replace(strings.TrimPrefix(method, "/handshake.v1."), "/", ".", 1),
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
	case codes.Unauthenticated, codes.PermissionDenied:
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
	if err := g.admit(ctx); err != nil {
		return nil, err
	}
	if err := g.acquire(); err != nil {
		return nil, err
	}
	defer g.inFlight.release()
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
	resp, err = handler(ctx, req)
	if err == nil && r.filter != nil && g.policy != nil {
		resp = r.filter(g.policy.Policy(), callerIdentity(ctx), resp)
	}
	return resp, err
}

func (g *guard) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if exempt(info.FullMethod) {
		return handler(srv, ss)
	}
	ctx := ss.Context()
	if err := g.admit(ctx); err != nil {
		return err
	}
	if err := g.acquire(); err != nil {
		return err
	}
	defer g.inFlight.release()
	r, ok := rules[info.FullMethod]
	if !ok {
		r = adminOnly
	}
	// Who may open the stream at all; each message is checked as it comes.
	if err := g.authorize(ctx, rule{}, nil); err != nil {
		g.record(ctx, g.entry(ctx, info.FullMethod, nil), time.Now(), nil, err)
		return err
	}
	gs := &guardedStream{ServerStream: ss, g: g, rule: r, method: info.FullMethod}
	err := handler(srv, gs)
	gs.completePending(nil, err)
	return err
}

// guardedStream limits, authorizes and audits each message a caller sends
// on a stream. A message's audit entry is completed by the next response
// the handler sends (or by the end of the stream), which for SignStream is
// that message's answer and for a handshake stream that step's outcome.
type guardedStream struct {
	grpc.ServerStream
	g      *guard
	rule   rule
	method string

	mu      sync.Mutex
	pending []pendingEntry
}

type pendingEntry struct {
	e     *audit.Entry
	start time.Time
}

func (s *guardedStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	ctx := s.Context()
	if err := s.g.admit(ctx); err != nil {
		return err
	}
	start := time.Now()
	e := s.g.entry(ctx, s.method, m)
	if err := s.g.authorize(ctx, s.rule, m); err != nil {
		s.g.record(ctx, e, start, nil, err)
		return err
	}
	s.mu.Lock()
	s.pending = append(s.pending, pendingEntry{e, start})
	s.mu.Unlock()
	return nil
}

func (s *guardedStream) SendMsg(m any) error {
	err := s.ServerStream.SendMsg(m)
	s.completePending(m, err)
	return err
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
		describeRequest(e, r.GetRequest())
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
		if r.GetError() != nil {
			e.Outcome = codeName(codes.Code(r.GetError().GetCode()))
		} else {
			e.Version = r.GetResponse().GetVersion()
		}
	case *pb.Key:
		if e.Version == 0 {
			e.Version = r.GetPrimaryVersion()
		}
	case *pb.HandshakeStep:
		if r.GetId() != "" {
			e.Handshake = r.GetId()
		}
		e.Detail = r.GetState().String()
		if a := r.GetAlert(); a != nil && a.GetName() != "" {
			e.Detail += " alert=" + a.GetName()
		}
		if s := r.GetSession(); s != nil {
			e.Key, e.Version, e.Scheme = s.GetKey().GetKey(), s.GetKey().GetVersion(), s.GetCipherSuiteName()
		}
	}
}

// secure sets up what production mode adds to a server (TLS, reloading,
// the audit log) and returns the gRPC server options that identify, limit,
// authorize and audit calls. In development mode only the limits apply.
func (s *Server) secure(vault *keyvault.Vault, opts Options, reg prometheus.Registerer) ([]grpc.ServerOption, error) {
	if (opts.TLS == nil) != (opts.Policy == nil) {
		return nil, errors.New("service: TLS and a policy go together (client certificates are the identities the policy names)")
	}
	s.audit = opts.Audit
	s.reloader = &reloader{audit: opts.Audit}
	s.pollCtx, s.stopPoll = context.WithCancel(context.Background())
	g := newGuard(vault, opts, reg)
	serverOpts := []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(recoverUnary, identifyUnary, logUnary, g.unary),
		grpc.ChainStreamInterceptor(recoverStream, identifyStream, g.stream),
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionAge: MaxConnectionAge, MaxConnectionAgeGrace: maxConnectionAgeGrace}),
		// The SDK pings idle connections; gRPC's default policy would
		// answer with GOAWAY too_many_pings.
		grpc.KeepaliveEnforcementPolicy(grpckeepalive.Enforcement()),
		// Past the in-flight cap calls are refused, but each stream still
		// costs a goroutine until then; this bounds them per connection.
		grpc.MaxConcurrentStreams(maxStreamsPerConnection),
	}
	if opts.TLS == nil {
		return serverOpts, nil
	}
	src, err := newTLSSource(*opts.TLS, func(peer string, err error) {
		// Refused handshakes are audited at the rate limit of their source
		// address, so a flood of them cannot fill the disk.
		host, _, _ := net.SplitHostPort(peer)
		if g.rate != nil && !g.rate.allow("refused-tls "+host, time.Now()) {
			g.refusedCalls.WithLabelValues("tls_refusal_not_audited").Inc()
			return
		}
		g.record(context.Background(), &audit.Entry{Time: time.Now().UTC(), Peer: peer, Operation: "tls.client_certificate"},
			time.Now(), nil, status.Error(codes.Unauthenticated, err.Error()))
	})
	if err != nil {
		return nil, err
	}
	s.tls = src
	s.reloader.add("tls", opts.TLS.paths(), src.reload)
	s.reloader.add("policy", []string{opts.Policy.Path()}, opts.Policy.Reload)
	s.interval = opts.ReloadInterval
	if s.interval == 0 {
		s.interval = DefaultReloadInterval
	}
	creds := serverCredentials{credentials.NewTLS(&tls.Config{GetConfigForClient: src.configFor([]string{"h2"})})}
	return append(serverOpts, grpc.Creds(creds)), nil
}
