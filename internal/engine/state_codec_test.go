package engine

import (
	"context"
	"crypto/tls"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/engine/record"
)

// TestSaveRestore moves the handshake to a new Handshake value after every
// Step (every byte, in byte mode), through MarshalBinary and
// RestoreHandshake, in every kind of handshake.
func TestSaveRestore(t *testing.T) {
	p := getPKI(t)
	tests := []struct {
		name   string
		key    string
		vers   uint16
		suites []uint16
		groups []tls.CurveID // client's; crypto/tls sends a share for the one it prefers
		hrr    []tls.CurveID // server's, to force a HelloRetryRequest
		auth   bool
	}{
		{"TLS13", "p256", tls.VersionTLS13, nil, nil, nil, false},
		{"TLS13 HRR", "rsa", tls.VersionTLS13, nil, []tls.CurveID{tls.CurveP256, tls.CurveP384}, []tls.CurveID{tls.CurveP384}, false},
		{"TLS13 client auth", "ed25519", tls.VersionTLS13, nil, nil, nil, true},
		{"TLS12 ECDHE", "p384", tls.VersionTLS12, nil, []tls.CurveID{tls.CurveP256, tls.CurveP384}, nil, false},
		{"TLS12 RSA", "rsa", tls.VersionTLS12, []uint16{tls.TLS_RSA_WITH_AES_256_GCM_SHA384}, nil, nil, false},
		{"TLS12 client auth", "rsa", tls.VersionTLS12, nil, nil, nil, true},
	}
	for _, tc := range tests {
		for _, mode := range []splitMode{splitRandom, splitBytes} {
			t.Run(fmt.Sprintf("%s/%v", tc.name, mode), func(t *testing.T) {
				t.Parallel()
				cfg := serverConfig(p.key(tc.key))
				cl := clientConfig(p, tc.key+".example.com")
				cl.MaxVersion, cl.CipherSuites, cl.CurvePreferences = tc.vers, tc.suites, tc.groups
				cfg.Groups = tc.hrr
				if tc.auth {
					cfg.ClientAuth, cfg.ClientCAs = ClientAuthRequired, p.clientCA
					cl.Certificates = []tls.Certificate{p.clientCerts["p384"]}
				}
				s := expectSuccess(t, runInterop(t, interopCase{server: cfg, client: cl, mode: mode, hop: true}))
				assert.Equal(t, tc.hrr != nil, s.DidHelloRetryRequest, "session %s", s)
				assert.Equal(t, tc.auth, len(s.PeerCertificates) > 0, "session %s", s)
			})
		}
	}
}

func TestSaveRejects(t *testing.T) {
	p := getPKI(t)
	cfg := serverConfig(p.p256)
	h, _ := NewHandshake(&cfg)
	h.Step(context.Background(), p.keys, []byte("junk!"))
	_, err := h.MarshalBinary()
	assert.Error(t, err, "saved a failed handshake")
	hello := captureClientHello(t, clientConfig(p, "p256.example.com"))
	h, _ = NewHandshake(&cfg)
	h.Step(context.Background(), p.keys, hello)
	saved, err := h.MarshalBinary()
	require.NoError(t, err)
	for i := range saved {
		_, err := RestoreHandshake(&cfg, saved[:i])
		require.Error(t, err, "restored from %d of %d bytes", i, len(saved))
	}
	other := serverConfig(p.p256)
	other.Certificates = nil
	_, err = RestoreHandshake(&other, saved)
	assert.Error(t, err, "restored under an invalid configuration")
}

// FuzzRestoreHandshake checks that damaged saved state is rejected or
// yields a handshake that fails cleanly, never a panic.
func FuzzRestoreHandshake(f *testing.F) {
	p := getPKI(f)
	cfg := serverConfig(p.p256, p.rsa)
	cfg.ClientAuth, cfg.ClientCAs = ClientAuthOptional, p.clientCA
	for _, rec := range seedHellos(f) {
		h, _ := NewHandshake(&cfg)
		h.Step(context.Background(), p.keys, rec[:len(rec)-3])
		saved, _ := h.MarshalBinary()
		f.Add(saved, []byte(nil))
		h.Step(context.Background(), p.keys, rec[len(rec)-3:])
		saved, _ = h.MarshalBinary()
		f.Add(saved, []byte{20, 3, 3, 0, 1, 1, 22, 3, 3, 0, 4, 20, 0, 0, 0})
	}
	// A resumed TLS 1.3 handshake waiting for the client's Finished.
	cfg.Tickets, cfg.NextProtos = newAEADTicketKeys(3), []string{"h2"}
	f.Add(savedResumed(f, &cfg), []byte{20, 3, 3, 0, 1, 1})
	f.Fuzz(func(t *testing.T, saved, in []byte) {
		h, err := RestoreHandshake(&cfg, saved)
		if err != nil {
			return
		}
		_, err = h.MarshalBinary()
		require.NoError(t, err)
		h.Step(context.Background(), p.keys, in)
	})
}

