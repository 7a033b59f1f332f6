// Package browsertest drives a headless Chromium for tests, over the Chrome
// DevTools Protocol on a pipe (--remote-debugging-pipe: JSON messages ended
// by a NUL byte on file descriptors 3 and 4), so a test can load a page, run
// script in it, click what a person would click and take screenshots without
// a WebSocket client or a driver binary.
package browsertest

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/testenv"
)

// Browser is one headless Chromium with one page.
type Browser struct {
	t        testing.TB
	toChrome *os.File
	session  string

	mu      sync.Mutex
	nextID  int
	pending map[int]chan reply
	console []string
	done    chan struct{}
}

type reply struct {
	Result json.RawMessage `json:"result"`
	Error  *struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

type message struct {
	ID     int             `json:"id"`
	Method string          `json:"method"`
	Params json.RawMessage `json:"params"`
	reply
}

// Start launches Chromium (skipped without it outside CI, see testenv) with a
// page of width×height CSS pixels, and stops it when the test ends.
func Start(t testing.TB, width, height int) *Browser {
	t.Helper()
	chromium := testenv.LookPath(t, "chromium")
	cmdIn, toChrome, err := os.Pipe()
	require.NoError(t, err)
	fromChrome, cmdOut, err := os.Pipe()
	require.NoError(t, err)
	cmd := exec.Command(chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-extensions",
		"--user-data-dir="+t.TempDir(), "--remote-debugging-pipe", "about:blank")
	cmd.ExtraFiles = []*os.File{cmdIn, cmdOut}                           // fd 3: commands in, fd 4: replies and events out
	cmd.Env = append(testenv.HomeIn(t.TempDir()), "TMPDIR="+t.TempDir()) // its shared-memory and crash files
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}                // its renderer and helper processes end with it
	require.NoError(t, cmd.Start())
	cmdIn.Close()
	cmdOut.Close()
	b := &Browser{t: t, toChrome: toChrome, pending: map[int]chan reply{}, done: make(chan struct{})}
	go b.read(fromChrome)
	t.Cleanup(func() {
		toChrome.Close() // Chromium exits when its command pipe closes
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
		}
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
		<-b.done
		fromChrome.Close()
	})

	var target struct{ TargetID string }
	b.call("", "Target.createTarget", map[string]any{"url": "about:blank"}, &target)
	var attached struct{ SessionID string }
	b.call("", "Target.attachToTarget", map[string]any{"targetId": target.TargetID, "flatten": true}, &attached)
	b.session = attached.SessionID
	b.Call("Runtime.enable", nil, nil)
	b.Call("Page.enable", nil, nil)
	b.Call("Log.enable", nil, nil) // CSP violations and failed loads are reported here, not on the console
	b.Call("Emulation.setDeviceMetricsOverride", map[string]any{"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}, nil)
	return b
}

// read dispatches Chromium's replies to their callers and keeps the page's
// console errors and uncaught exceptions.
func (b *Browser) read(f *os.File) {
	defer close(b.done)
	r := bufio.NewReader(f)
	for {
		raw, err := r.ReadBytes(0)
		if err != nil {
			b.mu.Lock()
			for id, ch := range b.pending {
				close(ch)
				delete(b.pending, id)
			}
			b.mu.Unlock()
			return
		}
		var m message
		if json.Unmarshal(raw[:len(raw)-1], &m) != nil {
			continue
		}
		b.mu.Lock()
		switch {
		case m.ID != 0:
			if ch, ok := b.pending[m.ID]; ok {
				ch <- m.reply
				delete(b.pending, m.ID)
			}
		case m.Method == "Runtime.exceptionThrown":
			b.console = append(b.console, "exception: "+string(m.Params))
		case m.Method == "Log.entryAdded":
			var p struct {
				Entry struct{ Level, Source, Text, URL string }
			}
			if json.Unmarshal(m.Params, &p) == nil && (p.Entry.Level == "error" || p.Entry.Level == "warning") {
				b.console = append(b.console, fmt.Sprintf("%s %s: %s %s", p.Entry.Source, p.Entry.Level, p.Entry.Text, p.Entry.URL))
			}
		case m.Method == "Runtime.consoleAPICalled":
			var p struct {
				Type string
				Args []struct{ Value any }
			}
			if json.Unmarshal(m.Params, &p) == nil && (p.Type == "error" || p.Type == "warning") {
				b.console = append(b.console, fmt.Sprintf("console.%s: %v", p.Type, p.Args))
			}
		}
		b.mu.Unlock()
	}
}

// call sends one command (to the browser when session is empty, else to
// the page) and decodes its result into out.
func (b *Browser) call(session, method string, params any, out any) {
	b.t.Helper()
	b.mu.Lock()
	b.nextID++
	id := b.nextID
	ch := make(chan reply, 1)
	b.pending[id] = ch
	b.mu.Unlock()
	msg := map[string]any{"id": id, "method": method}
	if params != nil {
		msg["params"] = params
	}
	if session != "" {
		msg["sessionId"] = session
	}
	raw, err := json.Marshal(msg)
	require.NoError(b.t, err)
	_, err = b.toChrome.Write(append(raw, 0))
	require.NoError(b.t, err, "%s: writing to chromium", method)
	select {
	case r, ok := <-ch:
		require.True(b.t, ok, "%s: chromium exited", method)
		require.Nil(b.t, r.Error, "%s: %+v", method, r.Error)
		if out != nil {
			require.NoError(b.t, json.Unmarshal(r.Result, out), "%s result", method)
		}
	case <-time.After(30 * time.Second):
		b.t.Fatalf("%s: no answer from chromium in 30s", method)
	}
}

// Call sends a DevTools command to the page.
func (b *Browser) Call(method string, params any, out any) {
	b.t.Helper()
	b.call(b.session, method, params, out)
}

// Navigate loads url in the page.
func (b *Browser) Navigate(url string) {
	b.t.Helper()
	var nav struct{ ErrorText string }
	b.Call("Page.navigate", map[string]any{"url": url}, &nav)
	require.Empty(b.t, nav.ErrorText, "navigate to %s", url)
}

// Eval runs a script expression in the page (awaiting a promise) and
// decodes its JSON-able value into out.
func (b *Browser) Eval(expression string, out any) {
	b.t.Helper()
	var res struct {
		Result struct {
			Value json.RawMessage
		}
		ExceptionDetails *struct {
			Text      string
			Exception struct{ Description string }
		}
	}
	b.Call("Runtime.evaluate", map[string]any{"expression": expression, "returnByValue": true, "awaitPromise": true}, &res)
	require.Nil(b.t, res.ExceptionDetails, "script %q threw", expression)
	if out != nil {
		require.NoError(b.t, json.Unmarshal(res.Result.Value, out), "value of %q: %s", expression, res.Result.Value)
	}
}

// WaitFor polls a script expression until it is true, or fails the test
// after timeout with what the page logged.
func (b *Browser) WaitFor(ctx context.Context, timeout time.Duration, what, expression string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		var ok bool
		b.Eval("Boolean("+expression+")", &ok)
		if ok {
			return
		}
		select {
		case <-ctx.Done():
			b.t.Fatalf("waiting for %s (%s): %v; page console: %v", what, expression, ctx.Err(), b.Console())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Screenshot writes a PNG of what the page's viewport shows to path.
func (b *Browser) Screenshot(path string) {
	b.t.Helper()
	var shot struct{ Data string }
	b.Call("Page.captureScreenshot", map[string]any{"format": "png"}, &shot)
	png, err := base64.StdEncoding.DecodeString(shot.Data)
	require.NoError(b.t, err)
	require.NoError(b.t, os.WriteFile(path, png, 0o644))
}

// Console is what the page logged as errors or warnings, and its uncaught
// exceptions.
func (b *Browser) Console() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.console...)
}
