package engine

import (
	"crypto/tls"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/testenv"
)

func TestIsIPLiteral(t *testing.T) {
	for name, want := range map[string]bool{
		"127.0.0.1": true, "::1": true, "[::1]": true, "fe80::1%eth0": true, "2001:db8::1": true,
		"": false, "example.com": false, "10.0.0.1a": false, "[example.com]": false, "1234": false, "[::1": false,
	} {
		assert.Equal(t, want, isIPLiteral(name), "isIPLiteral(%q)", name)
	}
}

// TestIPLiteralServerName: a client that puts an IP address in server_name
// (RFC 6066, Section 3 says it must not; wrk and openssl -servername do)
// completes its handshake with the default certificate, the name counting
// as absent; a malformed name that is not an address still ends it with
// illegal_parameter (TestMalformedInput).
func TestIPLiteralServerName(t *testing.T) {
	p := getPKI(t)
	cfg := serverConfig(p.p256)
	for _, name := range []string{"10.1.2.3", "[::1]", "::1"} {
		for _, vers := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
			c := clientConfig(p, "p256.example.com")
			c.MinVersion, c.MaxVersion = vers, vers
			m := parseHello(t, captureClientHello(t, c))
			m.serverName = name
			res, _ := stepAll(t, &cfg, helloRecord(m))
			assert.Equal(t, NeedInput, res.State, "%s, %s: %s", name, versionName(vers), res.Reason)
		}
	}

	testenv.LookPath(t, "openssl")
	roots := rootsPEM(t, p)
	for _, vers := range []string{"-tls1_2", "-tls1_3"} {
		t.Run(vers, func(t *testing.T) {
			port, done := externalServer(t, cfg, pingPong)
			out, err := runClient(t, string(ping)+"\n", string(pong), "openssl", "s_client", "-connect", "127.0.0.1:"+port,
				"-servername", "127.0.0.1", "-CAfile", roots, "-quiet", vers)
			res := <-done
			require.Truef(t, res.err == nil && err == nil, "server: %v\nclient: %v\n%s", res.err, err, out)
			assert.Empty(t, res.session.ServerName, "an IP literal is not a server name")
		})
	}
}
