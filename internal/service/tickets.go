package service

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/audit"
	"github.com/handshaked/handshaked/internal/engine"
	"github.com/handshaked/handshaked/internal/keyvault"
)

// TicketOptions turn session tickets on: the vault's ticket keys seal the
// tickets of handshakes run by the service (TLS 1.3 and 1.2 resumption) and
// those of servers with their own TLS stack (SealTicket, OpenTicket).
type TicketOptions struct {
	// Deployment names the fleet sharing the tickets: another deployment's
	// tickets never open, even under the same keys (a copy restored from
	// a backup).
	Deployment string
	// Rotation is how long a ticket key seals new tickets, Lifetime how
	// long a ticket lives (defaults: 24 hours and 7 days, the RFC 8446
	// §4.6.1 maximum). A key is erased Rotation+Lifetime after its creation.
	Rotation, Lifetime time.Duration
	// Now is the clock of the ticket key schedule; nil: time.Now.
	Now func() time.Time
}

// ticketMetrics show the ticket keys' rotation and the tickets' use.
type ticketMetrics struct {
	keyChanges *prometheus.CounterVec
	sealed     *prometheus.CounterVec
	opened     *prometheus.CounterVec

	// The counters of handshakes, resolved once rather than by label at
	// every handshake.
	handshakeSealed, handshakeAccepted, handshakeRejected prometheus.Counter
}

func newTicketMetrics(reg prometheus.Registerer, vault *keyvault.Vault) *ticketMetrics {
	m := &ticketMetrics{
		keyChanges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "handshaked_ticket_key_changes_total",
			Help: "Session ticket keys created (change=created: first use and every rotation) and retired (change=retired: erased once no ticket they sealed can be valid).",
		}, []string{"change"}),
		sealed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "handshaked_tickets_sealed_total",
			Help: "Session tickets sealed, by who asked: via=handshake (the engine issuing one) or via=api (SealTicket).",
		}, []string{"via"}),
		opened: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "handshaked_tickets_opened_total",
			Help: "Session tickets presented, by who asked (handshake, api) and outcome: accepted, or rejected (retired or unknown key, other deployment or scope, tampered).",
		}, []string{"via", "outcome"}),
	}
	m.handshakeSealed = m.sealed.WithLabelValues("handshake")
	m.handshakeAccepted = m.opened.WithLabelValues("handshake", openOutcome(nil))
	m.handshakeRejected = m.opened.WithLabelValues("handshake", openOutcome(keyvault.ErrTicketRejected))
	keys := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "handshaked_ticket_keys",
		Help: "Session ticket keys held: the current one and those whose tickets may still be valid.",
	}, func() float64 { return float64(len(sessionTicketKeys(vault))) })
	age := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "handshaked_ticket_key_age_seconds",
		Help: "Age of the newest session ticket key: at most the rotation period plus a minute while rotation works; 0 before the first ticket.",
	}, func() float64 {
		ks := sessionTicketKeys(vault)
		if len(ks) == 0 {
			return 0
		}
		return time.Since(ks[len(ks)-1].CreateTime).Seconds()
	})
	reg.MustRegister(m.keyChanges, m.sealed, m.opened, keys, age)
	return m
}

// sessionTicketKeys lists the vault's session ticket keys, oldest first.
func sessionTicketKeys(vault *keyvault.Vault) []keyvault.TicketKeyInfo {
	return slices.DeleteFunc(vault.TicketKeys(), func(k keyvault.TicketKeyInfo) bool { return k.Purpose != keyvault.PurposeTickets })
}

// newTicketKeys returns the vault's ticket keys for opts, whose changes
// are counted and audited.
func newTicketKeys(vault *keyvault.Vault, opts TicketOptions, m *ticketMetrics, log *audit.Log) (*keyvault.TicketKeys, error) {
	return keyvault.NewTicketKeys(vault, keyvault.TicketKeyOptions{
		Deployment: opts.Deployment, Rotation: opts.Rotation, Lifetime: opts.Lifetime, Now: opts.Now,
		OnChange: func(e keyvault.TicketKeyEvent) {
			m.keyChanges.WithLabelValues(auditKeyChange(e, log)).Inc()
		},
	})
}

