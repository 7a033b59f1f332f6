package main

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/handshaked/handshaked/internal/authz"
	"github.com/handshaked/handshaked/internal/service"
)

// prepareProduction checks what a production instance needs and fills in
// its TLS files and policy. The service refuses a world-readable TLS key or
// a CA bundle that is missing or holds no certificate.
func prepareProduction(cfg *config, opts *service.Options) error {
	slog.Info("production mode: mutual TLS, policy enforced, audit log", "policy", cfg.policyFile, "client_ca", cfg.clientCA, "audit_log", cfg.auditLog)
	if err := os.MkdirAll(cfg.dataDir, 0o700); err != nil {
		return fmt.Errorf("data directory: %w", err)
	}
	// The store is sealed under the KEK, but a readable copy is one step
	// closer to an offline attack; it is created 0600 and must stay so.
	if db := filepath.Join(cfg.dataDir, "keys.db"); fileExists(db) {
		if err := service.CheckPrivateFile("key store", db); err != nil {
			return err
		}
	}
	policy, err := authz.Open(cfg.policyFile)
	if err != nil {
		return err
	}
	opts.TLS = &service.TLSFiles{CertFile: cfg.tlsCert, KeyFile: cfg.tlsKey, ClientCAFile: cfg.clientCA}
	opts.Policy = policy
	return nil
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// loadKEK reads the key-encryption key from $HANDSHAKED_KEK or the KEK file.
// Only a development instance creates one; production refuses to start
// without it, or with a KEK file anyone on the host can read.
func loadKEK(cfg *config) ([]byte, error) {
	switch {
	case cfg.kek != "" && cfg.kekFile != "":
		return nil, fmt.Errorf("the key-encryption key comes from -kek-file or $%s, not both", kekEnv)
	case cfg.kek != "":
		b := []byte(cfg.kek)
		defer clear(b)
		return parseKEK(b, "$"+kekEnv)
	case cfg.mode == modeDevelopment:
		return loadOrCreateKEK(cfg.kekFile)
	case cfg.kekFile == "":
		return nil, fmt.Errorf("production mode needs the key-encryption key: -kek-file or $%s", kekEnv)
	}
	if err := service.CheckPrivateFile("key-encryption key", cfg.kekFile); err != nil {
		return nil, err
	}
	data, err := os.ReadFile(cfg.kekFile)
	if err != nil {
		return nil, fmt.Errorf("key-encryption key: %w", err)
	}
	defer clear(data)
	return parseKEK(data, cfg.kekFile)
}
