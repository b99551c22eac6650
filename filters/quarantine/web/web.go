// Package web serves, on popgate's HTTP listener, the release links of
// notices (a page that shows a quarantined message and, on a POST only,
// releases it) and the administrator's quarantine API (list, show, release,
// delete, with a bearer token).
//
// The handler answers /release/… and /api/… by their full paths: mount it
// at those prefixes as it is. Its access log has one line per request with
// the method, the route's name, the status and the duration, never the
// path: a release link's path is its secret, and an API path names a
// message.
package web

import (
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/popgate/popgate/filters/quarantine"
	"github.com/popgate/popgate/filters/quarantine/release"
)

// Options configure New.
type Options struct {
	// Store is the quarantine (required): records and the originals'
	// headers.
	Store *quarantine.Store
	// Delete removes a message from the quarantine; nil: the API's DELETE
	// answers 501.
	Delete func(id string) error
	// Releaser releases (required when Keys or AdminToken is set).
	Releaser release.Releaser
	// Keys check release links; the zero Keys: no /release routes (404).
	Keys release.Keys
	// Permission says who may release a record; a link releases only what
	// it calls release.User. nil: no link releases anything.
	Permission func(quarantine.Meta) release.Permission
	// Released, when set, reports a record's earlier release, so that a
	// link opened again says so at once; nil: the page learns it only
	// from the Releaser on the POST.
	Released func(id string) (at time.Time, ok bool)
	// AdminToken is the API's bearer token; "" disables /api (404).
	AdminToken string
	// Profiles, when set with AdminToken, is served behind the token under
	// /api/v1/debug/pprof/ (the process's runtime profiles).
	Profiles http.Handler
	// Log gets the access log and errors.
	Log zerolog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// profilesPath is where Options.Profiles is served.
const profilesPath = "/api/v1/debug/pprof/"

// maxBody bounds request bodies: nothing here needs more.
const maxBody = 64 << 10

type server struct {
	o     Options
	mux   *http.ServeMux
	names map[string]string // mux pattern → route name, for the access log
	token [sha256.Size]byte // SHA-256 of AdminToken
}

// New returns the handler of release links and the admin API.
func New(o Options) http.Handler {
	if o.Now == nil {
		o.Now = time.Now
	}
	s := &server{o: o, mux: http.NewServeMux(), names: map[string]string{}}
	if o.Keys.Valid() {
		s.route("GET /release/{token}", "release-page", s.releasePage)
		s.route("POST /release/{token}", "release-post", s.releasePost)
	}
	if o.AdminToken != "" {
		s.token = sha256.Sum256([]byte(o.AdminToken))
		s.route("GET /api/v1/quarantine", "api-list", s.apiList)
		s.route("GET /api/v1/quarantine/{id}", "api-show", s.apiShow)
		s.route("POST /api/v1/quarantine/{id}/release", "api-release", s.apiRelease)
		s.route("DELETE /api/v1/quarantine/{id}", "api-delete", s.apiDelete)
		if o.Profiles != nil {
			s.names[profilesPath] = "api-profiles"
			s.mux.Handle(profilesPath, http.StripPrefix(strings.TrimSuffix(profilesPath, "/"), o.Profiles))
		}
	}
	return s
}

func (s *server) route(pattern, name string, h http.HandlerFunc) {
	s.names[pattern] = name
	s.mux.HandleFunc(pattern, h)
}

// csp allows the page's own inline style (by its hash) and a form posting
// back to popgate, nothing else: no scripts, images, frames or other sites.
var csp = "default-src 'none'; style-src '" + styleHash + "'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"

func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	h := w.Header()
	h.Set("Content-Security-Policy", csp)
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer") // the page's URL is the link's secret
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	r.Body = http.MaxBytesReader(w, r.Body, maxBody)

	_, pattern := s.mux.Handler(r)
	name, ok := s.names[pattern]
	if !ok {
		name = "none"
	}
	rec := &statusWriter{ResponseWriter: w, status: http.StatusOK}
	switch {
	case s.o.AdminToken != "" && strings.HasPrefix(r.URL.Path, "/api/") && !s.authorized(r):
		h.Set("WWW-Authenticate", `Bearer realm="popgate"`)
		apiError(rec, http.StatusUnauthorized, "missing or wrong bearer token")
	default:
		s.mux.ServeHTTP(rec, r)
	}
	s.o.Log.Info().Str("method", logMethod(r.Method)).Str("route", name).Int("status", rec.status).
		Dur("duration", time.Since(start)).Msg("http request")
}

// authorized compares the bearer token in constant time: both sides are
// hashed first, so that neither the content nor the length of the token
// shows in the time taken.
func (s *server) authorized(r *http.Request) bool {
	scheme, cred, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	sum := sha256.Sum256([]byte(cred))
	match := subtle.ConstantTimeCompare(sum[:], s.token[:]) == 1
	return match && strings.EqualFold(scheme, "Bearer")
}

// logMethod keeps the log to the methods there are: the method is the
// client's text.
func logMethod(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodOptions, http.MethodConnect, http.MethodTrace:
		return m
	}
	return "other"
}

// statusWriter remembers the status for the access log.
type statusWriter struct {
	http.ResponseWriter
	status      int
	wroteHeader bool
}

func (w *statusWriter) WriteHeader(code int) {
	if !w.wroteHeader {
		w.status, w.wroteHeader = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	w.wroteHeader = true
	return w.ResponseWriter.Write(b)
}
