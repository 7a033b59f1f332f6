package main

import (
	"bufio"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func (f *fixture) httpClient() *http.Client {
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{ServerName: f.ecdsa.Name, RootCAs: f.ecdsa.Pool}}}
}

// TestEchoStreamsBody: the echo page sends a body back while it is still
// arriving, so it never holds the whole body: the client reads the first
// MiB back before it sends the second.
func TestEchoStreamsBody(t *testing.T) {
	f := newFixture(t)
	addr, _ := f.start(t)
	c := f.httpClient()
	for _, chunked := range []bool{false, true} {
		t.Run(fmt.Sprintf("chunked=%v", chunked), func(t *testing.T) {
			first, second := make([]byte, 1<<20), make([]byte, 1<<20)
			rand.Read(first)
			rand.Read(second)
			pr, pw := io.Pipe()
			req, err := http.NewRequest(http.MethodPost, "https://"+addr+"/", pr)
			require.NoError(t, err)
			if !chunked {
				req.ContentLength = int64(len(first) + len(second))
			}
			go pw.Write(first)
			got := make([]byte, len(first))
			var resp *http.Response
			read := make(chan error, 1)
			go func() {
				var err error
				if resp, err = c.Do(req); err == nil {
					_, err = io.ReadFull(resp.Body, got)
				}
				read <- err
			}()
			select {
			case err := <-read:
				require.NoError(t, err)
				defer resp.Body.Close()
			case <-time.After(20 * time.Second):
				pw.CloseWithError(io.ErrUnexpectedEOF)
				<-read
				require.Fail(t, "the echo page held the body back until it was complete")
			}
			assert.Equal(t, first, got)
			go func() {
				pw.Write(second)
				pw.Close()
			}()
			rest, err := io.ReadAll(resp.Body)
			require.NoError(t, err)
			assert.Equal(t, second, rest)
		})
	}
}

// TestEchoBodyLimit: a body announced over the limit is refused with 413
// before it is sent; a chunked one that passes the limit ends the
// response abruptly, never as a complete, shorter body.
func TestEchoBodyLimit(t *testing.T) {
	f := newFixture(t)
	addr, _ := f.start(t)
	c := f.httpClient()

	// Headers only: the answer must not wait for the body.
	tc, err := tls.Dial("tcp", addr, &tls.Config{ServerName: f.ecdsa.Name, RootCAs: f.ecdsa.Pool})
	require.NoError(t, err)
	defer tc.Close()
	require.NoError(t, tc.SetDeadline(time.Now().Add(20*time.Second)))
	_, err = fmt.Fprintf(tc, "POST / HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n", f.ecdsa.Name, maxEchoBody+1)
	require.NoError(t, err)
	resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
	require.NoError(t, err, "no answer to a body announced over the limit")
	resp.Body.Close()
	assert.Equal(t, http.StatusRequestEntityTooLarge, resp.StatusCode)

	resp, err = c.Post("https://"+addr+"/", "application/octet-stream", io.LimitReader(zeros{}, maxEchoBody+1))
	if err == nil { // the response may have begun before the body ran over
		var n int64
		n, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		require.Error(t, err, "an over-long chunked body came back as a complete response of %d bytes", n)
	}
	assert.NotContains(t, err.Error(), "timeout")
}

// zeros reads as an endless run of zero bytes.
type zeros struct{}

func (zeros) Read(b []byte) (int, error) {
	clear(b)
	return len(b), nil
}

// BenchmarkEchoBody posts three 60 MiB bodies at once to the echo page (the
// attack of issue 13 item 10) and reports the bytes the process allocated
// per request (edge, client and service together) and the heap the
// process took from the system:
//
//	go test -run '^$' -bench EchoBody -benchtime 1x ./clients/cmd/handshake-edge/
func BenchmarkEchoBody(b *testing.B) {
	f := newFixture(b)
	addr, _ := f.start(b)
	c := f.httpClient()
	const size, posts = 60 << 20, 3
	for range b.N {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		var wg sync.WaitGroup
		for range posts {
			wg.Go(func() {
				resp, err := c.Post("https://"+addr+"/", "application/octet-stream", io.LimitReader(zeros{}, size))
				if !assert.NoError(b, err) {
					return
				}
				defer resp.Body.Close()
				n, err := io.Copy(io.Discard, resp.Body)
				assert.NoError(b, err)
				assert.Equal(b, int64(size), n)
			})
		}
		wg.Wait()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.TotalAlloc-before.TotalAlloc)/posts, "alloc-B/request")
		b.ReportMetric(float64(after.HeapSys), "heap-sys-B") // grows to the peak, slow to shrink
	}
}
