package deploy

import (
	"bufio"
	"bytes"
	"debug/buildinfo"
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(removeRelease{m})) }

// removeRelease runs the tests, then removes the release build they shared.
type removeRelease struct{ m *testing.M }

func (r removeRelease) Run() int {
	code := r.m.Run()
	if releaseDir != "" {
		os.RemoveAll(releaseDir)
	}
	return code
}

var (
	releaseOnce sync.Once
	releaseDir  string
	releaseErr  error
)

// release is deploy/build.sh's output, built once for the tests that need
// the binaries.
func release(t *testing.T) string {
	t.Helper()
	releaseOnce.Do(func() {
		releaseDir, releaseErr = os.MkdirTemp("", "release")
		if releaseErr != nil {
			return
		}
		cmd := exec.Command("sh", "build.sh", releaseDir)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=1") // build.sh must turn cgo off itself
		if out, err := cmd.CombinedOutput(); err != nil {
			releaseErr = fmt.Errorf("deploy/build.sh: %w: %s", err, out)
		}
	})
	require.NoError(t, releaseErr)
	return releaseDir
}

// binaries are what deploy/build.sh builds and the image holds.
var binaries = []string{"handshaked", "handshakectl", "handshake-edge"}

// instruction is one Dockerfile instruction, continuation lines joined.
type instruction struct {
	cmd  string // upper case: FROM, RUN, ENV...
	args string
}

