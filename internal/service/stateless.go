package service

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/audit"
	"github.com/handshaked/handshaked/internal/engine"
	"github.com/handshaked/handshaked/internal/keyvault"
)

// Stateless handshakes (StartHandshakeRequest.stateless): the service keeps
// nothing between two steps. Each step that needs more input returns the
// engine state sealed in a step token (steptoken.go); the next step brings
// it back, to this replica or any other of the deployment, all of which
// hold the same step-token keys through the store.
//
// Replay rules. The token is bearer state bound to its caller, so what a
// replay can do is what that caller could do anyway:
//   - Only the caller it was issued to may use it (PERMISSION_DENIED
//     otherwise), for the session id it names, until the expiry set at the
//     start (FAILED_PRECONDITION after): stepping never extends a handshake.
//   - It restores only while every key version it resolved is enabled, has
//     the same certificate chain, and the caller may still use it (the
//     policy is checked at every step, as for held sessions); a version
//     disabled or destroyed meanwhile ends the handshake
//     (FAILED_PRECONDITION).
//   - Sending a token again restores the same state: with the same input it
//     repeats the step (which is what lets an edge retry a step on another
//     replica after UNAVAILABLE), with other input it runs that input from
//     the same state. Either gives the caller nothing it could not get by
//     starting a handshake again: the private-key operation of a replayed
//     step is one the caller may ask for anyway, RSA premaster decryption
//     keeps its implicit rejection (the engine answers a bad ciphertext
//     with a random premaster, the same for the same ciphertext), and the
//     session keys are returned once per completion, on the completing
//     step, to the caller who ran the handshake, derived from the client's
//     own flight. COMPLETE and FAILED steps return no token: nothing
//     continues an ended handshake, and GetHandshake and AbortHandshake
//     know no stateless session (NOT_FOUND).
//   - Every step, replayed or not, is charged like any other: rate limits,
//     the session cap and the input cap below.
//
// The session cap. A stateless handshake holds nothing between its steps,
// so the cap on sessions cannot count it then; instead every stateless
// start or step holds a session slot, and the input cap the client bytes
// its engine holds (those carried in the token and the step's new ones),
// for as long as the call runs. The cap then bounds the stateless work in
// flight (engines being restored, stepped and sealed at once), not memory
// held between steps, which is the caller's.

// stepTokenRotation is how long a step-token key seals new tokens. A key is
// accepted for the session TTL more, then erased.
const stepTokenRotation = time.Hour

// stepTokenScope binds what step-token keys seal to this use.
const stepTokenScope = "handshake step"

// newStepTokenKeys returns the step-token keys of a service whose
// handshakes live ttl; their changes are logged and audited in log (nil:
// logged only).
func newStepTokenKeys(vault *keyvault.Vault, deployment string, ttl time.Duration, log *audit.Log) *keyvault.TicketKeys {
	// The lifetime is what the key schedule allows (1s to 7 days): a token
	// expires at its own expiry anyway.
	lifetime := min(max(ttl.Round(time.Second), time.Second), keyvault.DefaultTicketLifetime)
	tk, err := keyvault.NewTicketKeys(vault, keyvault.TicketKeyOptions{
		Purpose: keyvault.PurposeStepTokens, Deployment: deployment, Rotation: stepTokenRotation, Lifetime: lifetime,
		OnChange: func(e keyvault.TicketKeyEvent) { auditKeyChange(e, log) },
	})
	if err != nil {
		panic(fmt.Sprintf("step-token key options out of the range made above: %v", err))
	}
	return tk
}

