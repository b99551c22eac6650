package web

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/filters/quarantine"
	"github.com/popgate/popgate/filters/quarantine/release"
)

const (
	adminToken = "s3cret-admin-token-for-tests"
	testUser   = "alice.liddell@example.org"
	// The subject is RFC 2047 encoded in the message; the page shows it
	// decoded.
	testSubject = "Quarterly figures Q3 – final"
	testMsg     = "From: Bob Example <bob@example.org>\r\n" +
		"To: alice.liddell@example.org\r\n" +
		"Subject: =?utf-8?q?Quarterly_figures_Q3_=E2=80=93_final?=\r\n" +
		"Date: Tue, 14 Oct 2025 09:12:44 +0200\r\n" +
		"Message-ID: <q3@example.org>\r\n\r\n" +
		"the figures\r\n"
	testReason  = "attachment figures.xlsm: macro-enabled documents are not allowed"
	virusReason = "Eicar-Signature FOUND"
)

// fakeReleaser records its calls and delivers each id once, as the real
// Releaser promises; err, when set, is its answer instead.
type fakeReleaser struct {
	mu        sync.Mutex
	calls     []call
	delivered map[string]time.Time
	err       error
}

type call struct {
	id  string
	req release.Request
}

func (f *fakeReleaser) Release(_ context.Context, id string, req release.Request) (release.Result, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, call{id, req})
	if f.err != nil {
		return release.Result{}, f.err
	}
	if at, ok := f.delivered[id]; ok {
		return release.Result{ID: id, Recipient: testUser, Already: true, At: at}, nil
	}
	if f.delivered == nil {
		f.delivered = map[string]time.Time{}
	}
	at := time.Now().UTC()
	f.delivered[id] = at
	return release.Result{ID: id, Recipient: testUser, At: at}, nil
}

func (f *fakeReleaser) Calls() []call {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]call(nil), f.calls...)
}

func (f *fakeReleaser) setErr(err error) {
	f.mu.Lock()
	f.err = err
	f.mu.Unlock()
}

// syncBuffer is the log's writer: the server logs from its goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type fixture struct {
	store           *quarantine.Store
	rel             *fakeReleaser
	keys            release.Keys
	log             *syncBuffer
	h               http.Handler
	srv             *httptest.Server
	userID, adminID string // a record users may release, one only administrators may

	mu      sync.Mutex
	deleted []string
}

