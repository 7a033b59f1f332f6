package keyless

import (
	"context"
	"crypto/tls"
	"time"
)

// Tickets is what SessionTickets needs from the service; *handshaked.Client
// has it.
type Tickets interface {
	SealTicket(ctx context.Context, id string, plaintext []byte) ([]byte, time.Duration, error)
	OpenTicket(ctx context.Context, id string, ticket []byte) ([]byte, bool, error)
}

// SessionTickets lets a fleet of crypto/tls servers resume each other's
// sessions: their session tickets are sealed and opened by the vault, under
// ticket keys it creates, rotates and retires, instead of keys each server
// holds and that must be distributed and rotated together:
//
//	keyless.NewSessionTickets(client, "web-rsa").Configure(cfg)
//
// A ticket resumes on any server configured with the same key id (the
// caller needs the use right on it) and the same handshaked deployment,
// for as long as the vault accepts its ticket key, and on no other.
type SessionTickets struct {
	tickets Tickets
	key     string
	// Timeout bounds each vault call (default 2 s): a ticket that takes
	// longer is given up, at the cost of a full handshake.
	Timeout time.Duration
}

// NewSessionTickets returns session tickets sealed by t and bound to key id.
func NewSessionTickets(t Tickets, id string) *SessionTickets {
	return &SessionTickets{tickets: t, key: id, Timeout: 2 * time.Second}
}

// Configure sets cfg's WrapSession and UnwrapSession (TLS 1.2 and 1.3).
//
// A ticket the vault does not open (retired, another deployment's,
// tampered with) is ignored: the client gets a full handshake, never an
// error. When the vault cannot be reached, a ticket is sealed with cfg's own
// ticket keys (tls.Config.EncryptTicket) rather than failing the
// connection, and such tickets are opened locally: they resume on this
// server only.
func (s *SessionTickets) Configure(cfg *tls.Config) {
	cfg.WrapSession = func(cs tls.ConnectionState, ss *tls.SessionState) ([]byte, error) {
		state, err := ss.Bytes()
		if err != nil {
			return nil, err
		}
		ctx, cancel := context.WithTimeout(context.Background(), s.Timeout)
		defer cancel()
		ticket, _, err := s.tickets.SealTicket(ctx, s.key, state)
		clear(state) // it holds the session's secret
		if err != nil {
			return cfg.EncryptTicket(cs, ss)
		}
		return ticket, nil
	}
	cfg.UnwrapSession = func(identity []byte, cs tls.ConnectionState) (*tls.SessionState, error) {
		ctx, cancel := context.WithTimeout(context.Background(), s.Timeout)
		defer cancel()
		state, accepted, err := s.tickets.OpenTicket(ctx, s.key, identity)
		if err != nil || !accepted {
			// Not the vault's (or it is unreachable): maybe one this
			// server sealed itself; (nil, nil) if not.
			return cfg.DecryptTicket(identity, cs)
		}
		// The parsed state aliases state: it is not cleared.
		ss, err := tls.ParseSessionState(state)
		if err != nil {
			// The vault sealed it, so a server of the fleet made it: one
			// of another version of Go is not resumed.
			return nil, nil
		}
		return ss, nil
	}
}
