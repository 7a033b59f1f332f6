package service_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/engine/record"
)

// serverKey is a vault key with a self-signed certificate attached.
type serverKey struct {
	id, name, certPEM string
	pool              *x509.CertPool
}

func newServerKey(t testing.TB, s *testServer, fixtureFile, dnsName string) serverKey {
	t.Helper()
	k := s.ServerKey(t, uniqueID("hs"), fixtureFile, dnsName)
	return serverKey{id: k.ID, name: k.Name, certPEM: k.CertPEM, pool: k.Pool}
}

// stepper drives one handshake session over one of the API's transports.
type stepper interface {
	step(input []byte) (*pb.HandshakeStep, error)
}

// streamStepper uses the bidirectional gRPC stream.
type streamStepper struct {
	stream  pb.Handshake_StreamClient
	started bool
	start   *pb.StartHandshakeRequest
}

func (s *streamStepper) step(input []byte) (*pb.HandshakeStep, error) {
	req := &pb.StreamRequest{Request: &pb.StreamRequest_Input{Input: input}}
	if !s.started {
		s.started = true
		req = &pb.StreamRequest{Request: &pb.StreamRequest_Start{Start: &pb.StartHandshakeRequest{Config: s.start.GetConfig(), Input: input}}}
	}
	if err := s.stream.Send(req); err != nil {
		return nil, err
	}
	return s.stream.Recv()
}

// unaryStepper uses StartHandshake and StepHandshake over gRPC.
type unaryStepper struct {
	hc    pb.HandshakeClient
	start *pb.StartHandshakeRequest
	id    string
}

func (u *unaryStepper) step(input []byte) (*pb.HandshakeStep, error) {
	if u.id == "" {
		out, err := u.hc.StartHandshake(context.Background(), &pb.StartHandshakeRequest{Config: u.start.GetConfig(), Input: input})
		if err == nil {
			u.id = out.GetId()
		}
		return out, err
	}
	return u.hc.StepHandshake(context.Background(), &pb.StepHandshakeRequest{Id: u.id, Input: input})
}

// restStepper uses the REST gateway.
type restStepper struct {
	t     testing.TB
	s     *testServer
	start *pb.StartHandshakeRequest
	id    string
}

func (r *restStepper) step(input []byte) (*pb.HandshakeStep, error) {
	var out struct {
		ID       string
		State    string
		Output   []byte
		Consumed int
		Leftover []byte
		Alert    struct {
			Record       []byte
			Name, Reason string
		}
		Session struct {
			Version      int
			CipherSuite  int
			ServerName   string
			AlpnProtocol string
			Keys         struct {
				ClientWriteKey, ClientWriteIv, ServerWriteKey, ServerWriteIv   []byte
				ClientSequence, ServerSequence                                 string
				ClientApplicationTrafficSecret, ServerApplicationTrafficSecret []byte
			}
		}
	}
	var status int
	var raw []byte
	if r.id == "" {
		body := map[string]any{"config": map[string]any{
			"keys": r.start.GetConfig().GetKeys(), "alpnProtocols": r.start.GetConfig().GetAlpnProtocols(),
			"cipherSuites": r.start.GetConfig().GetCipherSuites(), "maxVersion": r.start.GetConfig().GetMaxVersion().String(),
		}, "input": input}
		status, raw = r.s.restCall(r.t, "POST", "/v1/handshakes", body, &out)
		r.id = out.ID
	} else {
		status, raw = r.s.restCall(r.t, "POST", "/v1/handshakes/"+r.id+":step", map[string]any{"input": input}, &out)
	}
	if status != 200 {
		return nil, fmt.Errorf("HTTP %d: %s", status, raw)
	}
	// Back to the proto shape the relay understands.
	step := &pb.HandshakeStep{Id: out.ID, Output: out.Output, Consumed: uint32(out.Consumed), Leftover: out.Leftover,
		State: pb.HandshakeState(pb.HandshakeState_value[out.State])}
	if step.State == pb.HandshakeState_HANDSHAKE_STATE_FAILED {
		step.Alert = &pb.Alert{Record: out.Alert.Record, Name: out.Alert.Name, Reason: out.Alert.Reason}
	}
	if step.State == pb.HandshakeState_HANDSHAKE_STATE_COMPLETE {
		k := out.Session.Keys
		var cs, ss uint64
		fmt.Sscan(k.ClientSequence, &cs)
		fmt.Sscan(k.ServerSequence, &ss)
		step.Session = &pb.Session{Version: uint32(out.Session.Version), CipherSuite: uint32(out.Session.CipherSuite),
			ServerName: out.Session.ServerName, AlpnProtocol: out.Session.AlpnProtocol,
			Keys: &pb.SessionKeys{ClientWriteKey: k.ClientWriteKey, ClientWriteIv: k.ClientWriteIv, ServerWriteKey: k.ServerWriteKey,
				ServerWriteIv: k.ServerWriteIv, ClientSequence: cs, ServerSequence: ss,
				ClientApplicationTrafficSecret: k.ClientApplicationTrafficSecret, ServerApplicationTrafficSecret: k.ServerApplicationTrafficSecret}}
	}
	return step, nil
}

