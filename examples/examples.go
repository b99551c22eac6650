// Package examples holds popgate's example configurations. Every *.hcl file
// in this directory is loaded by a test; demo.hcl is also embedded in the
// binary as the configuration of `popgate demo`.
package examples

import "embed"

// Demo is examples/demo.hcl, the configuration `popgate demo` runs with.
//
//go:embed demo.hcl
var Demo []byte

// ClamdSignatures holds clamd/: the project's own signature database, which
// only knows the EICAR test file — an .hdb line (MD5:SIZE:NAME, the exact
// 68-byte file) and an .ndb body signature (the string anywhere, as the
// official database matches it inside MIME parts) — and ClamAV's own test
// file clam.exe (Debian clamav-testfiles; an .hdb line, as in ClamAV's
// unit tests: clamd finds it inside every archive and packer of those
// test files by unpacking them). clamd reports them as
// "Eicar-Test-Signature.UNOFFICIAL" and "ClamAV-Test-File.UNOFFICIAL".
// `popgate demo` starts its clamd with these files and scripts/testenv.sh
// copies them into the test clamd's database directory: one source, no
// download.
//
//go:embed clamd/popgate-eicar.hdb clamd/popgate-eicar.ndb clamd/popgate-clamav-testfile.hdb
var ClamdSignatures embed.FS