// newFixture serves New on a real quarantine with two records; change
// adjusts the Options first.
func newFixture(t testing.TB, change func(*Options)) *fixture {
	t.Helper()
	store, err := quarantine.Open(filepath.Join(t.TempDir(), "q"), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	keys, err := release.NewKeys(bytes.Repeat([]byte("k"), release.MinKeyLen))
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{store: store, rel: &fakeReleaser{}, keys: keys, log: &syncBuffer{}}
	put := func(reason string) string {
		res := &filters.Result{Outcome: filters.Refuse, Reason: reason}
		id, err := store.Store(context.Background(), &filters.Envelope{User: testUser, Command: "RETR", MsgNum: 1}, filters.BytesBody([]byte(testMsg)), res)
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	f.userID, f.adminID = put(testReason), put(virusReason)
	o := Options{
		Store:    store,
		Releaser: f.rel,
		Keys:     keys,
		Permission: func(m quarantine.Meta) release.Permission {
			if m.Reason == virusReason {
				return release.Admin
			}
			return release.User
		},
		Delete: func(id string) error {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.deleted = append(f.deleted, id)
			return nil
		},
		AdminToken: adminToken,
		Log:        zerolog.New(f.log),
	}
	if change != nil {
		change(&o)
	}
	f.h = New(o)
	f.srv = httptest.NewServer(f.h)
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fixture) link(id string, ttl time.Duration) string {
	return f.srv.URL + "/release/" + f.keys.Link(id, time.Now().Add(ttl))
}

// do sends a request with a real client and returns the status and body.
func do(t *testing.T, method, url, token string, body io.Reader) (int, string, http.Header) {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b), resp.Header
}

func TestLinkFlow(t *testing.T) {
	f := newFixture(t, nil)
	url := f.link(f.userID, time.Hour)

	// GET shows the message and a form, and releases nothing, however
	// often it is fetched.
	for range 2 {
		st, body, _ := do(t, "GET", url, "", nil)
		if st != http.StatusOK {
			t.Fatalf("GET: %d", st)
		}
		for _, want := range []string{"Release this message?", "Bob Example &lt;bob@example.org&gt;", testSubject,
			"Tue, 14 Oct 2025 09:12:44 &#43;0200", testReason, `<form method="post">`, "valid until"} {
			if !strings.Contains(body, want) {
				t.Errorf("GET page lacks %q:\n%s", want, body)
			}
		}
	}
	if n := len(f.rel.Calls()); n != 0 {
		t.Fatalf("GET released: %d calls", n)
	}

	// POST releases, as the user, from a link.
	st, body, _ := do(t, "POST", url, "", nil)
	if st != http.StatusOK || !strings.Contains(body, "Message released") || strings.Contains(body, "<form") {
		t.Fatalf("POST: %d\n%s", st, body)
	}
	want := call{f.userID, release.Request{ByUser: true, Actor: "link"}}
	if c := f.rel.Calls(); len(c) != 1 || c[0] != want {
		t.Fatalf("calls = %+v, want [%+v]", c, want)
	}

	// A second POST asks again and is told: already released.
	st, body, _ = do(t, "POST", url, "", nil)
	if st != http.StatusOK || !strings.Contains(body, "Already released") || !strings.Contains(body, "has not been delivered again") {
		t.Fatalf("second POST: %d\n%s", st, body)
	}
	if c := f.rel.Calls(); len(c) != 2 || c[1] != want || len(f.rel.delivered) != 1 {
		t.Fatalf("second POST: calls %+v, delivered %d", c, len(f.rel.delivered))
	}
}

// With the store's release state, a link opened again says at once that
// the message was released.
func TestLinkReleasedState(t *testing.T) {
	at := time.Date(2025, 10, 14, 10, 0, 0, 0, time.UTC)
	f := newFixture(t, func(o *Options) {
		o.Released = func(string) (time.Time, bool) { return at, true }
	})
	st, body, _ := do(t, "GET", f.link(f.userID, time.Hour), "", nil)
	if st != http.StatusOK || !strings.Contains(body, "Already released") || !strings.Contains(body, "14 October 2025, 10:00 UTC") || strings.Contains(body, "<form") {
		t.Fatalf("GET: %d\n%s", st, body)
	}
}

func TestLinkRefused(t *testing.T) {
	f := newFixture(t, nil)
	good := f.keys.Link(f.userID, time.Now().Add(time.Hour))
	flipped := []byte(good)
	flipped[10] ^= 'A' ^ 'B' // another base64url character
	if flipped[10] == good[10] {
		t.Fatal("flip did nothing")
	}
	otherKeys, _ := release.NewKeys(bytes.Repeat([]byte("o"), release.MinKeyLen))
	for _, tc := range []struct {
		name, path string
		status     int
		text       string
	}{
		{"expired", f.keys.Link(f.userID, time.Now().Add(-time.Second)), http.StatusGone, "Link expired"},
		{"altered", string(flipped), http.StatusForbidden, "Link not valid"},
		{"truncated", good[:len(good)-1], http.StatusForbidden, "Link not valid"},
		{"other key", otherKeys.Link(f.userID, time.Now().Add(time.Hour)), http.StatusForbidden, "Link not valid"},
		{"garbage", "%2e%2e%2fmeta", http.StatusForbidden, "Link not valid"},
		{"admin only", f.keys.Link(f.adminID, time.Now().Add(time.Hour)), http.StatusForbidden, "administrator only"},
		{"record gone", f.keys.Link("20060102T150405.000000Z-abcdefghij", time.Now().Add(time.Hour)), http.StatusNotFound, "no longer in quarantine"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, method := range []string{"GET", "POST"} {
				st, body, _ := do(t, method, f.srv.URL+"/release/"+tc.path, "", nil)
				if st != tc.status || !strings.Contains(body, tc.text) || strings.Contains(body, "<form") {
					t.Errorf("%s: %d, want %d with %q:\n%s", method, st, tc.status, tc.text, body)
				}
			}
		})
	}
	if c := f.rel.Calls(); len(c) != 0 {
		t.Fatalf("refused links released: %+v", c)
	}
}

