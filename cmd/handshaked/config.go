package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"time"

	"github.com/handshaked/handshaked/internal/flagenv"
	"github.com/handshaked/handshaked/internal/keyvault"
	"github.com/handshaked/handshaked/internal/logging"
	"github.com/handshaked/handshaked/internal/service"
	"github.com/handshaked/handshaked/internal/tracing"
)

const (
	modeDevelopment = "development"
	modeProduction  = "production"
)

// kekEnv holds the key-encryption key itself (64 hex digits), for
// deployments that inject secrets as environment variables. It is not a
// flag: a command line is visible to every user of the host.
const kekEnv = "HANDSHAKED_KEK"

type config struct {
	mode            string
	dataDir         string
	grpcAddr        string
	httpAddr        string
	healthAddr      string
	kekFile         string
	kek             string // from kekEnv
	initStore       bool
	shutdownTimeout time.Duration
	showVersion     bool // -version or the version command: print the build and exit

	tlsCert, tlsKey, clientCA string
	policyFile                string
	auditLog                  string

	rateLimit            float64
	rateBurst            int
	maxInFlight          int
	maxInFlightPerCaller int
	maxStreams           int
	maxStreamsPerCaller  int
	streamIdleTimeout    time.Duration
	unauthenticatedRate  float64
	maxConnections       int
	callTimeout          time.Duration
	reloadInterval       time.Duration

	handshakeTTL                  time.Duration
	maxHandshakeSessions          int
	maxHandshakeSessionsPerCaller int
	maxHandshakeInput             int64

	hsm  hsmConfig  // -pkcs11-*, -kek-pkcs11-file: hsm.go
	etcd etcdConfig // -etcd-*: etcd.go

	sessionTickets bool
	deployment     string
	ticketRotation time.Duration
	ticketLifetime time.Duration

	log   *logging.Options
	trace *tracing.Options

	set   map[string]bool // flags given by command line, environment or file
	flags *flag.FlagSet   // all of them, for the configuration reference
}

// Production defaults of the limits; a development instance has none.
const (
	productionRate           = 1000
	productionBurst          = 2000
	productionMaxInFlight    = 1024
	productionMaxStreams     = 4096
	productionMaxConnections = 4096
)

// productionOnly are the flags that make no sense for a development
// instance; giving one without -mode=production is a mistake worth stopping
// for, not a production instance silently started in development mode.
var productionOnly = []string{"tls-cert", "tls-key", "client-ca", "policy"}

// notFromEnvOrFile are the flags only a command line gives: a
// HANDSHAKED_VERSION left in a container's environment must not turn the
// service into a command that prints its version and exits. notFromFile:
// and a config file cannot name another.
var (
	notFromEnvOrFile = []string{"version"}
	notFromFile      = append([]string{"config"}, notFromEnvOrFile...)
)

// envPrefix starts the environment variables that set flags.
const envPrefix = "HANDSHAKED_"

// envName is the environment variable that sets a flag: -tls-cert is
// HANDSHAKED_TLS_CERT.
func envName(flagName string) string { return flagenv.Name(envPrefix, flagName) }

