package swaggerui

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io/fs"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestFilesMatchChecksums: every embedded file is one that fetch.sh
// extracted from the pinned tarball, byte for byte (SHA256SUMS), and every
// file SHA256SUMS names is embedded. An edited or replaced asset fails here.
func TestFilesMatchChecksums(t *testing.T) {
	sums, err := Files.ReadFile("SHA256SUMS")
	require.NoError(t, err)
	listed := map[string]bool{"SHA256SUMS": true}
	sc := bufio.NewScanner(bytes.NewReader(sums))
	for sc.Scan() {
		want, name, ok := strings.Cut(sc.Text(), "  ")
		require.True(t, ok, "SHA256SUMS line %q", sc.Text())
		b, err := Files.ReadFile(name)
		require.NoError(t, err, "%s is in SHA256SUMS but not embedded", name)
		got := sha256.Sum256(b)
		assert.Equal(t, want, hex.EncodeToString(got[:]), "%s differs from what fetch.sh fetched", name)
		listed[name] = true
	}
	require.NoError(t, sc.Err())
	err = fs.WalkDir(Files, ".", func(path string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			assert.True(t, listed[path], "%s is embedded but not in SHA256SUMS", path)
		}
		return err
	})
	require.NoError(t, err)
	assert.True(t, listed["LICENSE"] && listed["swagger-ui-bundle.js.LICENSE.txt"], "the licences are checked too")
}

// TestVersionIsThePin: VERSION (embedded) is the version fetch.sh pins.
func TestVersionIsThePin(t *testing.T) {
	script, err := os.ReadFile("fetch.sh")
	require.NoError(t, err)
	m := regexp.MustCompile(`(?m)^VERSION=(\S+)$`).FindSubmatch(script)
	require.NotNil(t, m, "fetch.sh has no VERSION= line")
	assert.Equal(t, string(m[1]), Version())
}
