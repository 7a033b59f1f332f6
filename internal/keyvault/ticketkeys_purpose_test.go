package keyvault

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/testenv"
)

// TestTicketKeyPurposes: ticket keys and step-token keys are one mechanism
// with two purposes. What one purpose seals never opens under the other,
// each rotates and retires on its own schedule, and a reopened vault knows
// each key's purpose.
func TestTicketKeyPurposes(t *testing.T) {
	v, path := newTestVault(t)
	clock := testenv.NewClock(time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC))
	var ticketEvents, tokenEvents []TicketKeyEvent
	tickets := newTicketKeys(t, v, "prod", clock, &ticketEvents)
	tokens, err := NewTicketKeys(v, TicketKeyOptions{
		Purpose: PurposeStepTokens, Deployment: "prod", Rotation: time.Minute, Lifetime: 30 * time.Second, Now: clock.Now,
		OnChange: func(e TicketKeyEvent) { tokenEvents = append(tokenEvents, e) },
	})
	require.NoError(t, err)

	ticket, err := tickets.Seal(ctx, "web", []byte("session state"))
	require.NoError(t, err)
	token, err := tokens.Seal(ctx, "web", []byte("engine state"))
	require.NoError(t, err)
	require.Len(t, v.TicketKeys(), 2, "one key per purpose")
	require.Len(t, tokenEvents, 1)
	assert.Equal(t, PurposeStepTokens, tokenEvents[0].Purpose)
	assert.Equal(t, 1, tokenEvents[0].Accepted, "counts the purpose's keys only")

	_, err = tickets.Open(ctx, "web", token)
	assert.ErrorIs(t, err, ErrTicketRejected, "a step token opened as a ticket")
	_, err = tokens.Open(ctx, "web", ticket)
	assert.ErrorIs(t, err, ErrTicketRejected, "a ticket opened as a step token")

	// The token keys rotate every minute; the ticket key stays.
	ticketKey := v.TicketKeys()[0]
	for range 3 {
		clock.Add(time.Minute)
		_, err = tokens.Seal(ctx, "web", []byte("engine state"))
		require.NoError(t, err)
	}
	require.NoError(t, tokens.Maintain(ctx))
	require.NoError(t, tickets.Maintain(ctx))
	keys := v.TicketKeys()
	assert.Contains(t, keys, ticketKey, "token rotation retired a ticket key")
	assert.Len(t, ticketEvents, 1, "token rotation created or retired a ticket key")
	var tokenKeys int
	for _, k := range keys {
		if k.Purpose == PurposeStepTokens {
			tokenKeys++
		}
	}
	// Accepted for 1m30s from creation: the keys of the last two minutes.
	assert.Equal(t, 2, tokenKeys, "expired token keys must be retired, the others kept")
	_, err = tokens.Open(ctx, "web", token)
	assert.ErrorIs(t, err, ErrTicketRejected, "a token under a retired key")
	got, err := tickets.Open(ctx, "web", ticket)
	require.NoError(t, err, "ticket retired with the token keys")
	assert.Equal(t, []byte("session state"), got)

	// A restart knows each key's purpose.
	token, err = tokens.Seal(ctx, "web", []byte("engine state"))
	require.NoError(t, err)
	v.Close()
	v = openTestVault(t, path, testKEK)
	assert.Len(t, v.TicketKeys(), len(keys))
	tokens, err = NewTicketKeys(v, TicketKeyOptions{Purpose: PurposeStepTokens, Deployment: "prod", Rotation: time.Minute, Lifetime: 30 * time.Second, Now: clock.Now})
	require.NoError(t, err)
	got, err = tokens.Open(ctx, "web", token)
	require.NoError(t, err)
	assert.Equal(t, []byte("engine state"), got)
	_, err = newTicketKeys(t, v, "prod", clock, nil).Open(ctx, "web", token)
	assert.ErrorIs(t, err, ErrTicketRejected)

	_, err = NewTicketKeys(v, TicketKeyOptions{Purpose: "other"})
	assert.ErrorIs(t, err, ErrInvalidArgument)
}

