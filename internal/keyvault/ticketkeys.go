package keyvault

import (
	"context"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"golang.org/x/crypto/chacha20poly1305"
)

// Session ticket keys seal the session state a TLS server hands its clients
// as tickets (RFC 5077, RFC 8446 §4.6.1), so that any server of a fleet can
// resume any session: every server asks the vault, which holds the keys and
// rotates them, instead of each server keeping keys of its own that must be
// distributed and rotated together.
//
// A ticket key is a record of kind RecordTicketKey, sealed under the KEK
// like every other record. It is created on first use, seals new tickets for
// Rotation, is accepted for Lifetime more (the longest a ticket it sealed
// may live), and is then retired: erased from the store and from memory.
// Its secret never leaves the vault; callers get tickets and plaintexts.
//
// The same mechanism serves two more purposes: step-token keys seal the
// engine state of stateless handshakes between two steps (PurposeStepTokens),
// so that any replica continues any handshake, and page-token keys seal
// listing positions (PurposePageTokens), so that any replica serves the
// next page. Each purpose has its own
// keys, rotation and lifetime, and derives its AEAD keys under its own
// label: a ticket never opens as a step token nor the reverse. Neither kind
// is revocable by the API (a key version's disable or destroy does not
// touch them); they are retired by their schedule only.

// TicketKeyPurpose says what a ticket key seals.
type TicketKeyPurpose string

const (
	// PurposeTickets: session tickets (the default).
	PurposeTickets TicketKeyPurpose = ""
	// PurposeStepTokens: the state tokens of stateless handshake steps.
	PurposeStepTokens TicketKeyPurpose = "step-token"
	// PurposePageTokens: the page tokens of listings.
	PurposePageTokens TicketKeyPurpose = "page-token"
)

// known reports whether p is one of the purposes above.
func (p TicketKeyPurpose) known() bool {
	return p == PurposeTickets || p == PurposeStepTokens || p == PurposePageTokens
}

// label is the HKDF label of the purpose's AEAD keys. The tickets' one is
// what it was before there were purposes, so tickets stay valid.
func (p TicketKeyPurpose) label() string {
	if p == PurposeTickets {
		return "handshaked ticket key v1 deployment "
	}
	return "handshaked " + string(p) + " key v1 deployment "
}

// maxBytes is the largest ticket of the purpose, sealed.
func (p TicketKeyPurpose) maxBytes() int {
	switch p {
	case PurposeTickets:
		return MaxTicketBytes
	case PurposePageTokens:
		return MaxPageTokenBytes
	}
	return MaxStepTokenBytes
}

func (p TicketKeyPurpose) String() string {
	if p == PurposeTickets {
		return "ticket"
	}
	return string(p)
}

const (
	// DefaultTicketRotation is how long a ticket key seals new tickets.
	DefaultTicketRotation = 24 * time.Hour
	// DefaultTicketLifetime is the longest a ticket lives, what RFC 8446
	// §4.6.1 allows at most: 7 days.
	DefaultTicketLifetime = 7 * 24 * time.Hour

	// MaxTicketBytes is the largest ticket: a TLS ticket is an opaque
	// <1..2^16-1> (RFC 8446 §4.6.1, RFC 5077 §3.3).
	MaxTicketBytes = 1<<16 - 1
	// MaxTicketPlaintext is the largest plaintext that seals into a ticket.
	MaxTicketPlaintext = MaxTicketBytes - ticketOverhead
	// MaxStepTokenBytes is the largest step token: a handshake's engine
	// state holds all the client input it buffers (512 KiB at most in the
	// service) and its configuration.
	MaxStepTokenBytes = 2 << 20
	// MaxPageTokenBytes is the largest page token: a listing position is
	// a key id, 63 bytes at most.
	MaxPageTokenBytes = 192

	ticketFormat    = 1
	ticketHeaderLen = 1 + 4 // format, key id
	ticketOverhead  = ticketHeaderLen + chacha20poly1305.NonceSizeX + chacha20poly1305.Overhead
	ticketSecretLen = 32
)

// ErrTicketRejected is returned by TicketKeys.Open for a ticket it does not
// open: sealed under a retired or unknown key, for another deployment or
// scope, tampered with or not a ticket at all. The error says no more: a
// server answers every such ticket with a full handshake.
var ErrTicketRejected = errors.New("ticket not accepted")

// ticketKey is one ticket key in memory. Its fields never change.
type ticketKey struct {
	id          uint32
	purpose     TicketKeyPurpose
	secret      []byte
	createTime  time.Time
	sealUntil   time.Time // seals new tickets until then
	acceptUntil time.Time // opens tickets until then, and is erased after
}

