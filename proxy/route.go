package proxy

import (
	"encoding/base64"
	"fmt"
	"strings"

	"github.com/popgate/popgate/proxy/pop3"
)

// routed handles the commands of a login-routed listener before login:
// those that name the login pick and connect the upstream; the rest are
// answered here while there is no upstream yet. handled is false for
// commands the ordinary relay takes.
func (s *session) routed(cmd pop3.Command) (handled bool, err error) {
	switch cmd.Name {
	case "USER":
		up, user, ok := s.route(cmd.Rest)
		if !ok {
			return true, nil
		}
		if err := s.reconnect(up); err != nil {
			return true, err
		}
		if s.upstreamRefusesCleartext(cmd) {
			return true, nil
		}
		st, err := s.relaySingle([]byte("USER " + user))
		if err == nil && st.OK {
			s.pendingUser = user
		}
		return true, err
	case "AUTH":
		return true, s.routedAuth(cmd)
	case "APOP":
		s.replyErr("", "APOP is not available here: use USER/PASS or AUTH PLAIN")
		return true, nil
	}
	if s.up != nil {
		return false, nil
	}
	switch cmd.Name {
	case "CAPA":
		// popgate's own list until a server is chosen: what a routed
		// listener accepts for the login.
		s.cw.WriteString("+OK capability list follows\r\n")
		for _, l := range []string{"USER\r\n", "SASL PLAIN LOGIN\r\n", "RESP-CODES\r\n", "AUTH-RESP-CODE\r\n", "PIPELINING\r\n"} {
			s.cw.WriteString(s.capaLine(l))
		}
		if s.offersSTLS() {
			s.cw.WriteString("STLS\r\n")
		}
		s.cw.WriteString(".\r\n")
	case "STLS":
		return true, s.startTLS()
	case "QUIT":
		s.cw.WriteString("+OK bye\r\n")
		s.state = stateUpdate
	default:
		s.replyErr("", "log in first")
	}
	return true, nil
}

// route asks the listener's Router where a login goes; a refusal is
// answered here.
func (s *session) route(login string) (*Upstream, string, bool) {
	up, user, err := s.cfg.Router(login)
	if err != nil || up == nil {
		s.log.Warn().Err(err).Msg("login not routed")
		s.replyErr("AUTH", "this login cannot be routed")
		return nil, "", false
	}
	return up.withDefaults(), user, true
}

// reconnect drops the current upstream (before login: nothing to lose, no
// QUIT) and connects to up, consuming its greeting.
func (s *session) reconnect(up *Upstream) error {
	s.mu.Lock()
	old := s.up
	s.up = nil
	s.mu.Unlock()
	if old != nil {
		_ = old.close()
	}
	s.srv.ports.release(s.outPort)
	s.outPort = 0
	uc, err := s.connectUpstream(up)
	if err == nil {
		if st, _ := pop3.ParseStatus(uc.greeting); !st.OK {
			err = fmt.Errorf("upstream %s greets with %q", up.Name, uc.greeting)
		}
	}
	if err != nil {
		s.log.Warn().Err(err).Str("upstream", up.Name).Msg("upstream unavailable")
		s.replyErr("SYS/TEMP", "mail server unavailable, try again later")
		return errUpstreamUnavailable
	}
	return nil
}

// routedAuth runs AUTH PLAIN or LOGIN on a routed listener: popgate takes
// the first response itself to learn the login, connects, and replays the
// exchange to the server with the routed login name.
func (s *session) routedAuth(cmd pop3.Command) error {
	mech := strings.ToUpper(firstArg(cmd))
	if mech != "PLAIN" && mech != "LOGIN" {
		s.replyErr("", "only AUTH PLAIN and AUTH LOGIN are available here")
		return nil
	}
	first := ""
	if len(cmd.Args) > 1 {
		first = cmd.Args[1]
	} else {
		prompt := "+ \r\n"
		if mech == "LOGIN" {
			prompt = "+ VXNlcm5hbWU6\r\n" // "Username:"
		}
		s.cw.WriteString(prompt)
		if err := s.cw.Flush(); err != nil {
			return clientErr(err)
		}
		line, err := pop3.ReadLine(s.cr, s.srv.opts.MaxSASLLine)
		if err != nil {
			return clientErr(fmt.Errorf("AUTH response: %w", err))
		}
		first = string(line)
	}
	if first == "*" {
		s.replyErr("", "authentication cancelled")
		return nil
	}
	if mech == "PLAIN" {
		parts := saslPlainParts(first)
		if parts == nil {
			s.replyErr("AUTH", "malformed PLAIN response")
			return nil
		}
		up, user, ok := s.route(parts[plainIdentity(parts)])
		if !ok {
			return nil
		}
		parts[plainIdentity(parts)] = user
		b64 := base64.StdEncoding.EncodeToString([]byte(strings.Join(parts, "\x00")))
		if err := s.reconnect(up); err != nil {
			return err
		}
		return s.auth(pop3.Command{Name: "AUTH", Args: []string{"PLAIN", b64}}, []byte("AUTH PLAIN "+b64))
	}
	login := saslDecode(first)
	if login == "" {
		s.replyErr("AUTH", "malformed LOGIN response")
		return nil
	}
	up, user, ok := s.route(login)
	if !ok {
		return nil
	}
	if err := s.reconnect(up); err != nil {
		return err
	}
	if s.upstreamRefusesCleartext(cmd) {
		return nil
	}
	// The server asks for the user name first, which popgate already has.
	if err := s.send([]byte("AUTH LOGIN")); err != nil {
		return err
	}
	prompt, err := pop3.ReadLine(s.up.r, s.srv.opts.MaxSASLLine)
	if err != nil {
		return upstreamErr(err)
	}
	if !pop3.IsContinuation(prompt) {
		s.writeLine(prompt) // the server refuses LOGIN: its word
		return nil
	}
	if err := s.send([]byte(base64.StdEncoding.EncodeToString([]byte(user)))); err != nil {
		return err
	}
	return s.authExchange("LOGIN", user, 1)
}
