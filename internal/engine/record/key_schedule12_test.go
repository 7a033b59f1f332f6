package record

import (
	"crypto/tls"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/testenv"
)

// TestPRF12AgreesWithCryptoTLS checks PRF12 against crypto/tls's own TLS
// 1.2 PRF, through the keying material exporter: without a context it is
// PRF(master_secret, label, client_random + server_random) cut to the
// length asked (RFC 5705, Section 4). The lengths cover one block of the
// hash and a byte less or more, several blocks, and the ones the handshake
// asks for (a Finished's 12 bytes, a master secret's 48, a key block's 40
// and 72), so that each block and each A(i) of P_hash (RFC 5246, Section
// 5) is checked, with SHA-256 and SHA-384. One Secret12 gives every
// length in turn, as a handshake takes its key block and both Finished
// from one: nothing of an output carries over into the next.
func TestPRF12AgreesWithCryptoTLS(t *testing.T) {
	for _, id := range []uint16{tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384} {
		t.Run(suiteName(id), func(t *testing.T) {
			suite, ok := SuiteByID(id)
			require.True(t, ok)
			clientConf, serverConf := configs(tls.VersionTLS12, id)
			sess := dial(t, clientConf, serverConf)
			entry, ok := testenv.KeyLog(t, sess.keyLog)["CLIENT_RANDOM"]
			require.True(t, ok, "no CLIENT_RANDOM in the key log")
			clientRandom, master := entry[0], entry[1]
			serverHello := splitRecords(t, sess.serverTap.captured(), MaxCiphertextTLS12)[0].body
			require.Equal(t, byte(2), serverHello[0], "first server record is not a ServerHello")
			seed := append(append([]byte{}, clientRandom...), serverHello[6:38]...)
			state := sess.client.ConnectionState()
			keyed := NewSecret12(suite.Hash, master)
			for _, n := range []int{1, 12, 31, 32, 33, 40, 47, 48, 49, 64, 72, 96, 97, 200} {
				label := fmt.Sprintf("EXPORTER-handshaked-%d", n)
				want, err := state.ExportKeyingMaterial(label, nil, n)
				require.NoError(t, err)
				assert.Equal(t, want, PRF12(suite.Hash, master, label, seed, n), "%d bytes", n)
				assert.Equal(t, want, keyed.PRF(label, seed, n), "%d bytes, from the Secret12 of the earlier lengths", n)
			}
		})
	}
}
