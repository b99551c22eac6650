package mimetree

import (
	"strconv"
	"strings"

	"github.com/popgate/popgate/internal/mailtext"
)

// paramSet is the parameters of one header field value.
type paramSet struct {
	// values maps each parameter name to its preferred decoded value: the
	// RFC 2231 form when there is one, else the first plain occurrence.
	values map[string]string
	// all maps each parameter name to every distinct decoded value it had.
	all map[string][]string
}

func (ps paramSet) names(key string) []string { return ps.all[key] }

type rawParam struct {
	key, val string
}

type segment struct {
	val string
	ext bool
	ok  bool
}

// maxSegments bounds RFC 2231 continuations per parameter.
const maxSegments = 1000

// parseParams parses a Content-Type or Content-Disposition value
// leniently: "type/subtype; a=b; c="d"; e*=utf-8”f%20g; h*0*=…; h*1=…".
// It never fails: what it cannot parse it skips. The value before the
// first ';' is returned lower-cased, without comments and white space.
func parseParams(s string) (string, paramSet) {
	value, raw := splitParams(s)
	value = compactLower(value)
	if len(raw) == 0 {
		return value, paramSet{}
	}
	for _, rp := range raw {
		if strings.IndexByte(rp.key, '*') >= 0 {
			return value, extendedParams(raw)
		}
	}
	return value, plainParams(raw)
}

// splitParams splits a header field value into the value before the first
// ';' and its parameters, undecoded.
func splitParams(s string) (string, []rawParam) {
	semi := strings.IndexByte(s, ';')
	value := s
	if semi >= 0 {
		value = s[:semi]
		s = s[semi+1:]
	} else {
		s = ""
	}
	var raw []rawParam
	for len(s) > 0 {
		s = strings.TrimLeft(s, " \t\r\n;")
		if s == "" {
			break
		}
		i := strings.IndexAny(s, "=;")
		if i < 0 {
			break // a bare word at the end: nothing to take
		}
		key := strings.ToLower(strings.TrimSpace(stripComments(s[:i])))
		if s[i] == ';' {
			s = s[i+1:]
			continue
		}
		s = strings.TrimLeft(s[i+1:], " \t\r\n")
		var val string
		if strings.HasPrefix(s, "\"") {
			var b strings.Builder
			j := 1
			for ; j < len(s); j++ {
				c := s[j]
				if c == '\\' && j+1 < len(s) {
					j++
					b.WriteByte(s[j])
					continue
				}
				if c == '"' {
					break
				}
				b.WriteByte(c)
			}
			val = b.String()
			if j < len(s) {
				j++ // the closing quote
			}
			s = s[j:]
			if k := strings.IndexByte(s, ';'); k >= 0 {
				s = s[k+1:]
			} else {
				s = ""
			}
		} else {
			k := strings.IndexByte(s, ';')
			if k < 0 {
				k = len(s)
			}
			val = strings.TrimSpace(s[:k])
			if k < len(s) {
				k++
			}
			s = s[k:]
		}
		if key != "" {
			raw = append(raw, rawParam{key, val})
		}
	}
	return value, raw
}

// compactLower is v lower-cased without comments and white space (a
// media type or disposition), v itself when it has none of them.
func compactLower(v string) string {
	for i := 0; i < len(v); i++ {
		if c := v[i]; c <= ' ' || c == '(' || 'A' <= c && c <= 'Z' || c >= 0x80 {
			return strings.ToLower(strings.Join(strings.Fields(stripComments(v)), ""))
		}
	}
	return v
}

// plainParams is extendedParams for parameters without RFC 2231 forms,
// the common case, without its bookkeeping.
func plainParams(raw []rawParam) paramSet {
	ps := paramSet{values: make(map[string]string, len(raw)), all: make(map[string][]string, len(raw))}
	for _, rp := range raw {
		v := rp.val
		if rp.key == "name" || rp.key == "filename" {
			v = mailtext.DecodeWords(v)
		}
		if !contains(ps.all[rp.key], v) {
			ps.all[rp.key] = append(ps.all[rp.key], v)
		}
		if _, ok := ps.values[rp.key]; !ok {
			ps.values[rp.key] = v
		}
	}
	return ps
}

