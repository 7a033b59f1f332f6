package keyvault

import (
	"bytes"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/testenv"
)

const (
	testRotation = time.Hour
	testLifetime = 10 * time.Hour
)

func newTicketKeys(t *testing.T, v *Vault, deployment string, clock *testenv.Clock, events *[]TicketKeyEvent) *TicketKeys {
	t.Helper()
	opts := TicketKeyOptions{Deployment: deployment, Rotation: testRotation, Lifetime: testLifetime, Now: clock.Now}
	if events != nil {
		var mu sync.Mutex
		opts.OnChange = func(e TicketKeyEvent) {
			mu.Lock()
			*events = append(*events, e)
			mu.Unlock()
		}
	}
	tk, err := NewTicketKeys(v, opts)
	require.NoError(t, err)
	return tk
}

// storedTicketKeys returns the sealed ticket key records of the store at path.
func storedTicketKeys(t *testing.T, path string) map[uint32][]byte {
	t.Helper()
	store, err := OpenBolt(path)
	require.NoError(t, err)
	defer store.Close()
	out := map[uint32][]byte{}
	_, err = store.Scan(ctx, func(r Record) error {
		if r.Kind == RecordTicketKey {
			out[r.Version] = r.Sealed
		}
		return nil
	})
	require.NoError(t, err)
	return out
}

func TestTicketKeyCreatedOnFirstUseAndPersisted(t *testing.T) {
	v, path := newTestVault(t)
	clock := testenv.NewClock(time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC))
	tk := newTicketKeys(t, v, "prod", clock, nil)
	require.NoError(t, tk.Maintain(ctx))
	clock.Add(testRotation + testLifetime)
	require.NoError(t, tk.Maintain(ctx))
	require.Empty(t, v.TicketKeys(), "no ticket key before the first ticket, whatever the schedule")

	ticket, err := tk.Seal(ctx, "web", []byte("session state"))
	require.NoError(t, err)
	keys := v.TicketKeys()
	require.Len(t, keys, 1)
	assert.Equal(t, clock.Now(), keys[0].CreateTime)
	assert.Equal(t, clock.Now().Add(testRotation), keys[0].SealUntil)
	assert.Equal(t, clock.Now().Add(testRotation+testLifetime), keys[0].AcceptUntil)
	assert.NotContains(t, string(ticket), "session state", "the ticket holds the plaintext in clear")

	again, err := tk.Seal(ctx, "web", []byte("session state"))
	require.NoError(t, err)
	assert.NotEqual(t, ticket, again, "two tickets of the same state must differ (fresh nonce)")
	assert.Len(t, v.TicketKeys(), 1, "a second ticket must reuse the current key")

	// Another process (a replica, a restart) opens the store and the ticket.
	v.Close()
	require.Len(t, storedTicketKeys(t, path), 1)
	v = openTestVault(t, path, testKEK)
	require.Len(t, v.TicketKeys(), 1)
	got, err := newTicketKeys(t, v, "prod", clock, nil).Open(ctx, "web", ticket)
	require.NoError(t, err)
	assert.Equal(t, []byte("session state"), got)
}

func TestTicketRejected(t *testing.T) {
	v, _ := newTestVault(t)
	clock := testenv.NewClock(time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC))
	tk := newTicketKeys(t, v, "prod", clock, nil)
	ticket, err := tk.Seal(ctx, "web", []byte("session state"))
	require.NoError(t, err)
	got, err := tk.Open(ctx, "web", ticket)
	require.NoError(t, err)
	require.Equal(t, []byte("session state"), got)

	_, err = newTicketKeys(t, v, "staging", clock, nil).Open(ctx, "web", ticket)
	assert.ErrorIs(t, err, ErrTicketRejected, "another deployment's ticket")
	_, err = tk.Open(ctx, "api", ticket)
	assert.ErrorIs(t, err, ErrTicketRejected, "a ticket for another scope")
	for i := range ticket {
		tampered := bytes.Clone(ticket)
		tampered[i] ^= 0x01
		_, err = tk.Open(ctx, "web", tampered)
		assert.ErrorIs(t, err, ErrTicketRejected, "ticket with byte %d flipped", i)
	}
	for _, bad := range [][]byte{nil, {}, ticket[:ticketOverhead-1], ticket[:len(ticket)-1], append(bytes.Clone(ticket), 0)} {
		_, err = tk.Open(ctx, "web", bad)
		assert.ErrorIs(t, err, ErrTicketRejected, "malformed ticket of %d bytes", len(bad))
	}
	_, err = tk.Open(ctx, "web", make([]byte, MaxTicketBytes+1))
	assert.ErrorIs(t, err, ErrInvalidArgument)
	_, err = tk.Seal(ctx, "web", make([]byte, MaxTicketPlaintext+1))
	assert.ErrorIs(t, err, ErrInvalidArgument)
	big, err := tk.Seal(ctx, "web", make([]byte, MaxTicketPlaintext))
	require.NoError(t, err)
	assert.Len(t, big, MaxTicketBytes)
}

