package heapfloor

import (
	"os"
	"os/exec"
	"runtime"
	"runtime/metrics"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

func readUint(name string) uint64 {
	s := []metrics.Sample{{Name: name}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// afterGC collects and waits until the cleanup of that cycle has set the
// percentage, which then holds until the next cycle.
func afterGC(t *testing.T, want func(pct uint64) bool) uint64 {
	var pct uint64
	require.Eventually(t, func() bool {
		runtime.GC()
		time.Sleep(time.Millisecond) // the cleanup runs on its own goroutine
		pct = readUint("/gc/gogc:percent")
		return want(pct)
	}, 5*time.Second, 10*time.Millisecond)
	return pct
}

var live [][]byte

// TestFloor: with a small live heap the goal sits at the floor (not at 4
// MiB, not far above it: stacks and globals count in the runtime's goal);
// once the live heap passes the floor, collections are paced as with GOGC
// at its default, so a large heap takes no more memory than without.
func TestFloor(t *testing.T) {
	if os.Getenv("HEAPFLOOR_CHILD") != "" {
		childWithGOGC(t)
		return
	}
	require.NoError(t, os.Unsetenv("GOGC"))
	const floor = 32 << 20
	Start(floor)

	afterGC(t, func(pct uint64) bool { return pct > basePercent })
	goal := readUint("/gc/heap/goal:bytes")
	assert.InDelta(t, floor, goal, floor/8, "heap goal %d with a live heap of %d", goal, readUint(liveHeap))

	for range 48 { // 48 MiB live, above the floor
		live = append(live, make([]byte, 1<<20))
	}
	afterGC(t, func(pct uint64) bool { return pct == basePercent })
	goal = readUint("/gc/heap/goal:bytes")
	assert.Greater(t, goal, uint64(2*48<<20), "the default pacing: the live heap doubled")
	assert.Less(t, goal, uint64(2*60<<20))

	live = nil
	afterGC(t, func(pct uint64) bool { return pct > basePercent })
	assert.InDelta(t, floor, readUint("/gc/heap/goal:bytes"), floor/8, "back at the floor once the heap is small again")
}

// TestOperatorGOGC: GOGC set by the operator is left alone.
func TestOperatorGOGC(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run", "^TestFloor$", "-test.v")
	cmd.Env = append(os.Environ(), "HEAPFLOOR_CHILD=1", "GOGC=50")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Contains(t, string(out), "--- PASS: TestFloor")
}

func childWithGOGC(t *testing.T) {
	Start(64 << 20)
	for range 3 {
		runtime.GC()
	}
	time.Sleep(50 * time.Millisecond)
	runtime.GC()
	assert.Equal(t, uint64(50), readUint("/gc/gogc:percent"))
}

func TestPercent(t *testing.T) {
	const mib = 1 << 20
	for _, c := range []struct {
		name             string
		floor, live, scn uint64
		want             int
	}{
		{"small heap: the runtime's minimum heap at the floor", 64 * mib, 1 * mib, 2 * mib, 1600},
		{"small heap: goal at the floor", 64 * mib, 8 * mib, 16 * mib, 350},
		{"half the floor live: the default already reaches it", 64 * mib, 32 * mib, 40 * mib, basePercent},
		{"live above the floor", 64 * mib, 100 * mib, 110 * mib, basePercent},
		{"nothing measured yet", 64 * mib, 0, 0, basePercent},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := percent(c.floor, c.live, c.scn)
			assert.Equal(t, c.want, p)
			if p > basePercent {
				goal := max(c.live+c.scn*uint64(p)/100, minimumHeap*uint64(p)/100)
				assert.InDelta(t, c.floor, goal, mib, "the runtime's goal for this percentage")
			}
		})
	}
}