// relayed is the state of a connection after its handshake went through the
// service: the negotiated session and record ciphers built from its keys.
type relayed struct {
	conn    net.Conn
	session *pb.Session
	in, out *record.Cipher
	buf     []byte // received bytes not yet parsed as records
	version uint16
}

// relay is what an edge server does: it reads the client's bytes, has the
// service step the handshake, writes back what the step returns, and on
// completion builds its record layer from the returned keys.
func relay(conn net.Conn, st stepper) (*relayed, error) {
	buf := make([]byte, 32<<10)
	for {
		n, err := conn.Read(buf)
		if err != nil {
			return nil, fmt.Errorf("reading from client: %w", err)
		}
		out, err := st.step(buf[:n])
		if err != nil {
			return nil, err
		}
		if _, err := conn.Write(out.GetOutput()); err != nil {
			return nil, err
		}
		switch out.GetState() {
		case pb.HandshakeState_HANDSHAKE_STATE_FAILED:
			conn.Write(out.GetAlert().GetRecord())
			return nil, fmt.Errorf("handshake failed: %s: %s", out.GetAlert().GetName(), out.GetAlert().GetReason())
		case pb.HandshakeState_HANDSHAKE_STATE_COMPLETE:
			return newRelayed(conn, out.GetSession(), out.GetLeftover())
		}
	}
}

func newRelayed(conn net.Conn, s *pb.Session, leftover []byte) (*relayed, error) {
	r := &relayed{conn: conn, session: s, buf: append([]byte(nil), leftover...), version: uint16(s.GetVersion())}
	suite, k := uint16(s.GetCipherSuite()), s.GetKeys()
	var err error
	if r.version == tls.VersionTLS13 {
		if r.in, err = record.NewTLS13Cipher(suite, k.GetClientApplicationTrafficSecret(), k.GetClientSequence()); err != nil {
			return nil, err
		}
		r.out, err = record.NewTLS13Cipher(suite, k.GetServerApplicationTrafficSecret(), k.GetServerSequence())
		return r, err
	}
	if r.in, err = record.NewTLS12Cipher(suite, k.GetClientWriteKey(), k.GetClientWriteIv(), k.GetClientSequence()); err != nil {
		return nil, err
	}
	r.out, err = record.NewTLS12Cipher(suite, k.GetServerWriteKey(), k.GetServerWriteIv(), k.GetServerSequence())
	return r, err
}

func (r *relayed) write(typ record.ContentType, data []byte) error {
	rec, err := r.out.Seal(nil, typ, data, 0)
	if err != nil {
		return err
	}
	_, err = r.conn.Write(rec)
	return err
}

// readData returns the next application data the client sent.
func (r *relayed) readData() ([]byte, error) {
	tmp := make([]byte, 32<<10)
	for {
		typ, version, body, n, err := record.Parse(r.buf, record.MaxCiphertextTLS13+2048)
		if err != nil {
			return nil, err
		}
		if n == 0 {
			m, err := r.conn.Read(tmp)
			if err != nil {
				return nil, err
			}
			r.buf = append(r.buf, tmp[:m]...)
			continue
		}
		inner, plain, err := r.in.Open(typ, version, body)
		if err != nil {
			return nil, err
		}
		r.buf = r.buf[n:]
		switch inner {
		case record.ApplicationData:
			if len(plain) > 0 {
				return append([]byte(nil), plain...), nil
			}
		case record.Alert:
			return nil, io.EOF
		case record.Handshake:
			// TLS 1.3 post-handshake messages from the client are not
			// expected in these tests.
			return nil, errors.New("unexpected post-handshake message")
		}
	}
}

// closeNotify sends a close_notify alert (RFC 8446 §6.1).
func (r *relayed) closeNotify() error {
	return r.write(record.Alert, []byte{1, 0})
}