// auditKeyChange logs and audits a change of the ticket, step-token or
// page-token keys;
// it returns the change: created or retired.
func auditKeyChange(e keyvault.TicketKeyEvent, log *audit.Log) string {
	change, op := "created", "rotate"
	if e.Retired {
		change, op = "retired", "retire"
	}
	name, kind, ops := "session ticket key", "ticket key", "ticket_keys."
	switch e.Purpose {
	case keyvault.PurposeStepTokens:
		name, kind, ops = "step-token key", "step-token key", "step_token_keys."
	case keyvault.PurposePageTokens:
		name, kind, ops = "page-token key", "page-token key", "page_token_keys."
	}
	op = ops + op
	slog.Info(name+" "+change, strings.NewReplacer(" ", "_", "-", "_").Replace(kind), fmt.Sprintf("%08x", e.ID),
		"seal_until", e.SealUntil, "accept_until", e.AcceptUntil, "keys", e.Accepted)
	if log == nil {
		return change
	}
	entry := &audit.Entry{
		Time: time.Now().UTC(), Operation: op, Outcome: "OK",
		Detail: fmt.Sprintf("%s %08x %s (created %s, seals until %s, accepted until %s); %d %ss held",
			kind, e.ID, change, e.CreateTime.Format(time.RFC3339), e.SealUntil.Format(time.RFC3339), e.AcceptUntil.Format(time.RFC3339), e.Accepted, kind),
	}
	if err := log.Write(entry); err != nil {
		slog.Error("audit entry not written", "err", err, "operation", op)
	}
	return change
}

// ticketMaintenance is how often the ticket keys are checked for rotation
// and retirement. A key past its acceptance is refused at once; its record
// is erased within this period.
const ticketMaintenance = time.Minute

// maintainTickets rotates and retires ticket keys (of either purpose) on
// schedule until ctx ends, so that keys are erased on time even when none
// seals anything.
func maintainTickets(ctx context.Context, tk *keyvault.TicketKeys, every time.Duration) {
	everyTick(ctx, every, func() {
		if err := tk.Maintain(ctx); err != nil && !errors.Is(err, keyvault.ErrClosed) && ctx.Err() == nil {
			slog.ErrorContext(ctx, tk.Purpose().String()+" key rotation failed", "err", err)
		}
	})
}

// handshakeTickets is the engine's TicketKeys for one handshake: the
// vault's ticket keys, scoped to the handshake's configuration, so that a
// ticket resumes only a handshake that names the same keys and client
// authentication. A caller allowed to use other keys cannot resume, and so
// take over, sessions authenticated by keys it may not use.
type handshakeTickets struct {
	keys    *keyvault.TicketKeys
	scope   string
	metrics *ticketMetrics
}

// handshakeScope names what a handshake configuration authenticates with:
// its keys (sorted: their order only ranks them) and its client
// authentication. Every replica must name a configuration alike (the scope
// is bound into each ticket): TestHandshakeScopeIsStable pins the form. It
// is built once per handshake, into one string: strings joined and
// concatenated piece by piece were about 3% of the service's CPU per
// resumed handshake.
func handshakeScope(c *pb.HandshakeConfig) string {
	var one [1]string
	refs := one[:0]
	if len(c.GetKeys()) > 1 {
		refs = make([]string, 0, len(c.GetKeys()))
	}
	n := 0
	for _, k := range c.GetKeys() {
		ref := k.GetKey() + "/" + strconv.FormatUint(uint64(k.GetVersion()), 10)
		refs = append(refs, ref)
		n += len(ref) + 1
	}
	slices.Sort(refs)
	refs = slices.Compact(refs)
	cas := emptyCAsHash
	if pem := c.GetClientCaPem(); pem != "" {
		cas = sha256.Sum256([]byte(pem))
	}
	auth := c.GetClientAuth().String()
	var b strings.Builder
	b.Grow(len("handshake keys=") + n + len(" client_auth=") + len(auth) + len(" client_cas=") + hex.EncodedLen(len(cas)))
	b.WriteString("handshake keys=")
	for i, ref := range refs {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(ref)
	}
	b.WriteString(" client_auth=")
	b.WriteString(auth)
	b.WriteString(" client_cas=")
	var hexCAs [2 * sha256.Size]byte
	hex.Encode(hexCAs[:], cas[:])
	b.Write(hexCAs[:])
	return b.String()
}

