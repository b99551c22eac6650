package main

import (
	"strings"
	"testing"
)

// A measurement without the levels it needs is refused with the flag to
// set, not run into a panic.
func TestParseFlagsNeedsLevels(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string // in the error; "" for none
	}{
		{[]string{"-chains", "strip+tag", "-stripsessions", ""}, "-stripsessions"},
		{[]string{"-chains", "clamd", "-clamdsessions", ""}, "-clamdsessions"},
		{[]string{"-chains", "spam", "-spamsessions", ""}, "-spamsessions"},
		{[]string{"-chains", "memory", "-memsessions", ""}, "-memsessions"},
		{[]string{"-chains", "none", "-stripsessions", "", "-clamdsessions", ""}, ""},
		{[]string{"-chains", "strip+tag", "-stripsessions", "1"}, ""},
	} {
		_, err := parseFlags(tc.args)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%q: %v", tc.args, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%q: error %v, want one naming %s", tc.args, err, tc.want)
		}
	}
}
