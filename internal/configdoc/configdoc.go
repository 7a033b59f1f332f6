// Package configdoc renders each binary's settings (flags, environment
// variables, config-file keys) into docs/configuration.md from the flag
// sets the binaries really parse, and checks in their tests that the
// document says what the code does.
//
// Each binary's test TestConfigurationReference calls Check; run
//
//	go generate ./internal/configdoc
//
// to rewrite the generated sections after changing a flag (or merging a
// branch that did).
package configdoc

//go:generate env CONFIGDOC_UPDATE=1 go test -count=1 -p 1 -run ^TestConfigurationReference$ ../../cmd/handshaked ../../clients/cmd/handshake-edge ../../clients/cmd/handshakectl

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"testing"
)

// Binary is what a command can be configured with.
type Binary struct {
	Name  string
	Flags *flag.FlagSet
	// Env names the environment variable that sets a flag, "" for none.
	Env func(flagName string) string
	// FileKey names the config-file key that sets a flag, "" for none; nil:
	// the binary reads no config file.
	FileKey func(flagName string) string
	// MoreEnv are the variables that are not flags (secrets, the libraries'
	// own), in the order to show them.
	MoreEnv []Var
	// Commands are the usage lines of the subcommands, whose own flags their
	// -h shows.
	Commands []string
}

// Var is an environment variable that is not a flag.
type Var struct{ Name, Usage string }

// Path is the document, relative to the module root.
const Path = "docs/configuration.md"

func cell(s string) string {
	s = strings.ReplaceAll(s, "|", `\|`)
	return strings.ReplaceAll(s, "\n", " ")
}

func code(s string) string {
	if s == "" {
		return ""
	}
	return "`" + s + "`"
}

// Render returns b's generated section, markers included.
func Render(b Binary) string {
	var w strings.Builder
	fmt.Fprintf(&w, "%s\n", begin(b.Name))
	w.WriteString("| Flag | Environment variable |")
	if b.FileKey != nil {
		w.WriteString(" Config file key |")
	}
	w.WriteString(" Default | Meaning |\n|---|---|")
	if b.FileKey != nil {
		w.WriteString("---|")
	}
	w.WriteString("---|---|\n")
	b.Flags.VisitAll(func(f *flag.Flag) {
		arg, usage := flag.UnquoteUsage(f)
		name := "-" + f.Name
		if arg != "" {
			name += " " + arg
		}
		env := ""
		if b.Env != nil {
			env = b.Env(f.Name)
		}
		fmt.Fprintf(&w, "| %s | %s |", code(name), code(env))
		if b.FileKey != nil {
			fmt.Fprintf(&w, " %s |", code(b.FileKey(f.Name)))
		}
		fmt.Fprintf(&w, " %s | %s |\n", code(cell(f.DefValue)), cell(usage))
	})
	if len(b.MoreEnv) > 0 {
		w.WriteString("\nEnvironment variables that are not flags:\n\n| Variable | Meaning |\n|---|---|\n")
		for _, v := range b.MoreEnv {
			fmt.Fprintf(&w, "| %s | %s |\n", code(v.Name), cell(v.Usage))
		}
	}
	if len(b.Commands) > 0 {
		cmds := append([]string(nil), b.Commands...)
		sort.Strings(cmds)
		fmt.Fprintf(&w, "\nCommands (`%s COMMAND -h` lists a command's own flags):\n\n", b.Name)
		for _, c := range cmds {
			fmt.Fprintf(&w, "- %s\n", code(c))
		}
	}
	fmt.Fprintf(&w, "%s\n", end(b.Name))
	return w.String()
}

func begin(name string) string {
	return "<!-- BEGIN " + name + " (generated from its flags by go generate ./internal/configdoc; do not edit) -->"
}

func end(name string) string { return "<!-- END " + name + " -->" }

// docPath finds the document from this source file's place in the module.
func docPath() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", Path)
}

// replace puts section in place of b's section in doc.
func replace(doc, name, section string) (string, error) {
	i := strings.Index(doc, begin(name))
	j := strings.Index(doc, end(name))
	if i < 0 || j < i {
		return "", fmt.Errorf("%s has no section for %s: add the lines\n%s\n%s", Path, name, begin(name), end(name))
	}
	j += len(end(name)) + 1 // and its newline
	return doc[:i] + section + doc[min(j, len(doc)):], nil
}

// Check fails t when the document's section for b is not what Render
// makes of the code. With CONFIGDOC_UPDATE=1 in the environment (what go
// generate sets) it rewrites the section instead.
func Check(t *testing.T, b Binary) {
	t.Helper()
	path := docPath()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	want, err := replace(string(data), b.Name, Render(b))
	if err != nil {
		t.Fatal(err)
	}
	if want == string(data) {
		return
	}
	if os.Getenv("CONFIGDOC_UPDATE") == "1" {
		if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: rewrote the section for %s", Path, b.Name)
		return
	}
	t.Errorf("%s does not describe %s's settings as the code defines them: run go generate ./internal/configdoc and commit the result.\nThe section should read:\n%s", Path, b.Name, Render(b))
}
