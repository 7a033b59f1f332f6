// Command handshake-edge terminates TLS through handshaked: it listens on a
// TCP port, relays each client's handshake to the service (which holds the
// private keys) and runs the record layer itself with the session keys.
// Behind it, it either proxies plain TCP to a backend or serves a built-in
// HTTP echo page that shows what was negotiated (/?close: and closes the
// connection; /resumption: a page that fetches it again over a new
// connection, to see a browser resume).
//
//	handshake-edge -listen 127.0.0.1:8443 -handshaked 127.0.0.1:7070 -key dev-rsa
//	curl -k https://127.0.0.1:8443/
//
// Every flag can be set by an environment variable instead, HANDSHAKE_EDGE_
// and the flag's name in capitals with _ for -: HANDSHAKE_EDGE_LISTEN,
// HANDSHAKE_EDGE_KEY=a,b. It logs JSON lines (-log-format text for
// key=value) at -log-level and above, grpc-go's own lines among them.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"html/template"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/handshaked/handshaked/clients/cmd/internal/cliflag"
	handshaked "github.com/handshaked/handshaked/clients/go"
	"github.com/handshaked/handshaked/clients/go/edge"
	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/buildinfo"
	"github.com/handshaked/handshaked/internal/engine/record"
	"github.com/handshaked/handshaked/internal/flagenv"
	"github.com/handshaked/handshaked/internal/grpckeepalive"
	"github.com/handshaked/handshaked/internal/heapfloor"
	"github.com/handshaked/handshaked/internal/logging"
	"github.com/handshaked/handshaked/internal/tracing"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	routeGRPC = logging.RouteGRPC
	// The edge's live heap is a few MiB, collected every few dozen
	// handshakes without a floor (see heapfloor); GOGC set by the operator
	// wins. Process policy: only main sets it.
	heapfloor.Start(heapfloor.Serving)
	err := run(ctx, os.Args[1:], os.Stderr, nil)
	if errors.Is(err, flag.ErrHelp) || errors.Is(err, errVersionShown) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "handshake-edge:", err)
		os.Exit(1)
	}
}

type options struct {
	listen, service, backend      string
	metricsListen                 string
	caFile, certFile, keyFile     string
	keys, suites, groups, alpn    cliflag.List
	minVersion, maxVersion        string
	clientAuth, clientCAFile      string
	unary                         bool
	handshakeTimeout, idleTimeout time.Duration
	clientHelloTimeout            time.Duration
	maxHandshakes, maxPending     int
	tickets, tickets12            bool
	oneRoundTrip                  bool
	version                       bool
	trace                         *tracing.Options
}

// errVersionShown ends run after -version printed the build: main exits 0.
var errVersionShown = errors.New("version shown")

// envPrefix starts the environment variables that set flags: -handshaked-ca
// is HANDSHAKE_EDGE_HANDSHAKED_CA. A flag on the command line wins.
const envPrefix = "HANDSHAKE_EDGE_"

// notFromEnv are the flags only a command line gives: a
// HANDSHAKE_EDGE_VERSION left in an environment must not turn the edge into
// a command that prints its version and exits.
var notFromEnv = []string{"version"}

// routeGRPC sends grpc-go's log lines to the edge's logger. Only main sets
// it: grpc-go has one logger per process, which tests running several
// edges at once must leave alone.
var routeGRPC = func(*slog.Logger) {}

// run parses args and serves until ctx ends. ready, if set, is told the
// listening address.
func run(ctx context.Context, args []string, logOut io.Writer, ready func(net.Addr)) error {
	var o options
	fs, logOpts := newFlagSet(&o)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if _, err := flagenv.Apply(fs, envPrefix, os.LookupEnv, notFromEnv...); err != nil {
		return err
	}
	return o.serve(ctx, fs, logOpts, logOut, ready)
}

