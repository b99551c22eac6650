package archivetest

import (
	"bytes"
	"testing"
)

// UDFOnly turns a UDF bridge image (genisoimage -udf) into a UDF-only one:
// its Volume Recognition Sequence (BEA01, NSR02, TEA01 after the two ISO
// 9660 descriptors) moves to sector 16, so no CD001 is left. Files cannot
// be put on a mkudffs image without mounting it; this is the UDF-only image
// with files the tests have.
func UDFOnly(t testing.TB, bridge []byte) []byte {
	t.Helper()
	if len(bridge) < 21*2048 || string(bridge[18*2048+1:18*2048+6]) != "BEA01" {
		t.Fatalf("unexpected bridge layout")
	}
	img := bytes.Clone(bridge)
	copy(img[16*2048:], bridge[18*2048:21*2048])
	clear(img[19*2048 : 21*2048])
	return img
}
