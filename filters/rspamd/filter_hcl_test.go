package rspamd

import (
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/internal/hcltest"
)

// decodeSpam decodes src, one `filter "spam"` block, and builds it when it
// has no errors.
func decodeSpam(t *testing.T, src string) (*Filter, hcl.Diagnostics) {
	t.Helper()
	dc := &filters.DecodeContext{Scanners: map[string]*filters.ScannerSpec{
		"rs": {Type: "rspamd", Name: "rs"},
		"av": {Type: "clamav", Name: "av", Range: hcl.Range{Filename: "scanners.hcl", Start: hcl.Pos{Line: 3, Column: 1}}},
	}}
	spec, diags, ok := filters.DecodeFilter("spam", "junk", hcl.Range{}, hcltest.Block(t, src), dc)
	if !ok {
		t.Fatal("filter type spam not registered")
	}
	if spec == nil {
		return nil, diags
	}
	if strings.Join(spec.Uses, ",") != "rs" {
		t.Errorf("spec uses %q, want the scanner rs", spec.Uses)
	}
	flt, err := spec.Build(&filters.BuildContext{Scanners: map[string]filters.Scanner{"rs": scores(&filters.SpamReport{})}})
	if err != nil {
		t.Fatal(err)
	}
	return flt.(*Filter), diags
}

func TestHCLFilter(t *testing.T) {
	tests := []struct {
		src  string
		want FilterSettings
	}{
		{`filter "spam" "junk" {
  scanner          = "rs"
  tag_above        = 5
  subject_above    = 8
  quarantine_above = 15
}`, FilterSettings{Scanner: "rs", Thresholds: defaultThresholds, SubjectPrefix: "[SPAM]", ScannerHeaders: true, Oversize: DefaultOversize}},
		{`filter "spam" "junk" {
  scanner               = "rs"
  tag_above             = -1.5
  subject_prefix        = "[Werbung?]"
  keep_original_subject = false
  symbols_header        = true
  scanner_headers       = false
  remove_headers        = false
  oversize              = "tempfail"
}`, FilterSettings{Scanner: "rs", Thresholds: []Threshold{{LevelTag, -1.5}}, SubjectPrefix: "[Werbung?]", DropOriginalSubject: true, SymbolsHeader: true, Oversize: filters.OversizeTempFail}},
		{`filter "spam" "junk" {
  scanner            = "rs"
  use_scanner_action = true
}`, FilterSettings{Scanner: "rs", UseScannerAction: true, SubjectPrefix: "[SPAM]", ScannerHeaders: true, Oversize: DefaultOversize}},
		{`filter "spam" "junk" {
  scanner            = "rs"
  use_scanner_action = true
  scanner_actions    = { "Greylist" = "pass", "reject" = "subject" }
}`, FilterSettings{Scanner: "rs", UseScannerAction: true, SubjectPrefix: "[SPAM]", ScannerHeaders: true, Oversize: DefaultOversize,
			ScannerActions: map[string]Level{ActionNone: LevelPass, ActionGreylist: LevelPass, ActionAddHeader: LevelTag,
				ActionRewriteSubject: LevelSubject, ActionSoftReject: LevelQuarantine, ActionReject: LevelSubject}}},
	}
	for _, tt := range tests {
		f, diags := decodeSpam(t, tt.src)
		if diags.HasErrors() || f == nil {
			t.Fatalf("%v\n%s", diags, tt.src)
		}
		got := f.fs
		if got.Scanner != tt.want.Scanner || !slices.Equal(got.Thresholds, tt.want.Thresholds) || got.UseScannerAction != tt.want.UseScannerAction ||
			!maps.Equal(got.ScannerActions, tt.want.ScannerActions) || got.SubjectPrefix != tt.want.SubjectPrefix ||
			got.DropOriginalSubject != tt.want.DropOriginalSubject || got.SymbolsHeader != tt.want.SymbolsHeader ||
			got.ScannerHeaders != tt.want.ScannerHeaders || got.RemoveHeaders != tt.want.RemoveHeaders || got.Oversize != tt.want.Oversize {
			t.Errorf("settings\n%+v\nwant\n%+v\nfrom\n%s", got, tt.want, tt.src)
		}
		if f.Name() != "junk" {
			t.Errorf("name %q", f.Name())
		}
	}
}