// configDigest is the digest of a handshake's resolved configuration: the
// configuration as started (suites, groups, versions, client
// authentication...) and the certificate chain of each key version it
// resolved to. A token restores only into the same.
func configDigest(config []byte, cfg *engine.Config) [sha256.Size]byte {
	d := sha256.New()
	d.Write([]byte("handshaked step-token config v1\x00"))
	d.Write(binary.BigEndian.AppendUint32(nil, uint32(len(config))))
	d.Write(config)
	for _, c := range cfg.Certificates {
		d.Write(binary.BigEndian.AppendUint16(nil, uint16(len(c.KeyRef))))
		d.Write([]byte(c.KeyRef))
		d.Write(binary.BigEndian.AppendUint16(nil, uint16(len(c.Chain))))
		for _, der := range c.Chain {
			h := sha256.Sum256(der)
			d.Write(h[:])
		}
	}
	return [sha256.Size]byte(d.Sum(nil))
}

// resolvedVersions returns the key version each certificate of cfg is.
func resolvedVersions(cfg *engine.Config) []uint32 {
	out := make([]uint32, 0, len(cfg.Certificates))
	for _, c := range cfg.Certificates {
		_, n, err := parseKeyRef(c.KeyRef)
		if err != nil {
			panic(fmt.Sprintf("engine configuration with a key reference the service did not make: %v", err))
		}
		out = append(out, n)
	}
	return out
}

// startStateless runs a stateless StartHandshake.
func (h *Handshake) startStateless(ctx context.Context, req *pb.StartHandshakeRequest) (*pb.HandshakeStep, error) {
	owner := callerIdentity(ctx)
	release, err := h.sessions.reserve(owner)
	if err != nil {
		return nil, err
	}
	defer release()
	hs, cfg, err := h.start(ctx, req)
	if err != nil {
		return nil, err
	}
	config, err := proto.MarshalOptions{Deterministic: true}.Marshal(req.GetConfig())
	if err != nil {
		return nil, toStatus(ctx, fmt.Errorf("marshal handshake config: %w", err))
	}
	b := make([]byte, 16)
	rand.Read(b)
	tok := &stepToken{
		id: hex.EncodeToString(b), caller: callerDigest(owner), expires: time.Now().Add(h.sessions.ttl).Truncate(time.Millisecond),
		digest: configDigest(config, cfg), versions: resolvedVersions(cfg), config: config,
	}
	return h.stepToken(ctx, owner, tok, hs, !req.GetConfig().GetOmitTrace(), req.GetInput())
}

// stepStateless runs a StepHandshake that carries a state token.
func (h *Handshake) stepStateless(ctx context.Context, req *pb.StepHandshakeRequest) (*pb.HandshakeStep, error) {
	owner := callerIdentity(ctx)
	tok, err := h.openStepToken(ctx, req.GetStateToken())
	if err != nil {
		return nil, err
	}
	switch {
	case !tok.issuedTo(owner):
		return nil, status.Error(codes.PermissionDenied, "state_token: issued to another caller")
	case tok.id != req.GetId():
		return nil, invalid("state_token: for handshake %q, not %q", tok.id, req.GetId())
	case !time.Now().Before(tok.expires):
		return nil, status.Errorf(codes.FailedPrecondition, "handshake %q expired at %s: start again", tok.id, tok.expires.UTC().Format(time.RFC3339Nano))
	}
	config := &pb.HandshakeConfig{}
	if err := proto.Unmarshal(tok.config, config); err != nil || len(tok.versions) != len(config.GetKeys()) {
		return nil, toStatus(ctx, fmt.Errorf("step token sealed by this deployment has a malformed configuration: %v", err))
	}
	if h.authorize != nil {
		keys := make([]target, 0, len(config.GetKeys()))
		for _, k := range config.GetKeys() {
			keys = append(keys, target{id: k.GetKey(), version: k.GetVersion()})
		}
		if err := h.authorize(ctx, keys); err != nil {
			return nil, err
		}
	}
	release, err := h.sessions.reserve(owner)
	if err != nil {
		return nil, err
	}
	defer release()
	hs, err := h.restoreStepToken(ctx, tok, config)
	if err != nil {
		return nil, err
	}
	return h.stepToken(ctx, owner, tok, hs, !config.GetOmitTrace(), req.GetInput())
}

