package web

import (
	"bytes"
	"context"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/filters/quarantine"
	"github.com/popgate/popgate/filters/quarantine/release"
)

// TestScreenshotReleasePage takes the docs' picture of the confirmation page
// (`make screenshot`): it serves the page for a sample message and has
// headless Chromium (Debian's chromium package) save it to the PNG file
// POPGATE_SCREENSHOT names.
func TestScreenshotReleasePage(t *testing.T) {
	out := os.Getenv("POPGATE_SCREENSHOT")
	if out == "" {
		t.Skip("POPGATE_SCREENSHOT=/path/file.png takes the screenshot")
	}
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal("the screenshot needs Chromium: apt-get install chromium")
	}
	if out, err = filepath.Abs(out); err != nil {
		t.Fatal(err)
	}
	store, err := quarantine.Open(filepath.Join(t.TempDir(), "q"), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	msg := "From: Northwind Traders Billing <billing@northwind.example>\r\n" +
		"To: alice.liddell@example.org\r\n" +
		"Subject: Invoice 2025-1043 for October\r\n" +
		"Date: Tue, 14 Oct 2025 08:57:31 +0200\r\n\r\nPlease find the invoice attached.\r\n"
	id, err := store.Store(context.Background(), &filters.Envelope{User: "alice.liddell"}, filters.BytesBody([]byte(msg)),
		&filters.Result{Outcome: filters.Refuse, Reason: "attachment Invoice-2025-1043.docm: macro-enabled Office documents are not allowed"})
	if err != nil {
		t.Fatal(err)
	}
	keys, err := release.NewKeys(bytes.Repeat([]byte("k"), release.MinKeyLen))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2025, 10, 14, 7, 30, 0, 0, time.UTC) // the same picture every time
	srv := httptest.NewServer(New(Options{
		Store: store, Releaser: &fakeReleaser{}, Keys: keys, Log: zerolog.Nop(), Now: func() time.Time { return now },
		Permission: func(quarantine.Meta) release.Permission { return release.User },
	}))
	defer srv.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
		"--user-data-dir="+t.TempDir(), "--screenshot="+out, "--window-size=900,700",
		srv.URL+"/release/"+keys.Link(id, now.Add(7*24*time.Hour)))
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("chromium: %v\n%s", err, b)
	}
	if st, err := os.Stat(out); err != nil || st.Size() == 0 {
		t.Fatalf("no screenshot: %v", err)
	}
	t.Logf("screenshot in %s", out)
}
