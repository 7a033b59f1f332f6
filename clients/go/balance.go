package handshaked

import (
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/resolver"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
)

// listScheme names the resolver of a target that lists its replicas,
// "a:7070,b:7070": the addresses are the replicas, as given.
const listScheme = "handshaked-list"

// listResolver resolves a list target to its addresses, once: the list is
// the configuration. Each address keeps its host as the name its TLS
// certificate must carry, as for a single "host:port".
type listResolver struct{ addrs []resolver.Address }

func (r *listResolver) Build(_ resolver.Target, cc resolver.ClientConn, _ resolver.BuildOptions) (resolver.Resolver, error) {
	if err := cc.UpdateState(resolver.State{Addresses: r.addrs}); err != nil {
		return nil, fmt.Errorf("handshaked: replicas %v: %w", r.addrs, err)
	}
	return r, nil
}

func (r *listResolver) Scheme() string                        { return listScheme }
func (r *listResolver) ResolveNow(resolver.ResolveNowOptions) {}
func (r *listResolver) Close()                                {}

// parseTarget turns Dial's target into a gRPC target and the options that
// resolve it: a comma-separated list of "host:port" is resolved by a
// listResolver of this connection only; anything else ("host:port", whose
// name may resolve to several addresses, or a gRPC target such as
// "dns:///name:port") goes to gRPC's resolvers as it is.
func parseTarget(target string) (string, []grpc.DialOption, error) {
	if !strings.Contains(target, ",") {
		return target, nil, nil
	}
	r := &listResolver{}
	for a := range strings.SplitSeq(target, ",") {
		a = strings.TrimSpace(a)
		host, port, err := net.SplitHostPort(a)
		if err != nil || host == "" || port == "" {
			return "", nil, fmt.Errorf("handshaked: replica %q in %q: want host:port", a, target)
		}
		r.addrs = append(r.addrs, resolver.Address{Addr: a, ServerName: host})
	}
	return listScheme + ":///" + target, []grpc.DialOption{grpc.WithResolvers(r)}, nil
}

// retriedMethods are the methods retryInterceptor retries on UNAVAILABLE,
// on another replica when there is one: they read, or compute without
// changing any state (Sign and Decrypt: an audit line more; SealTicket:
// another ticket of the same state), so running one twice is harmless.
// Key changes are not: a CreateKey or RotateKey whose answer was lost may
// have committed. Stateful handshake steps are not either (the session
// lives on one replica and a step changes it); stateless ones are retried
// too, which only their request tells.
var retriedMethods = map[string]bool{
	pb.KeyVault_GetKey_FullMethodName:        true,
	pb.KeyVault_ListKeys_FullMethodName:      true,
	pb.KeyVault_GetPublicKey_FullMethodName:  true,
	pb.KeyVault_Sign_FullMethodName:          true,
	pb.KeyVault_Decrypt_FullMethodName:       true,
	pb.KeyVault_SealTicket_FullMethodName:    true,
	pb.KeyVault_OpenTicket_FullMethodName:    true,
	pb.Handshake_GetHandshake_FullMethodName: true,
	pb.Admin_GetKEKStatus_FullMethodName:     true,
}

// retryBudget is gRPC's retry throttling (gRFC A6), kept by the SDK's own
// retries: when most calls fail, every replica is down or overloaded, and
// retries stop (until successes earn them back) rather than multiply the
// load of a fleet that is already failing. A failed attempt costs a token,
// a success earns a tenth of one; below half the tokens nothing is retried.
type retryBudget struct {
	mu     sync.Mutex
	tokens float64
}

const maxRetryTokens, retryTokenRatio = 100, 0.1

func newRetryBudget() *retryBudget { return &retryBudget{tokens: maxRetryTokens} }

// failed counts a failed attempt and says whether it may be retried.
func (b *retryBudget) failed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.tokens = max(b.tokens-1, 0)
	return b.tokens > maxRetryTokens/2
}

// succeeded counts a call that succeeded.
func (b *retryBudget) succeeded() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.tokens = min(b.tokens+retryTokenRatio, maxRetryTokens)
}

// serviceConfig is the gRPC service config of a Dial: round_robin over
// every address the target resolves to (each replica gets its share, and
// one that fails leaves the rotation until it reconnects). It retries
// nothing: retryInterceptor does, see there why.
const serviceConfig = `{"loadBalancingConfig": [{"round_robin": {}}]}`

// balanceOptions are the dial options that make a connection balance and
// fail over: the service config (the SDK's, not one a DNS TXT record
// offers) and a reconnection backoff capped at maxReconnectDelay, so a
// restarted replica rejoins the rotation within seconds instead of gRPC's
// two minutes.
func balanceOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithDisableServiceConfig(),
		grpc.WithDefaultServiceConfig(serviceConfig),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: maxReconnectDelay},
			MinConnectTimeout: 5 * time.Second,
		}),
	}
}

// maxReconnectDelay bounds the wait between attempts to reconnect to a
// replica that went away.
const maxReconnectDelay = 2 * time.Second
