// Package handshaked is the Go SDK of handshaked: a typed client for its
// KeyVault and Handshake gRPC services, with the connection options an edge
// server needs (mutual TLS, per-call deadlines, retries of idempotent calls,
// keepalive).
//
// The keyless subpackage turns a vault key into a crypto.Signer and
// crypto.Decrypter for servers with their own TLS stack; the edge subpackage
// terminates TLS for servers without one.
package handshaked

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/grpckeepalive"
)

// Client calls a handshaked service. It is safe for concurrent use.
type Client struct {
	conn    *grpc.ClientConn // nil when built by New over a caller's connection
	vault   pb.KeyVaultClient
	hs      pb.HandshakeClient
	admin   pb.AdminClient
	batches *batchOps     // Sign and Decrypt, coalesced; nil: unary calls only
	ops     *streamOps    // Sign and Decrypt where the service has no BatchStream
	mux     *handshakeMux // MultiplexedHandshake; nil: a Stream per handshake
	timeout time.Duration // bounds streamed calls as deadlineInterceptor does unary ones
}

type options struct {
	tls         *tls.Config
	insecure    bool
	timeout     time.Duration
	retries     int
	backoff     time.Duration
	observe     func(method string, err error, retried bool)
	keepalive   *keepalive.ClientParameters
	dialOptions []grpc.DialOption
	signStreams int
	streamAge   time.Duration
	noCoalesce  bool
	hsStreams   int
}

// Option configures Dial.
type Option func(*options)

// WithTLS connects over TLS with cfg. For mutual TLS, cfg carries the client
// certificate in Certificates and the service's roots in RootCAs; one made
// by TLSConfigFromFiles follows its files, roots included, at each new
// connection.
func WithTLS(cfg *tls.Config) Option { return func(o *options) { o.tls = cfg } }

// WithInsecure connects in plain text, as to a development instance on
// loopback. Without WithTLS or WithInsecure, Dial refuses to connect.
func WithInsecure() Option { return func(o *options) { o.insecure = true } }

// WithTimeout bounds every call whose context has no deadline of its own
// (default 10 s; 0 leaves such calls unbounded).
func WithTimeout(d time.Duration) Option { return func(o *options) { o.timeout = d } }

// WithRetries retries a call that fails with UNAVAILABLE up to n more
// times (default 2), waiting a random time up to backoff (default 50 ms),
// then up to twice as long each time; with several replicas, on another
// one. Only calls that may run twice are retried: reads, Sign, Decrypt,
// SealTicket, OpenTicket, GetHandshake, and the steps of stateless
// handshakes (their state token lets any replica repeat the step). Calls
// that change state are never retried: a lost answer to CreateKey or to a
// step of a session held by the service must not apply twice. When most
// calls fail (every replica down or overloaded), retries stop until calls
// succeed again, rather than add to the load.
func WithRetries(n int, backoff time.Duration) Option {
	return func(o *options) { o.retries, o.backoff = max(n, 0), backoff }
}

// WithRetryObserver has fn told of each failed attempt of a stateless
// handshake call (StartStatelessHandshake, StepStatelessHandshake): its
// gRPC method, its error, and whether it is retried. An edge counts
// failovers with it.
func WithRetryObserver(fn func(method string, err error, retried bool)) Option {
	return func(o *options) { o.observe = fn }
}

// WithKeepalive pings an idle connection every interval (at least 10 s)
// and drops it when a ping is not answered within timeout, so a dead peer
// is noticed before the next handshake needs it. handshaked admits these
// pings, also on a connection without calls; an edge usually pings every
// 30 s with a 10 s timeout.
func WithKeepalive(interval, timeout time.Duration) Option {
	return func(o *options) {
		p := grpckeepalive.Client(interval, timeout)
		o.keepalive = &p
	}
}

