// Package mailtext owns popgate's rules for untrusted mail text: the text of
// messages, of clients and of backends (clamd replies) that popgate decodes,
// matches, or writes again into header fields, notices and logs. Each rule
// is here once, so that the filters and the proxy cannot drift apart:
//
//   - [ValidFieldName]: what a header field name is (RFC 5322 ftext), and
//     [Field]: how popgate writes one (folded at [FoldAt]);
//   - [DecodeWords] and [ParseAddressList]: RFC 2047 encoded words, in the
//     charsets go-message knows, with the charset conversion bounded as in
//     [ToUTF8];
//   - the characters that must never reach a reader as they are:
//     [IsControl] (C0, DEL, C1) and [IsInvisible] (bidi embeddings,
//     overrides, isolates and marks, zero-width and other format
//     characters, line and paragraph separators, invisible fillers), one
//     rule for all uses;
//   - non-ASCII text: raw in a UTF-8 body or log, RFC 2047 encoded in a
//     header field ([EncodeWords]), or '?' where text goes into a header
//     unencoded ([HeaderText]);
//   - the three uses of that text, which differ on purpose: [Text] for
//     what a recipient reads (notices, header values before encoding),
//     where a hidden character becomes a space; [Visible] for what an
//     administrator reads (logs, terminals) and for reasons naming what
//     was found in a message, where it is shown as <U+XXXX> so that a
//     disguise is seen rather than acting; and
//     [HeaderText] for header fields written without encoding (ASCII only);
//   - [NewReader] and [NewReaderAt]: readers that stop once a context ends,
//     so that long copies of message text stop promptly.
//
// Text, HeaderText and Visible return valid UTF-8 without control or
// invisible characters, at most the given number of bytes long, whatever
// their input (FuzzSanitize checks it). DecodeWords, ParseAddressList and
// ToUTF8 return untrusted text, to be passed through one of them.
package mailtext
