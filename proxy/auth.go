package proxy

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"github.com/popgate/popgate/proxy/pop3"
)

// auth relays an AUTH exchange (RFC 5034) as opaque lines: popgate never
// needs to understand the mechanism. It only peeks at PLAIN, LOGIN and
// CRAM-MD5 to learn the login name for policy, logs and the login
// throttle; the exchange itself is never logged.
func (s *session) auth(cmd pop3.Command, line []byte) error {
	if s.upstreamRefusesCleartext(cmd) {
		return nil
	}
	mech := ""
	if len(cmd.Args) > 0 {
		mech = strings.ToUpper(cmd.Args[0])
	}
	var user string
	initial := len(cmd.Args) > 1
	if initial {
		switch mech {
		case "PLAIN":
			user = saslPlainUser(cmd.Args[1])
		case "LOGIN":
			user = saslDecode(cmd.Args[1]) // the name; the password comes next
		}
	}
	// The throttle judges the attempt once the name is known: here when
	// the command holds it (or credentials of a mechanism popgate does not
	// read), else at the answer that names it (authExchange).
	if mech != "" && (initial || !namesInAnswer(mech)) {
		if ok, err := s.admitLogin(user); !ok {
			return err
		}
	}
	if err := s.send(line); err != nil {
		return err
	}
	return s.authExchange(mech, user, 0)
}

// namesInAnswer tells whether a mechanism's first answer names the login
// (and popgate reads it).
func namesInAnswer(mech string) bool {
	return mech == "PLAIN" || mech == "LOGIN" || mech == "CRAM-MD5"
}

// authExchange relays an AUTH exchange from its step'th server line on.
func (s *session) authExchange(mech, user string, step int) error {
	for ; ; step++ {
		resp, err := pop3.ReadLine(s.up.r, s.srv.opts.MaxSASLLine)
		if err != nil {
			if errors.Is(err, pop3.ErrLineTooLong) {
				return fmt.Errorf("%w: AUTH challenge over %d octets", errUpstreamProtocol, s.srv.opts.MaxSASLLine)
			}
			return upstreamErr(err)
		}
		if pop3.IsContinuation(resp) {
			s.writeLine(resp)
			if err := s.cw.Flush(); err != nil {
				return clientErr(err)
			}
			answer, err := pop3.ReadLine(s.cr, s.srv.opts.MaxSASLLine)
			if err != nil {
				// Mid-exchange there is no way to resynchronise: hang up.
				return clientErr(fmt.Errorf("AUTH response: %w", err))
			}
			if user == "" {
				switch {
				case mech == "PLAIN":
					user = saslPlainUser(string(answer))
				case mech == "LOGIN" && step == 0:
					user = saslDecode(string(answer))
				case mech == "CRAM-MD5" && step == 0:
					// RFC 2195: the answer is "user SP digest".
					user, _, _ = strings.Cut(saslDecode(string(answer)), " ")
				}
			}
			if mech != "" && string(answer) != "*" {
				if ok, err := s.admitLogin(user); !ok {
					if err != nil {
						return err
					}
					return s.cancelAuth()
				}
			}
			if err := s.send(answer); err != nil {
				return err
			}
			continue
		}
		st, err := pop3.ParseStatus(resp)
		if err != nil {
			return fmt.Errorf("%w: %v", errUpstreamProtocol, err)
		}
		if mech != "" {
			s.loginResult(st.OK)
		}
		if st.OK && mech != "" {
			if err := s.loggedIn(user); err != nil {
				return err
			}
		}
		s.writeLine(resp)
		if st.OK && mech == "" {
			// Bare AUTH lists the mechanisms as a multi-line response.
			return s.relayBody()
		}
		return nil
	}
}

// cancelAuth ends an AUTH exchange the throttle refused (the client has
// its answer already): the server gets "*" (RFC 5034 §4) instead of the
// credentials, and its -ERR is read and dropped.
func (s *session) cancelAuth() error {
	if err := s.send([]byte("*")); err != nil {
		return err
	}
	_, _, err := s.readStatus()
	return err
}

// saslPlainUser returns the identity of a PLAIN response (RFC 4616):
// the authorization identity if given, else the authentication identity.
func saslPlainUser(b64 string) string {
	parts := saslPlainParts(b64)
	if parts == nil {
		return ""
	}
	return parts[plainIdentity(parts)]
}

// saslPlainParts splits a PLAIN response into authzid, authcid, password.
func saslPlainParts(b64 string) []string {
	parts := strings.SplitN(saslDecode(b64), "\x00", 3)
	if len(parts) != 3 {
		return nil
	}
	return parts
}

// plainIdentity is the index of the identity a PLAIN response logs in as.
func plainIdentity(parts []string) int {
	if parts[0] != "" {
		return 0
	}
	return 1
}

func saslDecode(b64 string) string {
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(b64))
	if err != nil || bytes.ContainsAny(raw, "\r\n") {
		return ""
	}
	return string(raw)
}