// WithSignStreams sets how many long-lived streams carry Sign and Decrypt
// (default DefaultSignStreams; 0: every call is a unary RPC, without
// coalescing either): BatchStreams, each batch on the next in turn, or
// SignStreams where the service has no BatchStream or WithoutCoalescing.
// Each stream stays on the replica it was opened on, so several spread
// the calls over a fleet. Calls share the streams, so concurrent calls
// cost one message each (or a share of one batch) instead of one RPC; a
// call whose stream breaks goes again as a unary RPC.
func WithSignStreams(n int) Option { return func(o *options) { o.signStreams = n } }

// WithSignStreamAge sets how long a SignStream or BatchStream takes new
// calls (default DefaultSignStreamAge); then the next call opens another
// in its place and the old one ends once it has answered. A stream stays on the
// replica it was opened on: this is how soon a replica that joins, or
// comes back, gets its share of streamed Sign and Decrypt calls (0: a
// stream is kept until it ends). It applies to the Multiplex streams of
// MultiplexedHandshake too, each of which ends once its last handshake
// has.
func WithSignStreamAge(d time.Duration) Option { return func(o *options) { o.streamAge = d } }

// WithoutCoalescing sends each Sign as a message of its own on the
// SignStreams, as Decrypt always goes. By default ECDSA and Ed25519
// signatures are coalesced: concurrent calls go together in batches on
// long-lived BatchStreams, a call waiting only while others are in flight
// (never for a timer), which costs both processes less CPU per operation
// the more calls come together. RSA operations cost too much for sharing
// a message to save anything, and go one message each.
func WithoutCoalescing() Option { return func(o *options) { o.noCoalesce = true } }

// WithHandshakeStreams sets how many long-lived Multiplex streams carry
// the handshakes of MultiplexedHandshake (default DefaultHandshakeStreams;
// 0: a Stream per handshake).
func WithHandshakeStreams(n int) Option { return func(o *options) { o.hsStreams = n } }

// WithDialOptions adds raw gRPC dial options.
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(o *options) { o.dialOptions = append(o.dialOptions, opts...) }
}

// Dial connects to the service at target: "host:port", a list of replicas
// "host:port,host:port", or a gRPC target such as "dns:///name:port". Calls
// are balanced round-robin over every address the target names or its name
// resolves to; a replica that fails leaves the rotation until it is back.
func Dial(target string, opts ...Option) (*Client, error) {
	o := options{timeout: 10 * time.Second, signStreams: DefaultSignStreams, hsStreams: DefaultHandshakeStreams, streamAge: DefaultSignStreamAge, retries: DefaultRetries, backoff: DefaultRetryBackoff}
	for _, opt := range opts {
		opt(&o)
	}
	var creds credentials.TransportCredentials
	switch {
	case o.tls != nil && o.insecure:
		return nil, errors.New("handshaked: WithTLS and WithInsecure are exclusive")
	case o.tls != nil:
		creds = tlsCredentials(o.tls)
	case o.insecure:
		creds = insecure.NewCredentials()
	default:
		return nil, errors.New("handshaked: choose WithTLS (mutual TLS) or WithInsecure (development)")
	}
	dial := []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		// Handshake steps carry certificate chains; 1 MiB windows keep a
		// step to one round trip.
		grpc.WithInitialWindowSize(1 << 20), grpc.WithInitialConnWindowSize(1 << 22),
		grpc.WithChainUnaryInterceptor(deadlineInterceptor(o.timeout), retryInterceptor(o.retries, o.backoff, o.observe)),
	}
	dial = append(dial, balanceOptions()...)
	if o.keepalive != nil {
		dial = append(dial, grpc.WithKeepaliveParams(*o.keepalive))
	}
	grpcTarget, resolve, err := parseTarget(target)
	if err != nil {
		return nil, err
	}
	dial = append(dial, resolve...)
	conn, err := grpc.NewClient(grpcTarget, append(dial, o.dialOptions...)...)
	if err != nil {
		return nil, fmt.Errorf("handshaked: dial %s: %w", target, err)
	}
	c := newClient(conn, o.signStreams, o.hsStreams, o.streamAge, !o.noCoalesce)
	c.conn, c.timeout = conn, o.timeout
	if c.ops != nil {
		c.ops.timeout = o.timeout
	}
	if c.batches != nil {
		c.batches.timeout = o.timeout
	}
	return c, nil
}