// The Releaser's failures become pages that name no internals.
func TestLinkReleaseErrors(t *testing.T) {
	f := newFixture(t, nil)
	url := f.link(f.userID, time.Hour)
	for _, tc := range []struct {
		err    error
		status int
		text   string
	}{
		{errors.New("lmtp 127.0.0.1:24: 451 4.3.0 mailbox /var/mail/alice locked"), http.StatusServiceUnavailable, "try again later"},
		{release.ErrInProgress, http.StatusConflict, "Release in progress"},
		{release.ErrNotPermitted, http.StatusForbidden, "administrator only"},
		{quarantine.ErrNotFound, http.StatusNotFound, "no longer in quarantine"},
	} {
		f.rel.setErr(tc.err)
		st, body, _ := do(t, "POST", url, "", nil)
		if st != tc.status || !strings.Contains(body, tc.text) {
			t.Errorf("%v: %d, want %d with %q:\n%s", tc.err, st, tc.status, tc.text, body)
		}
		for _, secret := range []string{"lmtp", "127.0.0.1", "/var/mail", "release:", "quarantine:"} {
			if strings.Contains(body, secret) {
				t.Errorf("%v: the page names %q", tc.err, secret)
			}
		}
	}
}

// What the sender wrote is escaped on the page.
func TestLinkPageEscapes(t *testing.T) {
	f := newFixture(t, nil)
	msg := "From: \"<script>alert(1)</script>\" <x@example.org>\r\nSubject: <img src=x onerror=alert(2)>\r\n\r\nx\r\n"
	id, err := f.store.Store(context.Background(), &filters.Envelope{User: testUser}, filters.BytesBody([]byte(msg)),
		&filters.Result{Reason: "<b>bold</b>"})
	if err != nil {
		t.Fatal(err)
	}
	_, body, _ := do(t, "GET", f.link(id, time.Hour), "", nil)
	for _, bad := range []string{"<script>", "<img", "<b>"} {
		if strings.Contains(body, bad) {
			t.Errorf("page holds %q unescaped:\n%s", bad, body)
		}
	}
	if !strings.Contains(body, "&lt;img src=x onerror=alert(2)&gt;") {
		t.Errorf("subject not shown escaped:\n%s", body)
	}
}

func TestSecurityHeaders(t *testing.T) {
	f := newFixture(t, nil)
	for _, tc := range []struct{ method, url, token string }{
		{"GET", f.link(f.userID, time.Hour), ""},
		{"POST", f.srv.URL + "/release/x", ""},
		{"GET", f.srv.URL + "/api/v1/quarantine", ""},
		{"GET", f.srv.URL + "/api/v1/quarantine", adminToken},
		{"GET", f.srv.URL + "/nothing", ""},
	} {
		_, _, h := do(t, tc.method, tc.url, tc.token, nil)
		for k, want := range map[string]string{
			"X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store",
			"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "default-src 'none'; style-src 'sha256-",
		} {
			if got := h.Get(k); !strings.HasPrefix(got, want) {
				t.Errorf("%s %s: %s = %q, want %q", tc.method, tc.url, k, got, want)
			}
		}
	}
	// The page's style is the one the policy allows.
	if !strings.Contains(csp, styleHash) || !strings.Contains(pageTemplate.Tree.Root.String(), style) {
		t.Error("style and its hash differ")
	}
}

func TestRoutesAndMethods(t *testing.T) {
	off := newFixture(t, func(o *Options) { o.Keys, o.AdminToken = release.Keys{}, "" })
	on := newFixture(t, nil)
	for _, tc := range []struct {
		f             *fixture
		method, path  string
		token         string
		status        int
		releaserCalls int
	}{
		{off, "GET", "/release/" + on.keys.Link(on.userID, time.Now().Add(time.Hour)), "", http.StatusNotFound, 0},
		{off, "GET", "/api/v1/quarantine", adminToken, http.StatusNotFound, 0},
		{on, "PUT", "/release/x", "", http.StatusMethodNotAllowed, 0},
		{on, "DELETE", "/release/x", "", http.StatusMethodNotAllowed, 0},
		{on, "PUT", "/api/v1/quarantine/x", adminToken, http.StatusMethodNotAllowed, 0},
		{on, "GET", "/api/v1/quarantine/x/release", adminToken, http.StatusMethodNotAllowed, 0},
		{on, "GET", "/api/v2/quarantine", adminToken, http.StatusNotFound, 0},
		{on, "GET", "/", "", http.StatusNotFound, 0},
	} {
		st, body, _ := do(t, tc.method, tc.f.srv.URL+tc.path, tc.token, nil)
		if st != tc.status {
			t.Errorf("%s %s: %d, want %d\n%s", tc.method, tc.path, st, tc.status, body)
		}
	}
	if len(on.rel.Calls())+len(off.rel.Calls()) != 0 {
		t.Error("releaser called")
	}
}

