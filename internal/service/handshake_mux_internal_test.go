package service

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
)

// TestMultiplexQueuedInputCounts: input received for a handshake whose
// step is still running counts against the caller's input cap as it is
// queued, as the input a Stream's engine buffers does, and is freed when
// the handshake ends: requests queued behind a slow step (an HSM answers
// in its own time) are bounded by the cap, not by what the caller sends.
func TestMultiplexQueuedInputCounts(t *testing.T) {
	vault, _ := vaultWithKey(t, "k", "p256-sec1.pem")
	// A caller may hold a quarter of MaxInput: 1000 bytes.
	h := NewHandshake(vault, HandshakeOptions{MaxInput: 4000}, newHandshakeMetrics(prometheus.NewRegistry()))
	m := &muxStream{h: h, owner: "edge", live: map[uint64]*muxHandshake{}, stop: make(chan struct{})}
	// A handshake whose step is running: what comes for it waits.
	x := &muxHandshake{n: 1, running: true}
	m.live[1] = x
	input := func(n int) *pb.MultiplexRequest {
		return &pb.MultiplexRequest{Handshake: 1, Request: &pb.MultiplexRequest_Input{Input: make([]byte, n)}}
	}
	m.dispatch(input(600))
	m.dispatch(input(300))
	require.Len(t, x.queue, 2)
	assert.NoError(t, x.queue[1].err)
	assert.EqualValues(t, 900, x.held, "queued input held")
	assert.False(t, h.sessions.input.acquire("edge", 101), "the caller's share holds the queued input")

	m.dispatch(input(101))
	require.Len(t, x.queue, 3)
	assert.Error(t, x.queue[2].err, "past the caller's share: refused, which ends the handshake")

	m.end(x, pb.HandshakeState_HANDSHAKE_STATE_UNSPECIFIED)
	assert.Zero(t, x.held)
	assert.True(t, h.sessions.input.acquire("edge", 1000), "the ended handshake's input is freed")
}
