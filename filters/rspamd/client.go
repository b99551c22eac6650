package rspamd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/internal/mailtext"
)

// The HTTP protocol of rspamd's workers, as far as this package speaks it
// (https://rspamd.com/doc/architecture/protocol.html):
//
//	normal worker:  POST /checkv2, the raw message as the body, request
//	                headers for what the message does not say itself;
//	                a JSON object: score, required_score, action, symbols,
//	                is_skipped, subject, milter {add_headers, remove_headers}
//	controller:     POST /learnspam, /learnham with header Password
//	both:           GET /ping → "pong"
//
// Every answer carries "Server: rspamd/VERSION". rspamd closes the
// connection after each answer.

// Limits of what is read from rspamd.
const (
	// maxReply bounds an answer's body. A /checkv2 answer is a few KB (one
	// entry per matched rule, their options); a larger one is not rspamd
	// talking.
	maxReply = 1 << 20
	// maxText bounds a text taken from an answer (a header value, the
	// rewritten subject, a symbol's option).
	maxText = 4096
	// maxName bounds a symbol or action name.
	maxName = 128
	// maxShown bounds rspamd text kept for errors and logs.
	maxShown = 200
)

// ParseAddress checks an rspamd worker's address, "http://host:port" or
// "host:port", and returns its base URL, "http://host:port".
func ParseAddress(s string) (string, error) {
	hostport := s
	if strings.Contains(s, "://") {
		u, err := url.Parse(s)
		if err != nil {
			return "", fmt.Errorf("%q is not an rspamd address: want http://host:port or host:port", s)
		}
		switch {
		case u.Scheme == "https":
			return "", fmt.Errorf("%q: rspamd speaks plain HTTP (its own HTTPCrypt encryption is not supported); write http://host:port", s)
		case u.Scheme != "http":
			return "", fmt.Errorf("%q is not an rspamd address: the scheme must be http://", s)
		case u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" || (u.Path != "" && u.Path != "/"):
			return "", fmt.Errorf("%q is not an rspamd address: want http://host:port, nothing more", s)
		}
		hostport = u.Host
	}
	host, port, err := net.SplitHostPort(hostport)
	if err != nil || host == "" {
		return "", fmt.Errorf("%q is not an rspamd address: want http://host:port or host:port", s)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return "", fmt.Errorf("%q: the port must be a number from 1 to 65535", s)
	}
	return "http://" + net.JoinHostPort(host, port), nil
}

