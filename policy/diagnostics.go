package policy

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"

	"github.com/hashicorp/hcl/v2"

	"github.com/popgate/popgate/internal/mailtext"
)

// WriteDiagnostics prints diags for a person, in the given order:
//
//	file:line:col: error: Summary: Detail
//	   12 |   idle_timeout = "5x"
//	      |                  ^^^^
//
// The source line is shown when files holds the subject's file; the carets
// cover the subject range (up to the end of its first line, at least one
// caret). The last line counts errors and warnings ("2 errors, 1 warning").
// Nothing is written for empty diags. Write errors are ignored, as for
// fmt.Fprintf to a terminal.
func WriteDiagnostics(w io.Writer, diags hcl.Diagnostics, files map[string]*hcl.File) {
	if len(diags) == 0 {
		return
	}
	bw := bufio.NewWriter(w)
	var errs, warns int
	for _, d := range diags {
		sev := "error"
		if d.Severity == hcl.DiagWarning {
			sev = "warning"
			warns++
		} else {
			errs++
		}
		msg := d.Summary
		if d.Detail != "" {
			msg += ": " + d.Detail
		}
		if d.Subject == nil {
			fmt.Fprintf(bw, "%s: %s\n", sev, msg)
			continue
		}
		s := d.Subject
		fmt.Fprintf(bw, "%s:%d:%d: %s: %s\n", s.Filename, s.Start.Line, s.Start.Column, sev, msg)
		if f := files[s.Filename]; f != nil {
			writeSnippet(bw, f.Bytes, *s)
		}
	}
	fmt.Fprintln(bw, countLine(errs, warns))
	bw.Flush()
}

// writeSnippet prints the line where r starts and carets under r.
func writeSnippet(w io.Writer, src []byte, r hcl.Range) {
	start := r.Start.Byte
	if start < 0 || start > len(src) {
		return
	}
	lineStart := bytes.LastIndexByte(src[:start], '\n') + 1
	lineEnd := len(src)
	if i := bytes.IndexByte(src[start:], '\n'); i >= 0 {
		lineEnd = start + i
	}
	line := strings.TrimRight(string(src[lineStart:lineEnd]), "\r")
	end := min(max(r.End.Byte, start), lineStart+len(line))
	if end < start { // start sits on the '\r' of a CRLF
		end = start
	}

	// The gutter holds the line number; the caret line copies the tabs of
	// the source line so that the carets line up under any tab width.
	gutter := fmt.Sprintf("%5d | ", r.Start.Line)
	var pad strings.Builder
	for _, c := range string(src[lineStart:start]) {
		if c == '\t' {
			pad.WriteByte('\t')
		} else {
			pad.WriteByte(' ')
		}
	}
	width := max(utf8.RuneCount(src[start:end]), 1)
	fmt.Fprintf(w, "%s%s\n", gutter, sanitizeLine(line))
	fmt.Fprintf(w, "%s| %s%s\n", strings.Repeat(" ", len(gutter)-2), pad.String(), strings.Repeat("^", width))
}

// sanitizeLine replaces control characters other than tab, and bidi and
// other invisible characters (mailtext's rule), by '?', so that a snippet
// of a broken file cannot disturb the terminal or reorder the line, and the
// caret below still lines up (one character for one).
func sanitizeLine(s string) string {
	return strings.Map(func(r rune) rune {
		if r != '\t' && (mailtext.IsControl(r) || mailtext.IsInvisible(r)) {
			return '?'
		}
		return r
	}, s)
}

func countLine(errs, warns int) string {
	plural := func(n int, word string) string {
		if n == 1 {
			return fmt.Sprintf("1 %s", word)
		}
		return fmt.Sprintf("%d %ss", n, word)
	}
	return plural(errs, "error") + ", " + plural(warns, "warning")
}