// ticketKeyRecord is the plaintext of a RecordTicketKey. The schedule is
// stored with the key, so that a later change of the configured schedule
// never shortens the life of tickets already issued.
type ticketKeyRecord struct {
	// Purpose is empty for ticket keys, as records made before there
	// were purposes are.
	Purpose     TicketKeyPurpose `json:"purpose,omitempty"`
	Secret      []byte           `json:"secret"`
	CreateTime  time.Time        `json:"create_time"`
	SealUntil   time.Time        `json:"seal_until"`
	AcceptUntil time.Time        `json:"accept_until"`
}

func ticketKeyRef(id uint32) RecordRef { return RecordRef{Kind: RecordTicketKey, Version: id} }

// openTicketKey opens a ticket key record at load.
func openTicketKey(s sealer, r Record) (*ticketKey, error) {
	var tr ticketKeyRecord
	if err := s.openJSON(r, &tr); err != nil {
		return nil, err
	}
	if r.ID != "" || r.Version == 0 || len(tr.Secret) != ticketSecretLen || !tr.Purpose.known() ||
		tr.SealUntil.Before(tr.CreateTime) || tr.AcceptUntil.Before(tr.SealUntil) {
		return nil, fmt.Errorf("keyvault: %v: %w", r.RecordRef, ErrCorrupted)
	}
	return &ticketKey{id: r.Version, purpose: tr.Purpose, secret: tr.Secret, createTime: tr.CreateTime, sealUntil: tr.SealUntil, acceptUntil: tr.AcceptUntil}, nil
}

// TicketKeyOptions configure TicketKeys.
type TicketKeyOptions struct {
	// Purpose selects the keys: session tickets (the default) or step
	// tokens. The keys of one purpose never open what another sealed.
	Purpose TicketKeyPurpose
	// Deployment names the fleet: tickets of one deployment never open in
	// another, even one restored from the same backup and so holding the
	// same keys (a staging copy of production).
	Deployment string
	// Rotation is how long a key seals new tickets (default
	// DefaultTicketRotation); Lifetime how long a ticket lives (default
	// DefaultTicketLifetime, at most 7 days per RFC 8446 §4.6.1). A key is
	// accepted for Rotation+Lifetime from its creation.
	Rotation, Lifetime time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// OnChange is called, once the store has the change, for every key
	// created or retired: for metrics and the audit log.
	OnChange func(TicketKeyEvent)
}

// TicketKeyEvent is a change of the ticket keys. It holds no secret.
type TicketKeyEvent struct {
	Retired     bool // false: created
	Purpose     TicketKeyPurpose
	ID          uint32
	CreateTime  time.Time
	SealUntil   time.Time
	AcceptUntil time.Time
	Accepted    int // keys of the purpose accepted after the change
}

// TicketKeys seals and opens session tickets with the vault's ticket keys.
// It is safe for concurrent use; a vault has one.
type TicketKeys struct {
	v    *Vault
	opts TicketKeyOptions

	// aeads caches each key's AEAD for this deployment (uint32 →
	// cipher.AEAD), derived once per key.
	aeads sync.Map
}

