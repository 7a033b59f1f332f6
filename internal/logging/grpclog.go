package logging

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc/grpclog"
)

// RouteGRPC sends grpc-go's log lines to l, so that they come in the
// process's format and level instead of grpc-go's own plain text on
// stderr. grpc-go's INFO lines (one per connection state change, per
// name resolution...) are logged at debug: at info they would drown the
// service's own. Call it before any gRPC function, as grpclog requires.
func RouteGRPC(l *slog.Logger) {
	grpclog.SetLoggerV2(grpcLogger{l.Handler()})
}

// grpcLogger adapts an slog.Handler to grpclog.LoggerV2 (and DepthLoggerV2,
// which grpc-go prefers: its component loggers call the Depth methods).
type grpcLogger struct{ h slog.Handler }

var _ grpclog.DepthLoggerV2 = grpcLogger{}

// log writes one grpc-go line. grpc-go's component loggers put "[core]",
// "[transport]"... first: that becomes the component attribute.
func (g grpcLogger) log(level slog.Level, msg string) {
	ctx := context.Background()
	if !g.h.Enabled(ctx, level) {
		return
	}
	msg = strings.TrimSpace(msg)
	r := slog.NewRecord(time.Now(), level, msg, 0)
	if rest, ok := strings.CutPrefix(msg, "["); ok {
		if comp, m, ok := strings.Cut(rest, "]"); ok && !strings.ContainsAny(comp, " \n") {
			r.Message = strings.TrimSpace(m)
			r.AddAttrs(slog.String("component", comp))
		}
	}
	r.AddAttrs(slog.String("logger", "grpc"))
	g.h.Handle(ctx, r)
}

func (g grpcLogger) Info(args ...any)   { g.log(slog.LevelDebug, fmt.Sprint(args...)) }
func (g grpcLogger) Infoln(args ...any) { g.log(slog.LevelDebug, fmt.Sprintln(args...)) }
func (g grpcLogger) Infof(format string, args ...any) {
	g.log(slog.LevelDebug, fmt.Sprintf(format, args...))
}
func (g grpcLogger) Warning(args ...any)   { g.log(slog.LevelWarn, fmt.Sprint(args...)) }
func (g grpcLogger) Warningln(args ...any) { g.log(slog.LevelWarn, fmt.Sprintln(args...)) }
func (g grpcLogger) Warningf(format string, args ...any) {
	g.log(slog.LevelWarn, fmt.Sprintf(format, args...))
}
func (g grpcLogger) Error(args ...any)   { g.log(slog.LevelError, fmt.Sprint(args...)) }
func (g grpcLogger) Errorln(args ...any) { g.log(slog.LevelError, fmt.Sprintln(args...)) }
func (g grpcLogger) Errorf(format string, args ...any) {
	g.log(slog.LevelError, fmt.Sprintf(format, args...))
}

// Fatal logs at error and exits, as grpclog promises its callers.
func (g grpcLogger) Fatal(args ...any) { g.log(slog.LevelError, fmt.Sprint(args...)); os.Exit(1) }
func (g grpcLogger) Fatalln(args ...any) {
	g.log(slog.LevelError, fmt.Sprintln(args...))
	os.Exit(1)
}
func (g grpcLogger) Fatalf(format string, args ...any) {
	g.log(slog.LevelError, fmt.Sprintf(format, args...))
	os.Exit(1)
}

func (g grpcLogger) InfoDepth(_ int, args ...any) {
	g.log(slog.LevelDebug, fmt.Sprintln(args...))
}
func (g grpcLogger) WarningDepth(_ int, args ...any) {
	g.log(slog.LevelWarn, fmt.Sprintln(args...))
}
func (g grpcLogger) ErrorDepth(_ int, args ...any) {
	g.log(slog.LevelError, fmt.Sprintln(args...))
}
func (g grpcLogger) FatalDepth(_ int, args ...any) {
	g.log(slog.LevelError, fmt.Sprintln(args...))
	os.Exit(1)
}

// V reports whether grpc-go's verbose lines (V(2) guards the chattiest)
// are wanted: only when debug is logged.
func (g grpcLogger) V(int) bool { return g.h.Enabled(context.Background(), slog.LevelDebug) }
