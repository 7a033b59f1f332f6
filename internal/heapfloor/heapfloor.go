// Package heapfloor keeps the garbage collector's heap goal above a floor.
//
// With GOGC=100 the runtime starts a collection once the heap has grown by
// as much as was live after the last one (plus stacks and globals), and
// never later than at 4 MiB. A service whose live heap is a few MiB but
// which allocates tens of KiB per request then collects every few dozen
// requests: each cycle marks, sweeps, and shrinks the stacks of idle
// goroutines, which the next request grows again (issue 12: 20% of the
// service's CPU per handshake). Go has no setting for a minimum heap, so
// after every collection Floor sets the GC percentage that puts the next
// goal at the floor, and back to GOGC's 100 once the live heap alone would
// reach it: a large live heap (many pending sessions) is paced exactly as
// by default, so memory at load does not grow.
package heapfloor

import (
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
)

// Serving is the floor of a serving process (handshaked, handshake-edge):
// at 1000 handshakes a second (about 80 KiB allocated each, with gRPC's
// share) it collects a few times a second rather than thirty.
const Serving = 64 << 20

// basePercent is GOGC's default, what Floor keeps above the floor.
const basePercent = 100

var once sync.Once

// Start keeps the heap goal at or above floor bytes for the life of the
// process; only the first call counts. It does nothing when the operator
// set GOGC: that choice is theirs. A memory limit (GOMEMLIMIT) still caps
// the heap as always.
func Start(floor uint64) {
	once.Do(func() {
		if _, set := os.LookupEnv("GOGC"); set {
			return
		}
		f := &floorer{floor: floor, samples: []metrics.Sample{{Name: liveHeap}, {Name: stackScan}, {Name: globalsScan}}}
		f.adjust()
		f.arm()
	})
}

const (
	liveHeap    = "/gc/heap/live:bytes"
	stackScan   = "/gc/scan/stack:bytes"
	globalsScan = "/gc/scan/globals:bytes"
)

type floorer struct {
	floor   uint64
	samples []metrics.Sample // read by the cleanup goroutine only
}

// sentinel is an object that becomes garbage at once: its cleanup runs
// after the collection that freed it, and arms the next. It holds a
// pointer, so that the tiny allocator does not batch it with others.
type sentinel struct {
	_ *int
	_ [2]uint64
}

func (f *floorer) arm() {
	runtime.AddCleanup(new(sentinel), func(f *floorer) {
		f.adjust()
		f.arm()
	}, f)
}

// adjust sets the GC percentage for the next cycle from what the last one
// found live.
func (f *floorer) adjust() {
	metrics.Read(f.samples)
	live := f.samples[0].Value.Uint64()
	scan := live + f.samples[1].Value.Uint64() + f.samples[2].Value.Uint64()
	debug.SetGCPercent(percent(f.floor, live, scan))
}

// percent is the GC percentage that puts the goal of a heap with live bytes
// live and scannable roots (live heap, stacks, globals) of scan bytes at
// floor, never below the default. The runtime's goal (runtime/mgcpacer.go)
// is the larger of live + scan*percent/100 and its minimum heap, 4 MiB *
// percent/100: the percentage is the smaller of the one that puts the
// first at the floor and the one that puts the second there.
func percent(floor, live, scan uint64) int {
	if scan == 0 || live >= floor {
		return basePercent
	}
	return max(basePercent, int(min((floor-live)*100/scan, floor*100/minimumHeap)))
}

// minimumHeap is the runtime's goal at GOGC=100 for the smallest heaps.
const minimumHeap = 4 << 20
