package service

import (
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// goroutineID is the number of the goroutine that calls it, from the first
// line of its stack ("goroutine 42 [running]:").
func goroutineID() string {
	buf := make([]byte, 64)
	return strings.Fields(string(buf[:runtime.Stack(buf, false)]))[1]
}

// http2Server serves h over TLS and HTTP/2 (the client it returns speaks
// HTTP/2), with the helpers of onHelpers in front of it.
func http2Server(t *testing.T, helpers int, h http.HandlerFunc) (*httptest.Server, *http.Client) {
	t.Helper()
	hs := startHelpers(helpers)
	t.Cleanup(hs.close)
	srv := httptest.NewUnstartedServer(onHelpers(hs, h))
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv, srv.Client()
}

// TestHTTP2RequestsOnHelpers: HTTP/2 requests, each of which Go's server
// starts on a goroutine of its own, run on the helpers' long-lived
// goroutines, which keep the stacks they grew: twenty requests one after
// the other run on fewer goroutines than twenty (on the two helpers,
// unless a request comes while both are still finishing the last one).
func TestHTTP2RequestsOnHelpers(t *testing.T) {
	var mu sync.Mutex
	ran := map[string]bool{}
	srv, client := http2Server(t, 2, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		ran[goroutineID()] = true
		mu.Unlock()
		io.WriteString(w, "ok")
	})
	for range 20 {
		resp, err := client.Get(srv.URL)
		require.NoError(t, err)
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.NoError(t, err)
		require.Equal(t, 2, resp.ProtoMajor, "not HTTP/2")
		require.Equal(t, "ok", string(body))
	}
	mu.Lock()
	defer mu.Unlock()
	assert.Less(t, len(ran), 20, "every request ran on a goroutine of its own")
}

// TestHTTP2PanicOnHelper: a handler that panics on a helper fails its
// request as it would on the request's own goroutine, where net/http
// recovers the panic (here http.ErrAbortHandler, which resets the stream),
// and the process and the helpers go on serving.
func TestHTTP2PanicOnHelper(t *testing.T) {
	srv, client := http2Server(t, 1, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/panic" {
			panic(http.ErrAbortHandler)
		}
		io.WriteString(w, "ok")
	})
	for range 3 {
		_, err := client.Get(srv.URL + "/panic")
		require.Error(t, err, "a request whose handler panicked was answered")
		resp, err := client.Get(srv.URL)
		require.NoError(t, err)
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.NoError(t, err)
		assert.Equal(t, "ok", string(body))
	}
}
