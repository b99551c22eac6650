package rspamd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/internal/mailtext"
)

// Controller teaches rspamd's Bayes classifier through its controller
// worker (POST /learnspam, /learnham with the Password header). It is safe
// for concurrent use and starts nothing.
type Controller struct {
	addr     string // as configured
	base     string
	password string
	timeout  time.Duration
	maxSize  int64
	client   *http.Client
}

// NewController returns the client of the controller at addr
// ("http://host:port" or "host:port"). A learn takes at most timeout and
// sends no message larger than maxSize; zero values mean the scanner's
// defaults.
func NewController(addr, password string, timeout time.Duration, maxSize int64) (*Controller, error) {
	base, err := ParseAddress(addr)
	if err != nil {
		return nil, fmt.Errorf("rspamd: controller: %w", err)
	}
	return &Controller{addr: addr, base: base, password: password, timeout: orDefault(timeout, DefaultTimeout),
		maxSize: orDefault(maxSize, DefaultMaxSize), client: newHTTPClient(dialTimeout)}, nil
}

// Addr is the controller's address as configured.
func (c *Controller) Addr() string { return c.addr }

// rspamd's answers to a learn request that teach nothing and are no
// failure: the message is known already, or too short to learn from.
// Learn wraps them with rspamd's own words; NotLearned tells them apart
// from failures.
var (
	// ErrAlreadyLearned: 208, rspamd learned this message (by its
	// Message-ID and content) as this class before.
	ErrAlreadyLearned = errors.New("rspamd: already learned")
	// ErrTooFewTokens: 204, the message holds fewer words than the Bayes
	// classifier's min_tokens.
	ErrTooFewTokens = errors.New("rspamd: too few tokens to learn")
)

// NotLearned reports whether err is rspamd declining to learn a message for
// a reason that is no failure (ErrAlreadyLearned, ErrTooFewTokens): report
// it, and go on.
func NotLearned(err error) bool {
	return errors.Is(err, ErrAlreadyLearned) || errors.Is(err, ErrTooFewTokens)
}

// Learn teaches rspamd that body is spam (or, with spam false, ham). login,
// when not "", is the mailbox the message was delivered to (Deliver-To, as
// for scans), for a per-user classifier. nil means learned; errors for
// which NotLearned is true mean rspamd taught itself nothing and that is
// fine; any other error is a failure (unreachable, timed out, the password
// refused, a message over max_size, …).
func (c *Controller) Learn(ctx context.Context, body filters.Body, spam bool, login string) error {
	if size := body.Size(); size > c.maxSize {
		return fmt.Errorf("%w (%d bytes > max_size %d)", ErrOversize, size, c.maxSize)
	}
	path := "/learnham"
	if spam {
		path = "/learnspam"
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	r, err := body.Open()
	if err != nil {
		return fmt.Errorf("rspamd: opening the message: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+path, r)
	if err != nil {
		r.Close()
		return fmt.Errorf("rspamd: controller %s: %w", c.addr, err)
	}
	req.ContentLength = body.Size() // the transport closes r
	req.Header = scanHeaders(&filters.Envelope{User: login}, "")
	if c.password != "" {
		req.Header.Set("Password", c.password)
	}
	a, err := do(c.client, c.addr, req)
	if err != nil {
		return err
	}
	return learnAnswer(c.addr, a)
}

// learnAnswer interprets a controller's answer to a learn request.
func learnAnswer(addr string, a answer) error {
	switch a.code {
	case http.StatusOK:
		var r struct {
			Success *bool `json:"success"`
		}
		if err := json.Unmarshal(a.body, &r); err != nil || r.Success == nil {
			return &ReplyError{Backend: addr, Problem: fmt.Sprintf("learn answer %q is not rspamd's", mailtext.Visible(string(a.body), maxShown))}
		}
		if !*r.Success {
			return fmt.Errorf("rspamd: controller %s: learning failed (success: false)", addr)
		}
		return nil
	case http.StatusNoContent: // rspamd's reason is in the status line only
		return fmt.Errorf("%w: %s", ErrTooFewTokens, reason(a.status))
	case http.StatusAlreadyReported:
		return fmt.Errorf("%w: %s", ErrAlreadyLearned, statusError(addr, a).Message)
	case http.StatusUnauthorized, http.StatusForbidden:
		return fmt.Errorf("rspamd: controller %s refused the password (controller_password must be its password or enable_password): %w", addr, statusError(addr, a))
	}
	return statusError(addr, a)
}

// reason strips the code and rspamd's "<undef>" (no message id) from a
// status line.
func reason(status string) string {
	_, r, _ := strings.Cut(status, " ")
	return strings.TrimPrefix(r, "<undef> ")
}

// ControllersFor returns the controllers to teach when a message that the
// filters named held (quarantine.Meta.Held) turns out to be ham (its
// release): those of the rspamd scanner blocks, with a controller, that
// these filters use (filters.FilterSpec.Uses), once each, in the order of
// held. It reads the decoded configuration only, so that it serves
// `popgate quarantine release`, where no scanner runs, as well as the
// daemon. None: nothing to teach.
func ControllersFor(held []string, filterSpecs map[string]*filters.FilterSpec, scanners []*filters.ScannerSpec) []*Controller {
	byName := map[string]*filters.ScannerSpec{}
	for _, sp := range scanners {
		byName[sp.Name] = sp
	}
	var out []*Controller
	seen := map[string]bool{}
	for _, f := range held {
		fs := filterSpecs[f]
		if fs == nil {
			continue // a filter of an older configuration
		}
		for _, use := range fs.Uses {
			sp := byName[use]
			if sp == nil || sp.Type != "rspamd" || seen[use] {
				continue
			}
			seen[use] = true
			cfg, ok := sp.Settings().(Config)
			if !ok || cfg.Controller == "" {
				continue
			}
			if c, err := NewController(cfg.Controller, cfg.ControllerPassword, cfg.Timeout, cfg.MaxSize); err == nil { // DecodeConfig checked the address
				out = append(out, c)
			}
		}
	}
	return out
}

// FindController returns a controller client for the rspamd scanner block
// called name among specs, or, with name "", for the only rspamd scanner
// block that names a controller. It starts nothing (no health checks): for
// commands that only learn.
func FindController(specs []*filters.ScannerSpec, name string) (*Controller, string, error) {
	var found []*filters.ScannerSpec
	for _, sp := range specs {
		cfg, ok := sp.Settings().(Config)
		if !ok || sp.Type != "rspamd" || (name != "" && sp.Name != name) {
			continue
		}
		switch {
		case cfg.Controller != "":
			found = append(found, sp)
		case name != "":
			return nil, "", fmt.Errorf("scanner %q names no controller: add controller = \"http://HOST:11334\" and controller_password to its block", sp.Name)
		}
	}
	switch {
	case len(found) == 0 && name != "":
		return nil, "", fmt.Errorf("there is no rspamd scanner %q", name)
	case len(found) == 0:
		return nil, "", errors.New(`no rspamd scanner block names a controller; add controller and controller_password to a scanner "rspamd" block`)
	case len(found) > 1:
		names := make([]string, len(found))
		for i, sp := range found {
			names[i] = fmt.Sprintf("%q", sp.Name)
		}
		slices.Sort(names)
		return nil, "", fmt.Errorf("several rspamd scanners name a controller (%s): say which", strings.Join(names, ", "))
	}
	cfg := found[0].Settings().(Config)
	c, err := NewController(cfg.Controller, cfg.ControllerPassword, cfg.Timeout, cfg.MaxSize)
	return c, found[0].Name, err
}