// newFlagSet defines the edge's flags, to be parsed into o.
func newFlagSet(o *options) (*flag.FlagSet, *logging.Options) {
	fs := flag.NewFlagSet("handshake-edge", flag.ContinueOnError)
	fs.StringVar(&o.listen, "listen", "127.0.0.1:8443", "TCP `address` to accept TLS clients on")
	fs.StringVar(&o.service, "handshaked", "127.0.0.1:7070", "gRPC `target` of handshaked: host:port, the replicas host:port,host:port,... or dns:///name:port; calls are balanced round-robin over every address, and a unary step (-unary) that fails with UNAVAILABLE is retried on another replica")
	fs.StringVar(&o.caFile, "handshaked-ca", "", "roots (`PEM`) for handshaked's certificate, read again for the next connection when the file changes; with -handshaked-cert/-key: mutual TLS (default: plain text, for a loopback development instance)")
	fs.StringVar(&o.certFile, "handshaked-cert", "", "client certificate (`PEM`) for handshaked")
	fs.StringVar(&o.keyFile, "handshaked-key", "", "client certificate key (`PEM`) for handshaked")
	fs.Var(&o.keys, "key", "vault `key[:version]` with an attached chain; repeatable, SNI picks among them, the first is the default (default dev-rsa)")
	fs.StringVar(&o.minVersion, "min-version", "1.2", "lowest TLS `version`: 1.2 or 1.3")
	fs.StringVar(&o.maxVersion, "max-version", "1.3", "highest TLS `version`: 1.2 or 1.3")
	fs.Var(&o.suites, "suites", "cipher `suites` in order of preference, crypto/tls names, e.g. TLS_AES_128_GCM_SHA256,TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 (default: all the engine supports)")
	fs.Var(&o.groups, "groups", "key exchange `groups` in order of preference: X25519MLKEM768, X25519, P256, P384, P521 (default: all, in that order)")
	fs.Var(&o.alpn, "alpn", "ALPN `protocols` in order of preference (default http/1.1,http/1.0 for the echo page, none for -backend)")
	fs.StringVar(&o.clientAuth, "client-auth", "off", "client certificates: off, request or require")
	fs.StringVar(&o.clientCAFile, "client-ca", "", "roots (`PEM`) that client certificates must chain to, read again for the next connection when the file changes (one that does not load keeps the roots in force)")
	fs.StringVar(&o.backend, "backend", "", "proxy plain TCP to this `address` (default: serve the echo page)")
	fs.BoolVar(&o.unary, "unary", false, "step handshakes with stateless unary calls instead of streams shared by many handshakes: each step may go to any replica of -handshaked, and one whose replica failed is retried on another")
	fs.StringVar(&o.metricsListen, "metrics-listen", "", "serve Prometheus /metrics in plain HTTP on this `address` (default: none)")
	fs.DurationVar(&o.handshakeTimeout, "handshake-timeout", 10*time.Second, "bound on each TLS handshake")
	fs.DurationVar(&o.clientHelloTimeout, "client-hello-timeout", edge.DefaultClientHelloTimeout, "bound on receiving a client's whole ClientHello, before which nothing is opened in handshaked")
	fs.IntVar(&o.maxHandshakes, "max-handshakes", edge.DefaultMaxHandshakes, "handshakes run in handshaked at once; keep it below the service's per-caller caps")
	fs.IntVar(&o.maxPending, "max-pending", edge.DefaultMaxPendingHandshakes, "connections waiting for their ClientHello or a handshake slot; past it the oldest is closed")
	fs.DurationVar(&o.idleTimeout, "idle-timeout", 2*time.Minute, "close echo-page connections idle this long")
	fs.BoolVar(&o.tickets, "session-tickets", true, "issue and accept session tickets (sealed by handshaked, so a client resumes on any edge of the deployment)")
	fs.BoolVar(&o.tickets12, "tls12-session-tickets", true, "also in TLS 1.2, whose tickets carry the master secret (false: forward secrecy for TLS 1.2 sessions; TLS 1.3 resumption keeps it)")
	fs.BoolVar(&o.oneRoundTrip, "one-round-trip", false, "complete TLS 1.3 handshakes without client certificates, and TLS 1.2 resumptions, in one call to handshaked: the edge gets the session keys with the server's flight and verifies the client's Finished itself before using them")
	fs.BoolVar(&o.version, "version", false, "print the build (version, VCS revision, Go version) and exit")
	o.trace = tracing.AddFlags(fs)
	return fs, logging.AddFlags(fs, slog.LevelInfo, logging.FormatJSON)
}