// TestRestoreRefusesOtherCodecVersion checks that a state saved under
// another layout (version 2 numbered the handshake states differently) is
// refused, not misread.
func TestRestoreRefusesOtherCodecVersion(t *testing.T) {
	p := getPKI(t)
	cfg := serverConfig(p.p256)
	h, err := NewHandshake(&cfg)
	require.NoError(t, err)
	res := h.Step(context.Background(), p.keys, captureClientHello(t, clientConfig(p, "p256.example.com")))
	require.Equal(t, NeedInput, res.State, res.Reason)
	saved, err := h.MarshalBinary()
	require.NoError(t, err)
	_, err = RestoreHandshake(&cfg, saved)
	require.NoError(t, err)
	for _, v := range []byte{stateCodecNoRecordLimit - 1, stateCodecVersion + 1} {
		saved[0] = v
		_, err = RestoreHandshake(&cfg, saved)
		assert.ErrorIs(t, err, errBadState, "codec version %d", v)
	}
}

// savedResumed returns the saved state of a TLS 1.3 handshake resumed from
// a ticket, waiting for the client's Finished.
func savedResumed(t testing.TB, cfg *Config) []byte {
	h, err := NewHandshake(cfg)
	require.NoError(t, err)
	hello := resumeHello(hello13(), []byte{pskModeDHEKE}, []offeredTicket{probeTicket(t, cfg, time.Second, nil)}, 1, 32, false)
	res := h.Step(context.Background(), noKeyOps, hello)
	require.Equal(t, NeedInput, res.State, res.Reason)
	require.True(t, h.resumed)
	saved, err := h.MarshalBinary()
	require.NoError(t, err)
	return saved
}

// TestRestoreResumed: a resumed handshake's state survives a save and a
// restore (with the master secret kept for the next ticket); one that
// claims to wait for a client Certificate, which a resumption never asks
// for, is refused.
func TestRestoreResumed(t *testing.T) {
	cfg := probeConfig(t)
	cfg.Tickets = newAEADTicketKeys(3)
	saved := savedResumed(t, &cfg)
	h, err := RestoreHandshake(&cfg, saved)
	require.NoError(t, err)
	assert.True(t, h.resumed)
	assert.Len(t, h.master13, 32)
	saved[1] = byte(state13ClientCertificate)
	_, err = RestoreHandshake(&cfg, saved)
	assert.ErrorIs(t, err, errBadState)
}

// TestRestoreResumedTicketsOff: a handshake saved while tickets were on and
// restored under a configuration without them completes, with no ticket.
func TestRestoreResumedTicketsOff(t *testing.T) {
	cfg := probeConfig(t)
	cfg.Tickets = newAEADTicketKeys(3)
	saved := savedResumed(t, &cfg)
	cfg.Tickets = nil
	h, err := RestoreHandshake(&cfg, saved)
	require.NoError(t, err)
	// The client's Finished, under its handshake traffic secret.
	c, err := record.NewTLS13Cipher(h.suite.ID, h.clientHandshake, 0)
	require.NoError(t, err)
	fin, err := c.Seal(nil, record.Handshake, marshalFinished(finishedVerifyData13(h.suite.Hash, h.clientHandshake, h.transcript.sum())), 0)
	require.NoError(t, err)
	res := h.Step(context.Background(), noKeyOps, fin)
	require.Equal(t, Complete, res.State, res.Reason)
	s, _ := h.Session()
	assert.True(t, s.Resumed)
	assert.Equal(t, uint64(0), s.ServerSeq, "no NewSessionTicket")
	assert.Empty(t, res.Output)
}
