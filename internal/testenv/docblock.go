package testenv

import (
	"os"
	"strings"
	"testing"
)

// DocBlock returns what the Markdown file at path holds between the
// markers <!-- name:begin --> and <!-- name:end -->, without a ```sh code
// fence around it: a README's command that a test runs as written, so the
// documentation cannot drift from what the code does.
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
	block = strings.TrimPrefix(strings.TrimSpace(block), "```sh")
	return strings.TrimSpace(strings.TrimSuffix(block, "```"))
}
