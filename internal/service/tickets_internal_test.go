package service

import (
	"testing"

	"github.com/stretchr/testify/assert"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
)

// TestHandshakeScopeIsStable pins how a configuration's ticket scope is
// named: it is bound into every ticket, so a replica naming it otherwise
// (another release in a rolling upgrade) would refuse the others' tickets.
func TestHandshakeScopeIsStable(t *testing.T) {
	const noCAs = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" // SHA-256 of nothing
	for _, c := range []struct {
		cfg  *pb.HandshakeConfig
		want string
	}{
		{&pb.HandshakeConfig{}, "handshake keys= client_auth=CLIENT_AUTH_UNSPECIFIED client_cas=" + noCAs},
		{&pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: "rsa"}}}, "handshake keys=rsa/0 client_auth=CLIENT_AUTH_UNSPECIFIED client_cas=" + noCAs},
		// Sorted and without repeats; the bundle by its SHA-256.
		{&pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: "k2", Version: 3}, {Key: "k1"}, {Key: "k2", Version: 3}}, ClientAuth: pb.ClientAuth_CLIENT_AUTH_OPTIONAL, ClientCaPem: "x"},
			"handshake keys=k1/0,k2/3 client_auth=CLIENT_AUTH_OPTIONAL client_cas=2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"},
	} {
		assert.Equal(t, c.want, handshakeScope(c.cfg))
	}
}
