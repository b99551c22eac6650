package release

import "errors"

// Errors a Releaser wraps so that its callers can tell the cases apart (the
// admin API answers each with its own status, a release link with its own
// page). A record that does not exist is quarantine.ErrNotFound, an id that
// is not one quarantine.ErrInvalidID; any other error is a failed delivery,
// worth trying again.
var (
	// ErrNotPermitted: the policy does not let this requester release the
	// message (Request.ByUser for a message that needs Admin, or Never).
	ErrNotPermitted = errors.New("release: not permitted by the policy")
	// ErrInProgress: another release of the message is under way, or an
	// earlier one was interrupted or is uncertain (Request.Force).
	ErrInProgress = errors.New("release: another release of this message is in progress")
	// ErrNoRoute: the message's upstream has no release block.
	ErrNoRoute = errors.New("release: no way is configured to deliver to this mailbox")
	// ErrUncertain: the delivery failed after the server had the whole
	// message, so it may have arrived; a retry needs Request.Force.
	ErrUncertain = errors.New("release: the delivery may have happened; check the mailbox before releasing again")
	// ErrDelivery: the mail server did not take the message.
	ErrDelivery = errors.New("release: the mail server did not accept the message")
)
