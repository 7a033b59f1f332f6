// Package service serves handshaked's gRPC API and, through grpc-gateway, the
// same API as REST: the gateway calls the same handlers in process, through
// the same interceptor chain (calls.go, localconn.go). It translates between
// proto and the domain packages and is where validation, error codes and
// transport concerns live.
package service

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/net/netutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
	"google.golang.org/protobuf/encoding/protojson"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/gen/openapiv2"
	"github.com/handshaked/handshaked/internal/audit"
	"github.com/handshaked/handshaked/internal/authz"
	"github.com/handshaked/handshaked/internal/buildinfo"
	"github.com/handshaked/handshaked/internal/heapfloor"
	"github.com/handshaked/handshaked/internal/keyvault"
)

const (
	// MaxRequestBytes bounds one gRPC message or REST body.
	MaxRequestBytes = 4 << 20
	// streamWindow and connWindow are the gRPC flow-control windows of
	// a stream and a connection (see New).
	streamWindow = 1 << 20
	connWindow   = MaxRequestBytes
	// maxHealthConns caps the connections of the plain-text health
	// listener; past it the next ones wait in the kernel's backlog.
	maxHealthConns = 64
)

// Server is the gRPC server and the REST gateway in front of it.
type Server struct {
	grpc   *grpc.Server
	http   *http.Server
	health *health.Server
	// healthOnly serves s.health alone, in plain text (ServeHealth).
	healthOnly *grpc.Server
	build      buildinfo.Info

	tls      *tlsSource // nil in development mode
	maxConns int        // per listener; 0: no cap
	audit    *audit.Log
	reloader *reloader
	interval time.Duration
	tickets  *keyvault.TicketKeys // nil: session tickets off
	tokens   *keyvault.TicketKeys // of stateless handshakes
	// pageTokens seal ListKeys positions.
	pageTokens *keyvault.TicketKeys
	pollCtx    context.Context
	stopPoll   context.CancelFunc
	// helpers work on batches beside their calls; Shutdown ends them.
	helpers *helpers
	// restHelpers serve REST requests that come over HTTP/2 (onHelpers).
	restHelpers *helpers
}

// Options configure a Server. The zero value is a development server:
// plain-text transport, no caller authentication, no audit log.
type Options struct {
	Handshake HandshakeOptions

	// TLS turns on production mode: both listeners speak TLS with these
	// files, callers are identified by their client certificates, and
	// Policy decides what each may do. Both or neither.
	TLS    *TLSFiles
	Policy *authz.Store
	// Audit receives an entry for every key use and change and every
	// refused call. nil: no audit log.
	Audit  *audit.Log
	Limits Limits
	// Tickets turns session tickets on (nil: off): see TicketOptions.
	Tickets *TicketOptions
	// ReloadInterval is how often the TLS and policy files are checked for
	// changes; 0 is DefaultReloadInterval, negative never (Reload still
	// works).
	ReloadInterval time.Duration
	// TracerProvider, when set, traces every API call, gRPC or REST
	// (calls.go), and each handshake as one trace (handshake_trace.go).
	// nil: no tracing, no cost.
	TracerProvider trace.TracerProvider
}