// parseConfig reads the configuration from the command line, then the
// environment (HANDSHAKED_<FLAG>), then the JSON file named by -config
// (keys are flag names), each filling only what the ones before left unset.
func parseConfig(args []string, lookupEnv func(string) (string, bool), usageOut io.Writer) (*config, error) {
	cfg := &config{set: map[string]bool{}}
	fs := flag.NewFlagSet("handshaked", flag.ContinueOnError)
	fs.SetOutput(usageOut)
	cfg.flags = fs
	var configFile string
	fs.BoolVar(&cfg.showVersion, "version", false, "print the build (version, VCS revision, Go version) and exit; also the version command")
	fs.StringVar(&configFile, "config", "", "JSON file of settings, keyed by flag name (command line and environment take precedence)")
	fs.StringVar(&cfg.mode, "mode", modeDevelopment, "development (loopback, no authentication) or production (mutual TLS, policy, audit log)")
	fs.StringVar(&cfg.dataDir, "data-dir", "handshaked-data", "directory holding the key store (without -etcd-endpoints) and, in development mode, the KEK file")
	fs.StringVar(&cfg.grpcAddr, "grpc-addr", "127.0.0.1:7070", "gRPC listen address")
	fs.StringVar(&cfg.httpAddr, "http-addr", "127.0.0.1:7080", "REST (grpc-gateway) listen address")
	fs.StringVar(&cfg.healthAddr, "health-addr", "", "listen address of a plain-text gRPC health service (grpc.health.v1 only, for probes that cannot speak TLS, such as the kubelet's); empty: none")
	fs.StringVar(&cfg.kekFile, "kek-file", "", "file holding the 32-byte key-encryption key, hex (development default: <data-dir>/kek, created; production: this or $"+kekEnv+")")
	fs.BoolVar(&cfg.initStore, "init", false, "production: create a new vault if the key store in -data-dir is missing or empty (the first start); without it production refuses to start on one")
	fs.DurationVar(&cfg.shutdownTimeout, "shutdown-timeout", 30*time.Second, "how long a graceful shutdown waits for calls in flight")
	fs.StringVar(&cfg.tlsCert, "tls-cert", "", "production: the service's certificate chain, PEM (reloaded on change and on SIGHUP)")
	fs.StringVar(&cfg.tlsKey, "tls-key", "", "production: the service's private key, PEM, not world-readable")
	fs.StringVar(&cfg.clientCA, "client-ca", "", "production: CA bundle, PEM, that callers' client certificates must chain to")
	fs.StringVar(&cfg.policyFile, "policy", "", "production: policy file, JSON (reloaded on change and on SIGHUP)")
	fs.StringVar(&cfg.auditLog, "audit-log", "", "audit log file (mode 0600, reopened on SIGHUP), or - for stdout (production default: -; development: none)")
	fs.Float64Var(&cfg.rateLimit, "rate-limit", 0, fmt.Sprintf("calls per second per caller identity, 0 for none (production default %d)", productionRate))
	fs.IntVar(&cfg.rateBurst, "rate-burst", 0, fmt.Sprintf("calls a caller may make at once above the rate (production default %d)", productionBurst))
	fs.IntVar(&cfg.maxInFlight, "max-in-flight", 0, fmt.Sprintf("unary API calls served at once, all callers, 0 for no cap (production default %d)", productionMaxInFlight))
	fs.IntVar(&cfg.maxInFlightPerCaller, "max-in-flight-per-caller", 0, "unary API calls served at once for one caller identity (default a quarter of -max-in-flight)")
	fs.IntVar(&cfg.maxStreams, "max-streams", 0, fmt.Sprintf("API streams open at once, all callers, 0 for no cap (production default %d)", productionMaxStreams))
	fs.IntVar(&cfg.maxStreamsPerCaller, "max-streams-per-caller", 0, "API streams open at once for one caller identity (default a quarter of -max-streams)")
	fs.DurationVar(&cfg.streamIdleTimeout, "stream-idle-timeout", 0, fmt.Sprintf("end a stream on which the caller sent nothing with all it sent answered, or read nothing sent to it, for this long (default %v)", service.DefaultStreamIdleTimeout))
	fs.Float64Var(&cfg.unauthenticatedRate, "unauthenticated-rate", 0, fmt.Sprintf("production: calls per second by callers without a certificate, all together, refused and audited; past it only counted (default %d)", service.DefaultUnauthenticatedRate))
	fs.IntVar(&cfg.maxConnections, "max-connections", 0, fmt.Sprintf("open connections per listener, 0 for no cap (production default %d)", productionMaxConnections))
	fs.DurationVar(&cfg.callTimeout, "call-timeout", 30*time.Second, "longest a unary call may run")
	fs.DurationVar(&cfg.reloadInterval, "reload-interval", 10*time.Second, "how often TLS and policy files are checked for changes")
	fs.DurationVar(&cfg.handshakeTTL, "handshake-ttl", 30*time.Second, "how long a handshake session started by StartHandshake lives")
	fs.IntVar(&cfg.maxHandshakeSessions, "max-handshake-sessions", 10000, "handshake sessions held at once, unary and streamed, all callers; past it RESOURCE_EXHAUSTED")
	fs.IntVar(&cfg.maxHandshakeSessionsPerCaller, "max-handshake-sessions-per-caller", 0, "handshake sessions held at once for one caller identity (default a quarter of -max-handshake-sessions)")
	fs.Int64Var(&cfg.maxHandshakeInput, "max-handshake-input", 64<<20, "bytes of client input held by unfinished handshakes, all callers (one caller: a quarter)")
	registerHSMFlags(fs, &cfg.hsm)
	registerEtcdFlags(fs, &cfg.etcd)
	cfg.log = logging.AddFlags(fs, slog.LevelInfo, "")
	cfg.trace = tracing.AddFlags(fs)
	fs.BoolVar(&cfg.sessionTickets, "session-tickets", true, "issue and accept TLS session tickets sealed by the vault's ticket keys, for handshakes and SealTicket/OpenTicket (false: every handshake is a full one)")
	fs.StringVar(&cfg.deployment, "deployment", "default", "the deployment's name, bound into every session ticket: another deployment's tickets never resume here, even one restored from the same backup")
	fs.DurationVar(&cfg.ticketRotation, "ticket-rotation", keyvault.DefaultTicketRotation, "how long a session ticket key seals new tickets before the vault rotates it")
	fs.DurationVar(&cfg.ticketLifetime, "ticket-lifetime", keyvault.DefaultTicketLifetime, "how long a session ticket may be used (at most 168h, RFC 8446); a ticket key is erased -ticket-rotation plus this after its creation")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	// Asking for the version needs no valid configuration: an image with
	// HANDSHAKED_MODE=production but no secrets mounted still answers it.
	if cfg.showVersion || (fs.NArg() == 1 && fs.Arg(0) == "version") {
		cfg.showVersion = true
		return cfg, nil
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	fs.Visit(func(f *flag.Flag) { cfg.set[f.Name] = true })

	fromEnv, err := flagenv.Apply(fs, envPrefix, lookupEnv, notFromEnvOrFile...)
	for _, name := range fromEnv {
		cfg.set[name] = true
	}
	errs := []error{err}
	if configFile != "" {
		errs = append(errs, cfg.readFile(fs, configFile))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	cfg.kek, _ = lookupEnv(kekEnv)
	cfg.hsm.pin, _ = lookupEnv(pkcs11PINEnv)
	return cfg, cfg.check()
}

// readFile applies the settings of a JSON config file that nothing before
// it set. An unknown key is an error: a misspelt "policy" must not start a
// service with no policy.
func (cfg *config) readFile(fs *flag.FlagSet, path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var settings map[string]any
	if err := dec.Decode(&settings); err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	for name, v := range settings {
		if fs.Lookup(name) == nil || slices.Contains(notFromFile, name) {
			return fmt.Errorf("config %s: unknown setting %q", path, name)
		}
		if cfg.set[name] {
			continue
		}
		switch v.(type) {
		case string, json.Number, bool:
		default:
			return fmt.Errorf("config %s: %q: want a string, number or boolean", path, name)
		}
		if err := fs.Set(name, fmt.Sprint(v)); err != nil {
			return fmt.Errorf("config %s: %q: %w", path, name, err)
		}
		cfg.set[name] = true
	}
	return nil
}

func (cfg *config) check() error {
	switch cfg.mode {
	case modeProduction:
		for _, name := range productionOnly {
			if !cfg.set[name] {
				return fmt.Errorf("production mode needs -%s (or %s)", name, envName(name))
			}
		}
		if !cfg.set["rate-limit"] {
			cfg.rateLimit = productionRate
		}
		if !cfg.set["rate-burst"] {
			cfg.rateBurst = productionBurst
		}
		if !cfg.set["max-in-flight"] {
			cfg.maxInFlight = productionMaxInFlight
		}
		if !cfg.set["max-streams"] {
			cfg.maxStreams = productionMaxStreams
		}
		if !cfg.set["max-connections"] {
			cfg.maxConnections = productionMaxConnections
		}
		if !cfg.set["audit-log"] {
			cfg.auditLog = "-"
		}
		if !cfg.set["log-format"] {
			cfg.log.Format = logging.FormatJSON // what log collectors parse
		}
	case modeDevelopment:
		for _, name := range productionOnly {
			if cfg.set[name] {
				return fmt.Errorf("-%s is for production mode: add -mode=production", name)
			}
		}
	default:
		return fmt.Errorf("-mode %q: want %s or %s", cfg.mode, modeDevelopment, modeProduction)
	}
	if cfg.handshakeTTL <= 0 || cfg.maxHandshakeSessions <= 0 || cfg.maxHandshakeInput <= 0 {
		return errors.New("-handshake-ttl, -max-handshake-sessions and -max-handshake-input must be positive")
	}
	if cfg.ticketRotation < time.Second || cfg.ticketLifetime < time.Second || cfg.ticketLifetime > keyvault.DefaultTicketLifetime {
		return fmt.Errorf("-ticket-rotation must be at least 1s and -ticket-lifetime 1s to %v", keyvault.DefaultTicketLifetime)
	}
	return cfg.etcd.check()
}
