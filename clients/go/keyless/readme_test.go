package keyless_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// readmeSnippet is what clients/README.md must quote of example_test.go:
// the imports, then the body of ExampleCertificate, one tab less indented.
func readmeSnippet(t *testing.T) string {
	t.Helper()
	src, err := os.ReadFile("example_test.go")
	require.NoError(t, err)
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, "example_test.go", src, parser.ParseComments)
	require.NoError(t, err)
	text := func(from, to token.Pos) string {
		return string(src[fset.Position(from).Offset:fset.Position(to).Offset])
	}
	var imports, body string
	for _, d := range f.Decls {
		switch d := d.(type) {
		case *ast.GenDecl:
			if d.Tok == token.IMPORT {
				imports = text(d.Pos(), d.End())
			}
		case *ast.FuncDecl:
			if d.Name.Name == "ExampleCertificate" {
				body = strings.Trim(text(d.Body.Lbrace+1, d.Body.Rbrace), "\n")
			}
		}
	}
	require.NotEmpty(t, imports, "example_test.go has no imports")
	require.NotEmpty(t, body, "example_test.go has no ExampleCertificate")
	lines := strings.Split(body, "\n")
	for i, l := range lines {
		lines[i] = strings.TrimPrefix(l, "\t")
	}
	return imports + "\n\n" + strings.Join(lines, "\n") + "\n"
}

// TestREADMEQuotesExample: the keyless snippet in clients/README.md is
// ExampleCertificate, which go test compiles, so the README's code cannot
// stop compiling unnoticed.
func TestREADMEQuotesExample(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	require.NoError(t, err)
	_, rest, ok := strings.Cut(string(readme), "<!-- keyless-example:begin -->\n```go\n")
	require.True(t, ok, "clients/README.md has no keyless example block")
	block, _, ok := strings.Cut(rest, "```\n<!-- keyless-example:end -->")
	require.True(t, ok, "clients/README.md's keyless example block is not closed")
	assert.Equal(t, readmeSnippet(t), block)
}