// New wires the API over vault.
func New(vault *keyvault.Vault, opts Options) (*Server, error) {
	// A live heap of a few MiB would otherwise be collected every few
	// dozen handshakes (see heapfloor); GOGC set by the operator wins.
	heapfloor.Start(heapfloor.Serving)
	registry := prometheus.NewRegistry()
	build := buildinfo.Read()
	registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), buildInfoGauge(build),
		backendDestroysStuckGauge(vault))
	s := &Server{
		build:  build,
		health: health.NewServer(),
	}
	serverOpts, g, err := s.secure(vault, opts, registry)
	if err != nil {
		return nil, err
	}
	s.maxConns = opts.Limits.MaxConnections
	chain := newCalls(g, opts.TracerProvider, registry)
	local := newLocalConn(chain)
	serverOpts = append(serverOpts, grpc.UnaryInterceptor(chain.unary), grpc.StreamInterceptor(chain.stream))
	serverOpts = append(serverOpts, callerDecodingOptions(MaxRequestBytes)...)
	// Static flow-control windows, as the SDK's (clients/go, Dial): with
	// dynamic ones grpc-go measures the bandwidth-delay product by a PING
	// the caller acknowledges, one per round trip of data received until
	// the window reaches 16 MiB, which small messages never make it do. A
	// keyless caller's stream then costs a PING and its ACK every few
	// messages, with their syscalls and wake-ups in both processes (issue
	// 12, ECDSA at 8 callers: an in-process signature cost 0.56x the CPU
	// of a coalesced one with dynamic windows, 0.60x with static ones,
	// means of 15 pairs of runs). A connection's window is as large as
	// the largest request, and less than dynamic windows could grow to,
	// so a caller gets no more unread data held for it than before.
	serverOpts = append(serverOpts, grpc.StaticStreamWindowSize(streamWindow), grpc.StaticConnWindowSize(connWindow))
	if streamWorkers > 0 {
		// A unary call otherwise runs on a fresh goroutine whose stack
		// grows (copied, doubling) inside the P-256 and RSA code on every
		// call; long-lived workers keep their grown stacks (issue 12:
		// 12% of the CPU of unary ECDSA signing went to stack growth).
		serverOpts = append(serverOpts, grpc.NumStreamWorkers(uint32(streamWorkers)))
	}
	s.grpc = grpc.NewServer(serverOpts...)
	// The API's services answer on both transports; health and reflection
	// on gRPC only.
	api := registrars{callerDecoding{s.grpc}, local}
	kv, err := newKeyVault(vault, g.visible, opts.Handshake.Deployment, opts.Audit)
	if err != nil {
		return nil, err
	}
	kv.batchItem = g.batchItem
	s.pageTokens = kv.pageTokens
	hs := newHandshakeAPI(vault, opts.Handshake, newHandshakeMetrics(registry), opts.Audit)
	s.tokens = hs.tokens
	hs.muxItem = g.muxItem
	// One set of key metrics for both APIs, labelled by source.
	keys := newKeyMetrics(registry)
	kv.keys, hs.keys.metrics = keys, keys
	if opts.TracerProvider != nil {
		hs.setTracerProvider(opts.TracerProvider)
	}
	if opts.Tickets != nil {
		m := newTicketMetrics(registry, vault)
		tk, err := newTicketKeys(vault, *opts.Tickets, m, opts.Audit)
		if err != nil {
			return nil, err
		}
		kv.tickets, kv.ticketMetrics = tk, m
		hs.tickets, hs.ticketMetrics = tk, m
		s.tickets = tk
	}
	pb.RegisterKeyVaultServer(api, kv)
	if opts.Policy != nil {
		hs.authorize = func(ctx context.Context, keys []target) error { return g.allowed(ctx, authz.Use, keys) }
	}
	pb.RegisterHandshakeServer(api, hs)
	pb.RegisterAdminServer(api, NewAdmin(vault))
	healthpb.RegisterHealthServer(callerDecoding{s.grpc}, s.health)
	vault.OnDeploymentConflict(s.keyUseHealth)
	reflection.Register(callerDecoding{s.grpc})
	// Probes make one short call at a time: small caps keep an open port
	// that answers anyone from holding much for anyone.
	s.healthOnly = grpc.NewServer(append(callerDecodingOptions(4<<10), grpc.MaxConcurrentStreams(4))...)
	healthpb.RegisterHealthServer(callerDecoding{s.healthOnly}, s.health)

	routes, err := apiRoutes(openapiv2.Spec)
	if err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	mux := runtime.NewServeMux(
		// Unknown JSON fields are rejected: a misspelt field must not be
		// silently dropped from a request to a key service.
		runtime.WithMarshalerOption(runtime.MIMEWildcard, newOneBody(restJSON{&runtime.JSONPb{
			MarshalOptions:   protojson.MarshalOptions{EmitUnpopulated: true},
			UnmarshalOptions: protojson.UnmarshalOptions{DiscardUnknown: false},
		}}, pb.File_handshake_v1_keyvault_proto, pb.File_handshake_v1_handshake_proto, pb.File_handshake_v1_admin_proto)),
		runtime.WithIncomingHeaderMatcher(gatewayHeaderMatcher),
		runtime.WithOutgoingHeaderMatcher(gatewayOutgoingHeader),
		runtime.WithErrorHandler(restError),
		runtime.WithRoutingErrorHandler(methodNotAllowed(routes)),
	)
	// The gateway tries a method's patterns one after the other, the last
	// registered first, and each miss costs (issue 12: a REST Sign missed
	// eight patterns before its own). No path matches patterns of two of
	// these services (/v1/keys, /v1/handshakes, /v1/admin), so the order
	// changes no answer, only how soon the hot calls (Sign, Decrypt) are
	// found: KeyVault last.
	if err := pb.RegisterAdminHandlerClient(context.Background(), mux, pb.NewAdminClient(local)); err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	if err := pb.RegisterHandshakeHandlerClient(context.Background(), mux, pb.NewHandshakeClient(local)); err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	if err := pb.RegisterKeyVaultHandlerClient(context.Background(), mux, pb.NewKeyVaultClient(local)); err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}

	h := http.NewServeMux()
	h.HandleFunc("GET /healthz", s.healthz)
	h.Handle("GET /metrics", promhttp.HandlerFor(registry, promhttp.HandlerOpts{}))
	h.HandleFunc("GET /openapi.json", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(openapiv2.Spec)
	})
	docs := docsHandler()
	h.Handle("/docs", docs)
	h.Handle("/docs/", docs)
	h.Handle("/", withHTTPPeer(knownQuery(routes, mux)))
	// As many as the gRPC server's workers, for the same reason.
	s.restHelpers = startHelpers(streamWorkers)
	s.http = &http.Server{
		Handler:           onHelpers(s.restHelpers, http.MaxBytesHandler(sameOrigin(opts.TLS == nil, identityBody(validUTF8(h))), MaxRequestBytes)),
		ConnContext:       withConnPeer,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       60 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(slog.Default().Handler(), slog.LevelWarn),
	}
	if s.tls != nil {
		s.http.TLSConfig = &tls.Config{GetConfigForClient: s.tls.configFor([]string{"h2", "http/1.1"})}
	}
	kv.helpers = startHelpers(batchParallelism())
	s.helpers = kv.helpers
	return s, nil
}

