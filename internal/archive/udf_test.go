package archive

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/popgate/popgate/internal/archive/archivetest"
)

// udfFind returns the offsets of the descriptors with tag id in img
// (2048-byte sectors).
func udfFind(img []byte, id uint16) []int {
	var offs []int
	for off := 0; off+2048 <= len(img); off += 2048 {
		if binary.LittleEndian.Uint16(img[off:]) == id && img[off+5] == 0 {
			var sum byte
			for i := range 16 {
				if i != 4 {
					sum += img[off+i]
				}
			}
			if sum == img[off+4] {
				offs = append(offs, off)
			}
		}
	}
	return offs
}

// udfRetag recomputes the CRC and checksum of the descriptor at d.
func udfRetag(d []byte) {
	var crc uint16
	for _, c := range d[16 : 16+int(binary.LittleEndian.Uint16(d[10:]))] {
		crc = crc16xmodem(crc, c)
	}
	binary.LittleEndian.PutUint16(d[8:], crc)
	var sum byte
	for i := range 16 {
		if i != 4 {
			sum += d[i]
		}
	}
	d[4] = sum
}

func TestUDF(t *testing.T) {
	bridge := genisoimage(t, "-udf")
	f := formatNamed(t, "udf")
	for name, img := range map[string][]byte{"bridge": bridge, "UDF only": archivetest.UDFOnly(t, bridge)} {
		t.Run(name, func(t *testing.T) {
			if !f.Sniff(make([]byte, HeadLen), bytes.NewReader(img), int64(len(img)), "innocent.pdf") {
				t.Fatal("not sniffed")
			}
			if iso := formatNamed(t, "iso9660").Sniff(nil, bytes.NewReader(img), int64(len(img)), ""); iso != (name == "bridge") {
				t.Fatalf("iso9660 sniffed %v", iso)
			}
			got, err := walkAll(t, f, img, "")
			if err != nil {
				t.Fatal(err)
			}
			files := map[string]string{}
			for _, m := range got {
				if !m.Dir {
					files[m.Name] = m.Content
				}
			}
			if files["docs/deep/er/Invoice 2024.pdf.exe"] != "MZ evil" || files["readme.txt"] != "hello\n" || len(files) != 2 {
				t.Fatalf("files %q", files)
			}
		})
	}
}

// TestUDFMkudffs reads the empty file system mkudffs makes (UDF 2.01,
// 512-byte blocks): no members, no error.
func TestUDFMkudffs(t *testing.T) {
	archivetest.NeedTool(t, "mkudffs")
	p := filepath.Join(t.TempDir(), "x.img")
	if err := os.WriteFile(p, make([]byte, 200<<10), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkudffs", "-b", "512", p).CombinedOutput(); err != nil {
		t.Fatalf("mkudffs: %v\n%s", err, out)
	}
	img, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	got, err := walkAll(t, formatNamed(t, "udf"), img, "")
	if err != nil || len(got) != 0 {
		t.Fatalf("members %+v, error %v", got, err)
	}
}

func TestUDFHostile(t *testing.T) {
	bridge := genisoimage(t, "-udf")
	fsd := udfFind(bridge, udfTagFSD)
	if len(fsd) != 1 {
		t.Fatalf("%d file set descriptors", len(fsd))
	}
	root := binary.LittleEndian.Uint32(bridge[fsd[0]+404:])
	fes := udfFind(bridge, udfTagFE)
	// The file entry of the 7-byte file, and the root directory's.
	var exe, rootFE int
	for _, off := range fes {
		if binary.LittleEndian.Uint64(bridge[off+56:]) == 7 {
			exe = off
		}
		if binary.LittleEndian.Uint32(bridge[off+12:]) == root {
			rootFE = off
		}
	}
	if exe == 0 || rootFE == 0 {
		t.Fatal("file entries not found")
	}
	mutate := func(fn func(img []byte)) []byte {
		img := bytes.Clone(bridge)
		fn(img)
		return img
	}
	cases := map[string][]byte{
		"tag checksum": mutate(func(img []byte) { img[fsd[0]+4]++ }),
		"descriptor CRC": mutate(func(img []byte) {
			img[fsd[0]+100] ^= 0xFF
		}),
		"extent beyond the image": mutate(func(img []byte) {
			lea := binary.LittleEndian.Uint32(img[exe+168:])
			binary.LittleEndian.PutUint32(img[exe+176+int(lea)+4:], 1<<30)
			udfRetag(img[exe : exe+2048])
		}),
		"size beyond its extents": mutate(func(img []byte) {
			binary.LittleEndian.PutUint64(img[exe+56:], 1<<20)
			udfRetag(img[exe : exe+2048])
		}),
		"directory loop": mutate(func(img []byte) {
			// Every subdirectory's identifier points at the root.
			for off := 0; off+38 < len(img); off += 4 {
				if binary.LittleEndian.Uint16(img[off:]) == udfTagFID && img[off+18]&udfFIDDir != 0 && img[off+18]&udfFIDParnt == 0 {
					binary.LittleEndian.PutUint32(img[off+24:], root)
					n := 38 + int(binary.LittleEndian.Uint16(img[off+36:])) + int(img[off+19])
					binary.LittleEndian.PutUint16(img[off+10:], uint16(n-16))
					udfRetag(img[off : off+n])
				}
			}
		}),
		"truncated before the anchor": bridge[:len(bridge)/2],
		"truncated before a file":     bridge[:bytes.LastIndex(bridge, []byte("MZ evil"))],
	}
	for name, img := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := walkAll(t, formatNamed(t, "udf"), img, "")
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v, want ErrCorrupt", err)
			}
		})
	}
}

func FuzzUDF(f *testing.F) {
	// A 200 KiB image of 512-byte blocks (mkudffs) keeps the inputs small
	// enough to mutate.
	if _, err := exec.LookPath("mkudffs"); err == nil {
		p := filepath.Join(f.TempDir(), "x.img")
		if os.WriteFile(p, make([]byte, 200<<10), 0o600) == nil && exec.Command("mkudffs", "-b", "512", p).Run() == nil {
			if b, err := os.ReadFile(p); err == nil {
				f.Add(b)
			}
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) { fuzzWalk(t, formatNamed(t, "udf"), b) })
}
