package testenv

import (
	"os"
	"strings"
	"testing"
)

// DocBlock returns what the Markdown file at path holds between the
// markers <!-- name:begin --> and <!-- name:end -->, without the code fence
// around it (```sh, ```json, ...): a README's command that a test runs as
// written, or a file it shows that a test parses, so the documentation
// cannot drift from what the code does.
func DocBlock(t testing.TB, path, name string) string {
	t.Helper()
	doc, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(doc), "<!-- "+name+":begin -->")
	block, _, ok2 := strings.Cut(rest, "<!-- "+name+":end -->")
	if !ok || !ok2 {
		t.Fatalf("%s has no %s block", path, name)
	}
	block = strings.TrimSpace(block)
	if fenced, ok := strings.CutPrefix(block, "```"); ok {
		_, block, _ = strings.Cut(fenced, "\n") // the fence's info string: sh, json
		block = strings.TrimSuffix(strings.TrimSpace(block), "```")
	}
	return strings.TrimSpace(block)
}
