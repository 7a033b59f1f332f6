package logging

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/handshaked/handshaked/internal/testenv"
)

// lines decodes JSON log lines; a line that is not a JSON object fails.
func lines(t *testing.T, out []byte) []map[string]any {
	t.Helper()
	var recs []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		var rec map[string]any
		require.NoError(t, json.Unmarshal(sc.Bytes(), &rec), "not a JSON line: %s", sc.Text())
		recs = append(recs, rec)
	}
	return recs
}

func parse(t *testing.T, defaultFormat string, args ...string) (*Options, error) {
	t.Helper()
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	o := AddFlags(fs, slog.LevelInfo, defaultFormat)
	return o, fs.Parse(args)
}

func TestFlags(t *testing.T) {
	o, err := parse(t, FormatJSON)
	require.NoError(t, err)
	assert.Equal(t, Options{Level: slog.LevelInfo, Format: FormatJSON}, *o)

	o, err = parse(t, FormatJSON, "-log-level", "debug", "-log-format", "text")
	require.NoError(t, err)
	assert.Equal(t, Options{Level: slog.LevelDebug, Format: FormatText}, *o)

	o, err = parse(t, "", "-log-level", "WARN")
	require.NoError(t, err)
	assert.Equal(t, Options{Level: slog.LevelWarn}, *o)

	_, err = parse(t, FormatJSON, "-log-format", "xml")
	assert.ErrorContains(t, err, "want json or text")
	_, err = parse(t, FormatJSON, "-log-level", "loud")
	assert.Error(t, err)
}

func TestNewJSONAndLevel(t *testing.T) {
	var buf bytes.Buffer
	l, err := New(&buf, Options{Level: slog.LevelWarn, Format: FormatJSON})
	require.NoError(t, err)
	l.Info("hidden")
	l.Warn("shown", "key", "v")
	recs := lines(t, buf.Bytes())
	require.Len(t, recs, 1)
	assert.Equal(t, "shown", recs[0]["msg"])
	assert.Equal(t, "WARN", recs[0]["level"])
	assert.Equal(t, "v", recs[0]["key"])

	buf.Reset()
	l, err = New(&buf, Options{Level: slog.LevelInfo, Format: FormatText})
	require.NoError(t, err)
	l.Info("plain")
	assert.Contains(t, buf.String(), "level=INFO msg=plain")
}

// TestRouteGRPC: grpc-go's own lines, from a real channel failing to reach
// a closed port, come out as JSON records of the process's logger, marked
// as grpc's and with their component; below debug its INFO lines are gone.
func TestRouteGRPC(t *testing.T) {
	callClosedPort := func() {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		addr := l.Addr().String()
		l.Close()
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		require.NoError(t, err)
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
		_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
		require.Error(t, err)
	}

	var debug testenv.Buffer
	l, err := New(&debug, Options{Level: slog.LevelDebug, Format: FormatJSON})
	require.NoError(t, err)
	RouteGRPC(l)
	callClosedPort()
	var grpcLines int
	components := map[string]bool{}
	for _, rec := range lines(t, debug.Bytes()) {
		if rec["logger"] == "grpc" {
			grpcLines++
			comp, _ := rec["component"].(string)
			components[comp] = true
			assert.False(t, strings.HasPrefix(rec["msg"].(string), "["+comp+"]"), "component left in the message: %v", rec)
		}
	}
	assert.Positive(t, grpcLines, "no grpc-go line at debug: %s", debug.String())
	assert.True(t, components["core"], "no [core] line: %v", components)

	var warn testenv.Buffer
	l, err = New(&warn, Options{Level: slog.LevelWarn, Format: FormatJSON})
	require.NoError(t, err)
	RouteGRPC(l)
	callClosedPort()
	for _, rec := range lines(t, warn.Bytes()) {
		assert.NotEqual(t, "DEBUG", rec["level"], "a debug line at warn: %v", rec)
		assert.NotEqual(t, "INFO", rec["level"], "an info line at warn: %v", rec)
	}
}