// New wraps an existing connection, whose own options apply (Dial's
// deadlines and retries do not); the caller keeps closing it.
func New(conn grpc.ClientConnInterface) *Client {
	return newClient(conn, DefaultSignStreams, DefaultHandshakeStreams, DefaultSignStreamAge, true)
}

func newClient(conn grpc.ClientConnInterface, signStreams, hsStreams int, streamAge time.Duration, coalesce bool) *Client {
	c := &Client{vault: pb.NewKeyVaultClient(conn), hs: pb.NewHandshakeClient(conn), admin: pb.NewAdminClient(conn)}
	if signStreams > 0 {
		c.ops = newStreamOps(c.vault, signStreams, streamAge)
	}
	if signStreams > 0 && coalesce {
		c.batches = newBatchOps(c.vault, signStreams, streamAge)
	}
	if hsStreams > 0 {
		c.mux = newHandshakeMux(c.hs, hsStreams, streamAge)
	}
	return c
}

// Close closes the connection made by Dial.
func (c *Client) Close() error {
	if c.ops != nil {
		c.ops.close()
	}
	if c.batches != nil {
		c.batches.close()
	}
	if c.mux != nil {
		c.mux.close()
	}
	if c.conn == nil {
		return nil
	}
	return c.conn.Close()
}

// KeyVault is the raw KeyVault client, for what the typed methods leave out.
func (c *Client) KeyVault() pb.KeyVaultClient { return c.vault }

// Handshake is the raw Handshake client.
func (c *Client) Handshake() pb.HandshakeClient { return c.hs }

// Defaults of Dial.
const (
	DefaultRetries      = 2
	DefaultRetryBackoff = 50 * time.Millisecond
)

func deadlineInterceptor(d time.Duration) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if _, ok := ctx.Deadline(); !ok && d > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, d)
			defer cancel()
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	}
}

// retryInterceptor retries a call that fails with UNAVAILABLE up to n
// times if it may run twice: a method of retriedMethods, or a step of a
// stateless handshake, which only its request tells. Each attempt is a
// call of its own, which the balancer places anew: on another replica
// when the one it met is gone. gRPC's own retries (a service config's
// retryPolicy) are not enough: they end once the replica has sent its
// response headers (gRFC A6: the call is committed to it), so a replica
// killed with its answer on the way failed the call ("error reading from
// server: EOF"), which for these calls nothing justifies.
func retryInterceptor(n int, backoff time.Duration, observe func(string, error, bool)) grpc.UnaryClientInterceptor {
	budget := newRetryBudget()
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		step := stateless(req)
		if !step && !retriedMethods[method] {
			return invoker(ctx, method, req, reply, cc, opts...)
		}
		wait := backoff
		var first error
		for attempt := 0; ; attempt++ {
			err := invoker(ctx, method, req, reply, cc, opts...)
			if err == nil {
				budget.succeeded()
				return nil
			}
			if first == nil {
				first = err
			}
			unavailable := status.Code(err) == codes.Unavailable
			retry := unavailable && budget.failed() && attempt < n && ctx.Err() == nil
			if step && observe != nil {
				observe(method, err, retry)
			}
			if !retry {
				if unavailable && attempt > 0 && attempt == n {
					// As gRPC's own retries said it: the caller sees that
					// the call was retried, not only its last attempt. The
					// first attempt's error too, when it said something
					// else: a reconnection cut short (EOF) must not hide
					// the certificate its first connection refused.
					if f, l := status.Convert(first).Message(), status.Convert(err).Message(); f != l {
						return fmt.Errorf("max retries exhausted: failed after %d attempts: %w (first attempt: %s)", attempt+1, err, f)
					}
					return fmt.Errorf("max retries exhausted: failed after %d attempts: %w", attempt+1, err)
				}
				return err
			}
			// Full jitter: callers that failed together do not all come
			// back at once.
			select {
			case <-ctx.Done():
				return err
			case <-time.After(rand.N(wait + 1)):
			}
			wait *= 2
		}
	}
}