func TestHCLFilterDiagnostics(t *testing.T) {
	for _, c := range []struct {
		src  string
		want []string // "line:col: substring of summary: detail"
	}{
		{`filter "spam" "junk" {
  tag_above = 5
}`, []string{"1:22: Missing required argument"}},
		{`filter "spam" "junk" {
  scanner = "rs"
}`, []string{`1:22: No spam actions: filter "junk" decides nothing`}},
		{`filter "spam" "junk" {
  scanner   = "nope"
  tag_above = 5
}`, []string{`2:15: There is no scanner "nope" (rspamd scanners: "rs")`}},
		{`filter "spam" "junk" {
  scanner   = "av"
  tag_above = 5
}`, []string{`2:15: The scanner "av" (declared at scanners.hcl:3:1) is a clamav scanner; this filter needs a scanner "rspamd" block`}},
		{`filter "spam" "junk" {
  scanner          = "rs"
  tag_above        = 8
  subject_above    = 5
  quarantine_above = 8
}`, []string{"4:22: Thresholds not ascending: subject_above (5) must be above tag_above (8, at test.hcl:3:22)",
			"5:22: quarantine_above (8) must be above tag_above (8"}},
		{`filter "spam" "junk" {
  scanner      = "rs"
  tag_above    = "high"
  refuse_above = 20
}`, []string{"3:19: Unsuitable value type", `4:3: Unsupported argument: A withheld message is refused or replaced by a notice as the policy's "rejected" setting says`}},
		{`filter "spam" "junk" {
  scanner            = "rs"
  quarantine_above   = 15
  use_scanner_action = true
}`, []string{"4:24: Conflicting arguments: use_scanner_action = true lets rspamd's action decide, and quarantine_above (at test.hcl:3:3)"}},
		{`filter "spam" "junk" {
  scanner         = "rs"
  tag_above       = 5
  scanner_actions = { "reject" = "quarantine" }
}`, []string{"4:3: scanner_actions without use_scanner_action"}},
		{`filter "spam" "junk" {
  scanner            = "rs"
  use_scanner_action = true
  scanner_actions    = {
    "discard" = "quarantine"
    "reject"  = "refuse"
    "REJECT"  = "tag"
  }
}`, []string{`5:5: Unknown rspamd action: "discard" is not an action of rspamd; it has "no action", "greylist", "add header", "rewrite subject", "soft reject" or "reject"`,
			`6:17: Unknown spam action: "refuse" is not an action of the spam filter; it has "pass", "tag", "subject" or "quarantine"`,
			`7:5: Duplicate rspamd action: "REJECT" is already mapped at test.hcl:6:5`}},
		{`filter "spam" "junk" {
  scanner            = "rs"
  use_scanner_action = true
  scanner_actions    = ["reject"]
}`, []string{"4:24: Invalid scanner_actions"}},
		{`filter "spam" "junk" {
  scanner        = "rs"
  tag_above      = 5
  subject_prefix = "[SPAM]\nBcc: x"
}`, []string{"4:20: Invalid subject prefix: the value cannot contain a line break"}},
		{`filter "spam" "junk" {
  scanner        = "rs"
  tag_above      = 5
  symbols_header = "yes please"
  bogus          = 1
  oversize       = "pass"
}`, []string{"5:3: Unsupported argument", "4:21: Unsuitable value type", `6:20: Invalid value: oversize must be one of "tempfail", "pass-with-tag", "reject" or "quarantine", not "pass"`}},
	} {
		f, diags := decodeSpam(t, c.src)
		if f != nil {
			t.Errorf("a filter from\n%s", c.src)
		}
		hcltest.WantErrors(t, c.src, diags, c.want...)
	}
}

func TestHCLFilterWarning(t *testing.T) {
	f, diags := decodeSpam(t, `filter "spam" "junk" {
  scanner        = "rs"
  tag_above      = 5
  subject_prefix = "[SPAM]"
}`)
	if f == nil || diags.HasErrors() || len(diags) != 1 || diags[0].Severity != hcl.DiagWarning || diags[0].Subject.Start.Line != 4 ||
		!strings.Contains(diags[0].Detail, "subject_prefix is never used") {
		t.Errorf("%v", diags)
	}
	f, diags = decodeSpam(t, `filter "spam" "junk" {
  scanner            = "rs"
  use_scanner_action = true
  scanner_actions    = { "rewrite subject" = "tag" }
  subject_prefix     = "[SPAM]"
}`)
	if f == nil || len(diags) != 1 || diags[0].Severity != hcl.DiagWarning || f.prefixer != nil {
		t.Errorf("%v", diags)
	}
}
