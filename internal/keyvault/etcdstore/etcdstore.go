// Package etcdstore keeps the key vault's sealed records in an etcd v3
// cluster that several handshaked replicas share: a keyvault.SharedStore.
// A store sees only sealed bytes (sealed under the KEK by the vault, as in
// the bolt store); etcd provides the revisions, the compare-and-swap, the
// watch and the leases that replicas announce their view under.
//
// Layout under the deployment's prefix P (ending in "/"):
//
//	P+"store/head"               rewritten by every commit: its ModRevision is the store revision
//	P+"store/r/KK/VVVVVVVV/ID"   a record: kind and version in hex, then the key id; value: sealed bytes
//	P+"replicas/LLLLLLLLLLLLLLLL/format-F" a replica's applied revision (decimal), under that replica's lease;
//	                             F is the keyvault.StoreFormat it reads (a replica of a release
//	                             before formats announces P+"replicas/LLLLLLLLLLLLLLLL")
//	P+"bounds/LLLLLLLLLLLLLLLL"  that replica's staleness bound (decimal nanoseconds), under its lease
//	P+"deployments/LLLLLLLLLLLLLLLL" that replica's deployment name, under its lease
//
// The store revision is etcd's revision of the last commit to this store,
// so commits of other deployments (or of announcements) in the same etcd
// do not move it.
package etcdstore

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/handshaked/handshaked/internal/keyvault"
)

// Defaults of Config's durations.
const (
	DefaultDialTimeout    = 5 * time.Second
	DefaultRequestTimeout = 5 * time.Second
	DefaultLeaseTTL       = 5 * time.Second
	// DefaultMaxTxnOps is etcd's default --max-txn-ops.
	DefaultMaxTxnOps = 128
	// DefaultMaxRequestBytes is etcd's default --max-request-bytes.
	DefaultMaxRequestBytes = 3 << 19 // 1.5 MiB
)

// scanPage is how many records one range request of a Scan reads.
const scanPage = 256

// Config says which etcd cluster holds the store and where in it.
type Config struct {
	// Endpoints are the client URLs of the etcd members.
	Endpoints []string
	// Prefix is the deployment's key prefix: every key the store writes
	// starts with it, so deployments can share an etcd cluster. "/" is
	// appended when missing.
	Prefix string
	// TLS is the client TLS configuration (the etcd CA, and a client
	// certificate when etcd requires one); nil for plain http endpoints.
	TLS *tls.Config
	// DialTimeout bounds Open's first request to etcd.
	DialTimeout time.Duration
	// RequestTimeout bounds every later request: without quorum, etcd does
	// not answer, and the store reports ErrUnavailable instead of waiting.
	RequestTimeout time.Duration
	// LeaseTTL is how long a replica's announcement outlives the last
	// keep-alive of its process: a replica that died stops holding up
	// WaitApplied after that.
	LeaseTTL time.Duration
	// MaxTxnOps is the etcd cluster's --max-txn-ops: a commit writes at
	// most MaxTxnOps-1 records (one operation rewrites the head).
	MaxTxnOps int
	// MaxRequestBytes is the etcd cluster's --max-request-bytes: a commit
	// larger than that is refused before it is sent. Every commit carries
	// the vault's manifest and the manifest buckets it changes (a flat
	// manifest, store format 1, lists every record), so this bounds the
	// number of records of the store (README, "Running several replicas").
	MaxRequestBytes int
	// StalenessBound is the staleness bound of the vault on this replica
	// (keyvault.WithStalenessBound), announced beside its applied revision:
	// a revocation on any replica waits for the longest bound of the live
	// replicas (LongestStalenessBound), not its own, so one started with a
	// longer bound by mistake cannot use a revoked version after the
	// revocation returned. 0: none announced.
	StalenessBound time.Duration
	// Deployment is the name this replica serves as (handshaked's
	// -deployment, bound into its step tokens, page tokens and tickets),
	// announced beside its applied revision (JoinDeployment). "": none.
	Deployment string
}

// Store is a keyvault.SharedStore on etcd.
type Store struct {
	cli      *clientv3.Client
	cfg      Config
	head     string // P+"store/head"
	records  string // P+"store/r/"
	store    string // P+"store/"
	replicas string // P+"replicas/"
	bounds   string // P+"bounds/"
	names    string // P+"deployments/"

	// ctx ends with Close: it bounds the lease keep-alive.
	ctx    context.Context
	cancel context.CancelFunc

	// announceMu serialises Announce; mu guards the fields below it.
	announceMu sync.Mutex
	mu         sync.Mutex
	lease      clientv3.LeaseID // 0: none alive
	announced  int64
	// announcedOn is the lease whose key holds announced.
	announcedOn clientv3.LeaseID
	// compactPending is the revision of a commit that erased records
	// whose history could not be compacted yet; 0 when none.
	compactPending int64
	closed         bool
}

var _ keyvault.SharedStore = (*Store)(nil)