// stateless says whether req is a step of a stateless handshake: the
// service keeps nothing of it, so it can run again, on any replica.
func stateless(req any) bool {
	switch r := req.(type) {
	case *pb.StartHandshakeRequest:
		return r.GetStateless()
	case *pb.StepHandshakeRequest:
		return len(r.GetStateToken()) > 0
	}
	return false
}

// CreateKey generates a key inside the vault, in its software backend.
func (c *Client) CreateKey(ctx context.Context, id string, alg pb.Algorithm, labels map[string]string) (*pb.Key, error) {
	return c.CreateKeyInBackend(ctx, id, alg, pb.KeyBackend_KEY_BACKEND_UNSPECIFIED, labels)
}

// CreateKeyInBackend generates a key inside the vault's key backend (for
// pb.KeyBackend_KEY_BACKEND_PKCS11, inside its HSM, never extractable).
func (c *Client) CreateKeyInBackend(ctx context.Context, id string, alg pb.Algorithm, backend pb.KeyBackend, labels map[string]string) (*pb.Key, error) {
	return wrap(c.vault.CreateKey(ctx, &pb.CreateKeyRequest{Id: id, Algorithm: alg, Labels: labels, Backend: backend}))
}

// ImportKey imports a PEM private key (PKCS#1, PKCS#8 or SEC1).
func (c *Client) ImportKey(ctx context.Context, id string, privateKeyPEM []byte, labels map[string]string) (*pb.Key, error) {
	return wrap(c.vault.ImportKey(ctx, &pb.ImportKeyRequest{Id: id, PrivateKeyPem: privateKeyPEM, Labels: labels}))
}

// GetKey returns a key's metadata.
func (c *Client) GetKey(ctx context.Context, id string) (*pb.Key, error) {
	k, err := c.vault.GetKey(ctx, &pb.GetKeyRequest{Key: id})
	if err != nil {
		return nil, fmt.Errorf("handshaked: get key %s: %w", id, err)
	}
	return k, nil
}

// ListKeys returns every key, following pages.
func (c *Client) ListKeys(ctx context.Context) ([]*pb.Key, error) {
	var keys []*pb.Key
	token := ""
	for {
		resp, err := c.vault.ListKeys(ctx, &pb.ListKeysRequest{PageSize: 1000, PageToken: token})
		if err != nil {
			return nil, fmt.Errorf("handshaked: list keys: %w", err)
		}
		keys = append(keys, resp.GetKeys()...)
		if token = resp.GetNextPageToken(); token == "" {
			return keys, nil
		}
	}
}

// RotateKey adds a new primary version.
func (c *Client) RotateKey(ctx context.Context, id string) (*pb.Key, error) {
	return wrap(c.vault.RotateKey(ctx, &pb.RotateKeyRequest{Key: id}))
}

// EnableKeyVersion enables a disabled version.
func (c *Client) EnableKeyVersion(ctx context.Context, id string, version uint32) (*pb.Key, error) {
	return wrap(c.vault.EnableKeyVersion(ctx, &pb.EnableKeyVersionRequest{Key: id, Version: version}))
}

// DisableKeyVersion disables a version.
func (c *Client) DisableKeyVersion(ctx context.Context, id string, version uint32) (*pb.Key, error) {
	return wrap(c.vault.DisableKeyVersion(ctx, &pb.DisableKeyVersionRequest{Key: id, Version: version}))
}

// DestroyKeyVersion erases a disabled version for good.
func (c *Client) DestroyKeyVersion(ctx context.Context, id string, version uint32) (*pb.Key, error) {
	return wrap(c.vault.DestroyKeyVersion(ctx, &pb.DestroyKeyVersionRequest{Key: id, Version: version}))
}