// newHTTPClient is the client of one scanner or controller. It does not
// follow redirects (rspamd sends none; a redirect would resend a message
// elsewhere), ignores the environment's proxy settings (a message must go
// to the configured daemon only) and asks for no compression.
func newHTTPClient(dialTimeout time.Duration) *http.Client {
	d := &net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}
	return &http.Client{
		Transport: &http.Transport{
			Proxy:               nil,
			DialContext:         d.DialContext,
			DisableCompression:  true,
			MaxIdleConnsPerHost: 16,
			IdleConnTimeout:     30 * time.Second,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// transportError is a failure to get an answer from a backend: it cannot be
// reached, timed out, closed the connection, or its answer was cut short.
type transportError struct {
	backend string
	err     error
}

func (e *transportError) Error() string { return fmt.Sprintf("rspamd: %s: %v", e.backend, e.err) }
func (e *transportError) Unwrap() error { return e.err }

// StatusError is an answer other than 2xx: rspamd refused the request.
type StatusError struct {
	Backend string
	Status  string // the status line: code and rspamd's reason, made visible
	Message string // the "error" of its JSON body, if any, made visible
}

func (e *StatusError) Error() string {
	if e.Message != "" && !strings.Contains(e.Status, e.Message) {
		return fmt.Sprintf("rspamd: %s: %s: %s", e.Backend, e.Status, e.Message)
	}
	return fmt.Sprintf("rspamd: %s: %s", e.Backend, e.Status)
}

// ReplyError is a 2xx answer that is not what rspamd sends: not JSON, too
// large, or without the fields every answer has.
type ReplyError struct {
	Backend string
	Problem string
}

func (e *ReplyError) Error() string { return fmt.Sprintf("rspamd: %s: %s", e.Backend, e.Problem) }

// answer is what a request got: the status, rspamd's version (from Server)
// and the body, whole.
type answer struct {
	code    int
	status  string
	version string
	body    []byte
}

// do sends req and reads the whole answer, at most maxReply bytes.
// Everything that leaves no complete answer is a *transportError.
func do(c *http.Client, backend string, req *http.Request) (answer, error) {
	resp, err := c.Do(req)
	if err != nil {
		return answer{}, &transportError{backend: backend, err: unwrapURLError(err)}
	}
	defer resp.Body.Close()
	a := answer{code: resp.StatusCode, status: mailtext.Visible(resp.Status, maxShown), version: serverVersion(resp.Header.Get("Server"))}
	a.body, err = io.ReadAll(io.LimitReader(resp.Body, maxReply+1))
	switch {
	case err != nil:
		return a, &transportError{backend: backend, err: fmt.Errorf("reading the answer: %w", err)}
	case len(a.body) > maxReply:
		return a, &ReplyError{Backend: backend, Problem: fmt.Sprintf("answer larger than %d bytes", maxReply)}
	}
	return a, nil
}

// unwrapURLError drops net/http's "Post "URL": " prefix, which repeats the
// backend.
func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// serverVersion returns rspamd's "rspamd/3.4" from a Server header, or ""
// when the header is not rspamd's (a proxy in between).
func serverVersion(s string) string {
	if !strings.HasPrefix(s, "rspamd/") {
		return ""
	}
	return mailtext.Visible(s, 64)
}

// statusError is the error for a non-2xx answer.
func statusError(backend string, a answer) *StatusError {
	var e struct {
		Error string `json:"error"`
	}
	_ = json.Unmarshal(a.body, &e) // rspamd's error answers are {"error": "..."}; anything else is shown by its status
	return &StatusError{Backend: backend, Status: a.status, Message: mailtext.Visible(e.Error, maxShown)}
}

// ping asks a worker for GET /ping and returns its version.
func ping(ctx context.Context, c *http.Client, backend, base string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/ping", nil)
	if err != nil {
		return "", fmt.Errorf("rspamd: %s: %w", backend, err)
	}
	a, err := do(c, backend, req)
	switch {
	case err != nil:
		return "", err
	case a.code != http.StatusOK:
		return "", statusError(backend, a)
	case strings.TrimSpace(string(a.body)) != "pong":
		return "", &ReplyError{Backend: backend, Problem: fmt.Sprintf("/ping answered %q, not pong", mailtext.Visible(string(a.body), maxShown))}
	}
	return a.version, nil
}

// checkReply is a /checkv2 answer. Pointers tell absent fields from zero
// ones.
type checkReply struct {
	Score         *float64               `json:"score"`
	RequiredScore *float64               `json:"required_score"`
	Action        *string                `json:"action"`
	IsSkipped     bool                   `json:"is_skipped"`
	Symbols       map[string]symbolReply `json:"symbols"`
	Subject       *string                `json:"subject"`
	Milter        *milterReply           `json:"milter"`
	Error         string                 `json:"error"`
	// Other fields (messages, urls, time_real…) are ignored.
}

type symbolReply struct {
	Score   float64  `json:"score"`
	Options []string `json:"options"`
}

type milterReply struct {
	AddHeaders    map[string]json.RawMessage `json:"add_headers"`
	RemoveHeaders map[string]json.RawMessage `json:"remove_headers"`
}

// headerValue is one value of milter.add_headers: a string, or
// {"value": "...", "order": N}.
type headerValue struct {
	Value *string `json:"value"`
}

// parseCheck parses the body of a 2xx /checkv2 answer into a report. It
// fails on anything rspamd does not send: not a JSON object, no score,
// required_score or action, an "error" field, a header name that is not
// one, values of the wrong type. Texts that come from the message (symbol
// options, header values, the subject) are made safe, not refused: a
// spammer's control characters must not make the message unscannable.
//
// is_skipped alone is not Skipped: rspamd also sets it when a rule decided
// early (GTUBE, a prefilter's forced action), with that rule among the
// symbols. Skipped is is_skipped with no rule at all: rspamd's settings
// told it to leave the message alone.
func parseCheck(body []byte) (*filters.SpamReport, error) {
	var r checkReply
	if err := json.Unmarshal(body, &r); err != nil {
		return nil, fmt.Errorf("not an rspamd answer: %v", err)
	}
	switch {
	case r.Error != "":
		return nil, fmt.Errorf("rspamd error: %q", mailtext.Visible(r.Error, maxShown))
	case r.Score == nil || r.RequiredScore == nil || r.Action == nil:
		return nil, errors.New("not an rspamd answer: no score, required_score or action")
	case !finite(*r.Score) || !finite(*r.RequiredScore):
		return nil, errors.New("not an rspamd answer: a score is not a number")
	}
	rep := &filters.SpamReport{
		Score:    *r.Score,
		Required: *r.RequiredScore,
		Action:   mailtext.Text(*r.Action, maxName),
		Skipped:  r.IsSkipped && len(r.Symbols) == 0,
	}
	if rep.Action == "" {
		return nil, errors.New("not an rspamd answer: an empty action")
	}
	for name, s := range r.Symbols {
		if !finite(s.Score) {
			return nil, fmt.Errorf("not an rspamd answer: symbol %q has no numeric score", mailtext.Visible(name, maxShown))
		}
		sym := filters.SpamSymbol{Name: mailtext.Text(name, maxName), Score: s.Score}
		if sym.Name == "" {
			return nil, errors.New("not an rspamd answer: a symbol without a name")
		}
		for _, o := range s.Options {
			sym.Options = append(sym.Options, mailtext.Text(o, maxText))
		}
		rep.Symbols = append(rep.Symbols, sym)
	}
	slices.SortFunc(rep.Symbols, func(a, b filters.SpamSymbol) int { return strings.Compare(a.Name, b.Name) })
	if r.Subject != nil {
		rep.Subject = mailtext.Text(*r.Subject, maxText)
	}
	if r.Milter != nil {
		var err error
		if rep.AddHeaders, err = addHeaders(r.Milter.AddHeaders); err != nil {
			return nil, err
		}
		if rep.RemoveHeaders, err = removeHeaders(r.Milter.RemoveHeaders); err != nil {
			return nil, err
		}
	}
	return rep, nil
}

func finite(f float64) bool { return !math.IsNaN(f) && !math.IsInf(f, 0) }

// addHeaders reads milter.add_headers: name → a value, {value, order}, or a
// list of those (several fields of one name). The fields come out by name,
// a name's values in their order; rspamd's "order" (a position among the
// message's fields) is not kept: the filter puts them where it puts its
// own. Values are unfolded.
func addHeaders(m map[string]json.RawMessage) ([]filters.HeaderField, error) {
	var out []filters.HeaderField
	for _, name := range sortedKeys(m) {
		if !mailtext.ValidFieldName(name) {
			return nil, fmt.Errorf("not an rspamd answer: add_headers names %q, not a header field name", mailtext.Visible(name, maxShown))
		}
		raw := m[name]
		var list []json.RawMessage
		if err := json.Unmarshal(raw, &list); err != nil {
			list = []json.RawMessage{raw} // a single value
		}
		for _, item := range list {
			v, err := oneHeaderValue(item)
			if err != nil {
				return nil, fmt.Errorf("not an rspamd answer: add_headers %s: %v", name, err)
			}
			out = append(out, filters.HeaderField{Name: name, Value: v})
		}
	}
	return out, nil
}

func oneHeaderValue(raw json.RawMessage) (string, error) {
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return mailtext.Text(s, maxText), nil
	}
	var hv headerValue
	if err := json.Unmarshal(raw, &hv); err != nil || hv.Value == nil {
		return "", errors.New("want a string or {\"value\": string, \"order\": number}")
	}
	return mailtext.Text(*hv.Value, maxText), nil
}

// removeHeaders reads milter.remove_headers: name → which field of that
// name (0: all; N: the Nth; -N: the Nth from the end). Every field of the
// name is reported: rspamd's own routines all ask for 0, and a field an
// administrator wants gone is better removed once too often than left in.
func removeHeaders(m map[string]json.RawMessage) ([]string, error) {
	var out []string
	for _, name := range sortedKeys(m) {
		var n float64
		if !mailtext.ValidFieldName(name) || json.Unmarshal(m[name], &n) != nil {
			return nil, fmt.Errorf("not an rspamd answer: remove_headers %q: want a header field name and a number", mailtext.Visible(name, maxShown))
		}
		out = append(out, name)
	}
	return out, nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
