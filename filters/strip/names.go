package strip

import (
	"fmt"
	"path"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/popgate/popgate/internal/mailtext"
)

// normalizeName returns the form of a file name that rules match against,
// and whether it held characters that disguise names:
//
//   - invalid UTF-8 becomes U+FFFD; control characters go;
//   - invisible characters (mailtext.IsInvisible) go and make the name
//     suspicious: the bidi overrides and isolates (U+202A–U+202E,
//     U+2066–U+2069), the marks U+200E/U+200F/U+061C, zero-width
//     characters, U+FEFF, soft hyphens, line separators, invisible
//     fillers, …, so "invoice\u202Efdp.exe", shown as "invoiceexe.pdf",
//     matches *.exe;
//   - only the last path element is kept ("..\\x.exe" → "x.exe");
//   - trailing dots and white space go, as Windows drops them ("x.exe. " →
//     "x.exe"); leading white space too;
//   - the result is lower-cased.
func normalizeName(name string) (norm string, suspicious bool) {
	var b strings.Builder
	b.Grow(len(name))
	for i := 0; i < len(name); {
		r, n := utf8.DecodeRuneInString(name[i:])
		i += n
		switch {
		case r == utf8.RuneError && n <= 1:
			b.WriteRune(utf8.RuneError)
		case mailtext.IsControl(r):
			// dropped
		case mailtext.IsInvisible(r):
			suspicious = true
		default:
			b.WriteRune(r)
		}
	}
	s := b.String()
	if i := strings.LastIndexAny(s, "/\\"); i >= 0 {
		s = s[i+1:]
	}
	s = strings.TrimRightFunc(s, func(r rune) bool { return r == '.' || unicode.IsSpace(r) })
	s = strings.TrimLeftFunc(s, unicode.IsSpace)
	return strings.ToLower(s), suspicious
}

// extensionOf is the last extension of a normalized name, without the dot
// ("" when there is none).
func extensionOf(norm string) string {
	i := strings.LastIndexByte(norm, '.')
	if i < 0 {
		return ""
	}
	return norm[i+1:]
}

// hasExtension reports whether norm ends in "."+ext (ext may have dots of its
// own: "tar.gz").
func hasExtension(norm, ext string) bool {
	return len(norm) > len(ext) && strings.HasSuffix(norm, ext) && norm[len(norm)-len(ext)-1] == '.'
}

// normalizeExtension checks and normalizes an extension of a policy: "exe",
// ".EXE" and "*.exe" all become "exe".
func normalizeExtension(s string) (string, error) {
	e := strings.ToLower(strings.TrimSpace(s))
	e = strings.TrimPrefix(e, "*")
	e = strings.TrimPrefix(e, ".")
	switch {
	case e == "":
		return "", fmt.Errorf("%q is not an extension", s)
	case strings.ContainsAny(e, "*?[]/\\"):
		return "", fmt.Errorf("%q is not a plain extension; use filenames for patterns", s)
	case strings.HasSuffix(e, "."):
		return "", fmt.Errorf("%q ends with a dot", s)
	}
	return e, nil
}

// normalizeGlob checks a file name pattern (path.Match syntax,
// case-insensitive) and lower-cases it.
func normalizeGlob(s string) (string, error) {
	g := strings.ToLower(strings.TrimSpace(s))
	if g == "" {
		return "", fmt.Errorf("empty pattern")
	}
	if _, err := path.Match(g, ""); err != nil {
		return "", fmt.Errorf("%q is not a valid pattern (use *, ? and [ranges]; \\ escapes)", s)
	}
	return g, nil
}

// normalizeTypePattern checks a media type or media type pattern
// ("application/x-msdownload", "application/*") and lower-cases it.
func normalizeTypePattern(s string) (string, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	if i := strings.IndexByte(t, ';'); i >= 0 {
		t = strings.TrimSpace(t[:i])
	}
	if strings.Count(t, "/") != 1 || strings.HasPrefix(t, "/") || strings.HasSuffix(t, "/") {
		return "", fmt.Errorf("%q is not a media type (want type/subtype, e.g. \"application/x-msdownload\" or \"application/*\")", s)
	}
	if _, err := path.Match(t, ""); err != nil {
		return "", fmt.Errorf("%q is not a valid pattern", s)
	}
	return t, nil
}

// globMatch matches a normalized name against a normalized pattern. A
// pattern with a "/" is matched against the whole path (archive members),
// any other against the last path element.
func globMatch(pattern, full, base string) bool {
	name := base
	if strings.Contains(pattern, "/") {
		name = full
	}
	ok, _ := path.Match(pattern, name)
	return ok
}

// displayName makes a file name safe to show in a notice or a reason
// (mailtext.Visible): control and invisible characters are written as
// <U+XXXX>, so a right-to-left override is visible instead of acting.
func displayName(name string) string { return mailtext.Visible(name, 200) }
