package service

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"time"

	"golang.org/x/crypto/cryptobyte"
)

// A step token is the state of a stateless handshake between two steps, as
// the caller holds it: this encoding, sealed under the deployment's
// step-token keys (keyvault.PurposeStepTokens). Its first byte is the
// encoding version. A replica decodes every version it has ever written
// (testdata/steptoken-v*.json are tokens of each, restored by a test), so a
// rolling upgrade never breaks a handshake in flight; it writes the newest.
//
// Version 1:
//
//	uint8   version (1)
//	opaque  id<1..255>          the session id the token is for
//	opaque  caller[32]          SHA-256 of the caller identity it was issued to
//	uint64  expires             Unix milliseconds; fixed at the start
//	opaque  digest[32]          of the resolved configuration (configDigest)
//	uint32  input               client bytes taken so far (maxSessionInput)
//	uint32  versions<0..2^8-1>  the key version each config key resolved to
//	opaque  config<0..2^24-1>   the HandshakeConfig, protobuf, as started
//	opaque  state<1..2^24-1>    the engine state (engine.MarshalBinary)
const stepTokenVersion = 1

// stepToken is a decoded step token.
type stepToken struct {
	id       string
	caller   [sha256.Size]byte
	expires  time.Time
	digest   [sha256.Size]byte
	input    uint32
	versions []uint32
	config   []byte
	state    []byte
}

var errStepToken = errors.New("malformed step token")

// callerDigest is what a token keeps of the caller identity: enough to
// compare, nothing to read.
func callerDigest(identity string) [sha256.Size]byte {
	return sha256.Sum256([]byte("handshaked step-token caller\x00" + identity))
}

// issuedTo reports, in constant time, whether the token is the caller's.
func (t *stepToken) issuedTo(identity string) bool {
	d := callerDigest(identity)
	return subtle.ConstantTimeCompare(t.caller[:], d[:]) == 1
}

func (t *stepToken) marshal() ([]byte, error) {
	var b cryptobyte.Builder
	b.AddUint8(stepTokenVersion)
	b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(t.id)) })
	b.AddBytes(t.caller[:])
	b.AddUint64(uint64(t.expires.UnixMilli()))
	b.AddBytes(t.digest[:])
	b.AddUint32(t.input)
	b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) {
		for _, v := range t.versions {
			b.AddUint32(v)
		}
	})
	b.AddUint24LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(t.config) })
	b.AddUint24LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(t.state) })
	return b.Bytes()
}

// unmarshalStepToken decodes an opened token of any version this replica
// knows.
func unmarshalStepToken(data []byte) (*stepToken, error) {
	s := cryptobyte.String(data)
	var version uint8
	if !s.ReadUint8(&version) {
		return nil, errStepToken
	}
	if version != stepTokenVersion {
		return nil, fmt.Errorf("step token encoding version %d unknown to this replica (it knows %d)", version, stepTokenVersion)
	}
	t := &stepToken{}
	var id, caller, digest, versions, config, state cryptobyte.String
	var expires uint64
	if !s.ReadUint8LengthPrefixed(&id) || id.Empty() || !s.ReadBytes((*[]byte)(&caller), sha256.Size) ||
		!s.ReadUint64(&expires) || !s.ReadBytes((*[]byte)(&digest), sha256.Size) || !s.ReadUint32(&t.input) ||
		!s.ReadUint8LengthPrefixed(&versions) || len(versions)%4 != 0 ||
		!s.ReadUint24LengthPrefixed(&config) || !s.ReadUint24LengthPrefixed(&state) || state.Empty() || !s.Empty() ||
		expires > 1<<62 {
		return nil, errStepToken
	}
	for !versions.Empty() {
		var v uint32
		versions.ReadUint32(&v)
		t.versions = append(t.versions, v)
	}
	t.id, t.expires = string(id), time.UnixMilli(int64(expires))
	copy(t.caller[:], caller)
	copy(t.digest[:], digest)
	t.config, t.state = append([]byte(nil), config...), append([]byte(nil), state...)
	return t, nil
}