// readDockerfile splits deploy/Dockerfile into its instructions.
func readDockerfile(t *testing.T) []instruction {
	t.Helper()
	data, err := os.ReadFile("Dockerfile")
	require.NoError(t, err)
	var out []instruction
	var cur strings.Builder
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if cur.Len() == 0 && (line == "" || strings.HasPrefix(line, "#")) {
			continue
		}
		if more, ok := strings.CutSuffix(line, `\`); ok {
			cur.WriteString(more + " ")
			continue
		}
		cur.WriteString(line)
		cmd, args, _ := strings.Cut(cur.String(), " ")
		out = append(out, instruction{strings.ToUpper(cmd), strings.TrimSpace(args)})
		cur.Reset()
	}
	require.Zero(t, cur.Len(), "Dockerfile ends in a continuation line")
	return out
}

// imageEnv is the ENV of the Dockerfile's last stage.
func imageEnv(t *testing.T) map[string]string {
	t.Helper()
	env := map[string]string{}
	for _, in := range readDockerfile(t) {
		switch in.cmd {
		case "FROM":
			clear(env)
		case "ENV":
			for _, kv := range strings.Fields(in.args) {
				k, v, ok := strings.Cut(kv, "=")
				require.True(t, ok, "ENV %q: want KEY=VALUE pairs", in.args)
				env[k] = v
			}
		}
	}
	return env
}

// TestDockerfile: the image is built by deploy/build.sh (the build CI
// checks), on an empty base, as a numeric non-root user, with the binaries
// build.sh makes, a health check and the mounts' paths in its settings.
func TestDockerfile(t *testing.T) {
	var stages, froms []string
	var user, entrypoint, healthcheck string
	var runs, copies []string
	for _, in := range readDockerfile(t) {
		switch in.cmd {
		case "FROM":
			froms = append(froms, in.args)
			stages = append(stages, in.args)
			user, copies = "", nil
		case "RUN":
			runs = append(runs, in.args)
		case "COPY":
			copies = append(copies, in.args)
		case "USER":
			user = in.args
		case "ENTRYPOINT":
			entrypoint = in.args
		case "HEALTHCHECK":
			healthcheck = in.args
		}
	}
	require.GreaterOrEqual(t, len(froms), 2, "a multi-stage build")
	assert.Equal(t, "scratch", froms[len(froms)-1], "the final stage has nothing but what it copies")
	assert.Regexp(t, `^golang:1\.26\.\d+-bookworm AS build$`, froms[0], "the build stage's Go matches go.mod's")
	assert.True(t, strings.Contains(strings.Join(runs, "\n"), "sh deploy/build.sh /out"), "the image's binaries come from deploy/build.sh: %q", runs)
	for _, b := range binaries {
		assert.True(t, strings.Contains(strings.Join(copies, "\n"), "/out/"+b), "the image holds %s", b)
	}
	assert.Regexp(t, `^[1-9][0-9]*:[1-9][0-9]*$`, user, "a numeric non-root user and group (runAsNonRoot can check it)")
	assert.Equal(t, `["/handshaked"]`, entrypoint)
	assert.Contains(t, healthcheck, `CMD ["/handshaked", "health"]`)

	env := imageEnv(t)
	assert.Equal(t, "production", env["HANDSHAKED_MODE"])
	for _, k := range []string{"HANDSHAKED_DATA_DIR", "HANDSHAKED_KEK_FILE", "HANDSHAKED_TLS_CERT", "HANDSHAKED_TLS_KEY", "HANDSHAKED_CLIENT_CA", "HANDSHAKED_POLICY"} {
		assert.True(t, strings.HasPrefix(env[k], "/var/lib/handshaked") || strings.HasPrefix(env[k], "/etc/handshaked/"), "%s=%q: data under /var/lib/handshaked, secrets under /etc/handshaked", k, env[k])
	}
	assert.NotContains(t, env, "HANDSHAKED_KEK", "no key in the image")
}

// TestReleaseBuildIsStatic: what deploy/build.sh builds, the image's
// binaries, are static executables (no program interpreter, no shared
// library) built without cgo even when the environment asks for it, with
// paths trimmed and symbols stripped, so they run on the image's empty
// base.
func TestReleaseBuildIsStatic(t *testing.T) {
	out := release(t)
	for _, name := range binaries {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(out, name)
			problems, err := staticProblems(path)
			require.NoError(t, err)
			assert.Empty(t, problems, "%s is not static", path)
			info, err := buildinfo.ReadFile(path)
			require.NoError(t, err)
			settings := map[string]string{}
			for _, s := range info.Settings {
				settings[s.Key] = s.Value
			}
			assert.Equal(t, "0", settings["CGO_ENABLED"])
			assert.Equal(t, "true", settings["-trimpath"])
			f, err := elf.Open(path)
			require.NoError(t, err)
			defer f.Close()
			_, err = f.Symbols()
			assert.ErrorIs(t, err, elf.ErrNoSymbols, "symbols are stripped (-ldflags=-s)")
			assert.NotContains(t, settings["-tags"], "pkcs11", "the cgo PKCS#11 backend is not in the default build")
		})
	}
	t.Run("version", func(t *testing.T) {
		b, err := exec.Command(filepath.Join(out, "handshaked"), "-version").CombinedOutput()
		require.NoError(t, err, "%s", b)
		assert.Regexp(t, `^handshaked .* go1\.`, string(b))
	})
}

// staticProblems says why path is not a static ELF executable; none when
// it is one.
func staticProblems(path string) ([]string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var problems []string
	if f.Type != elf.ET_EXEC {
		problems = append(problems, fmt.Sprintf("ELF type %v, not a fixed-address executable (a PIE needs a loader)", f.Type))
	}
	for _, p := range f.Progs {
		switch p.Type {
		case elf.PT_INTERP:
			problems = append(problems, "it names a program interpreter")
		case elf.PT_DYNAMIC:
			problems = append(problems, "it has a dynamic section")
		}
	}
	libs, err := f.ImportedLibraries()
	if err != nil {
		return nil, err
	}
	if len(libs) > 0 {
		problems = append(problems, fmt.Sprintf("it needs shared libraries %q", libs))
	}
	return problems, nil
}

// TestStaticCheckFailsOnADynamicBinary: the static check finds problems in
// a dynamically linked program (the system's sh), so it cannot pass on
// anything.
func TestStaticCheckFailsOnADynamicBinary(t *testing.T) {
	sh, err := exec.LookPath("sh")
	require.NoError(t, err)
	sh, err = filepath.EvalSymlinks(sh)
	require.NoError(t, err)
	problems, err := staticProblems(sh)
	require.NoError(t, err)
	assert.NotEmpty(t, problems, "%s passed as static", sh)
}

var flagLine = regexp.MustCompile(`(?m)^  -([a-z0-9-]+)`)

// handshakedFlags are the flags handshaked -h lists.
func handshakedFlags(t *testing.T, binary string) map[string]bool {
	t.Helper()
	b, _ := exec.Command(binary, "-h").CombinedOutput()
	flags := map[string]bool{}
	for _, m := range flagLine.FindAllStringSubmatch(string(b), -1) {
		flags[m[1]] = true
	}
	require.NotEmpty(t, flags, "handshaked -h: %s", b)
	return flags
}

// envFlag is the flag a HANDSHAKED_* variable sets, "" for HANDSHAKED_KEK.
func envFlag(name string) string {
	if name == "HANDSHAKED_KEK" {
		return ""
	}
	return strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(name, "HANDSHAKED_")), "_", "-")
}
