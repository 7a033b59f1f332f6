package service

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/engine"
	"github.com/handshaked/handshaked/internal/engine/record"
	"github.com/handshaked/handshaked/internal/keyvault"
)

const (
	maxHandshakeKeys = 16
	maxALPN          = 16
	maxCAPEMBytes    = 256 << 10
)

var tlsVersions = map[pb.TLSVersion]uint16{
	pb.TLSVersion_TLS_VERSION_UNSPECIFIED: 0,
	pb.TLSVersion_TLS_VERSION_1_2:         tls.VersionTLS12,
	pb.TLSVersion_TLS_VERSION_1_3:         tls.VersionTLS13,
}

// checkKeyCount bounds the keys a handshake may offer. The guard checks it
// before it authorizes any of them, so a request naming thousands costs
// nothing but its decoding.
func checkKeyCount(n int) error {
	if n == 0 || n > maxHandshakeKeys {
		return invalid("config.keys: must name 1 to %d keys, got %d", maxHandshakeKeys, n)
	}
	return nil
}

// engineConfig turns a request's handshake configuration into the engine's,
// resolving each key to an enabled version with a certificate chain.
func engineConfig(ctx context.Context, vault *keyvault.Vault, certs *certificates, c *pb.HandshakeConfig) (*engine.Config, error) {
	if err := checkKeyCount(len(c.GetKeys())); err != nil {
		return nil, err
	}
	cfg := &engine.Config{Certificates: make([]engine.Certificate, 0, len(c.GetKeys()))}
	for _, ref := range c.GetKeys() {
		cert, err := handshakeCertificate(ctx, vault, certs, ref)
		if err != nil {
			return nil, err
		}
		cfg.Certificates = append(cfg.Certificates, cert)
	}
	var ok bool
	if cfg.MinVersion, ok = tlsVersions[c.GetMinVersion()]; !ok {
		return nil, invalid("config.min_version: unsupported %v", c.GetMinVersion())
	}
	if cfg.MaxVersion, ok = tlsVersions[c.GetMaxVersion()]; !ok {
		return nil, invalid("config.max_version: unsupported %v", c.GetMaxVersion())
	}
	if len(c.GetCipherSuites()) > 0 {
		// An explicit list configures both versions exactly: a version with
		// none of its suites listed negotiates nothing.
		cfg.CipherSuites, cfg.CipherSuitesTLS13 = []uint16{}, []uint16{}
		for _, id := range c.GetCipherSuites() {
			s, ok := record.SuiteByID(uint16(id))
			if !ok || id > 0xffff {
				return nil, invalid("config.cipher_suites: unsupported cipher suite %#04x", id)
			}
			if s.TLS13 {
				cfg.CipherSuitesTLS13 = append(cfg.CipherSuitesTLS13, s.ID)
			} else {
				cfg.CipherSuites = append(cfg.CipherSuites, s.ID)
			}
		}
	}
	for _, g := range c.GetGroups() {
		if g > 0xffff {
			return nil, invalid("config.groups: %d is not a named group", g)
		}
		cfg.Groups = append(cfg.Groups, tls.CurveID(g))
	}
	if len(c.GetAlpnProtocols()) > maxALPN {
		return nil, invalid("config.alpn_protocols: at most %d", maxALPN)
	}
	for _, p := range c.GetAlpnProtocols() {
		// RFC 7301 §3.1: protocol names are 1 to 255 bytes.
		if len(p) == 0 || len(p) > 255 {
			return nil, invalid("config.alpn_protocols: %q must be 1 to 255 bytes", p)
		}
	}
	cfg.NextProtos = c.GetAlpnProtocols()
	switch c.GetClientAuth() {
	case pb.ClientAuth_CLIENT_AUTH_UNSPECIFIED, pb.ClientAuth_CLIENT_AUTH_OFF:
		cfg.ClientAuth = engine.ClientAuthOff
	case pb.ClientAuth_CLIENT_AUTH_OPTIONAL:
		cfg.ClientAuth = engine.ClientAuthOptional
	case pb.ClientAuth_CLIENT_AUTH_REQUIRED:
		cfg.ClientAuth = engine.ClientAuthRequired
	default:
		return nil, invalid("config.client_auth: unsupported %v", c.GetClientAuth())
	}
	if pemCAs := c.GetClientCaPem(); pemCAs != "" {
		if len(pemCAs) > maxCAPEMBytes {
			return nil, invalid("config.client_ca_pem: more than %d bytes", maxCAPEMBytes)
		}
		cfg.ClientCAs = x509.NewCertPool()
		if !cfg.ClientCAs.AppendCertsFromPEM([]byte(pemCAs)) {
			return nil, invalid("config.client_ca_pem: no certificate in it")
		}
	}
	cfg.CallerVerifiesFinished = c.GetCallerVerifiesFinished()
	cfg.CallerHonorsRecordSizeLimit = c.GetCallerHonorsRecordSizeLimit()
	return cfg, nil
}

