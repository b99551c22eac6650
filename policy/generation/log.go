package generation

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/rs/zerolog"

	"github.com/popgate/popgate/policy"
)

// NewLogger builds the zerolog logger the log block asks for, writing to
// stderr unless the block names a file. The returned LogOutput reopens and
// closes that file, if one was opened.
func NewLogger(l policy.Log, stderr io.Writer) (zerolog.Logger, *LogOutput, error) {
	o := &LogOutput{path: l.File}
	var out io.Writer = stderr
	if l.File != "" {
		f, err := openLog(l.File)
		if err != nil {
			return zerolog.Logger{}, nil, err
		}
		o.f, out = f, o
	}
	if l.Format == "console" {
		out = zerolog.ConsoleWriter{Out: out, TimeFormat: time.TimeOnly, NoColor: !isTerminal(out)}
	}
	level, err := zerolog.ParseLevel(l.Level)
	if err != nil || l.Level == "" {
		level = zerolog.InfoLevel
	}
	return zerolog.New(out).Level(level).With().Timestamp().Logger(), o, nil
}

func openLog(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("log file: %w", err)
	}
	return f, nil
}

// LogOutput is the log block's file, or nothing to do for standard error.
// Reopen opens the path again, for log rotation: logrotate (or newsyslog)
// renames the file and signals popgate, which then writes to a new file
// under the old name, as nginx and Dovecot do. Lines are never split
// between the two files: each log line is one Write.
type LogOutput struct {
	path string
	mu   sync.RWMutex // writers share it; Reopen swaps f under it
	f    *os.File     // nil without a file
}

// Write writes one log line to the file in force.
func (o *LogOutput) Write(p []byte) (int, error) {
	o.mu.RLock()
	defer o.mu.RUnlock()
	return o.f.Write(p)
}

// File is the log file's path, "" for standard error.
func (o *LogOutput) File() string { return o.path }

// Reopen opens the log file again (creating it) and closes the previous
// one; without a file, or when the file cannot be opened, the output stays
// as it was (the error says why).
func (o *LogOutput) Reopen() error {
	if o.path == "" {
		return nil
	}
	f, err := openLog(o.path)
	if err != nil {
		return err
	}
	o.mu.Lock()
	old := o.f
	o.f = f
	o.mu.Unlock()
	return old.Close()
}

// Close closes the log file, if there is one.
func (o *LogOutput) Close() error {
	if o.f == nil {
		return nil
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.f.Close()
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
