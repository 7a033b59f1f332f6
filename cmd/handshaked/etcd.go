package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/handshaked/handshaked/internal/keyvault"
	"github.com/handshaked/handshaked/internal/keyvault/etcdstore"
	"github.com/handshaked/handshaked/internal/service"
)

// etcdConfig selects the etcd store (-etcd-*), the key store several
// replicas share. Without endpoints the store is the bolt file in
// -data-dir, for one replica.
type etcdConfig struct {
	endpoints                 string
	prefix                    string
	caFile, certFile, keyFile string
	dialTimeout               time.Duration
	requestTimeout            time.Duration
	stalenessBound            time.Duration
	maxTxnOps                 int
	maxRequestBytes           int
}

func registerEtcdFlags(fs *flag.FlagSet, e *etcdConfig) {
	fs.StringVar(&e.endpoints, "etcd-endpoints", "", "comma-separated client URLs of the etcd cluster holding the key store that every replica shares (https:// for TLS); empty: the bolt file in -data-dir, one replica")
	fs.StringVar(&e.prefix, "etcd-prefix", "", "etcd key prefix of this deployment's key store, the same on every replica (default /handshaked/<-deployment>/)")
	fs.StringVar(&e.caFile, "etcd-ca-file", "", "CA bundle, PEM, that the etcd members' certificates chain to (default: the system's roots for https endpoints)")
	fs.StringVar(&e.certFile, "etcd-cert-file", "", "client certificate, PEM, for etcd members that require one (with -etcd-key-file)")
	fs.StringVar(&e.keyFile, "etcd-key-file", "", "private key, PEM, of -etcd-cert-file, not world-readable")
	fs.DurationVar(&e.dialTimeout, "etcd-dial-timeout", etcdstore.DefaultDialTimeout, "how long the start waits for the etcd cluster to answer")
	fs.DurationVar(&e.requestTimeout, "etcd-request-timeout", etcdstore.DefaultRequestTimeout, "how long a request to etcd may take; past it (no quorum) key changes fail with UNAVAILABLE instead of waiting")
	fs.IntVar(&e.maxTxnOps, "etcd-max-txn-ops", etcdstore.DefaultMaxTxnOps, "the etcd cluster's --max-txn-ops: a KEK rotation commits in batches below it, and a restore (one commit of every record) needs at least the records handshakectl kek-status counts, plus the buckets in use (at most 64), plus 2 (a refused restore names the value)")
	fs.IntVar(&e.maxRequestBytes, "etcd-max-request-bytes", etcdstore.DefaultMaxRequestBytes, "the etcd cluster's --max-request-bytes: every commit carries the manifest and the one of its 64 buckets that lists the changed key's records (about 320 bytes per key of one version, 220 per version added), so the default 1.5 MiB holds about 300,000 keys (a flat manifest of every record, while a replica of store format 1 serves, about 4,900); past it key changes fail with FAILED_PRECONDITION")
	fs.DurationVar(&e.stalenessBound, "staleness-bound", keyvault.DefaultStalenessBound, "with -etcd-endpoints: a replica that has not confirmed its view of the key store for this long refuses key use (Sign, Decrypt: UNAVAILABLE), and a disable or destroy returns at the latest this long (the longest of the live replicas') after its commit; the same on every replica")
}

// check validates the -etcd-* settings together.
func (e *etcdConfig) check() error {
	if e.endpoints == "" {
		for name, v := range map[string]string{"etcd-prefix": e.prefix, "etcd-ca-file": e.caFile, "etcd-cert-file": e.certFile, "etcd-key-file": e.keyFile} {
			if v != "" {
				return fmt.Errorf("-%s needs -etcd-endpoints", name)
			}
		}
		return nil
	}
	if (e.certFile == "") != (e.keyFile == "") {
		return errors.New("-etcd-cert-file and -etcd-key-file go together")
	}
	if e.dialTimeout <= 0 || e.requestTimeout <= 0 || e.stalenessBound <= 0 {
		return errors.New("-etcd-dial-timeout, -etcd-request-timeout and -staleness-bound must be positive")
	}
	if e.maxTxnOps < 2 {
		return errors.New("-etcd-max-txn-ops must be at least 2")
	}
	if e.maxRequestBytes <= 0 {
		return errors.New("-etcd-max-request-bytes must be positive")
	}
	return nil
}

// storeConfig is the etcdstore configuration of cfg.
func (e *etcdConfig) storeConfig(deployment string) (etcdstore.Config, error) {
	sc := etcdstore.Config{
		Endpoints:       strings.Split(e.endpoints, ","),
		Prefix:          e.prefix,
		DialTimeout:     e.dialTimeout,
		RequestTimeout:  e.requestTimeout,
		MaxTxnOps:       e.maxTxnOps,
		MaxRequestBytes: e.maxRequestBytes,
		// A replica whose announcement expired is no longer waited for by
		// a revocation: by then it must have fenced itself, so its lease
		// outlives the staleness bound.
		LeaseTTL:       max(etcdstore.DefaultLeaseTTL, 2*e.stalenessBound),
		StalenessBound: e.stalenessBound,
		Deployment:     deployment,
	}
	if sc.Prefix == "" {
		sc.Prefix = "/handshaked/" + deployment + "/"
	}
	secure := false
	for i, ep := range sc.Endpoints {
		sc.Endpoints[i] = strings.TrimSpace(ep)
		secure = secure || strings.HasPrefix(sc.Endpoints[i], "https://")
	}
	if !secure && e.caFile == "" && e.certFile == "" {
		return sc, nil
	}
	sc.TLS = &tls.Config{MinVersion: tls.VersionTLS12}
	if e.caFile != "" {
		pem, err := os.ReadFile(e.caFile)
		if err != nil {
			return sc, fmt.Errorf("etcd CA: %w", err)
		}
		sc.TLS.RootCAs = x509.NewCertPool()
		if !sc.TLS.RootCAs.AppendCertsFromPEM(pem) {
			return sc, fmt.Errorf("etcd CA %s: no PEM certificate in it", e.caFile)
		}
	}
	if e.certFile != "" {
		if err := service.CheckPrivateFile("etcd client key", e.keyFile); err != nil {
			return sc, err
		}
		cert, err := tls.LoadX509KeyPair(e.certFile, e.keyFile)
		if err != nil {
			return sc, fmt.Errorf("etcd client certificate: %w", err)
		}
		sc.TLS.Certificates = []tls.Certificate{cert}
	}
	return sc, nil
}

// openEtcdStore opens the shared store and says where it is.
func openEtcdStore(ctx context.Context, cfg *config) (*etcdstore.Store, string, error) {
	sc, err := cfg.etcd.storeConfig(cfg.deployment)
	if err != nil {
		return nil, "", err
	}
	if sc.TLS == nil && cfg.mode == modeProduction {
		slog.Warn("the etcd endpoints are plain http: the sealed key store and the replicas' traffic with etcd cross the network unencrypted and unauthenticated", "etcd_endpoints", cfg.etcd.endpoints)
	}
	store, err := etcdstore.Open(ctx, sc)
	if err != nil {
		return nil, "", fmt.Errorf("key store: %w", err)
	}
	// Replicas of one store are one deployment: a replica with another
	// -deployment could open none of the others' step tokens, page tokens
	// or tickets, and every unary handshake step or listing page balanced
	// onto it would fail.
	if err := store.JoinDeployment(ctx); err != nil {
		return nil, "", errors.Join(fmt.Errorf("key store: %w", err), store.Close())
	}
	return store, store.String(), nil
}
