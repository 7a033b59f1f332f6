package service_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/buildinfo"
	"github.com/handshaked/handshaked/internal/service"
	"github.com/handshaked/handshaked/internal/servicetest"
)

func get(t *testing.T, url string) (*http.Response, []byte) {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, body
}

// TestBuildInfo: /healthz and /metrics say which build serves.
func TestBuildInfo(t *testing.T) {
	srv := servicetest.Start(t, service.Options{})
	build := buildinfo.Read()

	resp, body := get(t, srv.RESTURL+"/healthz")
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
	assert.Equal(t, "application/json", resp.Header.Get("Content-Type"))
	var health struct {
		Status string
		Build  map[string]any
	}
	require.NoError(t, json.Unmarshal(body, &health), "%s", body)
	assert.Equal(t, "SERVING", health.Status)
	assert.Equal(t, map[string]any{"version": build.Version, "revision": build.Revision, "time": build.Time,
		"modified": build.Modified, "goVersion": build.GoVersion}, health.Build)

	resp, body = get(t, srv.RESTURL+"/metrics")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Contains(t, string(body), fmt.Sprintf("handshaked_build_info{goversion=%q,revision=%q,version=%q} 1\n",
		build.GoVersion, build.Revision, build.Version))
}
