package filters

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// sizeUnits are the units ParseSize understands. Decimal units are powers of
// 1000 and binary units powers of 1024, as in IEC 80000-13.
var sizeUnits = map[string]int64{
	"":    1,
	"b":   1,
	"kb":  1000,
	"mb":  1000 * 1000,
	"gb":  1000 * 1000 * 1000,
	"tb":  1000 * 1000 * 1000 * 1000,
	"kib": 1 << 10,
	"mib": 1 << 20,
	"gib": 1 << 30,
	"tib": 1 << 40,
}

// ParseSize parses a size in bytes written as a whole number followed by an
// optional unit: "100" or "100B" (bytes), "25KB", "25MB", "1GB", "1TB"
// (decimal: 1000, 1000², …) or "512KiB", "8MiB", "1GiB", "1TiB" (binary:
// 1024, 1024², …). Units are case-insensitive and may be separated from the
// number by spaces. Fractions ("1.5MB"), signs and unit-less letters ("25M")
// are refused, as is any size above math.MaxInt64.
//
// It lives here, not in package policy, so that filter and scanner types can
// validate their own size settings (policy imports filters, not the other
// way round). Note that clamd's "25M" (clamd.conf) is 25 MiB, 25×1024².
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	if t == "" {
		return 0, errors.New("the size is empty")
	}
	i := 0
	for i < len(t) && t[i] >= '0' && t[i] <= '9' {
		i++
	}
	if i == 0 {
		if t[0] == '-' {
			return 0, errors.New("a size cannot be negative")
		}
		return 0, errors.New(`a size is a whole number of bytes with an optional unit, like "100", "25MB" or "512KiB"`)
	}
	unit := strings.ToLower(strings.TrimSpace(t[i:]))
	mult, ok := sizeUnits[unit]
	if !ok {
		if strings.HasPrefix(unit, ".") || strings.HasPrefix(unit, ",") {
			return 0, errors.New(`a size must be a whole number, like "1500KB" rather than "1.5MB"`)
		}
		return 0, fmt.Errorf("unknown unit %q; use B, KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024)", strings.TrimSpace(t[i:]))
	}
	n, err := strconv.ParseInt(t[:i], 10, 64)
	if err != nil || n > math.MaxInt64/mult {
		return 0, errors.New("the size is too large")
	}
	return n * mult, nil
}
