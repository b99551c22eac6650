// Package mailer is popgate's outgoing mail client: it hands one message to
// an SMTP or LMTP server (the company's MTA, or Dovecot's LMTP service) for
// quarantine release and for notifications. It is built on
// github.com/emersion/go-smtp.
//
// One connection per message. [Mailer.Send] dials, delivers and quits. Release
// and digests are rare, so a pool would save nothing worth its costs: an idle
// connection the server times out, a transaction state left over from a
// failed send, and a per-connection AUTH or TLS state to keep correct.
//
// Success means every recipient. Send returns nil only when the server
// accepted the message for every recipient: after DATA for SMTP, and in each
// per-recipient reply after DATA for LMTP. A refused recipient at RCPT ends
// the transaction before DATA, so nothing is delivered to the others either.
//
// Uncertain. Between the final "." of DATA and the server's reply, the
// message may already be in the mailbox: a server that stores the message and
// then loses the connection, or answers after the client gave up, has
// delivered it, and the client cannot tell. [Error.Uncertain] marks exactly
// that window (the connection failed, timed out or was cancelled after the
// final dot went out), so that the release layer does not deliver twice
// blindly: a failure before the dot (refused, unreachable, timed out while
// sending) delivered nothing and may simply be retried. The message reader
// failing mid-DATA closes the connection without the final dot, so a
// truncated message is never delivered.
//
// Timeouts. [Options.Timeout] bounds the connection, each command, and the
// DATA phase as a whole (from the DATA command to the last reply), so a
// server that stops reading mid-message cannot hold a release for longer.
// The context cancels at any point: it closes the connection.
//
// TLS and AUTH. "starttls" is required TLS: a server that does not offer
// STARTTLS fails the send (stage "tls") rather than falling back to plain
// text, and data the server sends ahead of the TLS handshake is refused (the
// STARTTLS injection attack). "implicit" speaks TLS from the first byte. The
// certificate is verified against Options.TLSConfig (nil: the system roots,
// and the host of Address as the name). AUTH PLAIN is used when a user name
// is set, and only over TLS, or over plain text to a loopback address (a
// local MTA), which New checks: a password never crosses a network in clear.
// Go-smtp offers STARTTLS only with a fixed EHLO name and never after LHLO,
// so this package negotiates STARTTLS itself (negotiate.go) and hands
// go-smtp the encrypted connection.
package mailer
