package service_test

import (
	"encoding/json"
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestOpenAPIDocument: /openapi.json names the API and its version (from
// proto/handshake/v1/openapi.yaml), not a proto file and "version not set".
func TestOpenAPIDocument(t *testing.T) {
	s := startServer(t)
	resp, err := http.Get(s.rest + "/openapi.json")
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	var doc struct {
		Info struct {
			Title, Version string
			License        struct{ Name string }
		}
		Paths map[string]any
	}
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&doc))
	assert.Equal(t, "handshaked API", doc.Info.Title)
	assert.Equal(t, "v1", doc.Info.Version)
	assert.Equal(t, "Apache-2.0", doc.Info.License.Name)
	assert.Contains(t, doc.Paths, "/v1/keys")
}
