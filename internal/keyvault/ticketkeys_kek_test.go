package keyvault_test

import (
	"bytes"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/etcdtest"
	"github.com/handshaked/handshaked/internal/keyvault"
	"github.com/handshaked/handshaked/internal/keyvault/etcdstore"
)

// TestTokenKeyMadeDuringAKEKRotation: a ticket, step-token or page-token
// key made while a KEK rotation is half done (begun, nothing rewrapped),
// through the replica rotating or another one, is made (its commit does
// not abort: at worst it conflicts, reads the store, and is sealed again
// under the new KEK), the rotation then completes, and a vault opened
// with the new KEK alone opens what the key sealed.
func TestTokenKeyMadeDuringAKEKRotation(t *testing.T) {
	c := etcdtest.Start(t, 1)
	for _, tc := range []struct {
		name  string
		store func(t *testing.T) (a, b keyvault.Store, reopen func() keyvault.Store)
	}{
		{"bolt", func(t *testing.T) (keyvault.Store, keyvault.Store, func() keyvault.Store) {
			path := filepath.Join(t.TempDir(), "vault.db")
			s, err := keyvault.OpenBolt(path)
			require.NoError(t, err)
			return s, nil, func() keyvault.Store {
				s, err := keyvault.OpenBolt(path)
				require.NoError(t, err)
				return s
			}
		}},
		{"etcd", func(t *testing.T) (keyvault.Store, keyvault.Store, func() keyvault.Store) {
			open := func() keyvault.Store {
				s, err := etcdstore.Open(t.Context(), etcdstore.Config{Endpoints: c.Endpoints(), Prefix: "/" + t.Name()})
				require.NoError(t, err)
				return s
			}
			return open(), open(), open
		}},
	} {
		for _, purpose := range []keyvault.TicketKeyPurpose{keyvault.PurposeTickets, keyvault.PurposeStepTokens, keyvault.PurposePageTokens} {
			t.Run(tc.name+"/"+purpose.String(), func(t *testing.T) {
				ctx := t.Context()
				oldKEK, newKEK := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
				as, bs, reopen := tc.store(t)
				a, err := keyvault.New(ctx, as, oldKEK)
				require.NoError(t, err)
				defer a.Close()
				_, err = a.Create(ctx, "web", keyvault.Ed25519, nil)
				require.NoError(t, err)
				sealer := a
				if bs != nil {
					b, err := keyvault.New(ctx, bs, oldKEK)
					require.NoError(t, err)
					defer b.Close()
					sealer = b // another replica, which may not have followed the rotation's beginning yet
				}

				require.NoError(t, keyvault.BeginKEKRotation(ctx, a, newKEK))
				tk, err := keyvault.NewTicketKeys(sealer, keyvault.TicketKeyOptions{Purpose: purpose})
				require.NoError(t, err)
				token, err := tk.Seal(ctx, "scope", []byte("state"))
				require.NoError(t, err, "the first key of the purpose, made during the rotation")
				st, err := a.ResumeKEKRotation(ctx)
				require.NoError(t, err)
				assert.Empty(t, st.Retiring)
				assert.Zero(t, st.Stale)
				require.NoError(t, a.Close())

				v, err := keyvault.Open(ctx, reopen(), newKEK)
				require.NoError(t, err, "the new KEK alone opens the store")
				defer v.Close()
				tk, err = keyvault.NewTicketKeys(v, keyvault.TicketKeyOptions{Purpose: purpose})
				require.NoError(t, err)
				plain, err := tk.Open(ctx, "scope", token)
				require.NoError(t, err)
				assert.Equal(t, "state", string(plain))
			})
		}
	}
}
