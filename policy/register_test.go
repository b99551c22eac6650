package policy

// Filter and scanner types register themselves when imported, as they are
// in cmd/popgate: the configurations under test use them.
import (
	_ "github.com/popgate/popgate/filters/clamav"
	_ "github.com/popgate/popgate/filters/strip"
	_ "github.com/popgate/popgate/filters/tag"
)
