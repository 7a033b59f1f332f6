package engine

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// TicketKeys protects session tickets: the engine encodes what a resumption
// needs (see ticket_codec.go) and has TicketKeys seal it into the opaque
// ticket the client stores. The key vault implements it; the engine never
// sees ticket keys.
type TicketKeys interface {
	// Seal encrypts and authenticates plaintext into a ticket.
	Seal(ctx context.Context, plaintext []byte) ([]byte, error)
	// Open returns the plaintext of a ticket Seal produced. It fails for a
	// ticket that is unknown, under a retired key, tampered with or from
	// another deployment; the engine then does a full handshake (a bad
	// ticket is never a handshake error, RFC 5077, Section 3.4 and RFC
	// 8446, Section 4.2.11).
	Open(ctx context.Context, ticket []byte) ([]byte, error)
}

// maxTicketLifetime is the longest a ticket may be used: RFC 8446, Section
// 4.6.1, "Servers MUST NOT use any value greater than 604800 seconds (7
// days)". TLS 1.2 tickets get the same bound.
const maxTicketLifetime = 7 * 24 * time.Hour

// maxTicketClockSkew is how far in the future a ticket's creation time may
// be before it is refused: replicas' clocks differ a little.
const maxTicketClockSkew = time.Minute

func (c *Config) ticketLifetime() time.Duration {
	if c.TicketLifetime != 0 {
		return c.TicketLifetime
	}
	return maxTicketLifetime
}

func (c *Config) checkTickets() error {
	if c.TicketLifetime < 0 || c.TicketLifetime > maxTicketLifetime {
		return fmt.Errorf("engine: ticket lifetime %v outside (0, %v]", c.TicketLifetime, maxTicketLifetime)
	}
	return nil
}

// maxTicketLen is the longest ticket a NewSessionTicket of either version
// carries: opaque ticket<1..2^16-1> (RFC 8446, Section 4.6.1; RFC 5077,
// Section 3.3).
const maxTicketLen = 1<<16 - 1

var (
	errTicketTooLong = errors.New("engine: sealed ticket longer than 2^16-1 bytes")
	errNoTicketKeys  = errors.New("engine: no TicketKeys configured")
)

// sealTicket encodes t and seals it under Config.Tickets. Callers issue no
// ticket when it fails: the handshake itself does not depend on it.
func (h *Handshake) sealTicket(t *ticketState) ([]byte, error) {
	if h.cfg.Tickets == nil {
		// A handshake saved with tickets on, restored under a
		// configuration without them.
		return nil, errNoTicketKeys
	}
	plaintext := t.marshal()
	defer clear(plaintext) // it holds the resumption secret
	ticket, err := h.cfg.Tickets.Seal(h.ctx, plaintext)
	if err != nil {
		return nil, fmt.Errorf("engine: sealing session ticket: %w", err)
	}
	if len(ticket) > maxTicketLen {
		return nil, errTicketTooLong
	}
	return ticket, nil
}

// openTicket returns the state in a ticket if it opens under Config.Tickets,
// decodes and is within the ticket lifetime; otherwise ok is false and why
// says, without secrets, for the trace. The caller checks that the state
// fits the new handshake (version, suite, SNI, ALPN...).
func (h *Handshake) openTicket(ticket []byte) (t *ticketState, why string, ok bool) {
	if h.cfg.Tickets == nil {
		return nil, "tickets disabled", false
	}
	plaintext, err := h.cfg.Tickets.Open(h.ctx, ticket)
	if err != nil {
		return nil, "ticket does not open", false
	}
	t, err = parseTicketState(plaintext)
	clear(plaintext)
	if err != nil {
		return nil, "ticket does not decode", false
	}
	age := h.cfg.now().Sub(t.created)
	if age < -maxTicketClockSkew || age >= h.cfg.ticketLifetime() {
		t.wipe()
		return nil, "ticket expired", false
	}
	return t, "", true
}