// Open connects to etcd and checks, within cfg.DialTimeout, that the store
// is readable there.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, fmt.Errorf("etcdstore: no etcd endpoints: %w", keyvault.ErrInvalidArgument)
	}
	if cfg.Prefix == "" {
		return nil, fmt.Errorf("etcdstore: empty key prefix (one per deployment, e.g. /handshaked/prod/): %w", keyvault.ErrInvalidArgument)
	}
	if !strings.HasSuffix(cfg.Prefix, "/") {
		cfg.Prefix += "/"
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = DefaultRequestTimeout
	}
	if cfg.LeaseTTL <= 0 {
		cfg.LeaseTTL = DefaultLeaseTTL
	}
	if cfg.MaxTxnOps <= 1 {
		cfg.MaxTxnOps = DefaultMaxTxnOps
	}
	if cfg.MaxRequestBytes <= 0 {
		cfg.MaxRequestBytes = DefaultMaxRequestBytes
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   cfg.Endpoints,
		TLS:         cfg.TLS,
		DialTimeout: cfg.DialTimeout,
		// Keep-alive pings notice a dead connection and move the client to
		// another member while nothing else is sent (10s: gRPC's minimum).
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: cfg.RequestTimeout,
		// The cluster's limit is the one that holds (Commit checks it): the
		// client's own (2 MiB) must not refuse a commit the cluster takes.
		MaxCallSendMsgSize: cfg.MaxRequestBytes + 1<<20,
		Logger:             zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("etcdstore: connect to etcd at %s: %w", strings.Join(cfg.Endpoints, ","), err)
	}
	sctx, cancel := context.WithCancel(context.Background())
	s := &Store{
		cli:      cli,
		cfg:      cfg,
		store:    cfg.Prefix + "store/",
		head:     cfg.Prefix + "store/head",
		records:  cfg.Prefix + "store/r/",
		replicas: cfg.Prefix + "replicas/",
		bounds:   cfg.Prefix + "bounds/",
		names:    cfg.Prefix + "deployments/",
		ctx:      sctx,
		cancel:   cancel,
	}
	rctx, rcancel := context.WithTimeout(clientv3.WithRequireLeader(ctx), cfg.DialTimeout)
	defer rcancel()
	if _, err := s.cli.Get(rctx, s.head); err != nil {
		if why := diagnose(cfg); why != nil {
			err = fmt.Errorf("%w; %w", err, why)
		}
		return nil, errors.Join(s.fail(ctx, "open", cfg.DialTimeout, err), s.Close())
	}
	return s, nil
}

// diagnose connects to each endpoint itself to find what the etcd client
// does not report, why it could not connect: refused, or the TLS handshake
// failed (a CA that does not match, a client certificate missing or
// refused). nil when it finds nothing.
func diagnose(cfg Config) error {
	var errs []error
	for _, ep := range cfg.Endpoints {
		u, err := url.Parse(ep)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", ep, err))
			continue
		}
		conn, err := net.DialTimeout("tcp", u.Host, cfg.DialTimeout)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if u.Scheme == "https" && cfg.TLS != nil {
			tc := cfg.TLS.Clone()
			if tc.ServerName == "" {
				tc.ServerName = u.Hostname()
			}
			tconn := tls.Client(conn, tc)
			_ = tconn.SetDeadline(time.Now().Add(cfg.DialTimeout))
			err = tconn.Handshake()
			if err == nil {
				// TLS 1.3: the server refuses a client certificate after
				// the client's handshake is done, in its first record.
				_ = tconn.SetReadDeadline(time.Now().Add(cfg.DialTimeout / 4))
				_, err = tconn.Read(make([]byte, 1))
				if ne, ok := err.(net.Error); ok && ne.Timeout() {
					err = nil
				}
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: TLS: %w", ep, err))
			}
		}
		conn.Close()
	}
	return errors.Join(errs...)
}

// String says where the store is: its endpoints and prefix.
func (s *Store) String() string {
	return fmt.Sprintf("etcd %s, prefix %s", strings.Join(s.cfg.Endpoints, ","), s.cfg.Prefix)
}

// Close revokes the replica's lease, so that WaitApplied stops waiting for
// it, and disconnects. Closing twice is not an error.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	lease := s.lease
	s.lease = 0
	s.mu.Unlock()
	s.cancel()
	if lease != 0 {
		// Best effort: without it the lease ends after its TTL.
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.RequestTimeout)
		_, _ = s.cli.Revoke(ctx, lease)
		cancel()
	}
	if err := s.cli.Close(); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("etcdstore: close: %w", err)
	}
	return nil
}

func (s *Store) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// request derives the context of one request: bounded by RequestTimeout,
// and refused at once by a member that has no leader (no quorum) rather
// than queued.
func (s *Store) request(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(clientv3.WithRequireLeader(ctx), s.cfg.RequestTimeout)
}

// fail wraps an etcd error with what the operator needs to know. When the
// caller's own context ended, that is the error.
func (s *Store) fail(ctx context.Context, op string, timeout time.Duration, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("etcdstore: %s: %w", op, ctx.Err())
	}
	eps := strings.Join(s.cfg.Endpoints, ",")
	switch {
	case errors.Is(err, rpctypes.ErrPermissionDenied), errors.Is(err, rpctypes.ErrUserEmpty),
		errors.Is(err, rpctypes.ErrAuthFailed), errors.Is(err, rpctypes.ErrInvalidAuthToken):
		return fmt.Errorf("etcdstore: %s: etcd at %s refused access (%v): handshaked's etcd user needs read and write on the keys under %q: %w",
			op, eps, err, s.cfg.Prefix, keyvault.ErrUnavailable)
	case errors.Is(err, rpctypes.ErrNoSpace):
		// Unavailable, not a certain failure: the write that crosses the
		// quota is applied, then answered so (etcd's quotaApplierV3).
		return fmt.Errorf("etcdstore: %s: etcd at %s is out of space (%v): past its --quota-backend-bytes it raised the NOSPACE alarm and takes no writes; "+
			"compact its history, defragment every member, then disarm the alarm (etcdctl alarm disarm): %w",
			op, eps, err, keyvault.ErrUnavailable)
	}
	return fmt.Errorf("etcdstore: %s: etcd at %s did not confirm within %v (%v): a majority of its members must be running and reachable from this replica: %w",
		op, eps, timeout, err, keyvault.ErrUnavailable)
}

