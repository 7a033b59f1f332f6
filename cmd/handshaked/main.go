// Command handshaked serves the key vault (and the TLS handshake engine) over
// gRPC and REST.
//
// With no flags it starts a development instance: a data directory with a
// fresh key-encryption key and a sample key, served on loopback only.
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

	"github.com/handshaked/handshaked/internal/keyvault"
	"github.com/handshaked/handshaked/internal/service"
)

type config struct {
	dataDir         string
	grpcAddr        string
	httpAddr        string
	kekFile         string
	shutdownTimeout time.Duration
}

func main() {
	var cfg config
	flag.StringVar(&cfg.dataDir, "data-dir", "handshaked-data", "directory holding the key store")
	flag.StringVar(&cfg.grpcAddr, "grpc-addr", "127.0.0.1:7070", "gRPC listen address")
	flag.StringVar(&cfg.httpAddr, "http-addr", "127.0.0.1:7080", "REST (grpc-gateway) listen address")
	flag.StringVar(&cfg.kekFile, "kek-file", "", "file holding the 32-byte key-encryption key (default: <data-dir>/kek, created in development mode)")
	flag.DurationVar(&cfg.shutdownTimeout, "shutdown-timeout", 30*time.Second, "how long a graceful shutdown waits for calls in flight")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg); err != nil {
		slog.Error("handshaked stopped", "err", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, cfg config) error {
	slog.Warn("DEVELOPMENT MODE: plain-text transport on loopback, no caller authentication, key-encryption key stored next to the data; never use this for real keys")
	for _, addr := range []string{cfg.grpcAddr, cfg.httpAddr} {
		if err := requireLoopback(addr); err != nil {
			return fmt.Errorf("development mode: %w", err)
		}
	}
	if err := os.MkdirAll(cfg.dataDir, 0o700); err != nil {
		return fmt.Errorf("data directory: %w", err)
	}
	if cfg.kekFile == "" {
		cfg.kekFile = filepath.Join(cfg.dataDir, "kek")
	}
	kek, err := loadOrCreateKEK(cfg.kekFile)
	if err != nil {
		return err
	}
	store, err := keyvault.OpenBolt(filepath.Join(cfg.dataDir, "keys.db"))
	if err != nil {
		return fmt.Errorf("key store: %w", err)
	}
	vault, err := keyvault.New(ctx, store, kek)
	clear(kek)
	if err != nil {
		store.Close()
		return fmt.Errorf("key store %s: %w", cfg.dataDir, err)
	}
	defer vault.Close()
	if err := ensureSampleKey(ctx, vault); err != nil {
		return fmt.Errorf("sample key: %w", err)
	}

	srv, err := service.New(vault, service.Options{})
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
	slog.Info("handshaked serving", "grpc_addr", grpcLis.Addr().String(), "rest_url", "http://"+httpLis.Addr().String(), "data_dir", cfg.dataDir)

	errc := make(chan error, 1)
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
