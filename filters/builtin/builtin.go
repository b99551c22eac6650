// Package builtin registers every filter and scanner type that ships with
// popgate. Import it for its side effect wherever configurations are loaded.
package builtin

import (
	_ "github.com/popgate/popgate/filters/clamav"
	_ "github.com/popgate/popgate/filters/rspamd"
	_ "github.com/popgate/popgate/filters/strip"
	_ "github.com/popgate/popgate/filters/tag"
)
