package quarantine

import (
	"fmt"

	"github.com/popgate/popgate/internal/mailtext"
)

// Headline is what a person recognises a quarantined message by: its
// original's sender, subject and date, decoded (RFC 2047) and cleaned by
// mailtext.Text as in a notice. The text is safe to show once escaped for
// the medium (HTML, mail); it is still the sender's text.
type Headline struct {
	From    string
	Subject string
	Date    string
}

// Headline reads the header of the original of id (at most 256 KiB of it)
// for its Headline: release pages and digests show it.
func (s *Store) Headline(id string) (Headline, error) {
	r, err := s.Open(id)
	if err != nil {
		return Headline{}, err
	}
	defer r.Close()
	h, err := parseOrigHeader(r)
	if err != nil {
		return Headline{}, fmt.Errorf("quarantine: %s: %w", id, err)
	}
	return h.headline(), nil
}

func (h origHeader) headline() Headline {
	return Headline{
		From:    displayAddresses(h.get("from")),
		Subject: mailtext.Text(mailtext.DecodeWords(h.get("subject")), maxSubjectBytes),
		Date:    mailtext.Text(h.get("date"), 100),
	}
}
