package profiling

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime/pprof"
	"strings"
	"testing"
)

// serve runs one request through h.
func serve(h http.Handler, path string) (int, []byte) {
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	return rec.Code, rec.Body.Bytes()
}

// gzipped says whether b looks like pprof's format (a gzipped protobuf).
func gzipped(b []byte) bool { return bytes.HasPrefix(b, []byte{0x1f, 0x8b}) }

func TestHandler(t *testing.T) {
	h := Handler()
	for _, tc := range []struct {
		path    string
		status  int
		profile bool   // a pprof profile comes back
		text    string // else the body holds this
	}{
		{"/", http.StatusOK, false, "heap"},
		{"/heap", http.StatusOK, true, ""},
		{"/goroutine", http.StatusOK, true, ""},
		{"/allocs", http.StatusOK, true, ""},
		{"/profile?seconds=1", http.StatusOK, true, ""},
		{"/profile?seconds=0", http.StatusBadRequest, false, "seconds must be"},
		{"/profile?seconds=x", http.StatusBadRequest, false, "seconds must be"},
		{"/profile?seconds=121", http.StatusBadRequest, false, "seconds must be"},
		{"/nosuch", http.StatusNotFound, false, "no such profile"},
	} {
		st, body := serve(h, tc.path)
		if st != tc.status || gzipped(body) != tc.profile || !strings.Contains(string(body), tc.text) {
			t.Errorf("%s: %d, %d bytes (profile %v), want %d (profile %v, text %q)", tc.path, st, len(body), gzipped(body), tc.status, tc.profile, tc.text)
		}
	}
}

// A CPU profile while another runs is refused, not mixed into it.
func TestOneCPUProfileAtATime(t *testing.T) {
	h := Handler()
	if err := pprof.StartCPUProfile(io.Discard); err != nil {
		t.Fatal(err)
	}
	st, body := serve(h, "/profile?seconds=1")
	pprof.StopCPUProfile()
	if st != http.StatusConflict || !strings.Contains(string(body), "already") {
		t.Errorf("a CPU profile while another runs: %d %q, want 409", st, body)
	}
	if st, body := serve(h, "/profile?seconds=1"); st != http.StatusOK || !gzipped(body) {
		t.Errorf("once the other has stopped: %d, %d bytes", st, len(body))
	}
}
