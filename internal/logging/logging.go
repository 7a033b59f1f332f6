// Package logging sets up a binary's log/slog logger from its -log-level and
// -log-format flags, and routes grpc-go's own logger through it, so that a
// process writes one format (JSON lines in production) and one level
// governs everything it prints.
package logging

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"
)

// Formats of the log lines.
const (
	FormatJSON = "json" // one JSON object a line: what log collectors parse
	FormatText = "text" // slog's key=value lines, for a person at a terminal
)

// Options are a binary's logging settings.
type Options struct {
	Level  slog.Level
	Format string
}

// AddFlags defines -log-level and -log-format on fs, with the given
// defaults, and returns the options they fill. defaultFormat may be "" when
// the binary picks it later (handshaked: JSON in production, text in
// development); New then takes text.
func AddFlags(fs *flag.FlagSet, defaultLevel slog.Level, defaultFormat string) *Options {
	o := &Options{Level: defaultLevel, Format: defaultFormat}
	fs.TextVar(&o.Level, "log-level", defaultLevel, "lowest `level` logged: debug, info, warn or error")
	formatUsage := "log `format`: json (one object a line) or text"
	if defaultFormat == "" {
		formatUsage += " (default json in production, text in development)"
	}
	fs.Func("log-format", formatUsage, func(v string) error {
		if v != FormatJSON && v != FormatText {
			return fmt.Errorf("want %s or %s", FormatJSON, FormatText)
		}
		o.Format = v
		return nil
	})
	if f := fs.Lookup("log-format"); f != nil {
		f.DefValue = defaultFormat
	}
	return o
}

// New returns a logger writing to w as o says.
func New(w io.Writer, o Options) (*slog.Logger, error) {
	ho := &slog.HandlerOptions{Level: o.Level}
	switch strings.ToLower(o.Format) {
	case FormatJSON:
		return slog.New(slog.NewJSONHandler(w, ho)), nil
	case FormatText, "":
		return slog.New(slog.NewTextHandler(w, ho)), nil
	}
	return nil, errors.New("log format " + o.Format + ": want json or text")
}
