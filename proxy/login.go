package proxy

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/popgate/popgate/proxy/pop3"
	"github.com/popgate/popgate/proxy/throttle"
)

// What a login attempt meets before it reaches the server: the listener's
// and the upstream's TLS requirements (no password in the clear) and the
// login throttle.

// hashedMechanisms are the SASL mechanisms whose exchange never carries the
// password itself (nor an equivalent bearer token), so they may run without
// TLS where the configuration requires TLS for logins, as APOP does. Any
// other mechanism is treated as sending the password in the clear.
var hashedMechanisms = map[string]bool{
	"CRAM-MD5": true, "DIGEST-MD5": true, "GSSAPI": true,
	"SCRAM-SHA-1": true, "SCRAM-SHA-1-PLUS": true, "SCRAM-SHA-256": true, "SCRAM-SHA-256-PLUS": true,
}

// cleartextLogin tells whether cmd sends a password (or the name it goes
// with) in the clear: USER, PASS, and AUTH with any mechanism but the
// hashed ones.
func cleartextLogin(cmd pop3.Command) bool {
	switch cmd.Name {
	case "USER", "PASS":
		return true
	case "AUTH":
		return len(cmd.Args) > 0 && !hashedMechanisms[strings.ToUpper(cmd.Args[0])]
	}
	return false
}

// clientCleartextRefused tells whether this client may not send a password
// in the clear yet: the listener requires TLS for logins, the session is
// not TLS and the client is not in PlaintextLoginFrom.
func (s *session) clientCleartextRefused() bool {
	return s.cfg.LoginRequiresTLS && !s.tlsOn && !inPrefixes(s.client.Addr(), s.cfg.PlaintextLoginFrom)
}

// cleartextRefused tells whether a cleartext login would be refused now,
// on either side: what CAPA leaves out.
func (s *session) cleartextRefused() bool {
	return s.clientCleartextRefused() || s.up != nil && s.up.refusesCleartext
}

// refuseCleartext answers a command that would send a password in the
// clear before STLS on a listener that requires TLS for logins, and
// reports whether it did. The answer is Dovecot's, with [AUTH]: RFC 3206
// counts "an attempt to authenticate in violation of policy" as an AUTH
// failure.
func (s *session) refuseCleartext(cmd pop3.Command) bool {
	if s.state != stateAuthorization || !cleartextLogin(cmd) || !s.clientCleartextRefused() {
		return false
	}
	s.log.Info().Str("command", cmd.Name).Msg("login refused: plaintext login before STLS")
	s.replyErr("AUTH", "Plaintext authentication disallowed on non-secure (SSL/TLS) connections.")
	s.obs.Login(LoginPlaintext)
	return true
}

// upstreamRefusesCleartext answers a command that would send a password
// in the clear to a server reached without TLS whose upstream requires TLS
// for logins, and reports whether it did. The answer is [SYS/TEMP]: the
// client can do nothing about it, the administrator can.
func (s *session) upstreamRefusesCleartext(cmd pop3.Command) bool {
	if !s.up.refusesCleartext || !cleartextLogin(cmd) {
		return false
	}
	s.log.Warn().Str("command", cmd.Name).Str("upstream", s.upName).
		Msg("login refused: the upstream requires TLS for logins and the connection to it is not TLS; no credentials sent")
	s.replyErr("SYS/TEMP", "login not available, try again later")
	s.obs.Login(LoginPlaintext)
	return true
}

// capaLine returns a CAPA line as the client may see it: without USER and
// with only the hashed SASL mechanisms while cleartext logins are refused
// ("" drops the line).
func (s *session) capaLine(line string) string {
	if !s.cleartextRefused() {
		return line
	}
	name, rest, _ := strings.Cut(strings.TrimRight(line, "\r\n"), " ")
	switch strings.ToUpper(name) {
	case "USER":
		return ""
	case "SASL":
		var keep []string
		for _, m := range strings.Fields(rest) {
			if hashedMechanisms[strings.ToUpper(m)] {
				keep = append(keep, m)
			}
		}
		if len(keep) == 0 {
			return ""
		}
		return name + " " + strings.Join(keep, " ") + "\r\n"
	}
	return line
}

// admitLogin lets a login attempt of name go to the server, or answers it
// itself when the throttle refuses it: it returns false then (with an
// error only when the session must end). An admitted attempt may first
// wait for the throttle's delay; its result goes to loginResult. Within
// one AUTH exchange, the first call decides.
func (s *session) admitLogin(name string) (bool, error) {
	if s.attempt != nil {
		return true, nil
	}
	a := s.srv.opts.Throttle.Attempt(s.ctx, s.cfg.LoginThrottle, s.client.Addr(), s.upName, name)
	if a.Locked != "" {
		s.obs.Throttled(a.Locked)
		s.obs.Login(LoginThrottled)
		ev := s.log.Info().Str("scope", a.Locked).Dur("retry_in", a.Retry.Round(time.Second))
		if a.Locked == throttle.ScopeName {
			ev = ev.Str("name_hash", a.Name)
		}
		ev.Msg("login refused: too many failed logins")
		text := "too many failed logins from your address, try again later"
		if a.Locked == throttle.ScopeName {
			text = "too many failed logins for this account, try again later"
		}
		s.replyErr("SYS/TEMP", text)
		return false, nil
	}
	if a.Delay > 0 {
		s.log.Debug().Dur("delay", a.Delay).Msg("login delayed after failed logins")
		// The reply to the previous command goes out before the wait.
		if err := s.cw.Flush(); err != nil {
			return false, clientErr(err)
		}
		t := time.NewTimer(a.Delay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-s.ctx.Done():
			return false, fmt.Errorf("login delay: %w", s.ctx.Err())
		}
	}
	s.attempt = a
	return true, nil
}

// loginResult settles the admitted attempt with the server's answer.
func (s *session) loginResult(ok bool) {
	a := s.attempt
	if a == nil {
		return
	}
	s.attempt = nil
	if ok {
		s.obs.Login(LoginOK)
		a.Succeeded(s.ctx)
		return
	}
	s.obs.Login(LoginFailed)
	for _, scope := range a.Failed(context.WithoutCancel(s.ctx)) {
		s.obs.Lockout(scope)
		ev := s.log.Warn().Str("scope", scope).Dur("lockout", s.cfg.LoginThrottle.Lockout)
		if scope == throttle.ScopeName {
			ev = ev.Str("name_hash", a.Name)
		}
		ev.Msg("login throttle: locked after too many failed logins")
	}
}
