// Package grpckeepalive is the one place where the SDK's keepalive pings and
// the service's tolerance of them are set, so that they cannot drift apart:
// the service admits every ping the SDK sends. gRPC's default enforcement
// (no ping within 5 minutes of the last, none at all without a call in
// progress) answers an idle SDK connection, which pings every 30 s, with
// GOAWAY too_many_pings after its third strike, and a handshake that
// coincides fails.
package grpckeepalive

import (
	"time"

	"google.golang.org/grpc/keepalive"
)

const (
	// Interval and Timeout are the SDK's usual settings: an idle
	// connection is pinged every Interval and dropped when a ping is not
	// answered within Timeout, so a dead service is noticed before the
	// next handshake needs it.
	Interval = 30 * time.Second
	Timeout  = 10 * time.Second
	// MinInterval is the shortest interval the SDK pings at; a shorter one
	// is raised to it (gRPC raises a client's interval to 10 s as well).
	MinInterval = 10 * time.Second
)

// Client returns the client parameters that ping every interval (at least
// MinInterval), with or without calls in progress.
func Client(interval, timeout time.Duration) keepalive.ClientParameters {
	return keepalive.ClientParameters{Time: max(interval, MinInterval), Timeout: timeout, PermitWithoutStream: true}
}

// Enforcement is the service's policy for clients' pings: it admits those
// of Client at any interval, with or without calls in progress. MinTime is
// half of MinInterval, so that a ping delayed on its way, after which the
// next arrives early, is no strike.
func Enforcement() keepalive.EnforcementPolicy {
	return keepalive.EnforcementPolicy{MinTime: MinInterval / 2, PermitWithoutStream: true}
}
