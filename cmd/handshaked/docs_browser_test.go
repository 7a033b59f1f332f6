package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/gen/openapiv2"
	"github.com/handshaked/handshaked/internal/browsertest"
)

// TestDocsPage loads /docs of a development instance in headless Chromium
// as a person would: the page lists every operation of the OpenAPI
// document, and "Try it out" on CreateKey, with a body typed into the page,
// creates the key in the vault (checked over gRPC). The page must load and
// run under its Content-Security-Policy without an error in its console.
// HANDSHAKED_DOCS_SCREENSHOTS=dir keeps its screenshots (operations.png, the
// page as it loads; try-it-out.png, after the call) in dir; otherwise they
// go with its temporary directory.
func TestDocsPage(t *testing.T) {
	b := browsertest.Start(t, 1280, 1400)
	p := startProcess(t, t.TempDir())
	require.NotEmpty(t, p.grpcAddr, "did not start:\n%s", p.out())
	ctx := context.Background()

	// The address the instance's start line gives for the page.
	docs := regexp.MustCompile(` docs=(\S+)`).FindStringSubmatch(p.out())
	require.NotNil(t, docs, "the start line names no docs page:\n%s", p.out())
	require.Equal(t, p.restURL+"/docs", docs[1])
	b.Navigate(docs[1])
	want := specOperations(t)
	b.WaitFor(ctx, 30*time.Second, "the operations", "document.querySelectorAll('.opblock').length >= "+strconv.Itoa(len(want)))
	var shown []string
	b.Eval(`[...document.querySelectorAll('.opblock')].map(op =>
		op.querySelector('.opblock-summary-method').textContent + ' ' + op.querySelector('.opblock-summary-path').getAttribute('data-path'))`, &shown)
	sort.Strings(shown)
	assert.Equal(t, want, shown, "the page lists the OpenAPI document's operations")
	var title string
	b.Eval(`document.querySelector('.info .title').textContent`, &title)
	assert.Contains(t, title, "handshaked API")
	dir := t.TempDir()
	b.Screenshot(filepath.Join(dir, "operations.png"))

	// Try it out: CreateKey with a body typed into its editor, then Execute.
	const op = "#operations-KeyVault-KeyVault_CreateKey"
	b.Eval(`document.querySelector('`+op+` .opblock-summary-control').click()`, nil)
	b.WaitFor(ctx, 10*time.Second, "Try it out", `document.querySelector('`+op+` .try-out__btn')`)
	b.Eval(`document.querySelector('`+op+` .try-out__btn').click()`, nil)
	b.WaitFor(ctx, 10*time.Second, "the body editor", `document.querySelector('`+op+` textarea.body-param__text')`)
	b.Eval(`(() => { const ta = document.querySelector('`+op+` textarea.body-param__text'); ta.focus(); ta.select(); })()`, nil)
	b.Call("Input.insertText", map[string]any{"text": `{"id": "from-docs", "algorithm": "ALGORITHM_ED25519"}`}, nil)
	b.Eval(`document.querySelector('`+op+` .btn.execute').click()`, nil)
	b.WaitFor(ctx, 15*time.Second, "the response", `document.querySelector('`+op+` .live-responses-table tbody .response-col_status')`)
	var status, body string
	b.Eval(`document.querySelector('`+op+` .live-responses-table tbody .response-col_status').textContent.trim()`, &status)
	b.Eval(`document.querySelector('`+op+` .live-responses-table tbody .response-col_description pre').textContent`, &body)
	assert.Equal(t, "200", status, "the call from the page: %s", body)
	assert.Contains(t, body, `"from-docs"`, "the page shows the created key")
	key, err := p.client(t).GetKey(ctx, &pb.GetKeyRequest{Key: "from-docs"})
	require.NoError(t, err, "the key created from the page is in the vault")
	require.Len(t, key.GetVersions(), 1)
	assert.Equal(t, pb.Algorithm_ALGORITHM_ED25519, key.GetVersions()[0].GetAlgorithm())
	b.Eval(`document.querySelector('`+op+`').scrollIntoView()`, nil)
	b.Screenshot(filepath.Join(dir, "try-it-out.png"))
	if keep := os.Getenv("HANDSHAKED_DOCS_SCREENSHOTS"); keep != "" {
		for _, name := range []string{"operations.png", "try-it-out.png"} {
			png, err := os.ReadFile(filepath.Join(dir, name))
			require.NoError(t, err)
			require.NoError(t, os.WriteFile(filepath.Join(keep, name), png, 0o644))
		}
	}
	assert.Empty(t, b.Console(), "the page's console")
}

// specOperations is "METHOD /path" for every operation of the OpenAPI
// document, sorted.
func specOperations(t *testing.T) []string {
	t.Helper()
	var doc struct {
		Paths map[string]map[string]json.RawMessage
	}
	require.NoError(t, json.Unmarshal(openapiv2.Spec, &doc))
	var ops []string
	for path, methods := range doc.Paths {
		for method := range methods {
			ops = append(ops, strings.ToUpper(method)+" "+path)
		}
	}
	sort.Strings(ops)
	require.NotEmpty(t, ops)
	return ops
}
