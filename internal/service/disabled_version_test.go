package service_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
)

// TestDisabledVersionRefused: a disabled version does no private-key work
// through any RPC (Sign, Decrypt in both modes, StartHandshake), by number
// or as the primary (version 0), and works again once enabled.
func TestDisabledVersionRefused(t *testing.T) {
	s := startServer(t)
	k := newServerKey(t, s, "rsa2048-pkcs1.pem", "disabled.test")
	ctx := context.Background()
	pubResp, err := s.kv.GetPublicKey(ctx, &pb.GetPublicKeyRequest{Key: k.id})
	require.NoError(t, err)
	block, _ := pem.Decode([]byte(pubResp.GetPem()))
	require.NotNil(t, block)
	parsed, err := x509.ParsePKIXPublicKey(block.Bytes)
	require.NoError(t, err)
	pub := parsed.(*rsa.PublicKey)
	premaster := make([]byte, 48)
	premaster[0], premaster[1] = 3, 3
	pkcs1, err := rsa.EncryptPKCS1v15(rand.Reader, pub, premaster)
	require.NoError(t, err)
	oaep, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, pub, []byte("data key"), nil)
	require.NoError(t, err)
	hc := s.handshakeClient(t)

	calls := func(version uint32) map[string]func() error {
		return map[string]func() error{
			"Sign": func() error {
				_, err := s.kv.Sign(ctx, &pb.SignRequest{Key: k.id, Version: version, Scheme: pb.SignatureScheme_SIGNATURE_SCHEME_RSA_PSS_RSAE_SHA256,
					Input: &pb.SignRequest_Message{Message: []byte("m")}})
				return err
			},
			"Decrypt premaster": func() error {
				_, err := s.kv.Decrypt(ctx, &pb.DecryptRequest{Key: k.id, Version: version, Mode: pb.DecryptMode_DECRYPT_MODE_RSA_PKCS1_TLS_PREMASTER, Ciphertext: pkcs1})
				return err
			},
			"Decrypt OAEP": func() error {
				_, err := s.kv.Decrypt(ctx, &pb.DecryptRequest{Key: k.id, Version: version, Mode: pb.DecryptMode_DECRYPT_MODE_RSA_OAEP_SHA256, Ciphertext: oaep})
				return err
			},
			"StartHandshake": func() error {
				_, err := hc.StartHandshake(ctx, &pb.StartHandshakeRequest{Config: &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: k.id, Version: version}}}})
				return err
			},
		}
	}
	for _, version := range []uint32{0, 1} {
		for name, call := range calls(version) {
			assert.NoError(t, call(), "%s with enabled version %d", name, version)
		}
	}
	_, err = s.kv.DisableKeyVersion(ctx, &pb.DisableKeyVersionRequest{Key: k.id, Version: 1})
	require.NoError(t, err)
	for _, version := range []uint32{0, 1} {
		for name, call := range calls(version) {
			assert.Equal(t, codes.FailedPrecondition, status.Code(call()), "%s with disabled version %d", name, version)
		}
	}
	_, err = s.kv.EnableKeyVersion(ctx, &pb.EnableKeyVersionRequest{Key: k.id, Version: 1})
	require.NoError(t, err)
	for name, call := range calls(1) {
		assert.NoError(t, call(), "%s after enabling again", name)
	}
}

// disablingStepper disables a key version once the service has answered
// the ClientHello: in TLS 1.2 with RSA key exchange the private-key work
// (decrypting the premaster) comes in the next step.
type disablingStepper struct {
	stepper
	disable func()
	steps   int
}

func (d *disablingStepper) step(input []byte) (*pb.HandshakeStep, error) {
	out, err := d.stepper.step(input)
	if d.steps++; d.steps == 1 && d.disable != nil {
		d.disable()
	}
	return out, err
}

// TestVersionDisabledMidHandshake: a version disabled after a handshake
// started no longer decrypts its premaster, so the handshake fails and
// returns no session keys; a real crypto/tls client sees it fail.
func TestVersionDisabledMidHandshake(t *testing.T) {
	s := startServer(t)
	k := newServerKey(t, s, "rsa2048-pkcs1.pem", "mid.test")
	hc := s.handshakeClient(t)
	ctx := context.Background()
	run := func(disable func()) (clientErr, relayErr error) {
		t.Helper()
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		defer ln.Close()
		done := make(chan error, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				done <- err
				return
			}
			defer c.Close()
			start := &pb.StartHandshakeRequest{Config: &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: k.id}}}}
			_, err = relay(c, &disablingStepper{stepper: &unaryStepper{hc: hc, start: start}, disable: disable})
			done <- err
		}()
		conn, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{
			RootCAs: k.pool, ServerName: k.name, MaxVersion: tls.VersionTLS12,
			CipherSuites: []uint16{tls.TLS_RSA_WITH_AES_128_GCM_SHA256},
		})
		if err == nil {
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			conn.Close()
		}
		return err, <-done
	}

	clientErr, relayErr := run(nil)
	require.NoError(t, clientErr, "control: the handshake with the version enabled")
	require.NoError(t, relayErr)

	clientErr, relayErr = run(func() {
		_, err := s.kv.DisableKeyVersion(ctx, &pb.DisableKeyVersionRequest{Key: k.id, Version: 1})
		require.NoError(t, err)
	})
	assert.Error(t, clientErr, "the client completed a handshake whose key was disabled mid-way")
	assert.ErrorContains(t, relayErr, "handshake failed", "the service returned session keys for a disabled version")
}
