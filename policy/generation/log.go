package generation

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/rs/zerolog"

	"github.com/popgate/popgate/policy"
)

// NewLogger builds the zerolog logger the log block asks for, writing to
// stderr unless the block names a file. The returned closer closes that
// file, if one was opened.
func NewLogger(l policy.Log, stderr io.Writer) (zerolog.Logger, io.Closer, error) {
	var out io.Writer = stderr
	var closer io.Closer = io.NopCloser(nil)
	if l.File != "" {
		f, err := os.OpenFile(l.File, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
		if err != nil {
			return zerolog.Logger{}, nil, fmt.Errorf("log file: %w", err)
		}
		out, closer = f, f
	}
	if l.Format == "console" {
		out = zerolog.ConsoleWriter{Out: out, TimeFormat: time.TimeOnly, NoColor: !isTerminal(out)}
	}
	level, err := zerolog.ParseLevel(l.Level)
	if err != nil || l.Level == "" {
		level = zerolog.InfoLevel
	}
	return zerolog.New(out).Level(level).With().Timestamp().Logger(), closer, nil
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// LogDiagnostics writes configuration diagnostics to the log, for a running
// proxy (a human reads them on stderr at startup instead).
func LogDiagnostics(log zerolog.Logger, diags hcl.Diagnostics) {
	for _, d := range diags {
		ev := log.Warn()
		if d.Severity == hcl.DiagError {
			ev = log.Error()
		}
		if d.Subject != nil {
			ev = ev.Str("at", fmt.Sprintf("%s:%d:%d", d.Subject.Filename, d.Subject.Start.Line, d.Subject.Start.Column))
		}
		ev.Str("detail", d.Detail).Msg("config: " + d.Summary)
	}
}
