package configdoc

import (
	"flag"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

func sample() Binary {
	fs := flag.NewFlagSet("tool", flag.ContinueOnError)
	fs.String("listen", "127.0.0.1:8443", "TCP `address` to accept | clients on")
	fs.Duration("timeout", 10*time.Second, "bound on each call")
	fs.Bool("version", false, "print the build")
	return Binary{Name: "tool", Flags: fs,
		Env: func(name string) string {
			if name == "version" {
				return ""
			}
			return "TOOL_" + strings.ToUpper(name)
		},
		FileKey:  func(name string) string { return name },
		MoreEnv:  []Var{{"TOOL_SECRET", "the secret"}},
		Commands: []string{"b: second", "a: first"},
	}
}

func TestRender(t *testing.T) {
	got := Render(sample())
	assert.Equal(t, begin("tool")+`
| Flag | Environment variable | Config file key | Default | Meaning |
|---|---|---|---|---|
| `+"`-listen address` | `TOOL_LISTEN` | `listen` | `127.0.0.1:8443` | TCP address to accept \\| clients on |"+`
| `+"`-timeout duration` | `TOOL_TIMEOUT` | `timeout` | `10s` | bound on each call |"+`
| `+"`-version` |  | `version` | `false` | print the build |"+`

Environment variables that are not flags:

| Variable | Meaning |
|---|---|
| `+"`TOOL_SECRET` | the secret |"+`

Commands (`+"`tool COMMAND -h`"+` lists a command's own flags):

- `+"`a: first`"+`
- `+"`b: second`"+`
`+end("tool")+"\n", got)
}

func TestReplace(t *testing.T) {
	doc := "# Title\n\nintro\n\n" + begin("tool") + "\nstale\n" + end("tool") + "\n\nafter\n"
	out, err := replace(doc, "tool", Render(sample()))
	require.NoError(t, err)
	assert.Equal(t, "# Title\n\nintro\n\n"+Render(sample())+"\nafter\n", out)
	again, err := replace(out, "tool", Render(sample()))
	require.NoError(t, err)
	assert.Equal(t, out, again, "rendering twice changes nothing")

	_, err = replace("# no markers\n", "tool", Render(sample()))
	assert.ErrorContains(t, err, "no section for tool")
}