// TestTicketKeyRotation follows one key through its life: it seals for the
// rotation period, opens its tickets for their lifetime more, and is then
// retired: its tickets are rejected and its record is erased from the file.
func TestTicketKeyRotation(t *testing.T) {
	v, path := newTestVault(t)
	clock := testenv.NewClock(time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC))
	var events []TicketKeyEvent
	tk := newTicketKeys(t, v, "prod", clock, &events)

	first, err := tk.Seal(ctx, "web", []byte("first"))
	require.NoError(t, err)
	require.Len(t, events, 1)
	assert.False(t, events[0].Retired)
	firstID := events[0].ID

	clock.Add(testRotation - time.Second)
	require.NoError(t, tk.Maintain(ctx))
	require.Len(t, v.TicketKeys(), 1, "rotated before the rotation period ended")

	// Across the rotation boundary: a new key seals, the old one still opens.
	clock.Add(time.Second)
	second, err := tk.Seal(ctx, "web", []byte("second"))
	require.NoError(t, err)
	keys := v.TicketKeys()
	require.Len(t, keys, 2)
	assert.Equal(t, firstID, keys[0].ID)
	require.Len(t, events, 2)
	assert.False(t, events[1].Retired)
	assert.Equal(t, 2, events[1].Accepted)
	assert.NotEqual(t, first[1:5], second[1:5], "the new ticket names the new key")
	got, err := tk.Open(ctx, "web", first)
	require.NoError(t, err, "a ticket of the previous key after rotation")
	assert.Equal(t, []byte("first"), got)

	v.Close()
	sealedFirst := storedTicketKeys(t, path)[firstID]
	require.NotEmpty(t, sealedFirst)
	v = openTestVault(t, path, testKEK)
	tk = newTicketKeys(t, v, "prod", clock, &events)

	// The last ticket the first key sealed lives until its accept time.
	clock.Add(testLifetime - time.Second)
	_, err = tk.Open(ctx, "web", first)
	require.NoError(t, err, "a ticket of the previous key within its lifetime")
	clock.Add(time.Second)
	_, err = tk.Open(ctx, "web", first)
	assert.ErrorIs(t, err, ErrTicketRejected, "a ticket of a key past its acceptance, not yet erased")

	require.NoError(t, tk.Maintain(ctx))
	require.Len(t, events, 4, "Maintain must rotate the due key and retire the old one")
	assert.True(t, events[2].Retired)
	assert.Equal(t, firstID, events[2].ID)
	assert.False(t, events[3].Retired)
	keys = v.TicketKeys()
	require.Len(t, keys, 2)
	assert.NotEqual(t, firstID, keys[0].ID)
	assert.NotEqual(t, firstID, keys[1].ID)
	got, err = tk.Open(ctx, "web", second)
	require.NoError(t, err, "the second key is accepted still")
	assert.Equal(t, []byte("second"), got)

	v.Close()
	assert.NotContains(t, storedTicketKeys(t, path), firstID, "the retired key is still in the store")
	file, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.False(t, bytes.Contains(file, sealedFirst), "the retired key's sealed record is still in the bolt file")

	v = openTestVault(t, path, testKEK)
	_, err = newTicketKeys(t, v, "prod", clock, nil).Open(ctx, "web", first)
	assert.ErrorIs(t, err, ErrTicketRejected, "a ticket of a retired key after a restart")
}

