package filters

import (
	"fmt"

	"github.com/hashicorp/hcl/v2"
)

// Diagnostic builds an HCL diagnostic about the source range r, for the
// decoders of filter, scanner and policy blocks.
func Diagnostic(sev hcl.DiagnosticSeverity, r hcl.Range, summary, format string, args ...any) *hcl.Diagnostic {
	return &hcl.Diagnostic{Severity: sev, Summary: summary, Detail: fmt.Sprintf(format, args...), Subject: r.Ptr()}
}