// keyUseServices are the services whose health follows whether the vault
// serves key use (readiness); the server's own, "", is SERVING until
// Shutdown (liveness).
var keyUseServices = []string{pb.KeyVault_ServiceDesc.ServiceName, pb.Handshake_ServiceDesc.ServiceName}

// keyUseHealth reports the services that use keys NOT_SERVING while the
// vault refuses key use for a deployment conflict, so that balancers and
// readiness probes turn to other replicas. The server's own health stays
// SERVING: the replica serves again by itself once the other deployment's
// replicas are gone, and a restart would only be refused at start.
func (s *Server) keyUseHealth(conflict error) {
	st := healthpb.HealthCheckResponse_SERVING
	if conflict != nil {
		st = healthpb.HealthCheckResponse_NOT_SERVING
	}
	for _, name := range keyUseServices {
		s.health.SetServingStatus(name, st)
	}
}

// healthz answers 200 while the service serves and 503 once it is shutting
// down, with the state and the build in a JSON body:
// {"status":"SERVING","build":{"version":...}}.
func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	code, state := http.StatusOK, healthpb.HealthCheckResponse_SERVING
	resp, err := s.health.Check(r.Context(), &healthpb.HealthCheckRequest{})
	if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		code, state = http.StatusServiceUnavailable, healthpb.HealthCheckResponse_NOT_SERVING
	}
	body, err := json.Marshal(struct {
		Status string         `json:"status"`
		Build  buildinfo.Info `json:"build"`
	}{state.String(), s.build})
	if err != nil {
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	w.Write(append(body, '\n'))
}

// Serve serves gRPC on grpcLis and REST on httpLis until Shutdown. It returns
// the first error that stops a listener other than a shutdown.
func (s *Server) Serve(grpcLis, httpLis net.Listener) error {
	errc := make(chan error, 2)
	if s.interval > 0 {
		go s.reloader.poll(s.pollCtx, s.interval)
	}
	if s.tickets != nil {
		go maintainTickets(s.pollCtx, s.tickets, ticketMaintenance)
	}
	go maintainTickets(s.pollCtx, s.tokens, ticketMaintenance)
	go maintainTickets(s.pollCtx, s.pageTokens, ticketMaintenance)
	if s.maxConns > 0 {
		// Connections cost memory before any call is made on them: past
		// the cap the next ones wait in the kernel's backlog.
		grpcLis, httpLis = netutil.LimitListener(grpcLis, s.maxConns), netutil.LimitListener(httpLis, s.maxConns)
	}
	go func() { errc <- s.grpc.Serve(grpcLis) }()
	go func() {
		serve := s.http.Serve
		if s.tls != nil {
			serve = func(l net.Listener) error { return s.http.ServeTLS(l, "", "") }
		}
		if err := serve(httpLis); !errors.Is(err, http.ErrServerClosed) {
			errc <- err
			return
		}
		errc <- nil
	}()
	for range 2 {
		if err := <-errc; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return err
		}
	}
	return nil
}

// ServeHealth serves gRPC health checking (grpc.health.v1) alone, in plain
// text, on lis until Shutdown: for probes that cannot speak TLS, such as the
// kubelet's gRPC probe. It answers what the health service on the API
// listener answers (SERVING until Shutdown begins; the API services also
// NOT_SERVING while keyUseHealth says so), and nothing else: no API call,
// no reflection, no metrics.
func (s *Server) ServeHealth(lis net.Listener) error {
	if err := s.healthOnly.Serve(netutil.LimitListener(lis, maxHealthConns)); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return err
	}
	return nil
}

// Shutdown stops taking new calls, reports NOT_SERVING to health checks, and
// waits for calls in flight until ctx is done; then it cuts what is left.
// The plain-text health listener stops last, so probes see NOT_SERVING while
// calls drain.
func (s *Server) Shutdown(ctx context.Context) error {
	s.stopPoll()
	s.health.Shutdown()
	httpErr := s.http.Shutdown(ctx)
	done := make(chan struct{})
	go func() {
		s.grpc.GracefulStop()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		s.grpc.Stop()
		<-done
	}
	s.healthOnly.Stop()
	s.helpers.close()
	s.restHelpers.close()
	return httpErr
}
