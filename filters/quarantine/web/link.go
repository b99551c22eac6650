package web

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"html/template"
	"net/http"
	"time"

	"github.com/popgate/popgate/filters/quarantine"
	"github.com/popgate/popgate/filters/quarantine/release"
	"github.com/popgate/popgate/internal/mailtext"
)

// page is one outcome of a release link: its status and what it tells the
// user, in words that name no internals.
type page struct {
	status int
	Title  string
	Text   string
	Tone   string // "ok", "warn" or "" (neutral): the colour of the heading's mark
}

var (
	pageConfirm = page{http.StatusOK, "Release this message?",
		"Your mail gateway held this message back. If you expected it and trust its sender, you can have it delivered to your mailbox.", ""}
	pageReleased = page{http.StatusOK, "Message released",
		"The message has been delivered to your mailbox. It will appear the next time your mail program checks for mail.", "ok"}
	pageAlready = page{http.StatusOK, "Already released",
		"This message was released before. It has not been delivered again.", "ok"}
	pageInvalid = page{http.StatusForbidden, "Link not valid",
		"This release link is not valid. Check that you opened the whole link from the notice.", "warn"}
	pageExpired = page{http.StatusGone, "Link expired",
		"This release link has expired. If you still need the message, ask your mail administrator.", "warn"}
	pageGone = page{http.StatusNotFound, "Message no longer available",
		"This message is no longer in quarantine. If you still need it, ask your mail administrator.", "warn"}
	pageNotPermitted = page{http.StatusForbidden, "Release by your administrator only",
		"This message cannot be released from a link. If you need it, ask your mail administrator, quoting the notice you received.", "warn"}
	pageInProgress = page{http.StatusConflict, "Release in progress",
		"This message is being released right now. Reload this page in a moment.", ""}
	pageFailed = page{http.StatusServiceUnavailable, "Please try again later",
		"The message could not be delivered just now. It is still safe in quarantine. Please try again later.", "warn"}
	pageUnavailable = page{http.StatusServiceUnavailable, "Please try again later",
		"The release service cannot answer just now. Try again later.", "warn"}
)

// view is what the template shows: a page, and the message when the page
// is about one.
type view struct {
	page
	Mail    *mailView
	Button  bool   // the release form
	Expires string // when the link expires, with the form
}

type mailView struct {
	quarantine.Headline
	Reason   string
	Released string // when it was released, if it was
}

// linkRecord checks a link's token and its record for both release routes.
// When it returns false it has answered.
func (s *server) linkRecord(w http.ResponseWriter, r *http.Request) (quarantine.Meta, time.Time, bool) {
	id, expires, err := s.o.Keys.ParseLink(r.PathValue("token"), s.o.Now())
	if err != nil {
		p := pageInvalid
		if errors.Is(err, release.ErrLinkExpired) {
			p = pageExpired
		}
		s.render(w, view{page: p})
		return quarantine.Meta{}, time.Time{}, false
	}
	m, err := s.o.Store.Get(id)
	if err != nil {
		p := pageGone
		if !errors.Is(err, quarantine.ErrNotFound) {
			s.o.Log.Error().Err(err).Str("id", id).Msg("release link: cannot read the quarantine record")
			p = pageUnavailable
		}
		s.render(w, view{page: p})
		return m, expires, false
	}
	if s.o.Permission == nil || s.o.Permission(m) != release.User {
		s.render(w, view{page: pageNotPermitted, Mail: s.mailView(m)})
		return m, expires, false
	}
	return m, expires, true
}

// releasePage shows what a link would release. It never releases: link
// scanners and previews fetch URLs.
func (s *server) releasePage(w http.ResponseWriter, r *http.Request) {
	m, expires, ok := s.linkRecord(w, r)
	if !ok {
		return
	}
	v := view{page: pageConfirm, Mail: s.mailView(m), Button: true, Expires: formatTime(expires)}
	if s.o.Released != nil {
		if at, done := s.o.Released(m.ID); done {
			v = view{page: pageAlready, Mail: s.mailView(m)}
			v.Mail.Released = formatTime(at)
		}
	}
	s.render(w, v)
}