func TestTicketKeyOptions(t *testing.T) {
	v, _ := newTestVault(t)
	for _, opts := range []TicketKeyOptions{
		{Rotation: time.Millisecond},
		{Lifetime: time.Millisecond},
		{Lifetime: DefaultTicketLifetime + time.Second},
	} {
		_, err := NewTicketKeys(v, opts)
		assert.ErrorIs(t, err, ErrInvalidArgument, "%+v", opts)
	}
	tk, err := NewTicketKeys(v, TicketKeyOptions{})
	require.NoError(t, err)
	assert.Equal(t, DefaultTicketLifetime, tk.Lifetime())
}

func TestTicketKeysClosed(t *testing.T) {
	v, _ := newTestVault(t)
	clock := testenv.NewClock(time.Now())
	tk := newTicketKeys(t, v, "prod", clock, nil)
	ticket, err := tk.Seal(ctx, "web", []byte("x"))
	require.NoError(t, err)
	require.NoError(t, v.Close())
	_, err = tk.Seal(ctx, "web", []byte("x"))
	assert.ErrorIs(t, err, ErrClosed)
	_, err = tk.Open(ctx, "web", ticket)
	assert.ErrorIs(t, err, ErrClosed)
	assert.ErrorIs(t, tk.Maintain(ctx), ErrClosed)
}

// TestTicketKeysConcurrent seals and opens from many goroutines across
// rotations: every ticket opens, and one key is created per rotation.
func TestTicketKeysConcurrent(t *testing.T) {
	v, _ := newTestVault(t)
	clock := testenv.NewClock(time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC))
	var events []TicketKeyEvent
	tk := newTicketKeys(t, v, "prod", clock, &events)
	var wg sync.WaitGroup
	for range 3 {
		for g := range 8 {
			wg.Go(func() {
				for range 20 {
					ticket, err := tk.Seal(ctx, "web", []byte{byte(g)})
					if !assert.NoError(t, err) {
						return
					}
					got, err := tk.Open(ctx, "web", ticket)
					assert.NoError(t, err)
					assert.Equal(t, []byte{byte(g)}, got)
				}
			})
		}
		wg.Wait()
		clock.Add(testRotation)
	}
	assert.Len(t, events, 3, "one key per rotation period")
	assert.Len(t, v.TicketKeys(), 3)
}

// FuzzTicketOpen: a ticket is bytes a client sends. Open never panics,
// and whatever it accepts is exactly what Seal sealed for the scope.
func FuzzTicketOpen(f *testing.F) {
	v, _ := newTestVault(f)
	clock := testenv.NewClock(time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC))
	tk, err := NewTicketKeys(v, TicketKeyOptions{Deployment: "fuzz", Rotation: testRotation, Lifetime: testLifetime, Now: clock.Now})
	require.NoError(f, err)
	ticket, err := tk.Seal(ctx, "web", []byte("session state"))
	require.NoError(f, err)
	f.Add(ticket)
	f.Add(ticket[:ticketOverhead])
	f.Add([]byte{ticketFormat, 0, 0, 0, 1})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := tk.Open(ctx, "web", b)
		if err != nil {
			require.ErrorIs(t, err, ErrTicketRejected)
			require.Nil(t, got)
			return
		}
		require.Equal(t, ticket, b, "a ticket Seal did not make opened")
		require.Equal(t, []byte("session state"), got)
	})
}

// An AEAD derived for a key retired meanwhile (an Open that found the key
// just before it was retired) is not kept: the cache holds only keys held.
func TestTicketAEADOfRetiredKeyNotKept(t *testing.T) {
	v, _ := newTestVault(t)
	clock := testenv.NewClock(time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC))
	tk := newTicketKeys(t, v, "prod", clock, nil)
	_, err := tk.Seal(ctx, "scope", []byte("state"))
	require.NoError(t, err)
	v.mu.RLock()
	k := v.tickets[0]
	v.mu.RUnlock()

	clock.Add(testRotation + testLifetime)
	require.NoError(t, tk.Maintain(ctx))
	_, err = tk.aead(k) // the late Open of the retired key
	require.NoError(t, err)

	tk.aeads.Range(func(id, _ any) bool {
		assert.NotEqual(t, k.id, id, "AEAD of the retired key still cached")
		return true
	})
}
