package main

// The filter and scanner types a configuration can name.
import _ "github.com/popgate/popgate/filters/builtin"
