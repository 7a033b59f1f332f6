package service

import goruntime "runtime"

// streamWorkers is how many long-lived goroutines serve gRPC calls (0: a
// new goroutine per call, grpc's default). Calls beyond them still get a
// goroutine of their own, so a slow call never blocks the others. One per
// core is enough: the work they save is CPU work.
var streamWorkers = goruntime.GOMAXPROCS(0)
