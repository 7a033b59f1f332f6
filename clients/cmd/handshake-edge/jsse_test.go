package main

import (
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
			assert.Contains(t, page, "JSSE protocol: "+r.protocol+"\n", "%s: connection %d:\n%s", mode, c, page)
			assert.Contains(t, page, "JSSE suite: "+r.suite+"\n", "%s: connection %d:\n%s", mode, c, page)
			assert.Contains(t, page, "TLS version: "+r.version+"\n", "%s: connection %d:\n%s", mode, c, page)
			assert.Contains(t, page, "Cipher suite: "+r.suite+"\n", "%s: connection %d:\n%s", mode, c, page)
			assert.Contains(t, page, "Server name: "+r.name+"\n", "%s: connection %d:\n%s", mode, c, page)
			if c == 0 {
				assert.Contains(t, page, "Resumed: no (full handshake)\n", "%s: connection %d:\n%s", mode, c, page)
				assert.Contains(t, page, r.signature+"\n", "%s: connection %d:\n%s", mode, c, page)
			} else {
				assert.Contains(t, page, "Resumed: yes", "%s: connection %d: JSSE did not resume:\n%s", mode, c, page)
				assert.Contains(t, page, "Signature scheme: none (resumed)\n", "%s: connection %d:\n%s", mode, c, page)
			}
			if r.version == "TLS 1.2" {
				// JSSE offers RFC 7627's extension; the edge must use it.
				assert.Contains(t, page, "Extended master secret: true\n", "%s: connection %d:\n%s", mode, c, page)
			}
		}
	}
}