func TestAdminAuth(t *testing.T) {
	f := newFixture(t, nil)
	url := f.srv.URL + "/api/v1/quarantine/" + f.userID + "/release"
	for _, auth := range []string{"", "Bearer", "Bearer ", "Bearer wrong", "Bearer " + adminToken + "x",
		"Bearer " + adminToken[:len(adminToken)-1], "Basic " + adminToken, adminToken} {
		req, _ := http.NewRequest("POST", url, nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("WWW-Authenticate") == "" {
			t.Errorf("Authorization %q: %d", auth, resp.StatusCode)
		}
	}
	if c := f.rel.Calls(); len(c) != 0 {
		t.Fatalf("unauthorized release: %+v", c)
	}
	req, _ := http.NewRequest("GET", f.srv.URL+"/api/v1/quarantine", nil)
	req.Header.Set("Authorization", "bearer "+adminToken) // the scheme is case-insensitive
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("lower-case scheme: %d", resp.StatusCode)
	}
}

func TestAdminAPI(t *testing.T) {
	f := newFixture(t, nil)
	api := f.srv.URL + "/api/v1/quarantine"
	decode := func(body string, v any) {
		t.Helper()
		if err := json.Unmarshal([]byte(body), v); err != nil {
			t.Fatalf("%v in %s", err, body)
		}
	}

	// List, filtered and limited.
	var list struct{ Items []quarantine.Meta }
	st, body, _ := do(t, "GET", api, adminToken, nil)
	decode(body, &list)
	if st != http.StatusOK || len(list.Items) != 2 || list.Items[0].ID != f.adminID {
		t.Fatalf("list: %d %s", st, body)
	}
	_, body, _ = do(t, "GET", api+"?limit=1&user="+testUser, adminToken, nil)
	decode(body, &list)
	if len(list.Items) != 1 {
		t.Errorf("limit=1: %s", body)
	}
	_, body, _ = do(t, "GET", api+"?user=nobody", adminToken, nil)
	if !strings.Contains(body, `"items": []`) {
		t.Errorf("empty list: %s", body)
	}
	for _, q := range []string{"?limit=0", "?limit=x", "?limit=100000"} {
		if st, body, _ := do(t, "GET", api+q, adminToken, nil); st != http.StatusBadRequest {
			t.Errorf("%s: %d %s", q, st, body)
		}
	}

	// Show.
	var m quarantine.Meta
	st, body, _ = do(t, "GET", api+"/"+f.userID, adminToken, nil)
	decode(body, &m)
	if st != http.StatusOK || m.ID != f.userID || m.Reason != testReason || m.User != testUser {
		t.Fatalf("show: %d %s", st, body)
	}

	// Release: to the record's mailbox, then again (already), elsewhere.
	var res releaseResult
	st, body, _ = do(t, "POST", api+"/"+f.adminID+"/release", adminToken, nil)
	decode(body, &res)
	if st != http.StatusOK || res.ID != f.adminID || res.Already || res.Recipient != testUser {
		t.Fatalf("release: %d %s", st, body)
	}
	st, body, _ = do(t, "POST", api+"/"+f.adminID+"/release", adminToken, strings.NewReader(" \n"))
	decode(body, &res)
	if st != http.StatusOK || !res.Already {
		t.Fatalf("second release: %d %s", st, body)
	}
	st, body, _ = do(t, "POST", api+"/"+f.userID+"/release", adminToken, strings.NewReader(`{"to": "helpdesk@example.org", "login": "helpdesk"}`))
	if st != http.StatusOK {
		t.Fatalf("release --to: %d %s", st, body)
	}
	c := f.rel.Calls()
	wantCalls := []call{
		{f.adminID, release.Request{Actor: "api"}},
		{f.adminID, release.Request{Actor: "api"}},
		{f.userID, release.Request{Actor: "api", To: "helpdesk@example.org", Login: "helpdesk"}},
	}
	if len(c) != len(wantCalls) {
		t.Fatalf("calls %+v", c)
	}
	for i := range c {
		if c[i] != wantCalls[i] {
			t.Errorf("call %d: %+v, want %+v", i, c[i], wantCalls[i])
		}
	}

	// Errors.
	missing := "20060102T150405.000000Z-abcdefghij"
	for _, tc := range []struct {
		method, path, body string
		relErr             error
		status             int
	}{
		{"GET", "/..%2fmeta", "", nil, http.StatusBadRequest},
		{"GET", "/" + missing, "", nil, http.StatusNotFound},
		{"POST", "/" + missing + "/release", "", nil, http.StatusNotFound},
		{"POST", "/bad/release", "", nil, http.StatusBadRequest},
		{"POST", "/" + f.userID + "/release", `{"to": "a@b", "extra": 1}`, nil, http.StatusBadRequest},
		{"POST", "/" + f.userID + "/release", `{"login": "x"}`, nil, http.StatusBadRequest},
		{"POST", "/" + f.userID + "/release", `{"to": "a@b>\r\nRCPT TO:<c@d"}`, nil, http.StatusBadRequest},
		{"POST", "/" + f.userID + "/release", `{"to": "a@b"} {}`, nil, http.StatusBadRequest},
		{"POST", "/" + f.userID + "/release", `{"to": "a@b"}` + strings.Repeat(" ", maxBody), nil, http.StatusRequestEntityTooLarge},
		{"POST", "/" + f.userID + "/release", "", release.ErrInProgress, http.StatusConflict},
		{"POST", "/" + f.userID + "/release", "", release.ErrNotPermitted, http.StatusForbidden},
		{"POST", "/" + f.userID + "/release", "", errors.New("smtp: 550 5.1.1 no such user"), http.StatusBadGateway},
		{"DELETE", "/" + missing, "", nil, 0}, // the fake Delete finds everything
	} {
		f.rel.setErr(tc.relErr)
		st, body, _ := do(t, tc.method, api+tc.path, adminToken, strings.NewReader(tc.body))
		var e struct{ Error string }
		if tc.status != 0 && (st != tc.status || json.Unmarshal([]byte(body), &e) != nil || e.Error == "") {
			t.Errorf("%s %s %q (%v): %d %s, want %d", tc.method, tc.path, tc.body, tc.relErr, st, body, tc.status)
		}
	}
	f.rel.setErr(nil)

	// Delete.
	st, body, _ = do(t, "DELETE", api+"/"+f.userID, adminToken, nil)
	if st != http.StatusNoContent || body != "" {
		t.Errorf("delete: %d %q", st, body)
	}
	f.mu.Lock()
	deleted := f.deleted
	f.mu.Unlock()
	if len(deleted) != 2 || deleted[1] != f.userID {
		t.Errorf("deleted %v", deleted)
	}
}

