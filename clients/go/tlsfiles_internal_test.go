package handshaked

import (
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/testenv"
	"github.com/handshaked/handshaked/internal/testpki"
)

// TestCABundleThatDoesNotLoadSaysSo: a changed bundle that does not load
// leaves the pool in force, and the log says which file and why; one that
// loads (comments around its blocks are no error) replaces the pool and
// the log says so too.
func TestCABundleThatDoesNotLoadSaysSo(t *testing.T) {
	one, err := testpki.NewCA("CA 1")
	require.NoError(t, err)
	two, err := testpki.NewCA("CA 2")
	require.NoError(t, err)
	file := filepath.Join(t.TempDir(), "ca.pem")
	require.NoError(t, os.WriteFile(file, one.PEM, 0o600))
	log := &testenv.Buffer{}
	ca, err := newCAFiles(file, "handshaked CA bundle", slog.New(slog.NewTextHandler(log, nil)))
	require.NoError(t, err)
	first := ca.get().pool
	assert.Empty(t, log.String(), "unchanged: nothing loaded, nothing said")

	require.NoError(t, os.WriteFile(file, []byte("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"), 0o600))
	assert.Same(t, first, ca.get().pool)
	assert.Contains(t, log.String(), `level=WARN msg="handshaked CA bundle: the changed file does not load, keeping the loaded one"`)
	assert.Contains(t, log.String(), file+": certificate 1: x509: malformed certificate")

	// Comments around the blocks, as in system bundles, are no error.
	require.NoError(t, os.WriteFile(file, append(append([]byte("subject=CN = CA 2\n"), two.PEM...), "# end\n"...), 0o600))
	assert.NotSame(t, first, ca.get().pool)
	assert.Contains(t, log.String(), `level=INFO msg="handshaked CA bundle reloaded" file=`+file)
}
