package edge

import (
	"crypto/tls"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	handshaked "github.com/handshaked/handshaked/clients/go"
)

// BenchmarkFleetHandshakes: full TLS 1.3 and 1.2 handshakes (and a 4-byte
// exchange) through an edge over one replica and over three, streamed and
// stepped statelessly, clients in parallel. cpu-ns/op is the CPU time of
// the whole process (clients, edge and replicas) per handshake, which
// other programs on the machine do not skew as they do ns/op. All run in
// this one process, so three replicas share its cores: the figure is what
// balancing and stateless steps cost, not what more machines add.
func BenchmarkFleetHandshakes(b *testing.B) {
	for _, version := range []uint16{tls.VersionTLS13, tls.VersionTLS12} {
		for _, replicas := range []int{1, 3} {
			for _, unary := range []bool{false, true} {
				mode := "stream"
				if unary {
					mode = "stateless"
				}
				b.Run(fmt.Sprintf("%s/replicas=%d/%s", tls.VersionName(version), replicas, mode), func(b *testing.B) {
					f := newFleet(b, replicas, handshaked.DefaultRetries, unary)
					b.ResetTimer()
					cpu := cpuTime(b)
					b.RunParallel(func(pb *testing.PB) {
						for pb.Next() {
							require.NoError(b, f.handshake(version))
						}
					})
					b.ReportMetric(float64(cpuTime(b)-cpu)/float64(b.N), "cpu-ns/op")
				})
			}
		}
	}
}

// cpuTime is the CPU time the process has used, user and system.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	require.NoError(b, syscall.Getrusage(syscall.RUSAGE_SELF, &ru))
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