func TestAdminDeleteErrors(t *testing.T) {
	var del func(string) error
	f := newFixture(t, func(o *Options) { o.Delete = func(id string) error { return del(id) } })
	url := f.srv.URL + "/api/v1/quarantine/" + f.userID
	for _, tc := range []struct {
		err    error
		status int
	}{
		{quarantine.ErrNotFound, http.StatusNotFound},
		{quarantine.ErrInvalidID, http.StatusBadRequest},
		{errors.New("disk on fire"), http.StatusInternalServerError},
	} {
		del = func(string) error { return tc.err }
		if st, body, _ := do(t, "DELETE", url, adminToken, nil); st != tc.status || strings.Contains(body, "fire") {
			t.Errorf("%v: %d %s", tc.err, st, body)
		}
	}
	g := newFixture(t, func(o *Options) { o.Delete = nil })
	if st, _, _ := do(t, "DELETE", g.srv.URL+"/api/v1/quarantine/"+g.userID, adminToken, nil); st != http.StatusNotImplemented {
		t.Errorf("no Delete: %d", st)
	}
}

// The access log has one line per request, with the method, the route's
// name, the status and the duration, and nothing of the path, the token,
// the user or the message.
func TestAccessLog(t *testing.T) {
	f := newFixture(t, nil)
	token := f.keys.Link(f.userID, time.Now().Add(time.Hour))
	url := f.srv.URL + "/release/" + token
	reqs := []struct{ method, url, token, route string }{
		{"GET", url, "", "release-page"},
		{"POST", url, "", "release-post"},
		{"POST", url, "", "release-post"},
		{"GET", f.srv.URL + "/release/" + token[:len(token)-2], "", "release-page"},
		{"GET", f.srv.URL + "/api/v1/quarantine?user=" + testUser, adminToken, "api-list"},
		{"GET", f.srv.URL + "/api/v1/quarantine/" + f.userID, adminToken, "api-show"},
		{"GET", f.srv.URL + "/api/v1/quarantine/" + f.userID, "wrong", "api-show"},
		{"POST", f.srv.URL + "/api/v1/quarantine/" + f.adminID + "/release", adminToken, "api-release"},
		{"DELETE", f.srv.URL + "/api/v1/quarantine/" + f.userID, adminToken, "api-delete"},
		{"GET", f.srv.URL + "/elsewhere/" + testUser, "", "none"},
	}
	for _, r := range reqs {
		do(t, r.method, r.url, r.token, nil)
	}
	var access []map[string]any
	for line := range strings.Lines(f.log.String()) {
		var e map[string]any
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("%v: %s", err, line)
		}
		if e["message"] == "http request" {
			access = append(access, e)
		}
		// Nor in any other line (a debug line may name the id).
		for _, secret := range []string{token, token[:20], testUser, "alice", "Quarterly", "figures", "/release/", "/api/", adminToken} {
			if strings.Contains(line, secret) {
				t.Errorf("log holds %q: %s", secret, line)
			}
		}
	}
	if len(access) != len(reqs) {
		t.Fatalf("%d access log lines for %d requests:\n%s", len(access), len(reqs), f.log)
	}
	for i, e := range access {
		if e["method"] != reqs[i].method || e["route"] != reqs[i].route || e["status"] == nil || e["duration"] == nil || len(e) != 6 {
			t.Errorf("line %d: %v, want method %s route %s", i, e, reqs[i].method, reqs[i].route)
		}
	}
}