// restoreStepToken rebuilds the handshake of tok, whose configuration is
// config, from the vault's keys as they are now.
func (h *Handshake) restoreStepToken(ctx context.Context, tok *stepToken, config *pb.HandshakeConfig) (*engine.Handshake, error) {
	// The versions the start resolved, not the primary now: a rotation
	// mid-handshake must not switch keys under it.
	resolved := proto.Clone(config).(*pb.HandshakeConfig)
	for i, k := range resolved.GetKeys() {
		k.Version = tok.versions[i]
	}
	cfg, err := engineConfig(ctx, h.vault, &h.certs, resolved)
	if err != nil {
		if c := status.Code(err); c == codes.FailedPrecondition || c == codes.NotFound {
			return nil, status.Errorf(codes.FailedPrecondition, "handshake %q cannot continue: %v", tok.id, status.Convert(err).Message())
		}
		return nil, err
	}
	if configDigest(tok.config, cfg) != tok.digest {
		return nil, status.Errorf(codes.FailedPrecondition, "handshake %q cannot continue: its keys' certificate chains or its configuration changed since it started", tok.id)
	}
	h.withTickets(cfg, config) // the scope of the configuration as started
	hs, err := engine.RestoreHandshake(cfg, tok.state)
	if err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "handshake %q cannot continue on this replica: %v", tok.id, err)
	}
	return hs, nil
}

// stepToken steps hs with input and, if it needs more, seals its state in
// the next token.
func (h *Handshake) stepToken(ctx context.Context, owner string, tok *stepToken, hs *engine.Handshake, withTrace bool, input []byte) (*pb.HandshakeStep, error) {
	// The engine holds what the earlier steps took and this one's input.
	var held int64
	if err := h.sessions.take(owner, &held, int(tok.input)+len(input)); err != nil {
		return nil, err
	}
	defer h.sessions.drop(owner, &held)
	out := &pb.HandshakeStep{Id: tok.id, State: pb.HandshakeState_HANDSHAKE_STATE_NEED_INPUT}
	if len(input) > 0 {
		out = h.step(ctx, tok.id, hs, withTrace, input)
	}
	out.ExpireTime = timestamppb.New(tok.expires)
	if out.GetState() != pb.HandshakeState_HANDSHAKE_STATE_NEED_INPUT {
		return out, nil
	}
	state, err := hs.MarshalBinary()
	if err != nil {
		return nil, toStatus(ctx, fmt.Errorf("save handshake state: %w", err))
	}
	next := *tok
	next.input, next.state = uint32(held), state
	plain, err := next.marshal()
	if err != nil {
		return nil, toStatus(ctx, fmt.Errorf("encode step token: %w", err))
	}
	if out.StateToken, err = h.tokens.Seal(ctx, stepTokenScope, plain); err != nil {
		if errors.Is(err, keyvault.ErrInvalidArgument) {
			return nil, status.Errorf(codes.ResourceExhausted, "handshake %q: its state (%d bytes) is too large for a step token: use a held session or a stream", tok.id, len(plain))
		}
		return nil, toStatus(ctx, err)
	}
	return out, nil
}

// openStepToken opens and decodes a state token.
func (h *Handshake) openStepToken(ctx context.Context, token []byte) (*stepToken, error) {
	if len(token) > keyvault.MaxStepTokenBytes {
		return nil, invalid("state_token: more than %d bytes", keyvault.MaxStepTokenBytes)
	}
	plain, err := h.tokens.Open(ctx, stepTokenScope, token)
	if errors.Is(err, keyvault.ErrTicketRejected) {
		return nil, invalid("state_token: not a step token of this deployment, damaged, or sealed under a retired key")
	}
	if err != nil {
		return nil, toStatus(ctx, err)
	}
	tok, err := unmarshalStepToken(plain)
	if err != nil {
		// Sealed by this deployment, so a replica of another version made
		// it: say so rather than blame the caller.
		return nil, status.Errorf(codes.FailedPrecondition, "state_token: %v", err)
	}
	return tok, nil
}
