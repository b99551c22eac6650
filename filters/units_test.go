package filters

import (
	"math"
	"strings"
	"testing"
)

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		err  string // substring of the error; "" for success
	}{
		{"0", 0, ""},
		{"100", 100, ""},
		{"100B", 100, ""},
		{"1KB", 1000, ""},
		{"25MB", 25_000_000, ""},
		{"25 MB", 25_000_000, ""},
		{" 1GB ", 1_000_000_000, ""},
		{"2TB", 2_000_000_000_000, ""},
		{"1mb", 1_000_000, ""},
		{"512KiB", 512 * 1024, ""},
		{"8MiB", 8 << 20, ""},
		{"1GiB", 1 << 30, ""},
		{"1tib", 1 << 40, ""},
		{"9223372036854775807", math.MaxInt64, ""},
		{"8388607TiB", 8388607 << 40, ""},
		{"8388608TiB", 0, "too large"},
		{"9223372036854775808", 0, "too large"},
		{"", 0, "empty"},
		{"   ", 0, "empty"},
		{"-1", 0, "negative"},
		{"-5MB", 0, "negative"},
		{"+5MB", 0, "whole number of bytes"},
		{"MB", 0, "whole number of bytes"},
		{"1.5MB", 0, "whole number"},
		{"25M", 0, `unknown unit "M"`},
		{"25 bytes", 0, "unknown unit"},
		{"1e6", 0, "unknown unit"},
		{"0x10", 0, "unknown unit"},
	} {
		got, err := ParseSize(tc.in)
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("ParseSize(%q): %v", tc.in, err)
		case tc.err == "" && got != tc.want:
			t.Errorf("ParseSize(%q) = %d, want %d", tc.in, got, tc.want)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("ParseSize(%q) = %d, %v; want an error containing %q", tc.in, got, err, tc.err)
		}
	}
}

func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"25MB", "512KiB", "1", "-1", "1.5GB", "99999999999TiB"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseSize(s)
		if err == nil && n < 0 {
			t.Fatalf("ParseSize(%q) = %d", s, n)
		}
	})
}