// Scan implements keyvault.Store: the records of one etcd revision, read in
// pages at that revision. rev is the revision of the last commit to the
// store in that state.
func (s *Store) Scan(ctx context.Context, fn func(keyvault.Record) error) (int64, error) {
	rev, _, err := s.scan(ctx, 0, fn)
	return rev, err
}

// ScanChanged implements keyvault.SharedStore: Scan of the records whose
// ModRevision is past after. etcd filters on the revision itself, so only
// the changed records cross the network.
func (s *Store) ScanChanged(ctx context.Context, after int64, fn func(keyvault.Record) error) (int64, int, error) {
	return s.scan(ctx, after, fn)
}

func (s *Store) scan(ctx context.Context, after int64, fn func(keyvault.Record) error) (int64, int, error) {
	if s.isClosed() {
		return 0, 0, keyvault.ErrClosed
	}
	// A compaction between two pages makes the state unreadable; read again
	// from the start, and call fn only once all of one state is read.
	for attempt := 0; ; attempt++ {
		recs, rev, total, err := s.read(ctx, after)
		if errors.Is(err, rpctypes.ErrCompacted) && attempt < 3 {
			continue
		}
		if err != nil {
			return 0, 0, err
		}
		for _, r := range recs {
			if err := fn(r); err != nil {
				return 0, 0, err
			}
		}
		return rev, total, nil
	}
}

// read reads the records written after store revision after (all of them
// for 0) of one state of the store: its first page in one read-only
// transaction with the head (whose ModRevision is the store revision rev)
// and the count of the store's keys, the next pages at that transaction's
// etcd revision.
func (s *Store) read(ctx context.Context, after int64) (recs []keyvault.Record, rev int64, total int, err error) {
	end := clientv3.GetPrefixRangeEnd(s.store)
	page := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(scanPage)}
	if after > 0 {
		// Not for a whole Scan: with a revision filter etcd reads the rest
		// of the range for each page.
		page = append(page, clientv3.WithMinModRev(after+1))
	}
	rctx, cancel := s.request(ctx)
	first, err := s.cli.Txn(rctx).Then(
		clientv3.OpGet(s.head, clientv3.WithKeysOnly()),
		clientv3.OpGet(s.store, clientv3.WithRange(end), clientv3.WithCountOnly()),
		clientv3.OpGet(s.store, page...),
	).Commit()
	cancel()
	if err != nil {
		return nil, 0, 0, s.fail(ctx, "scan", s.cfg.RequestTimeout, err)
	}
	total = int(first.Responses[1].GetResponseRange().Count)
	if head := first.Responses[0].GetResponseRange().Kvs; len(head) > 0 {
		rev = head[0].ModRevision
		total-- // the head is no record
	}
	resp := (*clientv3.GetResponse)(first.Responses[2].GetResponseRange())
	for {
		for _, kv := range resp.Kvs {
			if string(kv.Key) == s.head {
				continue
			}
			ref, err := s.parseKey(string(kv.Key))
			if err != nil {
				return nil, 0, 0, err
			}
			recs = append(recs, keyvault.Record{RecordRef: ref, Sealed: kv.Value, Revision: kv.ModRevision})
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return recs, rev, total, nil
		}
		from := string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
		rctx, cancel := s.request(ctx)
		resp, err = s.cli.Get(rctx, from, append(page, clientv3.WithRev(first.Header.Revision))...)
		cancel()
		if errors.Is(err, rpctypes.ErrCompacted) {
			return nil, 0, 0, err
		}
		if err != nil {
			return nil, 0, 0, s.fail(ctx, "scan", s.cfg.RequestTimeout, err)
		}
	}
}

// key returns the etcd key of ref.
func (s *Store) key(ref keyvault.RecordRef) string {
	return fmt.Sprintf("%s%02x/%08x/%s", s.records, uint8(ref.Kind), ref.Version, ref.ID)
}

// parseKey is the inverse of key. Anything else under the store's prefix
// is reported as corrupted: the vault never drops data silently.
func (s *Store) parseKey(k string) (keyvault.RecordRef, error) {
	rest, ok := strings.CutPrefix(k, s.records)
	if ok && len(rest) >= 12 && rest[2] == '/' && rest[11] == '/' {
		kind, err1 := strconv.ParseUint(rest[:2], 16, 8)
		version, err2 := strconv.ParseUint(rest[3:11], 16, 32)
		if err1 == nil && err2 == nil {
			ref := keyvault.RecordRef{Kind: keyvault.RecordKind(kind), Version: uint32(version), ID: rest[12:]}
			if s.key(ref) == k {
				return ref, nil
			}
		}
	}
	return keyvault.RecordRef{}, fmt.Errorf("etcdstore: unexpected key %.80q under the store's prefix: %w", k, keyvault.ErrCorrupted)
}

