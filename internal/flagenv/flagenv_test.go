package flagenv

import (
	"flag"
	"io"
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

func TestName(t *testing.T) {
	assert.Equal(t, "HANDSHAKE_EDGE_CLIENT_CA", Name("HANDSHAKE_EDGE_", "client-ca"))
	assert.Equal(t, "HANDSHAKED_LISTEN", Name("HANDSHAKED_", "listen"))
}

func TestApply(t *testing.T) {
	env := map[string]string{"P_A": "env-a", "P_B": "env-b", "P_MAX_N": "7", "P_VERSION": "true"}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	a := fs.String("a", "", "")
	b := fs.String("b", "", "")
	c := fs.String("c", "default-c", "")
	n := fs.Int("max-n", 0, "")
	version := fs.Bool("version", false, "")
	require.NoError(t, fs.Parse([]string{"-a", "flag-a"}))
	set, err := Apply(fs, "P_", lookup, "version")
	require.NoError(t, err)
	assert.Equal(t, "flag-a", *a, "the command line wins")
	assert.Equal(t, "env-b", *b)
	assert.Equal(t, "default-c", *c, "no variable: the default")
	assert.Equal(t, 7, *n)
	assert.False(t, *version, "an excepted flag is not read from the environment")
	assert.ElementsMatch(t, []string{"b", "max-n"}, set)

	env["P_MAX_N"] = "seven"
	fs2 := flag.NewFlagSet("t", flag.ContinueOnError)
	fs2.SetOutput(io.Discard)
	fs2.Int("max-n", 0, "")
	_, err = Apply(fs2, "P_", lookup)
	assert.ErrorContains(t, err, "P_MAX_N")
}
