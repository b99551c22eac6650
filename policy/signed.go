package policy

import (
	"github.com/hashicorp/hcl/v2"

	"github.com/popgate/popgate/filters"
)

// filterSigned splits the signed attribute off a filter block (every
// filter type has it, as it has release; the type's own decoding gets the
// rest of the body) and returns what becomes of a change of the filter
// that would break a signature of the message.
func (d *decoder) filterSigned(body hcl.Body) (filters.Signed, hcl.Body) {
	content, rest, diags := body.PartialContent(&hcl.BodySchema{Attributes: []hcl.AttributeSchema{{Name: "signed"}}})
	d.diags = append(d.diags, diags...)
	attr := content.Attributes["signed"]
	if attr == nil {
		return filters.SignedChange, rest
	}
	m, _ := filters.ParseSigned(d.enum(attr, filters.SignedChange.String(),
		filters.SignedChange.String(), filters.SignedWithhold.String(), filters.SignedKeep.String()))
	return m, rest
}

// encrypted decodes a policy's encrypted attribute. A chain of filters
// that all read headers only (FilterKind.HeaderOnly) would have scanned
// nothing of an encrypted part, so it does not look; setting the
// attribute there is reported.
func (d *decoder) encrypted(s *policySchema, p *Policy) filters.Encrypted {
	mode, _ := filters.ParseEncrypted(d.enum(s.Encrypted, filters.EncryptedPassWithTag.String(),
		filters.EncryptedPassWithTag.String(), filters.EncryptedTempFail.String(), filters.EncryptedReject.String()))
	for _, f := range p.Filters {
		if !filters.FilterHeaderOnly(f.Type) {
			return mode
		}
	}
	if s.Encrypted != nil {
		d.warnf(s.Encrypted.Range, "Encrypted setting unused",
			"Policy %q has no filter that reads message content, so an encrypted message is nothing it would have scanned; encrypted has no effect.", p.Name)
	}
	return filters.EncryptedIgnore
}