// NewTicketKeys returns the ticket keys of v, for opts.Deployment.
func NewTicketKeys(v *Vault, opts TicketKeyOptions) (*TicketKeys, error) {
	if opts.Rotation == 0 {
		opts.Rotation = DefaultTicketRotation
	}
	if opts.Lifetime == 0 {
		opts.Lifetime = DefaultTicketLifetime
	}
	if opts.Rotation < time.Second || opts.Lifetime < time.Second || opts.Lifetime > DefaultTicketLifetime {
		return nil, fmt.Errorf("keyvault: %v keys: rotation must be at least 1s and lifetime 1s to 7 days: %w", opts.Purpose, ErrInvalidArgument)
	}
	if !opts.Purpose.known() {
		return nil, fmt.Errorf("keyvault: unknown ticket key purpose %q: %w", opts.Purpose, ErrInvalidArgument)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &TicketKeys{v: v, opts: opts}, nil
}

// Purpose is what t's keys seal.
func (t *TicketKeys) Purpose() TicketKeyPurpose { return t.opts.Purpose }

// Lifetime is how long the tickets sealed now may live.
func (t *TicketKeys) Lifetime() time.Duration { return t.opts.Lifetime }

// Seal seals plaintext into a ticket under the current ticket key, creating
// or rotating the key first if it is due. scope binds the ticket to what may
// open it (the key or configuration it was issued for): Open with another
// scope rejects it.
func (t *TicketKeys) Seal(ctx context.Context, scope string, plaintext []byte) ([]byte, error) {
	if limit := t.opts.Purpose.maxBytes() - ticketOverhead; len(plaintext) > limit {
		return nil, fmt.Errorf("keyvault: %v plaintext of %d bytes, more than %d: %w", t.opts.Purpose, len(plaintext), limit, ErrInvalidArgument)
	}
	now := t.opts.Now()
	k, err := t.current(now)
	if err != nil {
		return nil, err
	}
	if k == nil {
		if k, err = t.rotate(ctx, now); err != nil {
			return nil, err
		}
	}
	aead, err := t.aead(k)
	if err != nil {
		return nil, err
	}
	out := make([]byte, ticketHeaderLen+aead.NonceSize(), ticketHeaderLen+aead.NonceSize()+len(plaintext)+aead.Overhead())
	out[0] = ticketFormat
	binary.BigEndian.PutUint32(out[1:ticketHeaderLen], k.id)
	rand.Read(out[ticketHeaderLen:])
	return aead.Seal(out, out[ticketHeaderLen:], plaintext, ticketAD(out[:ticketHeaderLen], scope)), nil
}

// Open returns the plaintext of a ticket Seal made for scope, under a key
// still accepted; any other ticket fails with ErrTicketRejected. A ticket
// under a key the vault does not know makes it catch up with a shared
// store first (Vault.Sync), so that a key another replica just made is
// found; if the store cannot be reached, that is the error.
func (t *TicketKeys) Open(ctx context.Context, scope string, ticket []byte) ([]byte, error) {
	if limit := t.opts.Purpose.maxBytes(); len(ticket) > limit {
		return nil, fmt.Errorf("keyvault: %v of %d bytes, more than %d: %w", t.opts.Purpose, len(ticket), limit, ErrInvalidArgument)
	}
	if len(ticket) < ticketOverhead || ticket[0] != ticketFormat {
		return nil, ErrTicketRejected
	}
	id := binary.BigEndian.Uint32(ticket[1:ticketHeaderLen])
	now := t.opts.Now()
	k, closed := t.lookup(id)
	if k == nil && !closed {
		// Maybe a key another replica made that this one's view has not
		// applied yet: catch up once, then look again. A store that cannot
		// say (etcd without quorum) is the error, not the ticket.
		if err := t.v.Sync(ctx); err != nil {
			return nil, err
		}
		k, closed = t.lookup(id)
	}
	switch {
	case closed:
		return nil, ErrClosed
	case k == nil || !now.Before(k.acceptUntil) || now.Before(k.createTime):
		return nil, ErrTicketRejected
	}
	aead, err := t.aead(k)
	if err != nil {
		return nil, err
	}
	nonce := ticket[ticketHeaderLen : ticketHeaderLen+aead.NonceSize()]
	plaintext, err := aead.Open(nil, nonce, ticket[ticketHeaderLen+aead.NonceSize():], ticketAD(ticket[:ticketHeaderLen], scope))
	if err != nil {
		return nil, ErrTicketRejected
	}
	return plaintext, nil
}

// lookup returns the purpose's key id (nil if none), and whether the vault
// is closed.
func (t *TicketKeys) lookup(id uint32) (*ticketKey, bool) {
	t.v.mu.RLock()
	defer t.v.mu.RUnlock()
	i := slices.IndexFunc(t.v.tickets, func(k *ticketKey) bool { return k.id == id && k.purpose == t.opts.Purpose })
	if i < 0 {
		return nil, t.v.closed
	}
	return t.v.tickets[i], t.v.closed
}

// ticketAD is the associated data of a ticket: its header and its scope.
func ticketAD(header []byte, scope string) []byte {
	ad := make([]byte, 0, len(header)+2+len(scope))
	ad = append(ad, header...)
	ad = binary.BigEndian.AppendUint16(ad, uint16(min(len(scope), 0xffff)))
	return append(ad, scope...)
}

// aead returns k's AEAD for this deployment: XChaCha20-Poly1305 under a key
// derived from k's secret and the deployment. Its 192-bit random nonces
// never collide in any number of tickets, as 96-bit ones would in the
// billions a busy fleet seals under one key.
func (t *TicketKeys) aead(k *ticketKey) (cipher.AEAD, error) {
	if a, ok := t.aeads.Load(k.id); ok {
		return a.(cipher.AEAD), nil
	}
	key, err := hkdf.Key(sha256.New, k.secret, nil, k.purpose.label()+t.opts.Deployment, chacha20poly1305.KeySize)
	if err != nil {
		return nil, fmt.Errorf("keyvault: derive ticket key: %w", err)
	}
	a, err := chacha20poly1305.NewX(key)
	clear(key)
	if err != nil {
		return nil, fmt.Errorf("keyvault: ticket key: %w", err)
	}
	actual, loaded := t.aeads.LoadOrStore(k.id, a)
	if !loaded && !t.held(k) {
		// publish retired k between the caller finding it and this store:
		// its Delete ran first, so drop the entry here or it stays for good.
		t.aeads.CompareAndDelete(k.id, a)
	}
	return actual.(cipher.AEAD), nil
}

// held reports whether k is still one of the vault's ticket keys.
func (t *TicketKeys) held(k *ticketKey) bool {
	t.v.mu.RLock()
	defer t.v.mu.RUnlock()
	return slices.Contains(t.v.tickets, k)
}

// current returns the key of the purpose that seals at now; nil if none
// does (none yet, or the newest one is due for rotation).
func (t *TicketKeys) current(now time.Time) (*ticketKey, error) {
	t.v.mu.RLock()
	defer t.v.mu.RUnlock()
	if t.v.closed {
		return nil, ErrClosed
	}
	// The vault keeps its keys oldest first: the purpose's newest decides.
	for _, k := range slices.Backward(t.v.tickets) {
		if t.mine(k) {
			if now.Before(k.sealUntil) && !now.Before(k.createTime) {
				return k, nil
			}
			break
		}
	}
	return nil, nil
}

// mine reports whether k is a key of t's purpose.
func (t *TicketKeys) mine(k *ticketKey) bool { return k.purpose == t.opts.Purpose }

// Maintain rotates the key if it is due and retires the keys no ticket can
// need any more. The vault does both on Seal; a server calls Maintain on a
// schedule too, so that keys rotate and are retired on time when nothing is
// sealed. It never creates the first key: that is made on first use.
func (t *TicketKeys) Maintain(ctx context.Context) error {
	t.dropRetiredAEADs()
	now := t.opts.Now()
	k, err := t.current(now)
	switch {
	case err != nil:
		return err
	case k != nil:
		return t.retire(ctx, now)
	case !slices.ContainsFunc(t.v.TicketKeys(), func(k TicketKeyInfo) bool { return k.Purpose == t.opts.Purpose }):
		return nil
	}
	_, err = t.rotate(ctx, now)
	return err
}

// dropRetiredAEADs drops the cached AEAD of every key no longer held: a key
// another replica retired leaves this replica's view (adopt clears its
// secret) without passing through publish, which drops the AEADs of the
// keys this replica retires.
func (t *TicketKeys) dropRetiredAEADs() {
	t.v.mu.RLock()
	held := make(map[uint32]bool, len(t.v.tickets))
	for _, k := range t.v.tickets {
		held[k.id] = true
	}
	t.v.mu.RUnlock()
	t.aeads.Range(func(id, _ any) bool {
		if !held[id.(uint32)] {
			t.aeads.Delete(id) // one made since the snapshot is derived again
		}
		return true
	})
}

// rotate creates a new current key, unless another call did meanwhile,
// and retires the expired ones in the same write.
func (t *TicketKeys) rotate(ctx context.Context, now time.Time) (k *ticketKey, err error) {
	t.v.writeMu.Lock()
	defer t.v.writeMu.Unlock()
	err = t.v.retry(ctx, "rotate the ticket keys", func() (err error) {
		k, err = t.rotateOnce(ctx, now)
		return err
	})
	return k, err
}

// rotateOnce is one attempt of rotate. The caller holds writeMu.
func (t *TicketKeys) rotateOnce(ctx context.Context, now time.Time) (*ticketKey, error) {
	if k, err := t.current(now); k != nil || err != nil {
		return k, err
	}
	k := &ticketKey{
		purpose:     t.opts.Purpose,
		secret:      make([]byte, ticketSecretLen),
		createTime:  now.UTC(),
		sealUntil:   now.UTC().Add(t.opts.Rotation),
		acceptUntil: now.UTC().Add(t.opts.Rotation + t.opts.Lifetime),
	}
	rand.Read(k.secret)
	t.v.mu.RLock()
	for k.id == 0 || slices.ContainsFunc(t.v.tickets, func(o *ticketKey) bool { return o.id == k.id }) {
		var b [4]byte
		rand.Read(b[:])
		k.id = binary.BigEndian.Uint32(b[:])
	}
	t.v.mu.RUnlock()
	rec, err := t.v.sealer.sealJSON(ticketKeyRef(k.id), ticketKeyRecord{
		Purpose: k.purpose, Secret: k.secret, CreateTime: k.createTime, SealUntil: k.sealUntil, AcceptUntil: k.acceptUntil,
	})
	if err != nil {
		return nil, err
	}
	retired, w := t.expired(now)
	w.Create = []Record{rec}
	if err := t.v.commit(ctx, w); err != nil {
		return nil, fmt.Errorf("keyvault: store %v: %w", rec.RecordRef, err)
	}
	t.notify(retired, k, t.publish(retired, k))
	return k, nil
}

// retire erases the keys past their acceptance.
func (t *TicketKeys) retire(ctx context.Context, now time.Time) error {
	t.v.writeMu.Lock()
	defer t.v.writeMu.Unlock()
	return t.v.retry(ctx, "retire ticket keys", func() error { return t.retireOnce(ctx, now) })
}

// retireOnce is one attempt of retire. The caller holds writeMu.
func (t *TicketKeys) retireOnce(ctx context.Context, now time.Time) error {
	retired, w := t.expired(now)
	if len(retired) == 0 {
		return nil
	}
	if err := t.v.commit(ctx, w); err != nil {
		return fmt.Errorf("keyvault: erase retired %v keys: %w", t.opts.Purpose, err)
	}
	t.notify(retired, nil, t.publish(retired, nil))
	return nil
}

// expired returns the keys of the purpose past their acceptance at now and
// the write that erases them. The caller holds writeMu.
func (t *TicketKeys) expired(now time.Time) ([]*ticketKey, Write) {
	t.v.mu.RLock()
	defer t.v.mu.RUnlock()
	var retired []*ticketKey
	var w Write
	for _, k := range t.v.tickets {
		if t.mine(k) && !now.Before(k.acceptUntil) {
			retired = append(retired, k)
			w.Erase = append(w.Erase, ticketKeyRef(k.id))
		}
	}
	return retired, w
}

// publish drops retired from memory and adds k (if not nil) as the newest
// key; it returns how many keys of the purpose are left. The caller holds
// writeMu and has committed the change.
func (t *TicketKeys) publish(retired []*ticketKey, k *ticketKey) int {
	t.v.mu.Lock()
	defer t.v.mu.Unlock()
	t.v.tickets = slices.DeleteFunc(slices.Clone(t.v.tickets), func(o *ticketKey) bool { return slices.Contains(retired, o) })
	if k != nil {
		t.v.tickets = append(t.v.tickets, k)
	}
	for _, o := range retired {
		t.aeads.Delete(o.id)
		// Tickets in flight may still hold o; its secret is cleared, not
		// its AEAD, which they hold: they finish, and none starts with it.
		clear(o.secret)
	}
	n := 0
	for _, o := range t.v.tickets {
		if t.mine(o) {
			n++
		}
	}
	return n
}

// notify reports the keys retired and the one created (if not nil).
func (t *TicketKeys) notify(retired []*ticketKey, created *ticketKey, accepted int) {
	if t.opts.OnChange == nil {
		return
	}
	event := func(k *ticketKey, retired bool) TicketKeyEvent {
		return TicketKeyEvent{
			Retired: retired, Purpose: k.purpose, ID: k.id, CreateTime: k.createTime,
			SealUntil: k.sealUntil, AcceptUntil: k.acceptUntil, Accepted: accepted,
		}
	}
	for _, k := range retired {
		t.opts.OnChange(event(k, true))
	}
	if created != nil {
		t.opts.OnChange(event(created, false))
	}
}

// TicketKeyInfo describes a ticket key, without its secret.
type TicketKeyInfo struct {
	Purpose     TicketKeyPurpose
	ID          uint32
	CreateTime  time.Time
	SealUntil   time.Time
	AcceptUntil time.Time
}

// TicketKeys lists the ticket keys held, of every purpose, oldest first.
func (v *Vault) TicketKeys() []TicketKeyInfo {
	v.mu.RLock()
	defer v.mu.RUnlock()
	out := make([]TicketKeyInfo, 0, len(v.tickets))
	for _, k := range v.tickets {
		out = append(out, TicketKeyInfo{Purpose: k.purpose, ID: k.id, CreateTime: k.createTime, SealUntil: k.sealUntil, AcceptUntil: k.acceptUntil})
	}
	return out
}