// PublicKey returns a version's public key (version 0: the primary) and the
// version it belongs to.
func (c *Client) PublicKey(ctx context.Context, id string, version uint32) (crypto.PublicKey, uint32, error) {
	resp, err := c.vault.GetPublicKey(ctx, &pb.GetPublicKeyRequest{Key: id, Version: version})
	if err != nil {
		return nil, 0, fmt.Errorf("handshaked: public key of %s: %w", id, err)
	}
	block, _ := pem.Decode([]byte(resp.GetPem()))
	if block == nil {
		return nil, 0, fmt.Errorf("handshaked: public key of %s: no PEM block", id)
	}
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, 0, fmt.Errorf("handshaked: public key of %s: %w", id, err)
	}
	return pub, resp.GetVersion(), nil
}

// CertificateChain returns the chain attached to a version (version 0: the
// primary), DER, leaf first, and the version it belongs to.
func (c *Client) CertificateChain(ctx context.Context, id string, version uint32) ([][]byte, uint32, error) {
	key, err := c.GetKey(ctx, id)
	if err != nil {
		return nil, 0, err
	}
	if version == 0 {
		version = key.GetPrimaryVersion()
	}
	for _, v := range key.GetVersions() {
		if v.GetVersion() == version {
			if len(v.GetCertificateChain()) == 0 {
				return nil, 0, fmt.Errorf("handshaked: key %s version %d has no certificate chain", id, version)
			}
			return v.GetCertificateChain(), version, nil
		}
	}
	return nil, 0, fmt.Errorf("handshaked: key %s has no version %d", id, version)
}

// AttachCertificateChain attaches DER certificates, leaf first.
func (c *Client) AttachCertificateChain(ctx context.Context, id string, version uint32, chain [][]byte) (*pb.Key, error) {
	return wrap(c.vault.AttachCertificateChain(ctx, &pb.AttachCertificateChainRequest{Key: id, Version: version, CertificateChain: chain}))
}

// CreateCertificateSigningRequest has the vault make and sign a CSR.
func (c *Client) CreateCertificateSigningRequest(ctx context.Context, req *pb.CreateCertificateSigningRequestRequest) (*pb.CertificateSigningRequest, error) {
	return wrap(c.vault.CreateCertificateSigningRequest(ctx, req))
}

// Sign signs a digest (or, for Ed25519, a message: set digest to nil) with
// a TLS signature scheme. It returns the signature and the version used.
func (c *Client) Sign(ctx context.Context, id string, version uint32, scheme pb.SignatureScheme, message, digest []byte) ([]byte, uint32, error) {
	req := &pb.SignRequest{Key: id, Version: version, Scheme: scheme}
	if digest != nil {
		req.Input = &pb.SignRequest_Digest{Digest: digest}
	} else {
		req.Input = &pb.SignRequest_Message{Message: message}
	}
	resp, err := c.sign(ctx, req)
	if err != nil {
		return nil, 0, fmt.Errorf("handshaked: sign with %s: %w", id, err)
	}
	return resp.GetSignature(), resp.GetVersion(), nil
}

// Decrypt decrypts an RSA ciphertext. In DECRYPT_MODE_RSA_PKCS1_TLS_PREMASTER
// a bad ciphertext is not an error: the result is 48 unpredictable bytes
// (RFC 5246 §7.4.7.1).
func (c *Client) Decrypt(ctx context.Context, id string, version uint32, mode pb.DecryptMode, ciphertext []byte) ([]byte, error) {
	resp, err := c.decrypt(ctx, &pb.DecryptRequest{Key: id, Version: version, Mode: mode, Ciphertext: ciphertext})
	if err != nil {
		return nil, fmt.Errorf("handshaked: decrypt with %s: %w", id, err)
	}
	return resp.GetPlaintext(), nil
}

// SealTicket seals a TLS session state into a session ticket under the
// vault's ticket keys, bound to key id; it returns the ticket and how long
// it may be used. keyless.SessionTickets uses it for tls.Config.WrapSession.
func (c *Client) SealTicket(ctx context.Context, id string, plaintext []byte) ([]byte, time.Duration, error) {
	resp, err := c.vault.SealTicket(ctx, &pb.SealTicketRequest{Key: id, Plaintext: plaintext})
	if err != nil {
		return nil, 0, fmt.Errorf("handshaked: seal ticket for %s: %w", id, err)
	}
	return resp.GetTicket(), time.Duration(resp.GetLifetimeSeconds()) * time.Second, nil
}