// extendedParams decodes raw parameters that may have RFC 2231 forms.
func extendedParams(raw []rawParam) paramSet {
	var ps paramSet
	ps.values = make(map[string]string)
	ps.all = make(map[string][]string)
	plain := map[string][]string{}
	var order []string
	ext := map[string]string{}
	conts := map[string][]segment{}
	seen := func(base string) {
		if _, ok := plain[base]; !ok {
			if _, ok := ext[base]; !ok {
				if _, ok := conts[base]; !ok {
					order = append(order, base)
				}
			}
		}
	}
	for _, rp := range raw {
		k := rp.key
		star := strings.IndexByte(k, '*')
		if star < 0 {
			seen(k)
			plain[k] = append(plain[k], rp.val)
			continue
		}
		base, rest := k[:star], k[star+1:]
		if base == "" {
			continue
		}
		if rest == "" { // name*=charset'lang'value
			seen(base)
			if _, dup := ext[base]; !dup {
				ext[base] = decode2231(rp.val, true)
			}
			continue
		}
		isExt := strings.HasSuffix(rest, "*")
		rest = strings.TrimSuffix(rest, "*")
		n, err := strconv.Atoi(rest)
		if err != nil || n < 0 || n >= maxSegments {
			continue
		}
		seen(base)
		segs := conts[base]
		if len(segs) <= n {
			segs = append(segs, make([]segment, n+1-len(segs))...)
		}
		if !segs[n].ok {
			segs[n] = segment{val: rp.val, ext: isExt, ok: true}
		}
		conts[base] = segs
	}
	for _, base := range order {
		var vals []string
		if segs := conts[base]; len(segs) > 0 && segs[0].ok {
			vals = append(vals, joinSegments(segs))
		}
		if v, ok := ext[base]; ok {
			vals = append(vals, v)
		}
		for _, v := range plain[base] {
			if base == "name" || base == "filename" {
				v = mailtext.DecodeWords(v) // not allowed by RFC 2231, produced by many clients anyway
			}
			vals = append(vals, v)
		}
		var uniq []string
		for _, v := range vals {
			if !contains(uniq, v) {
				uniq = append(uniq, v)
			}
		}
		if len(uniq) == 0 {
			continue
		}
		ps.values[base] = uniq[0]
		ps.all[base] = uniq
	}
	return ps
}

// joinSegments assembles RFC 2231 continuations from segment 0 up to the
// first gap. The charset of segment 0 (when it is extended) applies to all
// extended segments.
func joinSegments(segs []segment) string {
	var buf []byte
	cs := ""
	for i, sg := range segs {
		if !sg.ok {
			break
		}
		v := sg.val
		if sg.ext {
			if i == 0 {
				cs, v = split2231(v)
			}
			buf = append(buf, pctDecode(v)...)
		} else {
			buf = append(buf, v...)
		}
	}
	return mailtext.ToUTF8(cs, buf)
}

// decode2231 decodes an extended value: charset'language'percent-encoded.
func decode2231(v string, first bool) string {
	cs := ""
	if first {
		cs, v = split2231(v)
	}
	return mailtext.ToUTF8(cs, pctDecode(v))
}

func split2231(v string) (cs, rest string) {
	i := strings.IndexByte(v, '\'')
	if i < 0 {
		return "", v
	}
	j := strings.IndexByte(v[i+1:], '\'')
	if j < 0 {
		return "", v
	}
	return v[:i], v[i+1+j+1:]
}

func pctDecode(s string) []byte {
	b := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '%' && i+2 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+3], 16, 8); err == nil {
				b = append(b, byte(v))
				i += 2
				continue
			}
		}
		b = append(b, c)
	}
	return b
}

// stripComments removes RFC 5322 comments "( … )" (nested, with quoted
// pairs) outside quoted strings.
func stripComments(s string) string {
	if !strings.ContainsRune(s, '(') {
		return s
	}
	var b strings.Builder
	depth := 0
	inQuote := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\\' && (depth > 0 || inQuote) && i+1 < len(s):
			if depth == 0 {
				b.WriteByte(c)
				b.WriteByte(s[i+1])
			}
			i++
		case inQuote:
			if c == '"' {
				inQuote = false
			}
			b.WriteByte(c)
		case c == '(':
			depth++
		case c == ')' && depth > 0:
			depth--
		case depth > 0:
		default:
			if c == '"' {
				inQuote = true
			}
			b.WriteByte(c)
		}
	}
	return b.String()
}
