// Package pop3 holds popgate's POP3 wire primitives: a bounded line reader,
// a byte-exact dot decoder and encoder for multi-line responses, status line
// parsing (RFC 1939 §3, RFC 2449 §8 extended response codes, RFC 3206
// SYS/TEMP and SYS/PERM, AUTH, IN-USE, LOGIN-DELAY) and command parsing.
//
// # Lines
//
// [ReadLine] reads one line ending in LF and never buffers more than its
// limit; the returned slice may alias the bufio.Reader's buffer and is only
// valid until the next read from that reader. Over-long lines are reported
// with [ErrLineTooLong] without consuming the line's LF, so that
// [DiscardLine] can skip the rest of it.
//
// # Multi-line responses (dot framing)
//
// A multi-line response is a sequence of lines; a line that begins with "."
// is dot-stuffed, and the line ".\r\n" ends the response. popgate decodes and
// encodes this framing byte-exactly, with these deliberate rules, shared by
// [DotReader] and [DotWriter]:
//
//   - A line starts at the beginning of the response and after every LF,
//     whether the LF is preceded by CR or not (a bare LF ends a line too).
//     A CR alone does not end a line.
//   - A line that is exactly ".\r\n" is the terminator. ".\n" (bare LF) is
//     not a terminator.
//   - Any other line that starts with "." loses that first "." when decoded
//     (so "..\r\n" decodes to ".\r\n", ".abc" to "abc" and ".\n" to "\n").
//   - Nothing else is rewritten: CRLF stays CRLF, a bare LF stays a bare LF,
//     a bare CR, NUL and every other byte pass through unchanged. (This differs
//     from net/textproto.DotReader, which rewrites line ends.)
//   - The encoder adds one "." to every line that starts with "." and ends the
//     data with ".\r\n", after a CRLF if the data did not end with LF. Hence
//     decode(encode(x)) == x when x is empty or ends with LF, and x+"\r\n"
//     otherwise.
//
// The decoder reads the stream through bufio.Reader.Peek/Discard and never
// consumes a byte beyond the terminator, so a pipelined response that follows
// stays in the bufio.Reader. It finds the terminator across any read
// boundary, and never needs a whole line in memory.
package pop3
