package handshaked

import (
	"context"
	"sync/atomic"
)

// streamSlots are the slots of a few long-lived streams, taken in turn
// (SignStreams, Multiplex streams). A stream stays on the replica it was
// opened on, so several taken in turn spread the calls over a fleet, and
// one slow stream holds back only its own. Each slot opens its stream on
// first use and again after it ends; ctx ends them all on close.
type streamSlots[S any] struct {
	slots []*S
	next  atomic.Uint32
	ctx   context.Context
	stop  context.CancelFunc
}

// init makes n slots; it is called once, before any take.
func (p *streamSlots[S]) init(n int) {
	p.ctx, p.stop = context.WithCancel(context.Background())
	p.slots = make([]*S, n)
	for i := range p.slots {
		p.slots[i] = new(S)
	}
}

// take returns the next slot in turn.
func (p *streamSlots[S]) take() *S { return p.slots[int(p.next.Add(1))%len(p.slots)] }

func (p *streamSlots[S]) close() { p.stop() }
