package policy

// The configurations under test use the built-in filter types, as
// cmd/popgate does.
import _ "github.com/popgate/popgate/filters/builtin"