// Commit implements keyvault.Store in one etcd transaction: durable on a
// majority of the members when it returns. Write.If and Write.Create are
// its comparisons (ModRevision, CreateRevision 0). A commit that erases
// records then compacts etcd's history up to its revision, physically, so
// that no earlier revision of an erased record can be read back; if that
// fails, Commit returns the commit's revision with an error wrapping
// keyvault.ErrUnavailable (the write is done; the history is compacted by
// the next commit), and the store keeps trying with each commit.
func (s *Store) Commit(ctx context.Context, w keyvault.Write) (int64, error) {
	if s.isClosed() {
		return 0, keyvault.ErrClosed
	}
	cmps, ops, checks, err := s.txn(w)
	if err != nil {
		return 0, err
	}
	size := s.requestBytes(w)
	if size > s.cfg.MaxRequestBytes-w.Headroom {
		return 0, s.tooLarge(size, w.Headroom)
	}
	rctx, cancel := s.request(ctx)
	resp, err := s.cli.Txn(rctx).If(cmps...).Then(ops...).Else(checks...).Commit()
	cancel()
	if err != nil {
		// Without an answer the commit may or may not have happened: a
		// retry computed on a new Scan compares revisions and finds out.
		if errors.Is(err, rpctypes.ErrRequestTooLarge) || status.Code(err) == codes.ResourceExhausted {
			// Refused before it was proposed (etcd's check of the raft
			// request) or read (gRPC's of the message, at
			// --max-request-bytes + 512 KiB; etcd's own ResourceExhausted
			// errors are rpctypes errors, with no gRPC status, and the
			// client's receive limit, 2 GiB, is far above a commit's
			// answer): it did not land. requestBytes bounds what etcd
			// checks, so the cluster's limit is below the one the replica
			// was given.
			return 0, fmt.Errorf("etcdstore: etcd at %s refused the commit of at most %d bytes as larger than its --max-request-bytes (%v), "+
				"which is less than this replica's -etcd-max-request-bytes (%d): give every replica the cluster's value: %w",
				strings.Join(s.cfg.Endpoints, ","), size, err, s.cfg.MaxRequestBytes, keyvault.ErrFailedPrecondition)
		}
		if errors.Is(err, rpctypes.ErrTooManyOps) {
			// Refused before it was proposed: it did not land, and no
			// retry helps. The vault splits what it can (a KEK rotation's
			// batches, by -etcd-max-txn-ops); a restore it cannot.
			n := max(len(cmps), len(ops), len(checks))
			return 0, fmt.Errorf("etcdstore: etcd at %s refused the commit of %d records, %d operations, as more than its --max-txn-ops (%v): "+
				"raise --max-txn-ops on every etcd member to %d or more and pass the same value as -etcd-max-txn-ops to every replica (this one's is %d): %w",
				strings.Join(s.cfg.Endpoints, ","), len(w.Create)+len(w.Put), n, err, n, s.cfg.MaxTxnOps, keyvault.ErrFailedPrecondition)
		}
		return 0, s.fail(ctx, "commit", s.cfg.RequestTimeout, err)
	}
	if !resp.Succeeded {
		return 0, s.explain(w, resp)
	}
	rev := resp.Header.Revision
	s.mu.Lock()
	pending := s.compactPending > 0
	if len(w.Erase) > 0 {
		s.compactPending = rev
		pending = true
	}
	s.mu.Unlock()
	if pending {
		if err := s.compact(ctx, rev); err != nil {
			return rev, err
		}
	}
	return rev, nil
}

// requestBytes bounds the size of the raft request of w's transaction,
// which etcd checks against its --max-request-bytes: every key and value
// it carries and their framing, and the request's header. It is over by a
// few hundred bytes at most; never under, so that what etcd would refuse
// for its size is refused here first, with the store's own error.
func (s *Store) requestBytes(w keyvault.Write) int {
	// framing bounds the protobuf tags, lengths and revision of one
	// operation or comparison on a key: 17 for a put of a value past 2 MiB.
	const framing = 24
	// header bounds the raft request's header (a request id, the etcd user,
	// which is the client certificate's common name, at most 64 bytes by
	// RFC 5280's ub-common-name, and an auth revision), with the tag and
	// length of the transaction.
	const header = 100
	n := header + len(s.head) + framing
	for _, r := range slices.Concat(w.Create, w.Put) {
		n += len(s.key(r.RecordRef)) + len(r.Sealed) + framing
	}
	for _, r := range w.Create { // a comparison and a check
		n += 2 * (len(s.key(r.RecordRef)) + framing)
	}
	for ref := range w.If {
		n += 2 * (len(s.key(ref)) + framing)
	}
	for _, ref := range w.Erase {
		n += len(s.key(ref)) + framing
	}
	return n
}

// tooLarge is the error of a commit of n bytes past the cluster's
// --max-request-bytes, or past it less the headroom the commit must leave:
// it is certain not to have landed.
func (s *Store) tooLarge(n, headroom int) error {
	over := fmt.Sprintf("etcd's --max-request-bytes (%d, given as -etcd-max-request-bytes)", s.cfg.MaxRequestBytes)
	if headroom > 0 {
		over += fmt.Sprintf(" less the %d bytes kept for the vault's ticket key rotations", headroom)
	}
	return fmt.Errorf("etcdstore: %w: "+
		"every commit carries the vault's manifest and the manifest buckets it changes, which list their records "+
		"(about 320 bytes per key of one version, 220 per version added; a flat manifest, while a replica of store format 1 serves, lists every record), "+
		"so the store is full; destroy versions no longer needed, or raise --max-request-bytes on every etcd member and -etcd-max-request-bytes on every replica: %w",
		&keyvault.CommitTooLargeError{Bytes: n, Limit: over}, keyvault.ErrFailedPrecondition)
}

