// Package examples holds popgate's example configurations. Every *.hcl file
// in this directory is loaded by a test; demo.hcl is also embedded in the
// binary as the configuration of `popgate demo`.
package examples

import _ "embed"

// Demo is examples/demo.hcl, the configuration `popgate demo` runs with.
//
//go:embed demo.hcl
var Demo []byte
