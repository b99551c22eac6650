package archive

import (
	"bytes"
	"context"
	"slices"
	"testing"
)

// The tools and ClamAV test files the tests build with are reached
// through archivetest (NeedTool, ClamFile, Shell, Bounded), which the strip
// filter's tests share.

func listNamed(t testing.TB, data []byte, name string, lim Limits) (*Listing, error) {
	t.Helper()
	return List(context.Background(), bytes.NewReader(data), int64(len(data)), name, lim, nil)
}

func hasPath(a *Listing, p string) bool {
	return slices.ContainsFunc(a.Entries, func(e Entry) bool { return e.Path == p })
}