// releasePost releases the message of a link. The Releaser makes a second
// release deliver nothing and says so.
func (s *server) releasePost(w http.ResponseWriter, r *http.Request) {
	m, _, ok := s.linkRecord(w, r)
	if !ok {
		return
	}
	// A user who closes the tab must not cut a delivery short: the
	// Releaser bounds it with its own timeout.
	res, err := s.o.Releaser.Release(context.WithoutCancel(r.Context()), m.ID, release.Request{ByUser: true, Actor: "link"})
	v := view{page: pageReleased, Mail: s.mailView(m)}
	switch {
	case err == nil && res.Already:
		v.page = pageAlready
		v.Mail.Released = formatTime(res.At)
	case err == nil:
	case errors.Is(err, release.ErrNotPermitted):
		v.page = pageNotPermitted
	case errors.Is(err, release.ErrInProgress):
		v.page = pageInProgress
	case errors.Is(err, quarantine.ErrNotFound):
		v = view{page: pageGone}
	default:
		s.o.Log.Warn().Err(err).Str("id", m.ID).Msg("release link: release failed")
		v.page = pageFailed
	}
	s.render(w, v)
}

// mailView describes m for a page. The headline is best effort: a page
// without it still lets the user release.
func (s *server) mailView(m quarantine.Meta) *mailView {
	hl, err := s.o.Store.Headline(m.ID)
	if err != nil {
		s.o.Log.Warn().Err(err).Str("id", m.ID).Msg("release link: cannot read the original's header")
	}
	return &mailView{Headline: hl, Reason: mailtext.Text(m.Reason, 300)}
}

func formatTime(t time.Time) string { return t.UTC().Format("2 January 2006, 15:04 MST") }

func (s *server) render(w http.ResponseWriter, v view) {
	var b bytes.Buffer
	if err := pageTemplate.Execute(&b, v); err != nil { // only a bug in the template
		s.o.Log.Error().Err(err).Msg("release link: page template")
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(v.status)
	_, _ = w.Write(b.Bytes())
}

// style is the page's only style, inline so that the page needs nothing
// else; the Content-Security-Policy allows it by its hash.
const style = `
*{box-sizing:border-box}
body{margin:0;padding:48px 16px;background:#f3f4f6;color:#1f2937;font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:560px;margin:0 auto;background:#fff;border:1px solid #e5e7eb;border-radius:10px;padding:32px 36px;box-shadow:0 1px 3px rgba(0,0,0,.06)}
.brand{margin:0 0 20px;font-size:13px;letter-spacing:.06em;text-transform:uppercase;color:#6b7280}
h1{margin:0 0 12px;font-size:22px;line-height:1.3;padding-left:14px;border-left:4px solid #2563eb}
h1.ok{border-color:#16a34a}
h1.warn{border-color:#d97706}
p{margin:0 0 16px}
dl{display:grid;grid-template-columns:max-content 1fr;gap:8px 16px;margin:24px 0;padding:16px 20px;background:#f9fafb;border:1px solid #e5e7eb;border-radius:8px;font-size:15px}
dt{color:#6b7280}
dd{margin:0;overflow-wrap:anywhere}
button{font:inherit;font-weight:600;color:#fff;background:#2563eb;border:0;border-radius:6px;padding:10px 20px;cursor:pointer}
button:hover,button:focus{background:#1d4ed8}
.note{margin:16px 0 0;font-size:14px;color:#6b7280}
`

var styleHash = func() string {
	sum := sha256.Sum256([]byte(style))
	return "sha256-" + base64.StdEncoding.EncodeToString(sum[:])
}()

// The form posts to the page's own URL (no action): the token stays out of
// the page.
var pageTemplate = template.Must(template.New("page").Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex, nofollow">
<title>{{.Title}} – Mail gateway</title>
<style>` + style + `</style>
</head>
<body>
<main>
<p class="brand">Mail gateway · quarantine</p>
<h1{{with .Tone}} class="{{.}}"{{end}}>{{.Title}}</h1>
<p>{{.Text}}</p>
{{- with .Mail}}
<dl>
<dt>From</dt><dd>{{or .From "(unknown)"}}</dd>
<dt>Subject</dt><dd>{{or .Subject "(no subject)"}}</dd>
<dt>Date</dt><dd>{{or .Date "(unknown)"}}</dd>
<dt>Held because</dt><dd>{{or .Reason "withheld by policy"}}</dd>
{{- with .Released}}
<dt>Released</dt><dd>{{.}}</dd>
{{- end}}
</dl>
{{- end}}
{{- if .Button}}
<form method="post">
<button type="submit">Release to my mailbox</button>
</form>
<p class="note">Release only messages you expected from senders you trust. This link is valid until {{.Expires}}.</p>
{{- end}}
</main>
</body>
</html>
`))
