package service_test

import (
	"context"
	"crypto/tls"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
)

// tracedStepper keeps the steps another stepper returns.
type tracedStepper struct {
	stepper
	steps []*pb.HandshakeStep
}

func (s *tracedStepper) step(input []byte) (*pb.HandshakeStep, error) {
	out, err := s.stepper.step(input)
	if err == nil {
		s.steps = append(s.steps, out)
	}
	return out, err
}

// TestOmitTrace: with HandshakeConfig.omit_trace no step of a handshake
// carries a trace, over the stream, held unary sessions and stateless
// steps, TLS 1.3 and TLS 1.2 (whose second step the stateless path takes
// from the token's configuration); without it every step does, beginning
// with the ClientHello.
func TestOmitTrace(t *testing.T) {
	s := startServer(t)
	key := newServerKey(t, s, "p256-sec1.pem", "ec.test")
	hc := s.handshakeClient(t)
	transports := map[string]func(*pb.StartHandshakeRequest) stepper{
		"stream": func(req *pb.StartHandshakeRequest) stepper {
			stream, err := hc.Stream(context.Background())
			require.NoError(t, err)
			return &streamStepper{stream: stream, start: req}
		},
		"unary": func(req *pb.StartHandshakeRequest) stepper { return &unaryStepper{hc: hc, start: req} },
		"stateless": func(req *pb.StartHandshakeRequest) stepper {
			return &tokenStepper{hcs: []pb.HandshakeClient{hc}, start: req}
		},
	}
	for name, transport := range transports {
		for _, version := range []uint16{tls.VersionTLS13, tls.VersionTLS12} {
			for _, omit := range []bool{false, true} {
				t.Run(name+"/"+tls.VersionName(version)+"/"+map[bool]string{false: "traced", true: "omitted"}[omit], func(t *testing.T) {
					req := &pb.StartHandshakeRequest{Config: &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: key.id}}, OmitTrace: omit}}
					st := &tracedStepper{stepper: transport(req)}
					state, _ := runClient(t, &tls.Config{ServerName: key.name, RootCAs: key.pool, MinVersion: version, MaxVersion: version}, func() stepper { return st })
					require.Equal(t, version, state.Version)
					require.Len(t, st.steps, 2, "a full handshake takes two steps")
					for i, step := range st.steps {
						if omit {
							assert.Empty(t, step.GetTrace(), "step %d", i+1)
						} else {
							assert.NotEmpty(t, step.GetTrace(), "step %d", i+1)
						}
					}
					if !omit {
						assert.Equal(t, "ClientHello", st.steps[0].GetTrace()[0].GetMessage())
					}
				})
			}
		}
	}
}
