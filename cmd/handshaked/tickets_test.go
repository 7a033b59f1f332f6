package main

import (
	"context"
	"io"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
)

// stop ends p with SIGTERM and waits for it.
func (p *process) stop(t *testing.T) {
	t.Helper()
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	<-p.exited
}

// TestSessionTicketFlags: tickets are on by default and survive a restart
// of the same deployment; another -deployment over the same store refuses
// them; -session-tickets=false turns them off.
func TestSessionTicketFlags(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	p := startProcess(t, dir)
	require.NotEmpty(t, p.grpcAddr, p.out())
	sealed, err := p.client(t).SealTicket(ctx, &pb.SealTicketRequest{Key: sampleKeyID, Plaintext: []byte("state")})
	require.NoError(t, err)
	assert.EqualValues(t, 7*24*3600, sealed.GetLifetimeSeconds())
	p.stop(t)

	open := func(p *process) *pb.OpenTicketResponse {
		t.Helper()
		r, err := p.client(t).OpenTicket(ctx, &pb.OpenTicketRequest{Key: sampleKeyID, Ticket: sealed.GetTicket()})
		require.NoError(t, err)
		return r
	}
	p = startProcess(t, dir, "-ticket-lifetime", "24h")
	require.NotEmpty(t, p.grpcAddr, p.out())
	r := open(p)
	assert.True(t, r.GetAccepted(), "a ticket sealed before a restart")
	assert.Equal(t, []byte("state"), r.GetPlaintext())
	again, err := p.client(t).SealTicket(ctx, &pb.SealTicketRequest{Key: sampleKeyID, Plaintext: []byte("state")})
	require.NoError(t, err)
	assert.EqualValues(t, 24*3600, again.GetLifetimeSeconds())
	p.stop(t)

	p = startProcess(t, dir, "-deployment", "staging")
	require.NotEmpty(t, p.grpcAddr, p.out())
	assert.False(t, open(p).GetAccepted(), "another deployment opened the ticket")
	p.stop(t)

	p = startProcess(t, dir, "-session-tickets=false")
	require.NotEmpty(t, p.grpcAddr, p.out())
	_, err = p.client(t).OpenTicket(ctx, &pb.OpenTicketRequest{Key: sampleKeyID, Ticket: sealed.GetTicket()})
	assert.Equal(t, codes.FailedPrecondition, status.Code(err), "%v", err)
	p.stop(t)

	for _, args := range [][]string{{"-ticket-lifetime", "169h"}, {"-ticket-rotation", "0s"}} {
		_, err := parseConfig(args, func(string) (string, bool) { return "", false }, io.Discard)
		assert.ErrorContains(t, err, "-ticket-lifetime", "%v", args)
	}
}
