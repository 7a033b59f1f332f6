package service_test

import (
	"io"
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	swaggerui "github.com/handshaked/handshaked/third_party/swagger-ui"
)

// TestDocsHandler: /docs is the page over /openapi.json, its assets are the
// pinned Swagger UI files byte for byte, everything under /docs carries the
// Content-Security-Policy, and what is not there is 404.
func TestDocsHandler(t *testing.T) {
	s := startServer(t)
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	get := func(path string) (*http.Response, []byte) {
		t.Helper()
		resp, err := noRedirect.Get(s.rest + path)
		require.NoError(t, err)
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp, body
	}
	resp, page := get("/docs")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, "text/html; charset=utf-8", resp.Header.Get("Content-Type"))
	assert.Contains(t, string(page), `<script src="/docs/swagger-ui-bundle.js"></script>`)
	assert.Contains(t, resp.Header.Get("Content-Security-Policy"), "script-src 'self';")
	assert.Contains(t, resp.Header.Get("Content-Security-Policy"), "frame-ancestors 'none'")
	assert.Equal(t, "nosniff", resp.Header.Get("X-Content-Type-Options"))

	resp, init := get("/docs/init.js")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Contains(t, string(init), `url: "/openapi.json"`)
	assert.Contains(t, string(init), "validatorUrl: null", "no document sent to an outside validator")

	for _, name := range []string{"swagger-ui-bundle.js", "swagger-ui.css", "LICENSE", "NOTICE"} {
		resp, body := get("/docs/" + name)
		require.Equal(t, http.StatusOK, resp.StatusCode, name)
		want, err := swaggerui.Files.ReadFile(name)
		require.NoError(t, err)
		assert.Equal(t, want, body, "%s is the pinned file", name)
		assert.NotEmpty(t, resp.Header.Get("Content-Security-Policy"), name)
	}
	resp, _ = get("/docs/")
	assert.Equal(t, http.StatusMovedPermanently, resp.StatusCode)
	assert.Equal(t, "/docs", resp.Header.Get("Location"))
	for _, path := range []string{"/docs/missing.js", "/docs/index.html/x", "/docs/SHA256SUMS/x"} {
		resp, _ := get(path)
		assert.Equal(t, http.StatusNotFound, resp.StatusCode, path)
	}
	req, err := http.NewRequest(http.MethodPost, s.rest+"/docs", nil)
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	resp, err = http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusMethodNotAllowed, resp.StatusCode)
}

// TestDocsInProduction: like /openapi.json, the page answers a browser
// without a client certificate (it shows only the API's shape); the calls
// made from it are REST calls, refused without one.
func TestDocsInProduction(t *testing.T) {
	s := startSecure(t, secureOptions{})
	anonymous := s.httpClient(t, "")
	resp, err := anonymous.Get(s.restURL + "/docs")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode, "the page")
	resp, err = anonymous.Get(s.restURL + "/v1/keys")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode, "a call from it without a certificate")
}
