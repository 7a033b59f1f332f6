package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/testenv"
)

// TestJSSEClient: Java's TLS stack (JSSE), independent of the Go, OpenSSL
// and GnuTLS clients the other tests drive, completes handshakes through
// the edge, in each of its stepping modes, in TLS 1.3 and 1.2 (ECDHE with
// each key, and RSA key exchange) and resumes them from the session
// tickets the service seals: each run's
// first connection is a full handshake, the ones after it resume. JSSE
// names what it negotiated and the edge's page what it did; both must
// agree with the run asked for.
func TestJSSEClient(t *testing.T) {
	java := testenv.LookPath(t, "java")
	f := newTicketFixture(t)
	ca := filepath.Join(t.TempDir(), "ca.pem")
	require.NoError(t, os.WriteFile(ca, []byte(f.ecdsa.CertPEM+f.rsa.CertPEM), 0o600))

	cases := []struct {
		protocol, suite, name string
		connections           int
		// What the edge's page says (JSSE names suites as the edge does);
		// signature: of the full handshake.
		version, signature string
	}{
		{"TLSv1.3", "TLS_AES_128_GCM_SHA256", f.ecdsa.Name, 3, "TLS 1.3", "Signature scheme: ECDSAWithP256AndSHA256"},
		{"TLSv1.3", "TLS_CHACHA20_POLY1305_SHA256", f.rsa.Name, 2, "TLS 1.3", "Signature scheme: PSSWithSHA256"},
		{"TLSv1.2", "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", f.ecdsa.Name, 3, "TLS 1.2", "Signature scheme: ECDSAWithP256AndSHA256"},
		{"TLSv1.2", "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256", f.rsa.Name, 1, "TLS 1.2", "Signature scheme: PSSWithSHA256"},
		{"TLSv1.2", "TLS_RSA_WITH_AES_128_GCM_SHA256", f.rsa.Name, 2, "TLS 1.2", "Signature scheme: none (RSA key exchange)"},
	}
	// Every case against the edge in each of its stepping modes, in one
	// run of the JVM (its start is most of the test's time).
	type run struct {
		mode string
		c    int // in cases
	}
	var runs []run
	// -XX:-UsePerfData: no hsperfdata directory left in the system's
	// temporary directory.
	args := []string{"-XX:-UsePerfData", filepath.Join("testdata", "JSSEClient.java"), "127.0.0.1", ca}
	for _, m := range edgeModes {
		addr, _ := f.start(t, m.args...)
		_, port, err := net.SplitHostPort(addr)
		require.NoError(t, err)
		for i, c := range cases {
			runs = append(runs, run{m.name, i})
			args = append(args, strings.Join([]string{port, c.protocol, c.suite, strconv.Itoa(c.connections), c.name}, ","))
		}
	}
	out, err := exec.Command(java, args...).CombinedOutput()
	require.NoError(t, err, "java %s:\n%s", strings.Join(args, " "), out)

	// The output is "=== run i connection j" sections, in order.
	sections := strings.Split(string(out), "=== run ")[1:]
	want := 0
	for _, r := range runs {
		want += cases[r.c].connections
	}
	require.Len(t, sections, want, "connections reported:\n%s", out)
	for _, run := range runs {
		r, mode := cases[run.c], run.mode
		for c := range r.connections {
			page := sections[0]
			sections = sections[1:]
			where := fmt.Sprintf("%s: connection %d", mode, c)
			assert.Contains(t, page, "JSSE protocol: "+r.protocol+"\n", "%s:\n%s", where, page)
			assert.Contains(t, page, "JSSE suite: "+r.suite+"\n", "%s:\n%s", where, page)
			servedPage{client: "JSSE", version: r.version, suite: r.suite, server: r.name, signature: r.signature, resumed: c > 0}.check(t, page, where)
		}
	}
}
