package main

// The filter and scanner types a configuration can name register
// themselves with package filters when imported.
import (
	_ "github.com/popgate/popgate/filters/clamav"
	_ "github.com/popgate/popgate/filters/strip"
	_ "github.com/popgate/popgate/filters/tag"
)
