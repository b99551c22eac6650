package mailtext

// ValidFieldName reports whether s is a header field name: one or more
// characters of RFC 5322 ftext, printable US-ASCII except ':'.
func ValidFieldName[T ~string | ~[]byte](s T) bool {
	if len(s) == 0 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 33 || c > 126 || c == ':' {
			return false
		}
	}
	return true
}
