package testenv

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"strconv"
	"sync"
	"testing"
)

// FreePorts returns n different loopback TCP ports free a moment ago, for
// processes a test starts later (a README block, etcd members) to listen
// on. They come from below the kernel's ephemeral range
// (net.ipv4.ip_local_port_range): a port the kernel handed out for :0 is
// one it may hand out again, as the local end of any outgoing connection,
// before the process meant to listen on it starts (a replica of the
// README's fleet once found its REST port taken by a connection to etcd).
// A port is handed out once per test binary, and not to another test
// binary while this one runs (claim): go test ./... runs packages' tests
// at once, and a README script starts its servers on the ports it was
// given a minute later, after its builds.
func FreePorts(t testing.TB, n int) []int {
	t.Helper()
	ports := make([]int, 0, n)
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for len(ports) < n {
		l, err := reservePort()
		if err != nil {
			t.Fatalf("reserve a loopback port: %v", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

var (
	portsMu   sync.Mutex
	handedOut = map[int]bool{}
)

// reservePort listens on a loopback port below the ephemeral range that
// this binary has not handed out, or on any free port when the range
// leaves none below it.
func reservePort() (net.Listener, error) {
	portsMu.Lock()
	defer portsMu.Unlock()
	low := ephemeralLow()
	const first = 10000 // above the ports of well-known services
	for range 1000 {
		if low <= first {
			break
		}
		p := first + rand.IntN(low-first)
		if handedOut[p] {
			continue
		}
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			continue // taken
		}
		if !claim(p) {
			l.Close()
			continue // another test binary's
		}
		handedOut[p] = true
		return l, nil
	}
	return net.Listen("tcp", "127.0.0.1:0")
}

// claims holds, for the life of the test binary, the claims on the ports
// it handed out.
var claims []net.Listener

// claim tells the test binaries running at once that this one hands out
// port p, unless another one did: on Linux, by listening on an abstract
// Unix socket named after it, which leaves no file and ends with the
// process, however it ends. (Elsewhere there is no claim, and the ports
// one binary handed out may go to another.)
func claim(p int) bool {
	if runtime.GOOS != "linux" {
		return true
	}
	l, err := net.Listen("unix", "@handshaked-test-port-"+strconv.Itoa(p))
	if err != nil {
		return false
	}
	claims = append(claims, l)
	return true
}

// ephemeralLow is the first port of the kernel's ephemeral range (Linux;
// elsewhere the IANA range's).
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	var low, high int
	if err == nil {
		if _, err = fmt.Sscan(string(b), &low, &high); err == nil {
			return low
		}
	}
	return 49152
}

// FreePort is one loopback TCP port free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	return FreePorts(t, 1)[0]
}

// FreeAddr is a loopback address (127.0.0.1:port) nothing listened on a
// moment ago.
func FreeAddr(t testing.TB) string {
	t.Helper()
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(FreePort(t)))
}
