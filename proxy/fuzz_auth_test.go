package proxy

import (
	"encoding/base64"
	"strings"
	"testing"
)

// FuzzSASLLogin fuzzes the login-name extraction of auth.go and route.go
// (client bytes of AUTH PLAIN and LOGIN): it never panics, a name never
// holds a line break (it is logged and sent upstream as a command), and
// the re-encoding routedAuth does for a rewritten PLAIN login keeps the
// password and the other identity byte for byte.
func FuzzSASLLogin(f *testing.F) {
	for _, s := range []string{
		base64.StdEncoding.EncodeToString([]byte("\x00bob\x00secret")),
		base64.StdEncoding.EncodeToString([]byte("admin\x00bob\x00secret")),
		base64.StdEncoding.EncodeToString([]byte("bob\r\nDELE 1\x00bob\x00x")),
		base64.StdEncoding.EncodeToString([]byte("\x00\x00")),
		"=", "*", "", " AGJvYgBzZWNyZXQ= ", "AGJvYgBzZWNyZXQ", "!!!!",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b64 string) {
		for _, name := range []string{saslDecode(b64), saslPlainUser(b64)} {
			if strings.ContainsAny(name, "\r\n") {
				t.Fatalf("%q: login name %q holds a line break", b64, name)
			}
		}
		parts := saslPlainParts(b64)
		if parts == nil {
			if saslPlainUser(b64) != "" {
				t.Fatalf("%q: a user from a malformed PLAIN response", b64)
			}
			return
		}
		id := plainIdentity(parts)
		if parts[id] != saslPlainUser(b64) {
			t.Fatalf("%q: identity %q, user %q", b64, parts[id], saslPlainUser(b64))
		}
		// routedAuth: the login is replaced, everything else kept.
		rewritten := append([]string(nil), parts...)
		rewritten[id] = "routed"
		again := saslPlainParts(base64.StdEncoding.EncodeToString([]byte(strings.Join(rewritten, "\x00"))))
		if again == nil || again[2] != parts[2] || again[1-id] != parts[1-id] || again[id] != "routed" {
			t.Fatalf("%q: rewrite of %q gave %q", b64, parts, again)
		}
	})
}
