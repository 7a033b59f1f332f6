// Command handshaked serves the key vault (and the TLS handshake engine) over
// gRPC and REST.
//
// With no flags it starts a development instance: a data directory with a
// fresh key-encryption key and a sample key, served on loopback only.
//
// With -mode=production it serves gRPC and REST over mutual TLS, identifies
// callers by their client certificates, enforces a policy file and writes
// an audit log. Settings come from flags, HANDSHAKED_<FLAG> environment
// variables and a JSON file (-config), in that order of precedence; SIGHUP
// reloads the TLS files and the policy and reopens the audit log.
//
// handshaked -version (or handshaked version) prints the build and exits.
// handshaked health asks a running instance's -health-addr whether it
// serves, for container health checks in an image without a shell.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/handshaked/handshaked/internal/audit"
	"github.com/handshaked/handshaked/internal/buildinfo"
	"github.com/handshaked/handshaked/internal/keyvault"
	"github.com/handshaked/handshaked/internal/logging"
	"github.com/handshaked/handshaked/internal/service"
	"github.com/handshaked/handshaked/internal/tracing"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "health" {
		os.Exit(healthCommand(os.Args[2:], os.LookupEnv, os.Stdout, os.Stderr))
	}
	cfg, err := parseConfig(os.Args[1:], os.LookupEnv, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "handshaked:", err)
		os.Exit(2)
	}
	if cfg.showVersion {
		fmt.Println("handshaked", buildinfo.Read())
		return
	}
	// The KEK and the PIN are in cfg now; nothing started from here needs
	// to see them.
	os.Unsetenv(kekEnv)
	os.Unsetenv(pkcs11PINEnv)
	logger, err := logging.New(os.Stderr, *cfg.log)
	if err != nil {
		fmt.Fprintln(os.Stderr, "handshaked:", err)
		os.Exit(2)
	}
	slog.SetDefault(logger)
	logging.RouteGRPC(logger)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg); err != nil {
		slog.Error("handshaked stopped", "err", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, cfg *config) error {
	var opts service.Options
	var err error
	if cfg.mode == modeProduction {
		err = prepareProduction(cfg, &opts)
	} else {
		err = prepareDevelopment(cfg)
	}
	if err != nil {
		return err
	}
	opts.Handshake = service.HandshakeOptions{MaxSessions: cfg.maxHandshakeSessions, MaxSessionsPerCaller: cfg.maxHandshakeSessionsPerCaller,
		SessionTTL: cfg.handshakeTTL, MaxInput: cfg.maxHandshakeInput, Deployment: cfg.deployment}
	opts.Limits = service.Limits{
		Rate: cfg.rateLimit, Burst: cfg.rateBurst,
		MaxInFlight: cfg.maxInFlight, MaxInFlightPerCaller: cfg.maxInFlightPerCaller,
		MaxStreams: cfg.maxStreams, MaxStreamsPerCaller: cfg.maxStreamsPerCaller, StreamIdleTimeout: cfg.streamIdleTimeout,
		UnauthenticatedRate: cfg.unauthenticatedRate, MaxConnections: cfg.maxConnections, CallTimeout: cfg.callTimeout,
	}
	opts.ReloadInterval = cfg.reloadInterval
	tp, err := tracing.Start(ctx, *cfg.trace, "handshaked", buildinfo.Read().Version, slog.Default())
	if err != nil {
		return fmt.Errorf("tracing: %w", err)
	}
	defer func() {
		// The spans of the last calls, sent within a bounded time.
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := tp.Shutdown(sctx); err != nil {
			slog.Warn("tracing: spans not sent at exit", "err", err)
		}
	}()
	if cfg.trace.Endpoint != "" {
		opts.TracerProvider = tp
	}
	if cfg.sessionTickets {
		opts.Tickets = &service.TicketOptions{Deployment: cfg.deployment, Rotation: cfg.ticketRotation, Lifetime: cfg.ticketLifetime}
	}
	if cfg.auditLog != "" {
		if opts.Audit, err = audit.Open(cfg.auditLog); err != nil {
			return err
		}
		defer opts.Audit.Close()
	}
	token, err := openToken(cfg)
	if err != nil {
		return err
	}
	vaultOpts := []keyvault.Option{keyvault.WithStalenessBound(cfg.etcd.stalenessBound)}
	if token != nil {
		defer token.Close()
		vaultOpts = append(vaultOpts, keyvault.WithBackend(token))
	}
	var kek []byte
	if cfg.hsm.kekFile != "" {
		kek, err = loadTokenKEK(ctx, cfg, token)
		vaultOpts = append(vaultOpts, keyvault.WithKEKKeeper(tokenKEKFile{path: cfg.hsm.kekFile, token: token}))
	} else {
		kek, err = loadKEK(cfg)
	}
	if err != nil {
		return err
	}
	kekID := keyvault.KEKID(kek)
	vault, err := openVault(ctx, cfg, kek, vaultOpts...)
	clear(kek)
	if err != nil {
		return err
	}
	defer vault.Close()
	if cfg.hsm.kekFile != "" {
		// The file holds the KEK the store is sealed under now, even if it
		// held the one a rotation under way retires (tokenKEKFile).
		kekID = vault.KEKStatus().ID
	}
	resumeKEKRotation(ctx, vault, kekID)
	if cfg.mode == modeDevelopment {
		if err := ensureSampleKey(ctx, vault); err != nil {
			return fmt.Errorf("sample key: %w", err)
		}
	}

	srv, err := service.New(vault, opts)
	if err != nil {
		return err
	}
	grpcLis, err := net.Listen("tcp", cfg.grpcAddr)
	if err != nil {
		return fmt.Errorf("gRPC listener: %w", err)
	}
	httpLis, err := net.Listen("tcp", cfg.httpAddr)
	if err != nil {
		grpcLis.Close()
		return fmt.Errorf("REST listener: %w", err)
	}
	scheme := "http://"
	if opts.TLS != nil {
		scheme = "https://"
	}
	slog.Info("handshaked serving", "grpc_addr", grpcLis.Addr().String(), "rest_url", scheme+httpLis.Addr().String(), "data_dir", cfg.dataDir, "mode", cfg.mode, "docs", scheme+httpLis.Addr().String()+"/docs")

	// SIGHUP: load the TLS files and the policy again, reopen the audit log.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for range hup {
			if err := srv.Reload(); err != nil {
				slog.Error("SIGHUP: reload incomplete", "err", err)
				continue
			}
			slog.Info("SIGHUP: reloaded")
		}
	}()

	errc := make(chan error, 2)
	if cfg.healthAddr != "" {
		healthLis, err := net.Listen("tcp", cfg.healthAddr)
		if err != nil {
			grpcLis.Close()
			httpLis.Close()
			return fmt.Errorf("health listener: %w", err)
		}
		slog.Info("plain-text gRPC health service", "health_addr", healthLis.Addr().String())
		go func() {
			if err := srv.ServeHealth(healthLis); err != nil {
				errc <- err
			}
		}()
	}
	go func() { errc <- srv.Serve(grpcLis, httpLis) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	slog.Info("shutting down: draining calls in flight", "timeout", cfg.shutdownTimeout)
	sctx, cancel := context.WithTimeout(context.Background(), cfg.shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return <-errc
}

// openVault opens the vault in the data directory, or on etcd with
// -etcd-endpoints. A development instance creates it when it is missing;
// production does so only with -init, so that a wrong -data-dir or
// -etcd-prefix, or a lost disk, is an error, not a new, empty vault.
func openVault(ctx context.Context, cfg *config, kek []byte, opts ...keyvault.Option) (*keyvault.Vault, error) {
	create := cfg.mode == modeDevelopment || cfg.initStore
	var (
		store keyvault.Store
		where string
	)
	if cfg.etcd.endpoints != "" {
		s, w, err := openEtcdStore(ctx, cfg)
		if err != nil {
			return nil, err
		}
		store, where = s, w
	} else {
		path := filepath.Join(cfg.dataDir, "keys.db")
		if !create && !fileExists(path) {
			return nil, fmt.Errorf("key store %s does not exist: start with -init to create a new vault (the first start only)", path)
		}
		s, err := keyvault.OpenBolt(path)
		if err != nil {
			return nil, fmt.Errorf("key store: %w", err)
		}
		store, where = s, path
	}
	open := keyvault.Open
	if create {
		open = keyvault.New
	}
	vault, err := open(ctx, store, kek, opts...)
	if err != nil {
		store.Close()
		if errors.Is(err, keyvault.ErrEmptyStore) {
			return nil, fmt.Errorf("key store %s holds no vault: start with -init to create a new one (the first start only)", where)
		}
		if errors.Is(err, keyvault.ErrWrongKEK) {
			return nil, fmt.Errorf("key store %s: %w (KEK %s; once a KEK rotation completes, only the new KEK opens the store)", where, err, keyvault.KEKID(kek))
		}
		return nil, fmt.Errorf("key store %s: %w", where, err)
	}
	slog.Info("key store", "key_store", where, "rsa", keyvault.RSAImplementation())
	return vault, nil
}

// resumeKEKRotation carries on, in the background, a KEK rotation that a
// crash or a restart interrupted, when the instance was started with the
// new KEK: the operator has made it the KEK already. Started with the KEK
// the rotation retires, it serves and says how to finish.
func resumeKEKRotation(ctx context.Context, vault *keyvault.Vault, kekID string) {
	st := vault.KEKStatus()
	switch {
	case st.Retiring == "":
		slog.Info("key-encryption key", "kek_id", st.ID)
		return
	case st.ID != kekID:
		slog.Warn("a KEK rotation is under way and this instance was started with the KEK it retires: finish it with handshakectl kek-rotate and the new KEK, then make the new KEK -kek-file",
			"kek_id", kekID, "new_kek_id", st.ID, "stale_records", st.Stale)
		return
	}
	slog.Warn("resuming an interrupted KEK rotation", "kek_id", st.ID, "retiring_kek_id", st.Retiring, "stale_records", st.Stale)
	go func() {
		st, err := vault.ResumeKEKRotation(ctx)
		if err != nil {
			slog.Error("KEK rotation not finished; it resumes at the next start or with handshakectl kek-rotate", "err", err)
			return
		}
		slog.Info("KEK rotation complete: the store opens with the new KEK only", "kek_id", st.ID)
	}()
}

// prepareDevelopment checks and creates what a development instance needs.
func prepareDevelopment(cfg *config) error {
	if cfg.kekFile == "" && cfg.kek == "" && cfg.hsm.kekFile == "" {
		cfg.kekFile = filepath.Join(cfg.dataDir, "kek")
	}
	slog.Warn("DEVELOPMENT MODE: plain-text transport on loopback, no caller authentication, " + devKEKPlace(cfg) + "; never use this for real keys")
	for _, addr := range []string{cfg.grpcAddr, cfg.httpAddr, cfg.healthAddr} {
		if addr == "" {
			continue
		}
		if err := requireLoopback(addr); err != nil {
			return fmt.Errorf("development mode: %w", err)
		}
	}
	if err := os.MkdirAll(cfg.dataDir, 0o700); err != nil {
		return fmt.Errorf("data directory: %w", err)
	}
	return nil
}

// devKEKPlace says where a development instance's key-encryption key is,
// for its warning: in plain text unless the PKCS#11 token wraps it.
func devKEKPlace(cfg *config) string {
	switch {
	case cfg.hsm.kekFile != "":
		return "key-encryption key wrapped by the PKCS#11 token in " + cfg.hsm.kekFile
	case cfg.kek != "":
		return "key-encryption key in plain text from $" + kekEnv
	}
	return "key-encryption key in plain text in " + cfg.kekFile
}

// requireLoopback refuses to expose an unauthenticated development instance
// beyond this machine.
func requireLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("address %q: %w", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("address %q is not a loopback address", addr)
	}
	return nil
}