// The link flow with the system's curl, a client of its own.
func TestLinkFlowCurl(t *testing.T) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("no curl")
	}
	f := newFixture(t, nil)
	url := f.link(f.userID, time.Hour)
	run := func(args ...string) (string, string) {
		t.Helper()
		out, err := exec.Command(curl, append([]string{"-sS", "-w", "\n%{http_code}"}, args...)...).Output()
		if err != nil {
			t.Fatalf("curl %v: %v", args, err)
		}
		s := string(out)
		i := strings.LastIndexByte(s, '\n')
		return s[i+1:], s[:i]
	}
	if code, body := run(url); code != "200" || !strings.Contains(body, "Release this message?") {
		t.Fatalf("GET: %s\n%s", code, body)
	}
	if n := len(f.rel.Calls()); n != 0 {
		t.Fatal("GET released")
	}
	if code, body := run("--data", "", url); code != "200" || !strings.Contains(body, "Message released") {
		t.Fatalf("POST: %s\n%s", code, body)
	}
	if code, body := run("--data", "", url); code != "200" || !strings.Contains(body, "Already released") {
		t.Fatalf("second POST: %s\n%s", code, body)
	}
	if code, _ := run(f.srv.URL + "/release/" + f.keys.Link(f.userID, time.Now().Add(-time.Minute))); code != "410" {
		t.Fatalf("expired: %s", code)
	}
	if code, body := run("-H", "Authorization: Bearer "+adminToken, f.srv.URL+"/api/v1/quarantine/"+f.userID); code != "200" || !strings.Contains(body, f.userID) {
		t.Fatalf("api show: %s\n%s", code, body)
	}
	if n := len(f.rel.delivered); n != 1 {
		t.Fatalf("delivered %d times", n)
	}
}

// The process's profiles are behind the admin token, and only there.
func TestProfilesBehindToken(t *testing.T) {
	served := func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "profile "+r.URL.Path) }
	f := newFixture(t, func(o *Options) { o.Profiles = http.HandlerFunc(served) })
	url := f.srv.URL + "/api/v1/debug/pprof/heap"
	if st, body, h := do(t, "GET", url, "", nil); st != http.StatusUnauthorized || strings.Contains(body, "profile") || h.Get("WWW-Authenticate") == "" {
		t.Errorf("without the token: %d %q", st, body)
	}
	if st, body, _ := do(t, "GET", url, "wrong-token-0123456789", nil); st != http.StatusUnauthorized || strings.Contains(body, "profile") {
		t.Errorf("with a wrong token: %d %q", st, body)
	}
	if st, body, _ := do(t, "GET", url, adminToken, nil); st != http.StatusOK || body != "profile /heap" {
		t.Errorf("with the token: %d %q, want the profiles handler with the prefix stripped", st, body)
	}
	if !strings.Contains(f.log.String(), `"route":"api-profiles"`) {
		t.Errorf("the access log does not name the route:\n%s", f.log.String())
	}
	// Without an admin API there are no profiles either.
	f = newFixture(t, func(o *Options) { o.Profiles, o.AdminToken = http.HandlerFunc(served), "" })
	if st, body, _ := do(t, "GET", f.srv.URL+"/api/v1/debug/pprof/heap", "", nil); st != http.StatusNotFound || strings.Contains(body, "profile") {
		t.Errorf("no admin token configured: %d %q", st, body)
	}
}