func handshakeCertificate(ctx context.Context, vault *keyvault.Vault, certs *certificates, ref *pb.KeyRef) (engine.Certificate, error) {
	id := ref.GetKey()
	n, state, chain, err := vault.VersionChain(ctx, id, ref.GetVersion())
	if errors.Is(err, keyvault.ErrNotFound) {
		// Maybe a key or version another replica just made, which this
		// one's view has not applied yet: catch up once, then look again.
		if err = vault.Sync(ctx); err == nil {
			n, state, chain, err = vault.VersionChain(ctx, id, ref.GetVersion())
		}
	}
	if err != nil {
		return engine.Certificate{}, toStatus(ctx, err)
	}
	if state != keyvault.StateEnabled {
		return engine.Certificate{}, status.Errorf(codes.FailedPrecondition, "key %q version %d is %v", id, n, state)
	}
	if len(chain) == 0 {
		return engine.Certificate{}, status.Errorf(codes.FailedPrecondition, "key %q version %d has no certificate chain: attach one first", id, n)
	}
	cert, err := certs.get(keyRef(id, n), chain)
	if err != nil {
		return engine.Certificate{}, status.Errorf(codes.FailedPrecondition, "key %q version %d: %v", id, n, err)
	}
	return cert, nil
}

// maxCertificates bounds the parsed certificates kept: past it the cache
// starts again, so keys deleted meanwhile cost nothing for long.
const maxCertificates = 1024

// certificates keeps the engine certificate of each key version handshakes
// use, parsed once: parsing the leaf again for every handshake cost more
// than the rest of a resumed handshake's configuration. The vault's
// Subscribe drops a key's entries whenever the key changes in this
// replica's view (here or on another replica), so that what a rotation,
// a new chain, a disable or a destroy left behind is not kept; an entry
// also serves only while the version's chain is the same bytes, so that a
// start that reads a new chain before the notification does not get the
// old one. The vault still decides, at every handshake, whether the
// version may be used.
type certificates struct {
	mu    sync.Mutex
	certs map[string]engine.Certificate // by key reference
}

// forget drops the entries of key id.
func (c *certificates) forget(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	maps.DeleteFunc(c.certs, func(ref string, _ engine.Certificate) bool {
		k, _, err := parseKeyRef(ref)
		return err == nil && k == id
	})
}