// emptyCAsHash is the hash of no client CA bundle, the usual case.
var emptyCAsHash = sha256.Sum256(nil)

func (t handshakeTickets) Seal(ctx context.Context, plaintext []byte) ([]byte, error) {
	ticket, err := t.keys.Seal(ctx, t.scope, plaintext)
	if err == nil {
		t.metrics.handshakeSealed.Inc()
	}
	return ticket, err
}

func (t handshakeTickets) Open(ctx context.Context, ticket []byte) ([]byte, error) {
	plaintext, err := t.keys.Open(ctx, t.scope, ticket)
	if err == nil {
		t.metrics.handshakeAccepted.Inc()
	} else {
		t.metrics.handshakeRejected.Inc()
	}
	return plaintext, err
}

func openOutcome(err error) string {
	if err != nil {
		return "rejected"
	}
	return "accepted"
}

// withTickets sets up cfg to issue and accept tickets as c asks, if the
// service has ticket keys.
func (h *Handshake) withTickets(cfg *engine.Config, c *pb.HandshakeConfig) {
	if h.tickets == nil || c.GetDisableSessionTickets() {
		return
	}
	cfg.Tickets = handshakeTickets{keys: h.tickets, scope: handshakeScope(c), metrics: h.ticketMetrics}
	cfg.TicketLifetime = h.tickets.Lifetime()
	cfg.DisableTLS12Tickets = c.GetDisableTls12SessionTickets()
}

// keyScope is the scope of the tickets SealTicket seals for a key.
func keyScope(id string) string { return "key " + id }

var errNoTickets = errors.New("this service has no session ticket keys (started with session tickets off)")

func (s *KeyVault) SealTicket(ctx context.Context, req *pb.SealTicketRequest) (*pb.SealTicketResponse, error) {
	if s.tickets == nil {
		return nil, toStatus(ctx, fmt.Errorf("%w: %w", errNoTickets, keyvault.ErrFailedPrecondition))
	}
	if len(req.GetPlaintext()) == 0 {
		return nil, invalid("plaintext: empty")
	}
	if _, err := s.vault.ResolveVersion(ctx, req.GetKey(), 0); err != nil {
		return nil, toStatus(ctx, err)
	}
	ticket, err := s.tickets.Seal(ctx, keyScope(req.GetKey()), req.GetPlaintext())
	if err != nil {
		return nil, toStatus(ctx, err)
	}
	s.ticketMetrics.sealed.WithLabelValues("api").Inc()
	return &pb.SealTicketResponse{Ticket: ticket, LifetimeSeconds: uint32(s.tickets.Lifetime() / time.Second)}, nil
}

func (s *KeyVault) OpenTicket(ctx context.Context, req *pb.OpenTicketRequest) (*pb.OpenTicketResponse, error) {
	if s.tickets == nil {
		return nil, toStatus(ctx, fmt.Errorf("%w: %w", errNoTickets, keyvault.ErrFailedPrecondition))
	}
	if _, err := s.vault.ResolveVersion(ctx, req.GetKey(), 0); err != nil {
		return nil, toStatus(ctx, err)
	}
	plaintext, err := s.tickets.Open(ctx, keyScope(req.GetKey()), req.GetTicket())
	if err != nil && !errors.Is(err, keyvault.ErrTicketRejected) {
		return nil, toStatus(ctx, err)
	}
	s.ticketMetrics.opened.WithLabelValues("api", openOutcome(err)).Inc()
	return &pb.OpenTicketResponse{Accepted: err == nil, Plaintext: plaintext}, nil
}
