package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/testenv"
	"github.com/handshaked/handshaked/internal/testpki"
)

// TestNSSClient: NSS (Firefox's TLS stack, through its tstclnt), another
// implementation independent of Go's, OpenSSL's and GnuTLS's, completes
// handshakes through the edge, in each of its stepping modes, in TLS 1.3
// and 1.2 (ECDHE with each key, and RSA key exchange) and resumes them
// from the service's session tickets when it reconnects: each run's first
// connection is a full handshake, the ones after it resume. NSS does not take a self-signed CA certificate as
// a server's, so the keys get certificates from a test CA the client
// trusts, issued from the vault's CSRs.
func TestNSSClient(t *testing.T) {
	tstclnt := testenv.LookPath(t, "tstclnt")
	certutil := testenv.LookPath(t, "certutil")
	f := newTicketFixture(t)
	ca, err := testpki.NewCA("NSS test CA")
	require.NoError(t, err)
	ctx := context.Background()
	kv := pb.NewKeyVaultClient(f.srv.Conn)
	for _, k := range []struct{ id, name string }{{f.ecdsa.ID, f.ecdsa.Name}, {f.rsa.ID, f.rsa.Name}} {
		csr, err := kv.CreateCertificateSigningRequest(ctx, &pb.CreateCertificateSigningRequestRequest{
			Key: k.id, Version: 1, CommonName: k.name, DnsNames: []string{k.name}})
		require.NoError(t, err)
		der, err := ca.SignCSR(csr.GetDer())
		require.NoError(t, err)
		_, err = kv.AttachCertificateChain(ctx, &pb.AttachCertificateChainRequest{Key: k.id, Version: 1, CertificateChain: [][]byte{der}})
		require.NoError(t, err)
	}
	dir := t.TempDir()
	db := "sql:" + dir
	caFile := filepath.Join(dir, "ca.pem")
	require.NoError(t, os.WriteFile(caFile, ca.PEM, 0o600))
	for _, args := range [][]string{
		{"-N", "-d", db, "--empty-password"},
		{"-A", "-d", db, "-n", "test-ca", "-t", "C,,", "-a", "-i", caFile},
	} {
		out, err := exec.Command(certutil, args...).CombinedOutput()
		require.NoError(t, err, "certutil %v:\n%s", args, out)
	}

	runs := []struct {
		name, versions, cipher, server string
		connections                    int
		// What the edge's page says of the handshakes; suite "": NSS's
		// choice, the same in every connection.
		version, suite, signature string
	}{
		{"TLS 1.3 ECDSA", "tls1.3:tls1.3", "", f.ecdsa.Name, 3, "TLS 1.3", "", "Signature scheme: ECDSAWithP256AndSHA256"},
		{"TLS 1.3 RSA ChaCha20", "tls1.3:tls1.3", ":1303", f.rsa.Name, 1, "TLS 1.3", "TLS_CHACHA20_POLY1305_SHA256", "Signature scheme: PSSWithSHA256"},
		{"TLS 1.2 ECDHE ECDSA", "tls1.2:tls1.2", "", f.ecdsa.Name, 3, "TLS 1.2", "", "Signature scheme: ECDSAWithP256AndSHA256"},
		{"TLS 1.2 ECDHE RSA ChaCha20", "tls1.2:tls1.2", ":CCA8", f.rsa.Name, 1, "TLS 1.2", "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256", "Signature scheme: PSSWithSHA256"},
		{"TLS 1.2 RSA key exchange", "tls1.2:tls1.2", ":009C", f.rsa.Name, 1, "TLS 1.2", "TLS_RSA_WITH_AES_128_GCM_SHA256", "Signature scheme: none (RSA key exchange)"},
	}
	for _, m := range edgeModes {
		addr, _ := f.start(t, m.args...)
		host, port, err := net.SplitHostPort(addr)
		require.NoError(t, err)
		for _, r := range runs {
			t.Run(m.name+"/"+r.name, func(t *testing.T) {
				request := filepath.Join(t.TempDir(), "request")
				require.NoError(t, os.WriteFile(request, []byte("GET / HTTP/1.0\r\nHost: "+r.server+"\r\n\r\n"), 0o600))
				// -u offers session tickets, -G extended master secret (RFC
				// 7627), -L reconnects with the same session cache. tstclnt
				// (NSS 3.87) aborts on reconnecting when -c chose the suites,
				// so the runs that resume keep NSS's own list.
				args := []string{"-h", host, "-p", port, "-a", r.server, "-d", db, "-V", r.versions, "-u", "-G", "-A", request}
				if r.cipher != "" {
					args = append(args, "-c", r.cipher)
				}
				if r.connections > 1 {
					args = append(args, "-L", strconv.Itoa(r.connections))
				}
				out, err := exec.CommandContext(t.Context(), tstclnt, args...).CombinedOutput()
				require.NoError(t, err, "tstclnt %s:\n%s", strings.Join(args, " "), out)
				pages := strings.Split(string(out), "handshake-edge echo\n")[1:]
				require.Len(t, pages, r.connections, "pages served:\n%s", out)
				suite := r.suite
				if suite == "" {
					_, rest, _ := strings.Cut(pages[0], "Cipher suite: ")
					suite, _, _ = strings.Cut(rest, "\n")
				}
				for c, page := range pages {
					servedPage{client: "NSS", version: r.version, suite: suite, server: r.server, signature: r.signature, resumed: c > 0}.check(t, page, fmt.Sprintf("connection %d", c))
				}
			})
		}
	}
}
