package handshaked

import (
	"encoding/json"
	"fmt"
	"net"
	"strings"
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

// retriedMethods are the methods gRPC retries on UNAVAILABLE, on another
// replica when there is one: they read, or compute without changing any
// state (Sign and Decrypt: an audit line more; SealTicket: another ticket
// of the same state), so running one twice is harmless. Key changes are
// not: a CreateKey or RotateKey whose answer was lost may have committed.
// Stateful handshake steps are not either (the session lives on one
// replica and a step changes it); stateless ones are retried by
// retryInterceptor, which can tell them apart by their request.
var retriedMethods = []string{
	pb.KeyVault_GetKey_FullMethodName,
	pb.KeyVault_ListKeys_FullMethodName,
	pb.KeyVault_GetPublicKey_FullMethodName,
	pb.KeyVault_Sign_FullMethodName,
	pb.KeyVault_Decrypt_FullMethodName,
	pb.KeyVault_SealTicket_FullMethodName,
	pb.KeyVault_OpenTicket_FullMethodName,
	pb.Handshake_GetHandshake_FullMethodName,
	pb.Admin_GetKEKStatus_FullMethodName,
}

// serviceConfig is the gRPC service config of a Dial: round_robin over
// every address the target resolves to (each replica gets its share, and
// one that fails leaves the rotation until it reconnects), and retries of
// retriedMethods.
func serviceConfig(retries int, wait time.Duration) string {
	type name struct {
		Service string `json:"service"`
		Method  string `json:"method"`
	}
	type retryPolicy struct {
		MaxAttempts          int      `json:"maxAttempts"`
		InitialBackoff       string   `json:"initialBackoff"`
		MaxBackoff           string   `json:"maxBackoff"`
		BackoffMultiplier    float64  `json:"backoffMultiplier"`
		RetryableStatusCodes []string `json:"retryableStatusCodes"`
	}
	type methodConfig struct {
		Name        []name       `json:"name"`
		RetryPolicy *retryPolicy `json:"retryPolicy,omitempty"`
	}
	cfg := struct {
		LoadBalancingConfig []map[string]struct{} `json:"loadBalancingConfig"`
		MethodConfig        []methodConfig        `json:"methodConfig,omitempty"`
		RetryThrottling     map[string]float64    `json:"retryThrottling,omitempty"`
	}{LoadBalancingConfig: []map[string]struct{}{{"round_robin": {}}}}
	if retries > 0 {
		mc := methodConfig{RetryPolicy: &retryPolicy{
			MaxAttempts: retries + 1, InitialBackoff: seconds(wait), MaxBackoff: seconds(wait << (retries - 1)),
			BackoffMultiplier: 2, RetryableStatusCodes: []string{"UNAVAILABLE"},
		}}
		for _, m := range retriedMethods {
			service, method, _ := strings.Cut(strings.TrimPrefix(m, "/"), "/")
			mc.Name = append(mc.Name, name{service, method})
		}
		cfg.MethodConfig = []methodConfig{mc}
		// When most calls fail, every replica is down or overloaded:
		// retries then stop (until successes earn them back) rather than
		// multiply the load of a fleet that is already failing.
		cfg.RetryThrottling = map[string]float64{"maxTokens": 100, "tokenRatio": 0.1}
	}
	b, err := json.Marshal(cfg)
	if err != nil {
		panic(err) // only fixed types above
	}
	return string(b)
}

// seconds writes d as a service config duration.
func seconds(d time.Duration) string {
	return fmt.Sprintf("%.9fs", max(d, time.Nanosecond).Seconds())
}

// balanceOptions are the dial options that make a connection balance and
// fail over: the service config (the SDK's, not one a DNS TXT record
// offers), as many attempts as the retries ask for, and a reconnection
// backoff capped at maxReconnectDelay, so a restarted replica rejoins the
// rotation within seconds instead of gRPC's two minutes.
func balanceOptions(retries int, wait time.Duration) []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithDisableServiceConfig(),
		grpc.WithDefaultServiceConfig(serviceConfig(retries, wait)),
		grpc.WithMaxCallAttempts(retries + 1),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: maxReconnectDelay},
			MinConnectTimeout: 5 * time.Second,
		}),
	}
}

// maxReconnectDelay bounds the wait between attempts to reconnect to a
// replica that went away.
const maxReconnectDelay = 2 * time.Second