// MaxCommitRecords is how many records one commit may write: the vault
// splits what it can (a KEK rotation) into commits of at most this many.
func (s *Store) MaxCommitRecords() int { return s.cfg.MaxTxnOps - 1 }

// txn translates w: comparisons, operations, and the reads that explain a
// failed comparison.
func (s *Store) txn(w keyvault.Write) (cmps []clientv3.Cmp, ops, checks []clientv3.Op, err error) {
	erased := make(map[keyvault.RecordRef]bool, len(w.Erase))
	for _, ref := range w.Erase {
		erased[ref] = true
	}
	written := make(map[keyvault.RecordRef]bool, len(w.Create)+len(w.Put))
	for _, r := range slices.Concat(w.Create, w.Put) {
		if written[r.RecordRef] {
			return nil, nil, nil, fmt.Errorf("etcdstore: %v written twice in one commit: %w", r.RecordRef, keyvault.ErrInvalidArgument)
		}
		written[r.RecordRef] = true
	}
	for _, ref := range s.ifOrder(w) {
		k := s.key(ref)
		if want := w.If[ref]; want == 0 {
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(k), "=", 0))
		} else {
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(k), "=", want))
		}
		checks = append(checks, clientv3.OpGet(k, clientv3.WithKeysOnly()))
	}
	for _, r := range w.Create {
		// Erase applies first: an erased record can be created again.
		if !erased[r.RecordRef] {
			k := s.key(r.RecordRef)
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(k), "=", 0))
			checks = append(checks, clientv3.OpGet(k, clientv3.WithKeysOnly()))
		}
	}
	// etcd refuses a key twice in one transaction: a record both erased
	// and written is only written (its old value is history, compacted).
	for _, ref := range w.Erase {
		if !written[ref] {
			ops = append(ops, clientv3.OpDelete(s.key(ref)))
		}
	}
	for _, r := range slices.Concat(w.Create, w.Put) {
		ops = append(ops, clientv3.OpPut(s.key(r.RecordRef), string(r.Sealed)))
	}
	ops = append(ops, clientv3.OpPut(s.head, ""))
	return cmps, ops, checks, nil
}

// explain turns a failed comparison into the error Write documents:
// ErrConflict for the first record of If not at its revision, else
// ErrAlreadyExists for a record of Create that exists.
func (s *Store) explain(w keyvault.Write, resp *clientv3.TxnResponse) error {
	got := make(map[string]int64)
	for _, r := range resp.Responses {
		for _, kv := range r.GetResponseRange().Kvs {
			got[string(kv.Key)] = kv.ModRevision
		}
	}
	for _, ref := range s.ifOrder(w) {
		if have := got[s.key(ref)]; have != w.If[ref] {
			return fmt.Errorf("etcdstore: %v is at revision %d, not %d: %w", ref, have, w.If[ref], keyvault.ErrConflict)
		}
	}
	for _, r := range w.Create {
		if _, ok := got[s.key(r.RecordRef)]; ok {
			return fmt.Errorf("etcdstore: %v: %w", r.RecordRef, keyvault.ErrAlreadyExists)
		}
	}
	// The state moved between the comparison and the reads explaining it.
	return fmt.Errorf("etcdstore: the store changed during the commit: %w", keyvault.ErrConflict)
}

// ifOrder lists the records of w.If in the order of their etcd keys, so
// that a conflict is reported the same way every time.
func (s *Store) ifOrder(w keyvault.Write) []keyvault.RecordRef {
	return slices.SortedFunc(maps.Keys(w.If), func(a, b keyvault.RecordRef) int {
		return strings.Compare(s.key(a), s.key(b))
	})
}

// compact removes etcd's history before rev, physically (the member waits
// until the old revisions are gone from its backend before answering):
// every revision of the cluster, this store's and any other's, older than
// rev. etcd keeps the latest value of each key, so live records stay.
func (s *Store) compact(ctx context.Context, rev int64) error {
	rctx, cancel := s.request(ctx)
	_, err := s.cli.Compact(rctx, rev, clientv3.WithCompactPhysical())
	cancel()
	// Compacted already (by another replica, or etcd's auto-compaction) at
	// or after rev: what rev needs is done.
	if err != nil && !errors.Is(err, rpctypes.ErrCompacted) {
		why := s.fail(ctx, "compact", s.cfg.RequestTimeout, err)
		if errors.Is(err, rpctypes.ErrPermissionDenied) {
			why = fmt.Errorf("etcdstore: compact: etcd refused (%v): with etcd's authentication on, compacting needs the root role: grant it to handshaked's etcd user, or give the key store an etcd cluster of its own secured by client certificates: %w",
				err, keyvault.ErrUnavailable)
		}
		return fmt.Errorf("etcdstore: committed at revision %d, but the earlier revisions of the erased records stay readable in etcd until a later commit compacts its history: %w", rev, why)
	}
	s.mu.Lock()
	if s.compactPending <= rev {
		s.compactPending = 0
	}
	s.mu.Unlock()
	return nil
}

