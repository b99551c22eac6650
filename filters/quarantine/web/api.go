package web

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/popgate/popgate/filters/quarantine"
	"github.com/popgate/popgate/filters/quarantine/release"
	"github.com/popgate/popgate/internal/mailtext"
)

// Bounds of the API's requests.
const (
	defaultListLimit = 100
	maxListLimit     = 10000
	maxAddressLen    = 254 // RFC 5321's path, less the angle brackets
)

// statusOf is the status for an error of the store or the Releaser, or
// otherwise when the error is none of theirs that the client can act on.
func statusOf(err error, otherwise int) int {
	switch {
	case errors.Is(err, quarantine.ErrInvalidID):
		return http.StatusBadRequest
	case errors.Is(err, quarantine.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, release.ErrNotPermitted):
		return http.StatusForbidden
	case errors.Is(err, release.ErrInProgress):
		return http.StatusConflict
	}
	return otherwise
}

// apiList answers GET /api/v1/quarantine?user=&limit= with the records,
// newest first.
func (s *server) apiList(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	limit := defaultListLimit
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxListLimit {
			apiError(w, http.StatusBadRequest, fmt.Sprintf("limit: a number from 1 to %d", maxListLimit))
			return
		}
		limit = n
	}
	metas, err := s.o.Store.List(quarantine.ListOptions{User: q.Get("user"), Limit: limit})
	if err != nil {
		s.internalError(w, "list", err)
		return
	}
	if metas == nil {
		metas = []quarantine.Meta{}
	}
	writeJSON(w, http.StatusOK, struct {
		Items []quarantine.Meta `json:"items"`
	}{metas})
}

// apiShow answers GET /api/v1/quarantine/{id} with the record.
func (s *server) apiShow(w http.ResponseWriter, r *http.Request) {
	m, ok := s.apiRecord(w, r)
	if ok {
		writeJSON(w, http.StatusOK, m)
	}
}

// apiRecord reads the record the path names; when it returns false it has
// answered.
func (s *server) apiRecord(w http.ResponseWriter, r *http.Request) (quarantine.Meta, bool) {
	m, err := s.o.Store.Get(r.PathValue("id"))
	if err == nil {
		return m, true
	}
	if st := statusOf(err, 0); st != 0 {
		apiError(w, st, apiText(st))
	} else {
		s.internalError(w, "read a record", err)
	}
	return m, false
}

// releaseResult is the API's release.Result.
type releaseResult struct {
	ID        string    `json:"id"`
	Recipient string    `json:"recipient"`
	Already   bool      `json:"already"`
	At        time.Time `json:"at"`
}

// apiRelease answers POST /api/v1/quarantine/{id}/release, with an optional
// body {"to": ADDRESS, "login": NAME} (see release.Request).
func (s *server) apiRelease(w http.ResponseWriter, r *http.Request) {
	req, err := parseReleaseBody(r.Body)
	if err != nil {
		st := http.StatusBadRequest
		if _, big := errors.AsType[*http.MaxBytesError](err); big {
			st = http.StatusRequestEntityTooLarge
		}
		apiError(w, st, err.Error())
		return
	}
	m, ok := s.apiRecord(w, r)
	if !ok {
		return
	}
	// A client that goes away must not cut a delivery short: the Releaser
	// bounds it with its own timeout.
	res, err := s.o.Releaser.Release(context.WithoutCancel(r.Context()), m.ID, req)
	if err != nil {
		st := statusOf(err, http.StatusBadGateway)
		if st == http.StatusBadGateway {
			s.o.Log.Warn().Err(err).Str("id", m.ID).Msg("admin API: release failed")
			// The administrator needs to know why (a refused recipient,
			// an unreachable server); the Releaser's errors say it.
			apiError(w, st, "delivery failed: "+mailtext.Visible(err.Error(), 500))
			return
		}
		apiError(w, st, apiText(st))
		return
	}
	writeJSON(w, http.StatusOK, releaseResult{ID: res.ID, Recipient: res.Recipient, Already: res.Already, At: res.At})
}

// parseReleaseBody reads the optional JSON body of a release: an empty
// body is a release to the record's own mailbox.
func parseReleaseBody(r io.Reader) (release.Request, error) {
	req := release.Request{Actor: "api"}
	data, err := io.ReadAll(r)
	if err != nil {
		return req, fmt.Errorf("request body: %w", err)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return req, nil
	}
	var body struct {
		To    string `json:"to"`
		Login string `json:"login"`
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil {
		return req, fmt.Errorf("request body: %w", err)
	}
	if dec.More() {
		return req, errors.New("request body: more than one JSON value")
	}
	if body.Login != "" && body.To == "" {
		return req, errors.New(`"login" needs "to"`)
	}
	if body.To != "" && !envelopeAddress(body.To) {
		return req, errors.New(`"to": not an address (local@domain)`)
	}
	// A login is one word where it is used (a POP3 USER argument, an
	// envelope's neighbour): no spaces or angle brackets.
	if len(body.Login) > maxAddressLen || !printable(body.Login) || strings.ContainsAny(body.Login, " <>") {
		return req, errors.New(`"login": not a login name`)
	}
	req.To, req.Login = body.To, body.Login
	return req, nil
}

// envelopeAddress reports whether s can be an SMTP envelope address as it
// stands: local@domain, no spaces, controls or angle brackets (so that it
// cannot change the SMTP command it goes into).
func envelopeAddress(s string) bool {
	at := strings.LastIndexByte(s, '@')
	return len(s) <= maxAddressLen && at > 0 && at < len(s)-1 && printable(s) && !strings.ContainsAny(s, " <>")
}

// printable: valid UTF-8 without controls or invisible characters.
func printable(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, c := range s {
		if mailtext.IsControl(c) || mailtext.IsInvisible(c) {
			return false
		}
	}
	return true
}

// apiDelete answers DELETE /api/v1/quarantine/{id}: 204 once it is gone.
func (s *server) apiDelete(w http.ResponseWriter, r *http.Request) {
	if s.o.Delete == nil {
		apiError(w, http.StatusNotImplemented, "delete is not available")
		return
	}
	id := r.PathValue("id")
	if err := s.o.Delete(id); err != nil {
		if st := statusOf(err, 0); st != 0 {
			apiError(w, st, apiText(st))
		} else {
			s.internalError(w, "delete", err)
		}
		return
	}
	s.o.Log.Debug().Str("id", id).Msg("admin API: deleted")
	w.WriteHeader(http.StatusNoContent)
}

// apiText is the error text of a status from statusOf.
func apiText(status int) string {
	switch status {
	case http.StatusBadRequest:
		return "invalid id"
	case http.StatusNotFound:
		return "no such message in quarantine"
	case http.StatusForbidden:
		return "the policy does not allow releasing this message"
	case http.StatusConflict:
		return "a release of this message is in progress"
	}
	return http.StatusText(status)
}

func (s *server) internalError(w http.ResponseWriter, what string, err error) {
	s.o.Log.Error().Err(err).Msg("admin API: cannot " + what)
	apiError(w, http.StatusInternalServerError, "internal error (see popgate's log)")
}

func apiError(w http.ResponseWriter, status int, text string) {
	writeJSON(w, status, struct {
		Error string `json:"error"`
	}{text})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