// TestTicketKeysOfAnotherReplica: a ticket or step token sealed under a key
// another replica has just made opens at once: the vault catches up with
// the store before it rejects an unknown key; cut off from the store, it
// says so rather than reject.
func TestTicketKeysOfAnotherReplica(t *testing.T) {
	s := newMemShared()
	a, _ := newSharedVault(t, s)
	b, bc := newSharedVault(t, s)
	clock := testenv.NewClock(time.Now())
	for _, purpose := range []TicketKeyPurpose{PurposeTickets, PurposeStepTokens} {
		opts := TicketKeyOptions{Purpose: purpose, Deployment: "prod", Rotation: testRotation, Lifetime: testLifetime, Now: clock.Now}
		ta, err := NewTicketKeys(a, opts)
		require.NoError(t, err)
		tb, err := NewTicketKeys(b, opts)
		require.NoError(t, err)
		bc.scanDelay.Store(int64(200 * time.Millisecond)) // b follows late
		sealed, err := ta.Seal(ctx, "web", []byte("state"))
		require.NoError(t, err)
		got, err := tb.Open(ctx, "web", sealed)
		require.NoError(t, err, "%v sealed on another replica", purpose)
		assert.Equal(t, []byte("state"), got)
		bc.scanDelay.Store(0)

		bc.setDown(true)
		clock.Add(testRotation) // a new key, on a, which b cannot learn of
		sealed, err = ta.Seal(ctx, "web", []byte("state"))
		require.NoError(t, err)
		_, err = tb.Open(ctx, "web", sealed)
		assert.ErrorIs(t, err, ErrUnavailable, "%v: an unknown key while cut off from the store", purpose)
		bc.setDown(false)
	}
}

// TestPageTokenPurpose: page-token keys are a third purpose: what they seal
// opens under no other purpose, and nothing another purpose sealed opens
// as a page token; a page token larger than MaxPageTokenBytes is refused
// before any key is looked up.
func TestPageTokenPurpose(t *testing.T) {
	v, _ := newTestVault(t)
	keys := map[TicketKeyPurpose]*TicketKeys{}
	sealed := map[TicketKeyPurpose][]byte{}
	for _, p := range []TicketKeyPurpose{PurposeTickets, PurposeStepTokens, PurposePageTokens} {
		tk, err := NewTicketKeys(v, TicketKeyOptions{Purpose: p, Deployment: "prod", Rotation: time.Hour, Lifetime: time.Hour})
		require.NoError(t, err)
		keys[p] = tk
		sealed[p], err = tk.Seal(ctx, "scope", []byte("position"))
		require.NoError(t, err)
	}
	for p, tk := range keys {
		for q, s := range sealed {
			got, err := tk.Open(ctx, "scope", s)
			if p == q {
				require.NoError(t, err)
				assert.Equal(t, []byte("position"), got)
				continue
			}
			assert.ErrorIs(t, err, ErrTicketRejected, "sealed as %v, opened as %v", q, p)
		}
	}
	_, err := keys[PurposePageTokens].Open(ctx, "scope", make([]byte, MaxPageTokenBytes+1))
	assert.ErrorIs(t, err, ErrInvalidArgument)
}

// TestRetiredElsewhereDropsAEAD: a ticket key another replica retired
// leaves this replica's cache of derived AEADs at its next Maintain, so no
// key material of a retired key stays in its memory.
func TestRetiredElsewhereDropsAEAD(t *testing.T) {
	s := newMemShared()
	a, _ := newSharedVault(t, s)
	b, _ := newSharedVault(t, s)
	clock := testenv.NewClock(time.Now())
	opts := TicketKeyOptions{Deployment: "prod", Rotation: testRotation, Lifetime: testLifetime, Now: clock.Now}
	ta, err := NewTicketKeys(a, opts)
	require.NoError(t, err)
	tb, err := NewTicketKeys(b, opts)
	require.NoError(t, err)
	ticket, err := ta.Seal(ctx, "web", []byte("state"))
	require.NoError(t, err)
	_, err = tb.Open(ctx, "web", ticket)
	require.NoError(t, err)
	cached := func() (n int) {
		tb.aeads.Range(func(any, any) bool { n++; return true })
		return n
	}
	require.Equal(t, 1, cached(), "b derived the key's AEAD")

	clock.Add(testRotation + testLifetime + time.Minute)
	require.NoError(t, ta.Maintain(ctx)) // a retires the key
	require.NoError(t, b.Sync(ctx))
	require.NoError(t, tb.Maintain(ctx))
	assert.Zero(t, cached(), "the AEAD of a key retired by another replica stayed")
}
