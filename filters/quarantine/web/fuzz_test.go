package web

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// FuzzParseReleaseBody: whatever the body, a request it accepts is an API
// release whose addresses cannot change the SMTP commands they go into.
func FuzzParseReleaseBody(f *testing.F) {
	for _, s := range []string{"", " ", "{}", `{"to":"a@b"}`, `{"to":"a@b","login":"x"}`, `{"login":"x"}`,
		`{"to":"a@b>\r\nDATA"}`, `{"to":"a@b"} {}`, `{"to":1}`, `{"x":1}`, `[]`, `null`, `{"to":"@b"}`, `{"to":"a\u202e@b"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		req, err := parseReleaseBody(bytes.NewReader(data))
		if err != nil {
			return
		}
		if req.Actor != "api" || req.ByUser {
			t.Fatalf("request %+v", req)
		}
		if req.To != "" && !envelopeAddress(req.To) || req.Login != "" && (req.To == "" || !printable(req.Login)) {
			t.Fatalf("accepted %+v from %q", req, data)
		}
		if bytes.ContainsAny([]byte(req.To+req.Login), "\r\n\x00<> ") {
			t.Fatalf("accepted %+v from %q", req, data)
		}
	})
}

// FuzzReleaseLink: only a link popgate signed, unexpired, releases, and only
// on a POST; anything else is refused with a page.
func FuzzReleaseLink(f *testing.F) {
	fx := newFixture(f, func(o *Options) { o.Log = zerolog.Nop() }) // a long run would pile up its log
	good := fx.keys.Link(fx.userID, time.Now().Add(24*time.Hour))
	for _, s := range []string{good, good[:len(good)-1], good + "A", fx.keys.Link(fx.adminID, time.Now().Add(24*time.Hour)),
		fx.keys.Link(fx.userID, time.Now().Add(-time.Hour)), "", ".", "..", "../api/v1/quarantine", "%00", "AAAA"} {
		f.Add(s, true)
		f.Add(s, false)
	}
	f.Fuzz(func(t *testing.T, token string, post bool) {
		method := http.MethodGet
		if post {
			method = http.MethodPost
		}
		before := len(fx.rel.Calls())
		rec := httptest.NewRecorder()
		fx.h.ServeHTTP(rec, httptest.NewRequest(method, "/release/"+url.PathEscape(token), nil))
		called := len(fx.rel.Calls()) != before
		id, _, err := fx.keys.ParseLink(token, time.Now())
		switch {
		case err == nil && id == fx.userID:
			if rec.Code != http.StatusOK || called != post {
				t.Fatalf("%s of a good link: %d, released %v", method, rec.Code, called)
			}
		case called:
			t.Fatalf("%s /release/%q released", method, token)
		case !slices.Contains([]int{http.StatusForbidden, http.StatusGone, http.StatusNotFound,
			http.StatusMovedPermanently, http.StatusTemporaryRedirect, http.StatusPermanentRedirect}, rec.Code):
			t.Fatalf("%s /release/%q: %d", method, token, rec.Code)
		}
	})
}
