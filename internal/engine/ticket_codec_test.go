package engine

import (
	"context"
	"crypto/tls"
	"encoding/hex"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func sampleTicketState() *ticketState {
	return &ticketState{
		vers:       tls.VersionTLS13,
		suite:      tls.TLS_AES_128_GCM_SHA256,
		created:    time.UnixMilli(1_780_000_000_123),
		ageAdd:     0xdeadbeef,
		secret:     []byte("0123456789abcdef0123456789abcdef"),
		ems:        true,
		serverName: "p256.example.com",
		alpn:       "h2",
		peerCerts:  [][]byte{[]byte("leaf"), []byte("intermediate")},
	}
}

func TestTicketCodecRoundTrip(t *testing.T) {
	for _, ts := range []*ticketState{
		sampleTicketState(),
		{vers: tls.VersionTLS12, suite: tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, group: tls.X25519, created: time.UnixMilli(0), secret: make([]byte, 48)},
	} {
		got, err := parseTicketState(ts.marshal())
		require.NoError(t, err)
		assert.Equal(t, ts, got)
	}
}

// TestTicketCodecLayout pins the bytes of ticket plaintext codec version 1
// (as its cryptobyte encoder wrote them): replicas of a fleet running other
// builds open each other's tickets, so a change of layout needs a new
// ticketCodecVersion.
func TestTicketCodecLayout(t *testing.T) {
	want, err := hex.DecodeString("010304130100000000019e7044887bdeadbeef01" +
		"203031323334353637383961626364656630313233343536373839616263646566" + // secret
		"0010703235362e6578616d706c652e636f6d" + "026832" + // server_name, alpn
		"000016" + "0000046c656166" + "00000c696e7465726d656469617465") // peer_certs
	require.NoError(t, err)
	assert.Equal(t, want, sampleTicketState().marshal())
}

func TestTicketCodecRejects(t *testing.T) {
	enc := sampleTicketState().marshal()
	for i := range enc {
		_, err := parseTicketState(enc[:i])
		assert.ErrorIs(t, err, errBadTicket, "truncated to %d bytes", i)
	}
	_, err := parseTicketState(append(enc, 0))
	assert.ErrorIs(t, err, errBadTicket, "trailing byte")
	other := append([]byte(nil), enc...)
	other[0] = ticketCodecVersion + 1
	_, err = parseTicketState(other)
	assert.ErrorIs(t, err, errBadTicket, "other codec version")
	noSecret := *sampleTicketState()
	noSecret.secret = nil
	_, err = parseTicketState(noSecret.marshal())
	assert.ErrorIs(t, err, errBadTicket, "empty secret")
}

// TestOpenTicket checks the checks every version shares: Config.Tickets
// must open it, it must decode and be within its lifetime.
func TestOpenTicket(t *testing.T) {
	p := getPKI(t)
	keys := newAEADTicketKeys(1)
	now := time.Now()
	cfg := serverConfig(p.p256)
	cfg.Tickets = keys
	cfg.TicketLifetime = time.Hour
	cfg.Time = func() time.Time { return now }
	h, err := NewHandshake(&cfg)
	require.NoError(t, err)
	h.ctx = context.Background()

	seal := func(created time.Time) []byte {
		ts := sampleTicketState()
		ts.created = created
		ticket, err := h.sealTicket(ts)
		require.NoError(t, err)
		return ticket
	}
	good := seal(now.Add(-59 * time.Minute))
	got, why, ok := h.openTicket(good)
	require.True(t, ok, why)
	assert.Equal(t, "p256.example.com", got.serverName)

	tampered := append([]byte(nil), good...)
	tampered[len(tampered)-1] ^= 1
	for name, tc := range map[string]struct {
		ticket []byte
		why    string
	}{
		"tampered":    {tampered, "ticket does not open"},
		"foreign":     {func() []byte { b, _ := newAEADTicketKeys(1).Seal(h.ctx, sampleTicketState().marshal()); return b }(), "ticket does not open"},
		"expired":     {seal(now.Add(-time.Hour)), "ticket expired"},
		"future":      {seal(now.Add(2 * maxTicketClockSkew)), "ticket expired"},
		"not a codec": {func() []byte { b, _ := keys.Seal(h.ctx, []byte{ticketCodecVersion}); return b }(), "ticket does not decode"},
	} {
		_, why, ok := h.openTicket(tc.ticket)
		assert.False(t, ok, name)
		assert.Equal(t, tc.why, why, name)
	}

	cfg.Tickets = nil
	_, why, ok = h.openTicket(good)
	assert.False(t, ok)
	assert.Equal(t, "tickets disabled", why)
	_, err = h.sealTicket(sampleTicketState())
	assert.ErrorIs(t, err, errNoTicketKeys, "sealing without TicketKeys")
}

func TestTicketLifetimeConfig(t *testing.T) {
	p := getPKI(t)
	for _, d := range []time.Duration{-time.Second, maxTicketLifetime + time.Second} {
		cfg := serverConfig(p.p256)
		cfg.TicketLifetime = d
		_, err := NewHandshake(&cfg)
		assert.Error(t, err, "lifetime %v", d)
	}
	cfg := serverConfig(p.p256)
	assert.Equal(t, maxTicketLifetime, cfg.ticketLifetime(), "default")
}

func FuzzTicketCodec(f *testing.F) {
	f.Add(sampleTicketState().marshal())
	f.Add((&ticketState{vers: tls.VersionTLS12, secret: make([]byte, 48)}).marshal())
	f.Fuzz(func(t *testing.T, data []byte) {
		ts, err := parseTicketState(data)
		if err != nil {
			return
		}
		again, err := parseTicketState(ts.marshal())
		require.NoError(t, err, "re-encoded ticket state rejected")
		require.Equal(t, ts, again, "round trip")
	})
}
