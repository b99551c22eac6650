package filters

import "fmt"

// Oversize is what a filter does with a message larger than its scanner's
// max_size, which is never scanned (not even partly) and never called
// clean: a setting of the filter kinds that send messages to a scanner
// with a size limit (clamav, spam).
type Oversize int

const (
	// OversizeTempFail withholds the message for now (Retry,
	// -ERR [SYS/TEMP]): the client keeps it on the server.
	OversizeTempFail Oversize = iota
	// OversizePassWithTag delivers it with an X-Popgate-Warning header.
	OversizePassWithTag
	// OversizeReject withholds it for good (Reject).
	OversizeReject
	// OversizeQuarantine is OversizeReject: the chain quarantines every
	// rejected original. It is a spelling of its own for the admin's sake.
	OversizeQuarantine
)

// ParseOversize parses an oversize setting: "tempfail", "pass-with-tag",
// "reject" or "quarantine".
func ParseOversize(s string) (Oversize, error) {
	for o := OversizeTempFail; o <= OversizeQuarantine; o++ {
		if o.String() == s {
			return o, nil
		}
	}
	return OversizeTempFail, fmt.Errorf("invalid oversize %q: want \"tempfail\", \"pass-with-tag\", \"reject\" or \"quarantine\"", s)
}

func (o Oversize) String() string {
	switch o {
	case OversizeTempFail:
		return "tempfail"
	case OversizePassWithTag:
		return "pass-with-tag"
	case OversizeReject:
		return "reject"
	case OversizeQuarantine:
		return "quarantine"
	}
	return fmt.Sprintf("Oversize(%d)", int(o))
}
