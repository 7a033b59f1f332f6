// Package procstat reads what Linux's /proc says of a process: what the
// benchmarks need to measure the CPU time a server process spends, from
// outside it.
package procstat

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// clockTicks is the unit of /proc/<pid>/stat's times (USER_HZ, 100 on
// Linux).
const clockTicks = 100

// CPUTime is the CPU time (user and system, all its threads) process pid
// has used so far, from /proc/<pid>/stat (utime and stime, fields 14 and
// 15).
func CPUTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, fmt.Errorf("CPU time (Linux /proc only): %w", err)
	}
	// The command name (field 2) may hold spaces: fields count from the
	// closing parenthesis.
	i := strings.LastIndexByte(string(b), ')')
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	var ticks int64
	for _, s := range f[11:13] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / clockTicks, nil
}

// Scheduling is what the kernel's scheduler has done with a process's
// threads so far: what latency measurements need to see where a request
// waited.
type Scheduling struct {
	// RunQueueWait is the time the threads spent runnable, waiting for a
	// CPU (the second field of /proc/<pid>/task/<tid>/schedstat).
	RunQueueWait time.Duration
	// Wakeups counts the times a thread went to sleep and was woken
	// again: its voluntary context switches (/proc/<pid>/task/<tid>/status).
	Wakeups int64
}

// Sub is what happened between an earlier reading and s.
func (s Scheduling) Sub(earlier Scheduling) Scheduling {
	return Scheduling{RunQueueWait: s.RunQueueWait - earlier.RunQueueWait, Wakeups: s.Wakeups - earlier.Wakeups}
}

// SchedulingOf sums the Scheduling of every thread process pid has now; a
// thread that has ended no longer counts.
func SchedulingOf(pid int) (Scheduling, error) {
	dir := "/proc/" + strconv.Itoa(pid) + "/task/"
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return Scheduling{}, fmt.Errorf("scheduling (Linux /proc only): %w", err)
	}
	var s Scheduling
	for _, t := range tasks {
		stat, err := os.ReadFile(dir + t.Name() + "/schedstat")
		if os.IsNotExist(err) {
			continue // the thread ended meanwhile
		}
		if err != nil {
			return Scheduling{}, err
		}
		f := strings.Fields(string(stat))
		if len(f) != 3 {
			return Scheduling{}, fmt.Errorf("%s%s/schedstat: %d fields", dir, t.Name(), len(f))
		}
		wait, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			return Scheduling{}, fmt.Errorf("%s%s/schedstat: %w", dir, t.Name(), err)
		}
		status, err := os.ReadFile(dir + t.Name() + "/status")
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			return Scheduling{}, err
		}
		_, rest, ok := strings.Cut(string(status), "\nvoluntary_ctxt_switches:")
		line, _, _ := strings.Cut(rest, "\n")
		n, err := strconv.ParseInt(strings.TrimSpace(line), 10, 64)
		if !ok || err != nil {
			return Scheduling{}, fmt.Errorf("%s%s/status: no voluntary_ctxt_switches", dir, t.Name())
		}
		s.RunQueueWait += time.Duration(wait)
		s.Wakeups += n
	}
	return s, nil
}