// serve runs the edge with the settings read into o.
func (o *options) serve(ctx context.Context, fs *flag.FlagSet, logOpts *logging.Options, logOut io.Writer, ready func(net.Addr)) error {
	if o.version {
		fmt.Println("handshake-edge", buildinfo.Read())
		return errVersionShown
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	hcfg, err := o.handshakeConfig()
	if err != nil {
		return err
	}
	log, err := logging.New(logOut, *logOpts)
	if err != nil {
		return err
	}
	routeGRPC(log)
	var getHandshake func() *pb.HandshakeConfig
	if o.clientCAFile != "" {
		bundle, err := handshaked.FollowCABundle(o.clientCAFile, "client CA bundle (-client-ca)", log)
		if err != nil {
			return fmt.Errorf("-client-ca: %w", err)
		}
		getHandshake = (&clientCAs{bundle: bundle, base: hcfg}).handshake
	}
	tp, err := tracing.Start(ctx, *o.trace, "handshake-edge", buildinfo.Read().Version, log)
	if err != nil {
		return fmt.Errorf("tracing: %w", err)
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		tp.Shutdown(sctx)
	}()
	ctx, stopMetrics := context.WithCancel(ctx)
	defer stopMetrics()
	metrics := newEdgeMetrics()
	if o.metricsListen != "" {
		lis, err := net.Listen("tcp", o.metricsListen)
		if err != nil {
			return fmt.Errorf("-metrics-listen: %w", err)
		}
		served := make(chan struct{})
		go func() {
			defer close(served)
			metrics.serve(ctx, lis, log)
		}()
		defer func() {
			stopMetrics()
			<-served
		}()
		log.Info("serving metrics", "addr", lis.Addr().String())
	}
	dialOpts := []handshaked.Option{metrics.dialOption()}
	var edgeTracing trace.TracerProvider
	if o.trace.Endpoint != "" {
		// Each handshake is a span here, and its calls carry its trace
		// to the service.
		edgeTracing = tp
		dialOpts = append(dialOpts, handshaked.WithDialOptions(grpc.WithStatsHandler(otelgrpc.NewClientHandler(
			otelgrpc.WithTracerProvider(tp), otelgrpc.WithPropagators(propagation.TraceContext{})))))
	}
	client, err := o.dial(dialOpts...)
	if err != nil {
		return err
	}
	defer client.Close()

	inner, err := net.Listen("tcp", o.listen)
	if err != nil {
		return err
	}
	l := edge.NewListener(inner, &edge.Config{Client: client, Handshake: hcfg, GetHandshake: getHandshake, Unary: o.unary, HandshakeTimeout: o.handshakeTimeout,
		ClientHelloTimeout: o.clientHelloTimeout, MaxHandshakes: o.maxHandshakes, MaxPendingHandshakes: o.maxPending, Logger: log,
		TracerProvider: edgeTracing, Trace: o.backend == ""}) // the echo page lists the handshake messages
	defer l.Close()
	log.Info("handshake-edge listening", "addr", l.Addr().String(), "handshaked", o.service, "backend", o.backend)
	if ready != nil {
		ready(l.Addr())
	}
	if o.backend != "" {
		return proxy(ctx, l, o.backend, log)
	}
	return serveEcho(ctx, l, o.idleTimeout, log)
}

func (o *options) dial(extra ...handshaked.Option) (*handshaked.Client, error) {
	if o.caFile == "" && o.certFile == "" {
		return handshaked.Dial(o.service, append(extra, handshaked.WithInsecure(), handshaked.WithKeepalive(grpckeepalive.Interval, grpckeepalive.Timeout))...)
	}
	cfg, err := handshaked.TLSConfigFromFiles(o.caFile, o.certFile, o.keyFile)
	if err != nil {
		return nil, err
	}
	return handshaked.Dial(o.service, append(extra, handshaked.WithTLS(cfg), handshaked.WithKeepalive(grpckeepalive.Interval, grpckeepalive.Timeout))...)
}

var versions = map[string]pb.TLSVersion{"1.2": pb.TLSVersion_TLS_VERSION_1_2, "1.3": pb.TLSVersion_TLS_VERSION_1_3}

var groupIDs = map[string]tls.CurveID{
	"X25519MLKEM768": tls.X25519MLKEM768, "X25519": tls.X25519,
	"P256": tls.CurveP256, "P-256": tls.CurveP256, "CurveP256": tls.CurveP256,
	"P384": tls.CurveP384, "P-384": tls.CurveP384, "CurveP384": tls.CurveP384,
	"P521": tls.CurveP521, "P-521": tls.CurveP521, "CurveP521": tls.CurveP521,
}

var clientAuths = map[string]pb.ClientAuth{
	"off": pb.ClientAuth_CLIENT_AUTH_OFF, "request": pb.ClientAuth_CLIENT_AUTH_OPTIONAL, "require": pb.ClientAuth_CLIENT_AUTH_REQUIRED,
}

func suiteID(name string) (uint16, bool) {
	for _, s := range append(tls.CipherSuites(), tls.InsecureCipherSuites()...) {
		if s.Name == name {
			return s.ID, true
		}
	}
	return 0, false
}

// handshakeConfig turns the flags into the engine's configuration.
func (o *options) handshakeConfig() (*pb.HandshakeConfig, error) {
	cfg := &pb.HandshakeConfig{AlpnProtocols: o.alpn, DisableSessionTickets: !o.tickets, DisableTls12SessionTickets: !o.tickets12,
		CallerVerifiesFinished: o.oneRoundTrip}
	keys := o.keys
	if len(keys) == 0 {
		keys = cliflag.List{"dev-rsa"}
	}
	for _, k := range keys {
		id, v, hasVersion := strings.Cut(k, ":")
		ref := &pb.KeyRef{Key: id}
		if hasVersion {
			n, err := strconv.ParseUint(v, 10, 32)
			if err != nil {
				return nil, fmt.Errorf("-key %s: bad version", k)
			}
			ref.Version = uint32(n)
		}
		cfg.Keys = append(cfg.Keys, ref)
	}
	var ok bool
	if cfg.MinVersion, ok = versions[o.minVersion]; !ok {
		return nil, fmt.Errorf("-min-version %q: want 1.2 or 1.3", o.minVersion)
	}
	if cfg.MaxVersion, ok = versions[o.maxVersion]; !ok {
		return nil, fmt.Errorf("-max-version %q: want 1.2 or 1.3", o.maxVersion)
	}
	for _, name := range o.suites {
		id, ok := suiteID(name)
		if !ok {
			return nil, fmt.Errorf("-suites: unknown cipher suite %q", name)
		}
		cfg.CipherSuites = append(cfg.CipherSuites, uint32(id))
	}
	for _, name := range o.groups {
		id, ok := groupIDs[name]
		if !ok {
			return nil, fmt.Errorf("-groups: unknown group %q", name)
		}
		cfg.Groups = append(cfg.Groups, uint32(id))
	}
	if cfg.ClientAuth, ok = clientAuths[o.clientAuth]; !ok {
		return nil, fmt.Errorf("-client-auth %q: want off, request or require", o.clientAuth)
	}
	if cfg.ClientAuth != pb.ClientAuth_CLIENT_AUTH_OFF && o.clientCAFile == "" {
		return nil, errors.New("-client-auth needs -client-ca")
	}
	if len(cfg.AlpnProtocols) == 0 && o.backend == "" {
		// The echo page speaks HTTP/1.x only; a client offering h2 must
		// not be left to guess.
		cfg.AlpnProtocols = []string{"http/1.1", "http/1.0"}
	}
	return cfg, nil
}

// clientCAs gives each new connection the handshake configuration with the
// -client-ca bundle in force: the file is checked at each connection and
// read again when it changed, so rotating the CA of client certificates
// needs no restart; a bundle that does not load keeps the one in force.
type clientCAs struct {
	bundle *handshaked.CABundle
	base   *pb.HandshakeConfig // the flags' configuration, without roots

	mu  sync.Mutex
	cfg *pb.HandshakeConfig // base with the bundle last seen
}

// handshake is edge.Config.GetHandshake: the same configuration for as
// long as the bundle stays.
func (c *clientCAs) handshake() *pb.HandshakeConfig {
	pem := c.bundle.PEM()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cfg == nil || c.cfg.GetClientCaPem() != pem {
		c.cfg = proto.CloneOf(c.base)
		c.cfg.ClientCaPem = pem
	}
	return c.cfg
}

type connKey struct{}

// serveEcho serves the echo page on l until ctx ends.
func serveEcho(ctx context.Context, l net.Listener, idle time.Duration, log *slog.Logger) error {
	srv := &http.Server{
		Handler:           http.HandlerFunc(echo),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       idle,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			logConn(log, c.(*edge.Conn))
			return context.WithValue(ctx, connKey{}, c)
		},
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	return serveHTTP(ctx, srv, l)
}

// serveHTTP serves srv on l until ctx ends, then shuts it down, giving
// the requests in flight 5 s.
func serveHTTP(ctx context.Context, srv *http.Server, l net.Listener) error {
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// maxEchoBody bounds the request body the echo page sends back.
const maxEchoBody = 64 << 20

// echo describes the request and the TLS connection it came on; a POST or
// PUT body is sent back as it arrives.
func echo(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodPost || r.Method == http.MethodPut {
		echoBody(w, r)
		return
	}
	if r.URL.Path == "/resumption" {
		resumptionPage(w, r)
		return
	}
	if r.URL.Query().Has("close") {
		// A client's next request needs a new connection, and so a new
		// handshake: a resumption, if it kept the session.
		w.Header().Set("Connection", "close")
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintf(w, "handshake-edge echo\n\n%s %s %s\nHost: %s\nUser-Agent: %s\n\n", r.Method, r.URL.RequestURI(), r.Proto, r.Host, r.UserAgent())
	c, ok := r.Context().Value(connKey{}).(*edge.Conn)
	if !ok {
		return
	}
	fmt.Fprint(w, describe(c.ConnectionState()))
}

// resumptionTemplate shows the connection the page came on, then fetches
// the echo page over new ones, one after the other: a browser shows
// whether it resumed. (More than one: a browser may have opened a spare
// connection, with a full handshake, before it had the first one's ticket.)
var resumptionTemplate = template.Must(template.New("resumption").Parse(`<!doctype html>
<html><head><meta charset="utf-8"><title>handshake-edge resumption</title></head><body>
<h1>This connection</h1><pre id="first">{{.}}</pre>
<h1>New connections</h1><pre id="next">loading…</pre>
<script>
(async () => {
  const out = document.getElementById("next");
  let text = "";
  for (let i = 1; i <= 3; i++) {
    try {
      const r = await fetch("/?close", {cache: "no-store"});
      text += "connection " + i + ":\n" + await r.text() + "\n";
    } catch (e) {
      text += "connection " + i + " failed: " + e + "\n";
    }
  }
  out.textContent = text;
})();
</script></body></html>
`))

// resumptionPage serves the page that checks a browser's resumption; it
// closes its connection, so the fetch makes a new one.
func resumptionPage(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Connection", "close")
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	var st string
	if c, ok := r.Context().Value(connKey{}).(*edge.Conn); ok {
		st = describe(c.ConnectionState())
	}
	resumptionTemplate.Execute(w, st)
}

// echoBody streams the request body back, so that a request holds one
// copy buffer of it, never the whole body (three 60 MiB POSTs used to hold
// half a gigabyte). A body announced longer than maxEchoBody is refused
// before it is read; a chunked one that grows past it is cut off, and the
// connection with it.
func echoBody(w http.ResponseWriter, r *http.Request) {
	if r.ContentLength > maxEchoBody {
		http.Error(w, fmt.Sprintf("request body over %d bytes", maxEchoBody), http.StatusRequestEntityTooLarge)
		return
	}
	// An HTTP/1 server reads the rest of the body before it writes a
	// response, unless the handler reads and writes at once.
	if err := http.NewResponseController(w).EnableFullDuplex(); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	if r.ContentLength >= 0 {
		w.Header().Set("Content-Length", strconv.FormatInt(r.ContentLength, 10))
	}
	if _, err := io.Copy(w, http.MaxBytesReader(w, r.Body, maxEchoBody)); err != nil {
		// The response has begun: only ending the connection abruptly
		// tells the client it was cut short.
		panic(http.ErrAbortHandler)
	}
}

// describe renders a connection's negotiated parameters.
func describe(st edge.ConnectionState) string {
	var b strings.Builder
	fmt.Fprintf(&b, "TLS version: %s\n", tls.VersionName(st.Version))
	fmt.Fprintf(&b, "Cipher suite: %s\n", tls.CipherSuiteName(st.CipherSuite))
	switch {
	case st.DidResume && st.CurveID == 0:
		// A TLS 1.2 resumption reuses the master secret: no key exchange.
		b.WriteString("Group: none (resumed)\nSignature scheme: none (resumed)\n")
	case st.DidResume:
		fmt.Fprintf(&b, "Group: %s\nSignature scheme: none (resumed)\n", st.CurveID)
	case st.CurveID == 0 && st.SignatureScheme == 0:
		// TLS 1.2 RSA key exchange has neither: the client encrypts the
		// premaster to the certificate's key (RFC 5246, Section 7.4.7.1).
		b.WriteString("Group: none (RSA key exchange)\nSignature scheme: none (RSA key exchange)\n")
	default:
		fmt.Fprintf(&b, "Group: %s\n", st.CurveID)
		fmt.Fprintf(&b, "Signature scheme: %s\n", st.SignatureScheme)
	}
	fmt.Fprintf(&b, "Server name: %s\n", st.ServerName)
	fmt.Fprintf(&b, "ALPN: %s\n", st.NegotiatedProtocol)
	fmt.Fprintf(&b, "Key: %s version %d\n", st.KeyID, st.KeyVersion)
	fmt.Fprintf(&b, "HelloRetryRequest: %v\n", st.HelloRetryRequest)
	// Below the protocol's most plaintext in a record, the limit is the
	// client's record_size_limit.
	if st.RecordPlaintextLimit < record.MaxPlaintext {
		fmt.Fprintf(&b, "Record plaintext limit: %d bytes (the client's record_size_limit, RFC 8449)\n", st.RecordPlaintextLimit)
	} else {
		fmt.Fprintf(&b, "Record plaintext limit: %d bytes\n", st.RecordPlaintextLimit)
	}
	if st.DidResume {
		b.WriteString("Resumed: yes (session ticket: no certificate, no private-key operation)\n")
	} else {
		b.WriteString("Resumed: no (full handshake)\n")
	}
	if st.Version == tls.VersionTLS12 {
		fmt.Fprintf(&b, "Extended master secret: %v\n", st.ExtendedMasterSecret)
	}
	for _, cert := range st.PeerCertificates {
		fmt.Fprintf(&b, "Client certificate: %s\n", cert.Subject)
	}
	fmt.Fprintf(&b, "Handshake: %s\n", handshakeMessages(st.Steps))
	fmt.Fprintf(&b, "Service round trips: %d\n", len(st.Steps))
	return b.String()
}

// handshakeMessages lists the handshake messages of steps in order,
// "received" ones marked "<" and "sent" ones ">".
func handshakeMessages(steps []edge.Step) string {
	var msgs []string
	for _, s := range steps {
		for _, e := range s.Trace {
			mark := ">"
			if e.GetDirection() == "received" {
				mark = "<"
			}
			msgs = append(msgs, mark+e.GetMessage())
		}
	}
	return strings.Join(msgs, " ")
}

// logConn logs what a new connection negotiated. A connection with no key
// exchange group (TLS 1.2 RSA key exchange, a TLS 1.2 resumption) logs
// none, not CurveID(0).
func logConn(log *slog.Logger, c *edge.Conn) {
	st := c.ConnectionState()
	attrs := []any{"remote", c.RemoteAddr().String(), "version", tls.VersionName(st.Version), "suite", tls.CipherSuiteName(st.CipherSuite)}
	if st.CurveID != 0 {
		attrs = append(attrs, "group", st.CurveID.String())
	}
	log.Info("TLS connection", append(attrs, "sni", st.ServerName, "alpn", st.NegotiatedProtocol, "resumed", st.DidResume, "service_round_trips", len(st.Steps))...)
}

// proxy relays each connection of l to a new TCP connection to backend.
func proxy(ctx context.Context, l net.Listener, backend string, log *slog.Logger) error {
	go func() {
		<-ctx.Done()
		l.Close()
	}()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			logConn(log, c.(*edge.Conn))
			var d net.Dialer
			b, err := d.DialContext(ctx, "tcp", backend)
			if err != nil {
				log.Warn("backend unreachable", "backend", backend, "err", err)
				return
			}
			defer b.Close()
			relay(c, b.(*net.TCPConn), log)
		}()
	}
}

// relay copies both ways and passes on half-closes: the client's
// close_notify becomes a FIN to the backend and the backend's FIN a
// close_notify, so request-then-response protocols finish cleanly.
func relay(c net.Conn, b *net.TCPConn, log *slog.Logger) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		if _, err := io.Copy(c, b); err != nil {
			log.Info("backend to client", "err", err)
			c.Close()
			return
		}
		c.(*edge.Conn).CloseWrite()
	}()
	if _, err := io.Copy(b, c); err != nil {
		log.Info("client to backend", "err", err)
		b.Close()
	} else {
		b.CloseWrite()
	}
	<-done
}