// OpenTicket returns the session state sealed in ticket for key id;
// accepted is false (and err nil) for a ticket the vault does not accept:
// its ticket key retired, another deployment's or key's, or tampered with.
func (c *Client) OpenTicket(ctx context.Context, id string, ticket []byte) (plaintext []byte, accepted bool, err error) {
	resp, err := c.vault.OpenTicket(ctx, &pb.OpenTicketRequest{Key: id, Ticket: ticket})
	if err != nil {
		return nil, false, fmt.Errorf("handshaked: open ticket for %s: %w", id, err)
	}
	return resp.GetPlaintext(), resp.GetAccepted(), nil
}

// StartHandshake starts a handshake session held by the service, stepping
// it with the client's first bytes if input is not empty. The session lives
// on the replica that started it: with several replicas, use
// StartStatelessHandshake or HandshakeStream instead, since a
// StepHandshake may go to another replica, which does not know it.
func (c *Client) StartHandshake(ctx context.Context, cfg *pb.HandshakeConfig, input []byte) (*pb.HandshakeStep, error) {
	return wrap(c.hs.StartHandshake(ctx, &pb.StartHandshakeRequest{Config: cfg, Input: input}))
}

// StepHandshake feeds a session the bytes the client sent since the last
// step. It is not retried: a step changes the session.
func (c *Client) StepHandshake(ctx context.Context, id string, input []byte) (*pb.HandshakeStep, error) {
	return wrap(c.hs.StepHandshake(ctx, &pb.StepHandshakeRequest{Id: id, Input: input}))
}

// StartStatelessHandshake starts a handshake of which the service keeps
// nothing: a step that needs input carries a state token, which
// StepStatelessHandshake sends back, to any replica. Both are retried on
// UNAVAILABLE (see WithRetries), so a replica that fails in the middle of a
// handshake costs it a retry, not the handshake.
func (c *Client) StartStatelessHandshake(ctx context.Context, cfg *pb.HandshakeConfig, input []byte) (*pb.HandshakeStep, error) {
	return wrap(c.hs.StartHandshake(ctx, &pb.StartHandshakeRequest{Config: cfg, Input: input, Stateless: true}))
}

// StepStatelessHandshake feeds the stateless handshake id the bytes the
// client sent since the last step, with that step's state token.
func (c *Client) StepStatelessHandshake(ctx context.Context, id string, token, input []byte) (*pb.HandshakeStep, error) {
	return wrap(c.hs.StepHandshake(ctx, &pb.StepHandshakeRequest{Id: id, Input: input, StateToken: token}))
}

// GetHandshake returns a session's state (never its keys).
func (c *Client) GetHandshake(ctx context.Context, id string) (*pb.HandshakeStep, error) {
	return wrap(c.hs.GetHandshake(ctx, &pb.GetHandshakeRequest{Id: id}))
}

// AbortHandshake ends a session early.
func (c *Client) AbortHandshake(ctx context.Context, id string) error {
	_, err := c.hs.AbortHandshake(ctx, &pb.AbortHandshakeRequest{Id: id})
	if err != nil {
		return fmt.Errorf("handshaked: %w", err)
	}
	return nil
}

// HandshakeStream opens a bidirectional handshake stream: the first
// request carries the config, the session lives as long as the stream.
func (c *Client) HandshakeStream(ctx context.Context) (pb.Handshake_StreamClient, error) {
	s, err := c.hs.Stream(ctx)
	if err != nil {
		return nil, fmt.Errorf("handshaked: open handshake stream: %w", err)
	}
	return s, nil
}

func wrap[T any](v T, err error) (T, error) {
	if err != nil {
		var zero T
		return zero, fmt.Errorf("handshaked: %w", err)
	}
	return v, nil
}
