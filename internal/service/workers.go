package service

import goruntime "runtime"

// streamWorkers is how many long-lived goroutines serve gRPC calls (0: a
// new goroutine per call, grpc's default). A call that finds them all busy
// gets a goroutine of its own, which pays the stack growth again, so there
// are as many as the calls a loaded server has in flight, not one per
// core (measured in issue 12's note: 2 workers left most calls of 16
// concurrent callers on fresh goroutines). A stream holds its worker while
// it is open. An idle worker costs its stack, a few KiB.
var streamWorkers = max(64, 16*goruntime.GOMAXPROCS(0))

// batchParallelism is how many operations of one batch run at once: they
// are CPU work, so more than the cores would only queue.
func batchParallelism() int { return goruntime.GOMAXPROCS(0) }
