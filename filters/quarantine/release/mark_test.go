package release

import (
	"bytes"
	"context"
	"crypto/sha256"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/popgate/popgate/filters"
)

func testKeys(t testing.TB) Keys {
	t.Helper()
	k, err := NewKeys(bytes.Repeat([]byte("k"), MinKeyLen))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

const (
	testID   = "20261205T060000.000000Z-abcdefghij"
	original = "From: a@example.com\r\nSubject: invoice\r\n\r\nHello\r\n--b\r\nattachment: EICAR\r\n"
	trace    = "Return-Path: <a@example.com>\r\nDelivered-To: alice@example.com\r\nReceived: from popgate by mail (Dovecot) with LMTP id x; Sat, 5 Dec 2026 06:00:00 +0000\r\n"
)

func TestRecognize(t *testing.T) {
	k := testKeys(t)
	other, _ := NewKeys(bytes.Repeat([]byte("o"), MinKeyLen))
	mark := k.Mark(testID, []string{"av", "strip"}, "alice", sha256.Sum256([]byte(original)))
	altered := strings.Replace(original, "EICAR", "EICAR-2", 1)
	for _, tc := range []struct {
		name, msg, login string
		keys             Keys
		want             bool
	}{
		{"released copy as delivered", trace + mark + original, "alice", k, true},
		{"login in another case", trace + mark + original, "Alice", k, true},
		{"released copy without trace", mark + original, "alice", k, true},
		{"another user's mailbox", trace + mark + original, "bob", k, false},
		{"mark copied over another attachment", trace + mark + altered, "alice", k, false},
		{"one byte appended", trace + mark + original + "x", "alice", k, false},
		{"another instance's key", trace + mark + original, "alice", other, false},
		{"filters widened", trace + strings.Replace(mark, "filters=av,strip", "filters=av,strip,tag", 1) + original, "alice", k, false},
		{"folded mark", trace + strings.Replace(mark, "; mac=", ";\r\n mac=", 1) + original, "alice", k, false},
		{"mark in the body", "Subject: x\r\n\r\n" + mark + original, "alice", k, false},
		{"no mark", original, "alice", k, false},
		{"garbage mark", "X-Popgate-Released: id=;;;\r\n" + original, "alice", k, false},
		{"no keys", mark + original, "alice", Keys{}, false},
		{"empty message", "", "alice", k, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.keys.Recognize(context.Background(), filters.BytesBody([]byte(tc.msg)), tc.login)
			if err != nil {
				t.Fatal(err)
			}
			if (got != nil) != tc.want {
				t.Fatalf("recognized = %v, want %v", got, tc.want)
			}
			if got != nil && (got.ID != testID || strings.Join(got.Filters, ",") != "av,strip") {
				t.Fatalf("recognized %+v", got)
			}
		})
	}
}

func TestRecognizeLongHeader(t *testing.T) {
	k := testKeys(t)
	mark := k.Mark(testID, []string{"av"}, "alice", sha256.Sum256([]byte(original)))
	long := "X-Long: " + strings.Repeat("a", 100000) + "\r\n"
	got, err := k.Recognize(context.Background(), filters.BytesBody([]byte(long+mark+original)), "alice")
	if err != nil || got == nil {
		t.Fatalf("a long field above the mark: %v, %v", got, err)
	}
	huge := strings.Repeat("X-Many: b\r\n", maxMarkHeader/11+1)
	got, err = k.Recognize(context.Background(), filters.BytesBody([]byte(huge+mark+original)), "alice")
	if err != nil || got != nil {
		t.Fatalf("a mark beyond the header bound must not be looked for: %v, %v", got, err)
	}
}

func FuzzRecognize(f *testing.F) {
	k := testKeys(f)
	f.Add([]byte(trace+k.Mark(testID, []string{"av"}, "alice", sha256.Sum256([]byte(original)))+original), "alice")
	f.Add([]byte("X-Popgate-Released: id=a; filters=b; mac=c\r\n\r\n"), "")
	f.Fuzz(func(t *testing.T, msg []byte, login string) {
		got, err := k.Recognize(context.Background(), filters.BytesBody(msg), login)
		if err != nil {
			t.Fatal(err)
		}
		// Whatever it accepts must be the one mark made above.
		if got != nil && (got.ID != testID || len(got.Filters) != 1 || got.Filters[0] != "av") {
			t.Fatalf("accepted %+v", got)
		}
	})
}

func TestLink(t *testing.T) {
	k := testKeys(t)
	now := time.Unix(1_800_000_000, 0)
	tok := k.Link(testID, now.Add(time.Hour))
	if id, _, err := k.ParseLink(tok, now); err != nil || id != testID {
		t.Fatalf("ParseLink = %q, %v", id, err)
	}
	if _, _, err := k.ParseLink(tok, now.Add(2*time.Hour)); err != ErrLinkExpired {
		t.Fatalf("expired link: %v", err)
	}
	b := []byte(tok)
	b[len(b)/2] ^= 1
	if _, _, err := k.ParseLink(string(b), now); err != ErrLinkInvalid {
		t.Fatalf("altered link: %v", err)
	}
	other, _ := NewKeys(bytes.Repeat([]byte("o"), MinKeyLen))
	if _, _, err := other.ParseLink(tok, now); err != ErrLinkInvalid {
		t.Fatalf("another key: %v", err)
	}
	if _, err := NewKeys([]byte("short")); err == nil {
		t.Fatal("a short key must be refused")
	}
}

// Instances starting at once on one shared directory end up with one key.
func TestLoadOrCreateKeysShared(t *testing.T) {
	path := filepath.Join(t.TempDir(), "release.key")
	keys := make([]Keys, 8)
	var wg sync.WaitGroup
	for i := range keys {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			if keys[i], err = LoadOrCreateKeys(path); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	for _, k := range keys[1:] {
		if !bytes.Equal(k.mark, keys[0].mark) {
			t.Fatal("two instances made different keys")
		}
	}
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v, %v", st, err)
	}
}