// get returns the certificate of the key version ref with chain.
func (c *certificates) get(ref string, chain [][]byte) (engine.Certificate, error) {
	c.mu.Lock()
	cert, ok := c.certs[ref]
	c.mu.Unlock()
	if ok && slices.EqualFunc(cert.Chain, chain, bytes.Equal) {
		return cert, nil
	}
	cert, err := engine.NewCertificate(chain, ref)
	if err != nil {
		return engine.Certificate{}, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.certs == nil || len(c.certs) >= maxCertificates {
		c.certs = make(map[string]engine.Certificate)
	}
	c.certs[ref] = cert
	return cert, nil
}

// newHandshake builds a handshake; a configuration the engine rejects is the
// caller's mistake.
func newHandshake(cfg *engine.Config) (*engine.Handshake, error) {
	hs, err := engine.NewHandshake(cfg)
	if err != nil {
		return nil, invalid("config: %v", err)
	}
	return hs, nil
}

// stepToProto converts a step; its trace unless the configuration asked to
// omit it (HandshakeConfig.omit_trace).
func stepToProto(id string, res *engine.StepResult, input []byte, session *engine.Session, withTrace bool) *pb.HandshakeStep {
	out := &pb.HandshakeStep{
		Id:       id,
		Output:   res.Output,
		Consumed: uint32(res.Consumed),
	}
	if withTrace {
		out.Trace = traceToProto(res.Trace)
	}
	switch res.State {
	case engine.NeedInput:
		out.State = pb.HandshakeState_HANDSHAKE_STATE_NEED_INPUT
	case engine.Complete:
		out.State = pb.HandshakeState_HANDSHAKE_STATE_COMPLETE
		out.Leftover = input[res.Consumed:]
		out.Session = sessionToProto(session, true)
	case engine.Failed:
		out.State = pb.HandshakeState_HANDSHAKE_STATE_FAILED
		out.Alert = &pb.Alert{
			Description: uint32(res.AlertDescription),
			Name:        res.AlertDescription.String(),
			Record:      res.Alert,
			Reason:      res.Reason,
		}
	}
	return out
}

// traceToProto converts a step's trace. The messages of one step are
// allocated together, in one array per type, rather than one by one: a
// full handshake's trace has some thirty fields, and every allocation is
// CPU per handshake (issue 12).
func traceToProto(events []engine.TraceEvent) []*pb.TraceEvent {
	n := 0
	for _, e := range events {
		n += len(e.Fields)
	}
	msgs := make([]pb.TraceEvent, len(events))
	fields := make([]pb.TraceField, n)
	fieldPtrs := make([]*pb.TraceField, n)
	out := make([]*pb.TraceEvent, len(events))
	for i, e := range events {
		pe := &msgs[i]
		pe.Direction, pe.Message = e.Direction.String(), e.Message
		pe.Fields = fieldPtrs[:len(e.Fields):len(e.Fields)]
		for j, f := range e.Fields {
			pf := &fields[0]
			fields = fields[1:]
			pf.Key, pf.Value = f.Key, f.Value
			pe.Fields[j] = pf
		}
		fieldPtrs = fieldPtrs[len(e.Fields):]
		out[i] = pe
	}
	return out
}

// sessionToProto converts a completed session; the keys only when withKeys:
// the API returns them once, on the step that completes the handshake.
func sessionToProto(s *engine.Session, withKeys bool) *pb.Session {
	id, version, err := parseKeyRef(s.KeyRef)
	if err != nil {
		panic(fmt.Sprintf("engine returned a key reference the service did not make: %v", err))
	}
	out := &pb.Session{
		Version:              uint32(s.Version),
		CipherSuite:          uint32(s.CipherSuite),
		CipherSuiteName:      record.SuiteName(s.CipherSuite),
		Group:                uint32(s.Group),
		ServerName:           s.ServerName,
		AlpnProtocol:         s.ALPN,
		Key:                  &pb.KeyRef{Key: id, Version: version},
		SignatureScheme:      uint32(s.SignatureScheme),
		PeerCertificates:     s.PeerCertificates,
		ExtendedMasterSecret: s.ExtendedMasterSecret,
		HelloRetryRequest:    s.DidHelloRetryRequest,
		Resumed:              s.Resumed,
		RecordPlaintextLimit: uint32(s.RecordPlaintextLimit),
	}
	if withKeys {
		out.Keys = &pb.SessionKeys{
			ClientWriteKey:                 s.ClientKey,
			ClientWriteIv:                  s.ClientIV,
			ServerWriteKey:                 s.ServerKey,
			ServerWriteIv:                  s.ServerIV,
			ClientSequence:                 s.ClientSeq,
			ServerSequence:                 s.ServerSeq,
			ClientApplicationTrafficSecret: s.ClientTrafficSecret,
			ServerApplicationTrafficSecret: s.ServerTrafficSecret,
			ExporterMasterSecret:           s.ExporterMasterSecret,
		}
		if p := s.PendingFinished; p != nil {
			out.Keys.ClientFinished = &pb.PendingClientFinished{
				Message: p.Message, ClientHandshakeKey: p.Key, ClientHandshakeIv: p.IV, Output: p.Output, SkipEarlyData: p.SkipEarlyData,
			}
		}
	}
	return out
}