// Revision implements keyvault.SharedStore: a linearizable read of the
// store's head, which needs a quorum of etcd members to answer.
func (s *Store) Revision(ctx context.Context) (int64, error) {
	if s.isClosed() {
		return 0, keyvault.ErrClosed
	}
	rctx, cancel := s.request(ctx)
	resp, err := s.cli.Get(rctx, s.head, clientv3.WithKeysOnly())
	cancel()
	if err != nil {
		return 0, s.fail(ctx, "read the store revision", s.cfg.RequestTimeout, err)
	}
	if len(resp.Kvs) == 0 {
		return 0, nil
	}
	return resp.Kvs[0].ModRevision, nil
}

// Watch implements keyvault.SharedStore. The watch needs the etcd member it
// is connected to to have a leader; a member that loses it ends the watch,
// and so does a compaction past the revision the watch has reached.
func (s *Store) Watch(ctx context.Context, after int64, fn func(keyvault.Change)) error {
	if s.isClosed() {
		return keyvault.ErrClosed
	}
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	start := after + 1
	if after == 0 {
		// An empty store: its first commit may be after etcd compacted
		// the revisions before it, so start at the current one.
		rctx, rcancel := s.request(ctx)
		resp, err := s.cli.Get(rctx, s.head, clientv3.WithKeysOnly())
		rcancel()
		if err != nil {
			return s.fail(ctx, "watch", s.cfg.RequestTimeout, err)
		}
		if len(resp.Kvs) > 0 {
			after = resp.Kvs[0].ModRevision
			fn(keyvault.Change{Rev: after})
		}
		start = resp.Header.Revision + 1
	}
	last := after
	for resp := range s.cli.Watch(wctx, s.store, clientv3.WithPrefix(), clientv3.WithRev(start)) {
		if err := resp.Err(); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("etcdstore: watch after revision %d: %w: %w", last, err, keyvault.ErrUnavailable)
		}
		// The events of one commit share its revision, and etcd sends
		// them in one response (it splits only between revisions).
		var ch keyvault.Change
		for _, ev := range resp.Events {
			switch rev := ev.Kv.ModRevision; {
			case rev <= last:
				continue
			case rev != ch.Rev:
				if ch.Rev != 0 {
					fn(ch)
				}
				ch = keyvault.Change{Rev: rev, Known: true}
			}
			s.addEvent(&ch, ev)
		}
		if ch.Rev != 0 {
			last = ch.Rev
			fn(ch)
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return fmt.Errorf("etcdstore: watch after revision %d ended: %w", last, keyvault.ErrUnavailable)
}

// addEvent adds what ev did to ch. A key under the store's prefix that is
// no record makes ch unknown: the vault reads the store, which reports it.
func (s *Store) addEvent(ch *keyvault.Change, ev *clientv3.Event) {
	if string(ev.Kv.Key) == s.head {
		return
	}
	ref, err := s.parseKey(string(ev.Kv.Key))
	switch {
	case err != nil:
		ch.Known = false
	case ev.Type == mvccpb.DELETE:
		ch.Erased = append(ch.Erased, ref)
	default:
		ch.Put = append(ch.Put, keyvault.Record{RecordRef: ref, Sealed: ev.Kv.Value, Revision: ev.Kv.ModRevision})
	}
}

// Announce implements keyvault.SharedStore: this replica's key under
// replicas/ holds rev, attached to a lease that the store keeps alive while
// it is open, and so does its key under bounds/, the staleness bound, and
// its key under deployments/, its deployment, both written with the first
// announcement on each lease. A lease that expired (the process stalled
// past LeaseTTL, or was cut off from etcd that long) is replaced by a new
// one, and the first announcement on it checks the deployment as
// JoinDeployment does, in the same transaction: while the replicas cut
// off from were gone, the operator may have started another deployment's.
// Announcing a revision lower than one announced before, or the one the
// lease's key holds already, changes nothing and sends nothing: a replica
// announces at every confirmation of its view, and each write would grow
// etcd's history.
func (s *Store) Announce(ctx context.Context, rev int64) error {
	s.announceMu.Lock()
	defer s.announceMu.Unlock()
	for attempt := 0; ; attempt++ {
		lease, err := s.liveLease(ctx)
		if err != nil {
			return err
		}
		s.mu.Lock()
		if rev < s.announced {
			rev = s.announced
		}
		held := lease == s.announcedOn && rev == s.announced
		newLease := lease != s.announcedOn
		s.mu.Unlock()
		if held {
			return nil
		}
		ops := []clientv3.Op{clientv3.OpPut(s.replicaKey(lease), strconv.FormatInt(rev, 10), clientv3.WithLease(lease))}
		if newLease && s.cfg.StalenessBound > 0 {
			// Once per lease: it ends with the announcement.
			ops = append(ops, clientv3.OpPut(leaseKey(s.bounds, lease), strconv.FormatInt(int64(s.cfg.StalenessBound), 10), clientv3.WithLease(lease)))
		}
		if newLease && s.cfg.Deployment != "" {
			err = s.join(ctx, lease, ops...)
		} else {
			rctx, cancel := s.request(ctx)
			_, err = s.cli.Txn(rctx).Then(ops...).Commit()
			cancel()
		}
		if errors.Is(err, rpctypes.ErrLeaseNotFound) && attempt == 0 {
			s.leaseEnded(lease)
			continue
		}
		if errors.Is(err, keyvault.ErrDeploymentConflict) {
			return err
		}
		if err != nil {
			return s.fail(ctx, "announce the applied revision", s.cfg.RequestTimeout, err)
		}
		s.mu.Lock()
		s.announced, s.announcedOn = rev, lease
		s.mu.Unlock()
		return nil
	}
}

// replicaKey names the announcement of lease with the store format this
// release reads. The format is in the key's name, not its value: a replica
// of a release before formats reads every value under replicas/ as a
// revision (WaitApplied), and the name, which it does not parse.
func (s *Store) replicaKey(lease clientv3.LeaseID) string {
	return fmt.Sprintf("%s/format-%d", leaseKey(s.replicas, lease), keyvault.StoreFormat)
}

// MinFormat implements keyvault.SharedStore from the names of the live
// announcements (replicaKey): one that names no format counts as 0.
func (s *Store) MinFormat(ctx context.Context) (int, error) {
	if s.isClosed() {
		return 0, keyvault.ErrClosed
	}
	rctx, cancel := s.request(ctx)
	resp, err := s.cli.Get(rctx, s.replicas, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	cancel()
	if err != nil {
		return 0, s.fail(ctx, "read the replicas' store formats", s.cfg.RequestTimeout, err)
	}
	lowest := keyvault.StoreFormat
	for _, kv := range resp.Kvs {
		f := 0
		if _, name, ok := strings.Cut(strings.TrimPrefix(string(kv.Key), s.replicas), "/format-"); ok {
			if n, err := strconv.Atoi(name); err == nil && n > 0 {
				f = n
			}
		}
		lowest = min(lowest, f)
	}
	return lowest, nil
}

// LongestStalenessBound returns the longest staleness bound the live
// replicas announced (Config.StalenessBound), 0 when none did (replicas of
// releases before it announce none).
func (s *Store) LongestStalenessBound(ctx context.Context) (time.Duration, error) {
	bounds, err := s.readAnnounced(ctx, s.bounds, "staleness bounds")
	var longest time.Duration
	for _, b := range bounds {
		if n, err := strconv.ParseInt(b, 10, 64); err == nil {
			longest = max(longest, time.Duration(n))
		}
	}
	return longest, err
}

// JoinDeployment announces this replica's deployment (Config.Deployment)
// under its lease, unless a live replica announced another: then it
// announces nothing and fails with the error of join.
func (s *Store) JoinDeployment(ctx context.Context) error {
	if s.cfg.Deployment == "" {
		return nil
	}
	lease, err := s.liveLease(ctx)
	if err != nil {
		return err
	}
	err = s.join(ctx, lease)
	if err != nil && !errors.Is(err, keyvault.ErrDeploymentConflict) {
		return s.fail(ctx, "announce the replica's deployment", s.cfg.RequestTimeout, err)
	}
	return err
}

// join commits ops with the announcement of this replica's deployment
// (Config.Deployment, not "") under lease, unless a live replica
// announced another deployment: then it commits nothing and returns the
// error of conflict. The read and the commit are one transaction (if no
// announcement under deployments/ changed since the read, else it reads
// them again), so that of replicas of different deployments announcing at
// once exactly one joins and the others are refused: read, then announced
// apart, both would pass. Errors of etcd are returned as they are.
func (s *Store) join(ctx context.Context, lease clientv3.LeaseID, ops ...clientv3.Op) error {
	ops = append(ops, clientv3.OpPut(leaseKey(s.names, lease), s.cfg.Deployment, clientv3.WithLease(lease)))
	rctx, cancel := s.request(ctx)
	get, err := s.cli.Get(rctx, s.names, clientv3.WithPrefix())
	cancel()
	for err == nil {
		var others []string
		for _, kv := range get.Kvs {
			if n := string(kv.Value); n != s.cfg.Deployment {
				others = append(others, n)
			}
		}
		if len(others) > 0 {
			return s.conflict(others)
		}
		var resp *clientv3.TxnResponse
		rctx, cancel = s.request(ctx)
		resp, err = s.cli.Txn(rctx).
			If(clientv3.Compare(clientv3.ModRevision(s.names), "<", get.Header.Revision+1).WithPrefix()).
			Then(ops...).
			Else(clientv3.OpGet(s.names, clientv3.WithPrefix())).
			Commit()
		cancel()
		if err == nil && resp.Succeeded {
			return nil
		}
		if err == nil {
			// Another replica announced since the read: read again.
			get = (*clientv3.GetResponse)(resp.Responses[0].GetResponseRange())
			get.Header = resp.Header
		}
	}
	return err
}

// conflict is the error of a replica of Config.Deployment among live
// replicas of the deployments others: it names each once, sorted, and
// says what to do.
func (s *Store) conflict(others []string) error {
	slices.Sort(others)
	others = slices.Compact(others)
	quoted := make([]string, len(others))
	for i, n := range others {
		quoted[i] = strconv.Quote(n)
	}
	return fmt.Errorf("etcdstore: the replicas running on %s are of deployment %s, and this one is started as %q: "+
		"give every replica of a key store the same -deployment (it is bound into step tokens, page tokens and session tickets), "+
		"and stop the replicas of one of the two deployments; to rename a deployment, stop every replica first; "+
		"a replica that did not stop cleanly (killed, or cut off from etcd) is announced until its lease ends, the longer of %v and twice its -staleness-bound: %w: %w",
		s, strings.Join(quoted, ", "), s.cfg.Deployment, DefaultLeaseTTL, keyvault.ErrDeploymentConflict, keyvault.ErrUnavailable)
}

// leaseKey names the announcement of lease under prefix (replicas/,
// bounds/, deployments/): it ends with the lease.
func leaseKey(prefix string, lease clientv3.LeaseID) string {
	return fmt.Sprintf("%s%016x", prefix, int64(lease))
}

// readAnnounced returns the values of the live replicas' announcements
// under prefix, what (for errors) they are.
func (s *Store) readAnnounced(ctx context.Context, prefix, what string) ([]string, error) {
	if s.isClosed() {
		return nil, keyvault.ErrClosed
	}
	rctx, cancel := s.request(ctx)
	resp, err := s.cli.Get(rctx, prefix, clientv3.WithPrefix())
	cancel()
	if err != nil {
		return nil, s.fail(ctx, "read the replicas' "+what, s.cfg.RequestTimeout, err)
	}
	values := make([]string, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		values = append(values, string(kv.Value))
	}
	return values, nil
}

// liveLease returns the replica's lease, granting one (and starting its
// keep-alive) when there is none.
func (s *Store) liveLease(ctx context.Context) (clientv3.LeaseID, error) {
	s.mu.Lock()
	lease, closed := s.lease, s.closed
	s.mu.Unlock()
	if closed {
		return 0, keyvault.ErrClosed
	}
	if lease != 0 {
		return lease, nil
	}
	rctx, cancel := s.request(ctx)
	resp, err := s.cli.Grant(rctx, int64((s.cfg.LeaseTTL+time.Second-1)/time.Second))
	cancel()
	if err != nil {
		return 0, s.fail(ctx, "grant the replica's lease", s.cfg.RequestTimeout, err)
	}
	s.mu.Lock()
	closed = s.closed
	if !closed {
		s.lease = resp.ID
	}
	s.mu.Unlock()
	if closed { // Close ran meanwhile and revoked none: this one ends with its TTL
		return 0, keyvault.ErrClosed
	}
	alive, err := s.cli.KeepAlive(s.ctx, resp.ID)
	if err != nil {
		s.leaseEnded(resp.ID)
		return 0, s.fail(ctx, "keep the replica's lease alive", s.cfg.RequestTimeout, err)
	}
	go func() {
		// The channel closes when the lease expired or the store closed.
		for range alive {
		}
		s.leaseEnded(resp.ID)
	}()
	return resp.ID, nil
}

func (s *Store) leaseEnded(lease clientv3.LeaseID) {
	s.mu.Lock()
	if s.lease == lease {
		s.lease = 0
	}
	s.mu.Unlock()
}

// WaitApplied implements keyvault.SharedStore: it reads every replica's
// announcement and watches them until each is at rev or later. A replica
// whose lease ended (it closed, or died and its TTL passed) no longer
// counts. It fails with ErrUnavailable when etcd cannot be read.
func (s *Store) WaitApplied(ctx context.Context, rev int64) error {
	if s.isClosed() {
		return keyvault.ErrClosed
	}
	for {
		rctx, cancel := s.request(ctx)
		resp, err := s.cli.Get(rctx, s.replicas, clientv3.WithPrefix())
		cancel()
		if err != nil {
			return s.fail(ctx, "read the replicas' applied revisions", s.cfg.RequestTimeout, err)
		}
		applied := make(map[string]int64, len(resp.Kvs))
		for _, kv := range resp.Kvs {
			applied[string(kv.Key)] = parseApplied(kv.Value)
		}
		if allApplied(applied, rev) {
			return nil
		}
		done, err := s.watchApplied(ctx, applied, rev, resp.Header.Revision+1)
		if done || err != nil {
			return err
		}
	}
}

// watchApplied follows the announcements from etcd revision from on. It
// returns done once all are at rev; not done and no error when the watch
// was compacted away and the caller must read them again.
func (s *Store) watchApplied(ctx context.Context, applied map[string]int64, rev, from int64) (done bool, err error) {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	for resp := range s.cli.Watch(wctx, s.replicas, clientv3.WithPrefix(), clientv3.WithRev(from)) {
		if err := resp.Err(); err != nil {
			if ctx.Err() != nil {
				return true, ctx.Err()
			}
			if resp.CompactRevision != 0 {
				return false, nil
			}
			return true, s.fail(ctx, "watch the replicas' applied revisions", s.cfg.RequestTimeout, err)
		}
		for _, ev := range resp.Events {
			if ev.Type == mvccpb.DELETE {
				delete(applied, string(ev.Kv.Key))
			} else {
				applied[string(ev.Kv.Key)] = parseApplied(ev.Kv.Value)
			}
		}
		if allApplied(applied, rev) {
			return true, nil
		}
	}
	if ctx.Err() != nil {
		return true, ctx.Err()
	}
	return true, fmt.Errorf("etcdstore: watch of the replicas' applied revisions ended: %w", keyvault.ErrUnavailable)
}

// parseApplied reads an announcement; one that does not parse counts as
// having applied nothing, so it holds WaitApplied up rather than let it
// return early.
func parseApplied(v []byte) int64 {
	n, err := strconv.ParseInt(string(v), 10, 64)
	if err != nil {
		return -1
	}
	return n
}

func allApplied(applied map[string]int64, rev int64) bool {
	for _, r := range applied {
		if r < rev {
			return false
		}
	}
	return true
}
