package strip

import (
	"archive/zip"
	"bytes"
	"fmt"
	"path"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/internal/archive/archivetest"
)

// The container corpus of issue 14: every kind the archive lister reads,
// each with an executable (setup.exe) inside under an innocent attachment
// name; nested across kinds; encrypted; corrupt; and decompression bombs
// (huge ratio, huge member counts, deep nesting) in every kind that can
// carry one. Each case goes through the strip filter as a mail client's
// message would, within a time and a memory bound.
//
// The containers are made at test time by Debian's tools (tar, gzip,
// bzip2, xz, zstd, cpio, 7z, gcab, arj, genisoimage, xorriso, uuencode,
// binhex) or, where no free tool writes the format, by archivetest's
// builders (RAR, TNEF). Without a tool a case is skipped, or fails under
// POPGATE_REQUIRE_INTEGRATION=1 (the test environment has them all).

// setupExe is the executable every case hides: a DOS header and text
// (nothing runs it), long enough to be cut in its middle.
var setupExe = []byte("MZ\x90\x00\x03\x00\x00\x00\x04\x00" + strings.Repeat("setup: a test file, not a program. ", 60))

// Bounds of one case: the filter's time and everything it allocates
// (runtime.MemStats.TotalAlloc), bombs included.
const (
	caseTime  = 20 * time.Second
	caseAlloc = 64 << 20
)

// builder makes a container holding files (name → content).
type builder func(t testing.TB, files map[string][]byte) []byte

// script is a builder running a shell script in a directory holding the
// files (their names are the script's "*"), which writes ../out.
func script(s string, tools ...string) builder {
	return func(t testing.TB, files map[string][]byte) []byte {
		t.Helper()
		for _, tool := range tools {
			archivetest.NeedTool(t, tool)
		}
		in := map[string][]byte{}
		for n, b := range files {
			in["in/"+n] = b
		}
		return archivetest.Shell(t, in, "mkdir -p in && cd in && "+s, "out")
	}
}

func sortedNames(files map[string][]byte) []string {
	var names []string
	for n := range files {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// zipOf is a zip made with Go's archive/zip, deflated.
func zipOf(t testing.TB, files map[string][]byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for _, n := range sortedNames(files) {
		w, err := zw.Create(n)
		if err != nil {
			t.Fatal(err)
		}
		w.Write(files[n])
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// rarOf is a hand-built RAR archive of version 5 or 4, stored.
func rarOf(v int) builder {
	return func(t testing.TB, files map[string][]byte) []byte {
		var rf []archivetest.RarFile
		for _, n := range sortedNames(files) {
			rf = append(rf, archivetest.RarFile{Name: n, Content: string(files[n])})
		}
		if v == 4 {
			return archivetest.Rar4(0, rf...)
		}
		return archivetest.Rar5(0, rf...)
	}
}

// tnefOf is a winmail.dat with each file an attachment: an 8.3 title and
// its long name, as Outlook writes them.
func tnefOf(t testing.TB, files map[string][]byte) []byte {
	b := archivetest.NewTNEF()
	for i, n := range sortedNames(files) {
		b.Attach(fmt.Sprintf("FILE%04d.BIN", i), files[n],
			archivetest.MAPIProp{Tag: 0x3707<<16 | 0x001F, Value: archivetest.UTF16LE(n)}) // PR_ATTACH_LONG_FILENAME
	}
	return b.Bytes()
}

// The builders of every kind.
var (
	tarOfFiles   = script("tar cf ../out *", "tar")
	tarGz        = script("tar czf ../out *", "tar", "gzip")
	tarBz2       = script("tar cjf ../out *", "tar", "bzip2")
	tarXz        = script("tar cJf ../out *", "tar", "xz")
	tarZst       = script("tar cf - * | zstd -q -c > ../out", "tar", "zstd")
	gzipNamed    = script("gzip -N -c * > ../out", "gzip")
	bzip2Stream  = script("cat * | bzip2 -c > ../out", "bzip2")
	xzStream     = script("cat * | xz -c > ../out", "xz")
	zstdStream   = script("cat * | zstd -q -c > ../out", "zstd")
	cpioNewc     = script("ls | cpio -o -H newc --quiet > ../out", "cpio")
	cpioOdc      = script("ls | cpio -o -H odc --quiet > ../out", "cpio")
	sevenZ       = script("7z a -bd -bso0 ../out.7z * && mv ../out.7z ../out", "7z")
	cabMSZIP     = script("gcab -c -z ../out *", "gcab")
	cabStored    = script("gcab -c ../out *", "gcab")
	arjPacked    = script("arj a -y -m1 ../out.arj * >/dev/null && mv ../out.arj ../out", "arj")
	arjStored    = script("arj a -y -m0 ../out.arj * >/dev/null && mv ../out.arj ../out", "arj")
	isoJoliet    = script("genisoimage -quiet -J -o ../out .", "genisoimage")
	udfBridge    = script("genisoimage -quiet -J -udf -o ../out .", "genisoimage")
	uuencodeText = script("for f in *; do uuencode \"$f\" < \"$f\"; done > ../out", "uuencode")
	binhexText   = script("binhex -d * > ../out", "binhex")
)

// udfOnly is a UDF-only image: a bridge (without Joliet, whose descriptor
// would move the UDF ones) with its ISO 9660 descriptors taken out.
func udfOnly(t testing.TB, files map[string][]byte) []byte {
	return archivetest.UDFOnly(t, script("genisoimage -quiet -udf -o ../out .", "genisoimage")(t, files))
}

// filter builds a strip filter from a short-form rule (named "exe") and
// filter settings.
func filter(t testing.TB, lines ...string) *Filter {
	t.Helper()
	return mustFilter(t, "filter \"strip\" \"exe\" {\n"+strings.Join(lines, "\n")+"\n}")
}

// textMessage holds text (with uuencoded or BinHex files) in a text
// part, after prose.
func textMessage(prose string, text []byte) []byte {
	return twoParts("text/plain", "7bit", prose+string(text))
}

// verdict runs f on msg within the bounds of a case and checks the action
// and that the reason contains each of reasons.
func verdict(t *testing.T, f *Filter, msg []byte, want filters.Action, reasons ...string) filters.Verdict {
	t.Helper()
	return verdictAlloc(t, f, msg, caseAlloc+3*uint64(len(msg)), caseAlloc, want, reasons...)
}

// verdictAlloc is verdict for a case that may allocate up to maxAlloc in
// all and grow the heap by maxPeak (garbage not yet collected included).
func verdictAlloc(t *testing.T, f *Filter, msg []byte, maxAlloc, maxPeak uint64, want filters.Action, reasons ...string) filters.Verdict {
	t.Helper()
	var v filters.Verdict
	if peak := archivetest.Bounded(t, caseTime, maxAlloc, func() { v, _ = run(t, f, msg) }); peak > maxPeak {
		t.Errorf("the heap grew by %d bytes, over %d", peak, maxPeak)
	}
	if v.Action != want {
		t.Errorf("%v %q, want %v", v.Action, v.Reason, want)
		return v
	}
	for _, r := range reasons {
		if !strings.Contains(v.Reason, r) {
			t.Errorf("reason %q does not say %q", v.Reason, r)
		}
	}
	return v
}

// containerKind is one kind of the corpus, holding setup.exe.
type containerKind struct {
	name   string
	build  builder
	attach string // the attachment's name ("": in a text part)
	member string // setup.exe's path as listed
	// unreadable is the kind the reason names for the container cut short
	// ("": cutting it leaves it readable, see the case).
	unreadable string
	// embedded names the files of an Attachments kind in explanations
	// (strip's extensions apply to them too).
	embedded string
}

var containerKinds = []containerKind{
	{"zip", zipOf, "invoice.pdf", "setup.exe", "zip", ""},
	{"tar", tarOfFiles, "invoice.pdf", "setup.exe", "tar", ""},
	{"tar.gz", tarGz, "invoice.pdf", "invoice.pdf/setup.exe", "gzip", ""},
	{"tar.bz2", tarBz2, "invoice.pdf", "invoice.pdf/setup.exe", "bzip2", ""},
	{"tar.xz", tarXz, "invoice.pdf", "invoice.pdf/setup.exe", "xz", ""},
	{"tar.zst", tarZst, "invoice.pdf", "invoice.pdf/setup.exe", "zstd", ""},
	// gzip names its member in its header; bzip2, xz and zstd name none:
	// their member is named after the attachment, which must say .exe for
	// a file name rule to see one (an innocent name holding a tar is the
	// tar.* kinds).
	{"gzip", gzipNamed, "invoice.pdf", "setup.exe", "gzip", ""},
	{"bzip2", bzip2Stream, "setup.exe.bz2", "setup.exe", "bzip2", ""},
	{"xz", xzStream, "setup.exe.xz", "setup.exe", "xz", ""},
	{"zstd", zstdStream, "setup.exe.zst", "setup.exe", "zstd", ""},
	{"cpio newc", cpioNewc, "report.docx", "setup.exe", "cpio", ""},
	{"cpio odc", cpioOdc, "report.docx", "setup.exe", "cpio", ""},
	{"7z", sevenZ, "report.docx", "setup.exe", "7z", ""},
	{"rar v5", rarOf(5), "report.docx", "setup.exe", "rar", ""},
	{"rar v4", rarOf(4), "report.docx", "setup.exe", "rar", ""},
	{"cab MSZIP", cabMSZIP, "report.docx", "setup.exe", "cab", ""},
	{"cab stored", cabStored, "report.docx", "setup.exe", "cab", ""},
	{"arj", arjPacked, "report.docx", "setup.exe", "arj", ""},
	{"ISO 9660 Joliet", isoJoliet, "invoice.pdf", "setup.exe", "iso9660", ""},
	// A bridge image is read by its ISO 9660 side (registered first): its
	// Joliet names here.
	{"UDF bridge", udfBridge, "invoice.pdf", "setup.exe", "iso9660", ""},
	{"UDF only", udfOnly, "invoice.pdf", "setup.exe", "udf", ""},
	{"TNEF", tnefOf, "winmail.dat", "setup.exe", "tnef", "TNEF (winmail.dat) attachment"},
	// Lenient as mail clients are, a uuencoded block cut short is the
	// file up to the cut: readable.
	{"uuencode", uuencodeText, "", "setup.exe", "", "uuencoded file"},
	{"BinHex", binhexText, "", "setup.exe", "binhex", "BinHex file"},
}

// message puts a container of kind k in a message.
func (k containerKind) message(data []byte) []byte {
	if k.attach == "" {
		return textMessage("Please find the installer below.\n\n", data)
	}
	return attachMessage(k.attach, data)
}

// cut makes a container corrupt: cut in the middle of setup.exe when it
// is stored as it is, else after two thirds.
func cut(data []byte) []byte {
	if i := bytes.Index(data, setupExe); i >= 0 {
		return data[:i+len(setupExe)/2]
	}
	return data[:len(data)*2/3]
}

// TestContainerKinds: setup.exe in each kind under an innocent name is
// stripped by archive_filenames (the reason names the member's path) and
// withheld when the rule quarantines; the files of the Attachments kinds
// match extensions too. Cut short, the container is on_unreadable_archive's
// (quarantine by default, the reason naming its kind), or passes with
// "pass".
func TestContainerKinds(t *testing.T) {
	strip := filter(t, `archive_filenames = ["*.exe"]`)
	quarantine := filter(t, `archive_filenames = ["*.exe"]`, `action = "quarantine"`)
	extensions := filter(t, `extensions = ["exe"]`)
	// A rule that needs the members and matches none of them.
	other := filter(t, `archive_filenames = ["*.scr"]`)
	otherPass := filter(t, `archive_filenames = ["*.scr"]`, `on_unreadable_archive = "pass"`)
	for _, k := range containerKinds {
		t.Run(k.name, func(t *testing.T) {
			data := k.build(t, map[string][]byte{"setup.exe": setupExe})
			msg := k.message(data)
			why := "(rule exe: archive member " + k.member + " matches *.exe)"
			t.Run("strip", func(t *testing.T) { verdict(t, strip, msg, filters.Replace, "stripped: ", why) })
			t.Run("quarantine", func(t *testing.T) { verdict(t, quarantine, msg, filters.Reject, "quarantined: ", why) })
			if k.embedded != "" {
				t.Run("extensions", func(t *testing.T) {
					verdict(t, extensions, msg, filters.Replace, k.embedded+" setup.exe: extension exe")
				})
			} else {
				t.Run("extensions", func(t *testing.T) { verdict(t, extensions, msg, filters.Pass) })
			}
			t.Run("no match", func(t *testing.T) { verdict(t, other, msg, filters.Pass) })
			corrupt := k.message(cut(data))
			if k.unreadable == "" {
				t.Run("cut short", func(t *testing.T) { verdict(t, strip, corrupt, filters.Replace, why) })
				return
			}
			t.Run("cut short", func(t *testing.T) {
				verdict(t, other, corrupt, filters.Reject, "quarantined: ", "(unreadable "+k.unreadable+" archive")
			})
			t.Run("cut short, pass", func(t *testing.T) { verdict(t, otherPass, corrupt, filters.Pass) })
		})
	}
}

// exe is the files of a container holding setup.exe alone.
func exe() map[string][]byte { return map[string][]byte{"setup.exe": setupExe} }

// one is the files of a container holding data as name.
func one(name string, data []byte) map[string][]byte { return map[string][]byte{name: data} }

// TestContainerNesting: setup.exe nested across kinds is found at its
// depth within archive_depth; one level less, the container it is in is
// not looked into, and the part is on_archive_limit's (reject by default)
// rather than passed with its members unknown.
func TestContainerNesting(t *testing.T) {
	for _, tc := range []struct {
		name   string
		build  func(t testing.TB) []byte
		attach string
		member string
		depth  int // the archive_depth that just reaches setup.exe
		deep   string
	}{
		{"zip in tar.gz in 7z", func(t testing.TB) []byte {
			return sevenZ(t, one("inner.tgz", tarGz(t, one("inner.zip", zipOf(t, exe())))))
		}, "report.docx", "inner.tgz/inner.tar/inner.zip/setup.exe", 3, "inner.tgz/inner.tar/inner.zip"},
		{"ISO in cab in zip", func(t testing.TB) []byte {
			return zipOf(t, one("pack.cab", cabMSZIP(t, one("disk.iso", isoJoliet(t, exe())))))
		}, "invoice.pdf", "pack.cab/disk.iso/setup.exe", 3, "pack.cab/disk.iso"},
		{"rar in stored arj in tar.xz", func(t testing.TB) []byte {
			return tarXz(t, one("a.arj", arjStored(t, one("in.rar", rarOf(5)(t, exe())))))
		}, "backup.tar.xz", "backup.tar/a.arj/in.rar/setup.exe", 3, "backup.tar/a.arj/in.rar"},
		{"winmail.dat in UDF in cpio", func(t testing.TB) []byte {
			return cpioNewc(t, one("disk.img", udfOnly(t, one("winmail.dat", tnefOf(t, exe())))))
		}, "report.docx", "disk.img/winmail.dat/setup.exe", 3, "disk.img/winmail.dat"},
		{"uuencoded text in rar v4 in bzip2", func(t testing.TB) []byte {
			return bzip2Stream(t, one("notes.rar", rarOf(4)(t, one("notes.txt", uuencodeText(t, exe())))))
		}, "notes.rar.bz2", "notes.rar/notes.txt/setup.exe", 2, "notes.rar/notes.txt"},
		{"BinHex in 7z in gzip in zip", func(t testing.TB) []byte {
			return zipOf(t, one("a.7z.gz", gzipNamed(t, one("a.7z", sevenZ(t, one("read.me", binhexText(t, exe())))))))
		}, "invoice.pdf", "a.7z.gz/a.7z/read.me/setup.exe", 3, "a.7z.gz/a.7z/read.me"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			msg := attachMessage(tc.attach, tc.build(t))
			limit := fmt.Sprintf("archive_depth = %d", tc.depth)
			t.Run("within", func(t *testing.T) {
				verdict(t, filter(t, `archive_filenames = ["*.exe"]`, limit), msg, filters.Replace,
					"stripped: "+tc.attach+" (rule exe: archive member "+tc.member+" matches *.exe)")
			})
			limit = fmt.Sprintf("archive_depth = %d", tc.depth-1)
			t.Run("beyond", func(t *testing.T) {
				verdict(t, filter(t, `archive_filenames = ["*.exe"]`, limit), msg, filters.Reject,
					"rejected: "+tc.attach+" (archive nested more than "+fmt.Sprint(tc.depth-1)+" levels deep (at "+tc.deep+"))")
			})
			t.Run("beyond, on_archive_limit pass", func(t *testing.T) {
				verdict(t, filter(t, `archive_filenames = ["*.exe"]`, limit, `on_archive_limit = "pass"`), msg, filters.Pass)
			})
		})
	}
}

// TestContainerEncrypted: an encrypted member, or an encrypted member list,
// of every kind that has encryption matches encrypted_archives. A rule of
// archive_filenames alone still sees the names a container shows; behind
// an encrypted member list it sees none, and the part passes:
// encrypted_archives is the rule for what cannot be looked into.
func TestContainerEncrypted(t *testing.T) {
	encrypted := filter(t, `encrypted_archives = true`)
	names := filter(t, `archive_filenames = ["*.exe"]`)
	rarFile := archivetest.RarFile{Name: "setup.exe", Content: string(setupExe), Encrypted: true}
	for _, tc := range []struct {
		name    string
		build   func(t testing.TB) []byte
		visible bool // the member names are not encrypted
	}{
		{"zip (ZipCrypto, 7z -tzip -p)", func(t testing.TB) []byte {
			return script("7z a -bd -bso0 -tzip -psecret ../out.zip * && mv ../out.zip ../out", "7z")(t, exe())
		}, true},
		{"zip (AES-256)", func(t testing.TB) []byte {
			return script("7z a -bd -bso0 -tzip -mem=AES256 -psecret ../out.zip * && mv ../out.zip ../out", "7z")(t, exe())
		}, true},
		{"7z -p", func(t testing.TB) []byte {
			return script("7z a -bd -bso0 -psecret ../out.7z * && mv ../out.7z ../out", "7z")(t, exe())
		}, true},
		{"7z -p -mhe=on", func(t testing.TB) []byte {
			return script("7z a -bd -bso0 -psecret -mhe=on ../out.7z * && mv ../out.7z ../out", "7z")(t, exe())
		}, false},
		{"rar v5 member", func(testing.TB) []byte { return archivetest.Rar5(0, rarFile) }, true},
		{"rar v4 member", func(testing.TB) []byte { return archivetest.Rar4(0, rarFile) }, true},
		{"rar v4 headers", func(testing.TB) []byte { return archivetest.Rar4(0x0080, rarFile) }, false},
		{"rar v5 headers", func(testing.TB) []byte {
			// An archive encryption header (type 4: version 0, flags 0,
			// KDF count, salt) before everything else.
			v := archivetest.Rar5Vint
			return bytes.Join([][]byte{[]byte("Rar!\x1a\x07\x01\x00"),
				archivetest.Rar5Block(4, 0, bytes.Join([][]byte{v(0), v(0), {15}, make([]byte, 16)}, nil), nil, nil),
				make([]byte, 64)}, nil)
		}, false},
		{"arj -g (garbled)", func(t testing.TB) []byte {
			return script("arj a -y -gsecret ../out.arj * >/dev/null && mv ../out.arj ../out", "arj")(t, exe())
		}, true},
		{"7z -p in a tar.gz", func(t testing.TB) []byte {
			return tarGz(t, one("x.7z", script("7z a -bd -bso0 -psecret ../out.7z * && mv ../out.7z ../out", "7z")(t, exe())))
		}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			msg := attachMessage("report.docx", tc.build(t))
			verdict(t, encrypted, msg, filters.Replace, "stripped: report.docx (rule exe: encrypted archive)")
			if tc.visible {
				verdict(t, names, msg, filters.Replace, "setup.exe matches *.exe")
			} else {
				verdict(t, names, msg, filters.Pass)
			}
		})
	}
}

// TestContainerDiskImageHead: a disk image attached under an innocent name
// is found by its descriptors at 32 KiB whatever its head (its system
// area) holds: zeros, a boot record and partition table (a hybrid image
// that also boots from a USB stick), or text.
func TestContainerDiskImageHead(t *testing.T) {
	// A stand-in for syslinux's isolinux.bin (not installed): xorriso's
	// -isohybrid-mbr wants a boot image with isolinux's signature at 0x40,
	// and an MBR template (here a made-up one of 432 bytes of code).
	isolinux := bytes.Repeat([]byte{0xfa, 0x31, 0xc0, 0x90}, 512)
	copy(isolinux[0x40:], []byte{0xfb, 0xc0, 0x78, 0x70})
	mbr := bytes.Repeat([]byte{0x33, 0xed, 0x90, 0x90}, 108)
	strip := filter(t, `archive_filenames = ["*.exe"]`)
	for _, tc := range []struct {
		name  string
		build func(t testing.TB) []byte
		zeros bool // the head (4 KiB) is zeros
	}{
		{"ISO 9660 (genisoimage)", func(t testing.TB) []byte { return isoJoliet(t, exe()) }, true},
		{"UDF bridge", func(t testing.TB) []byte { return udfBridge(t, exe()) }, true},
		{"UDF only", func(t testing.TB) []byte { return udfOnly(t, exe()) }, true},
		{"xorriso", func(t testing.TB) []byte {
			return script("xorriso -as mkisofs -quiet -J -o ../out .", "xorriso")(t, exe())
		}, true},
		{"xorriso --protective-msdos-label", func(t testing.TB) []byte {
			return script("xorriso -as mkisofs -quiet -J --protective-msdos-label -o ../out .", "xorriso")(t, exe())
		}, false},
		{"system area of text (genisoimage -G)", func(t testing.TB) []byte {
			files := exe()
			files["sysarea"] = bytes.Repeat([]byte("Dear customer, your invoice follows.\n"), 32768/37+1)[:32768]
			return script("genisoimage -quiet -J -G sysarea -o ../out .", "genisoimage")(t, files)
		}, false},
		{"xorriso -isohybrid-mbr", func(t testing.TB) []byte {
			files := exe()
			files["isolinux.bin"] = isolinux
			files["mbr.bin"] = mbr
			return script("xorriso -as mkisofs -quiet -J -b isolinux.bin -no-emul-boot -boot-load-size 4 -boot-info-table -isohybrid-mbr mbr.bin -o ../out .", "xorriso")(t, files)
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := tc.build(t)
			if z := !slices.ContainsFunc(data[:4096], func(b byte) bool { return b != 0 }); z != tc.zeros {
				t.Fatalf("head of zeros: %v, want %v", z, tc.zeros)
			}
			for _, name := range []string{"invoice.pdf", "image.iso", "setup.img"} {
				verdict(t, strip, attachMessage(name, data), filters.Replace,
					"stripped: "+name+" (rule exe: archive member setup.exe matches *.exe)")
			}
		})
	}
}

// TestContainerClamAV: each of Debian's clamav-testfiles that is a
// container of a kind popgate reads, attached under its own name, has its
// clam.exe listed by strip; those of kinds it does not read pass (they are
// named in the table so that a kind added later is noticed).
// clam_cache_emax.tgz, nested beyond archive_depth, is a depth bomb of
// TestContainerBombs.
func TestContainerClamAV(t *testing.T) {
	strip := filter(t, `archive_filenames = ["*.exe"]`)
	for _, tc := range []struct {
		file, member string // "": not a kind popgate reads
		text         bool   // in a text part, as a mail client would show it
	}{
		{"clam.zip", "clam.exe", false},
		{"clam.bz2.zip", "clam.exe", false},  // bzip2 method: named, not unpacked
		{"clam.impl.zip", "CLAM.EXE", false}, // implode method: named, not unpacked
		{"clam.d64.zip", "clam.exe", false},  // deflate64 method: named, not unpacked
		{"clam.tar.gz", "clam.tar/clam.exe", false},
		{"clam.exe.bz2", "clam.exe", false},
		{"clam.newc.cpio", "clam.exe", false},
		{"clam.odc.cpio", "clam.exe", false},
		{"clam.bin-le.cpio", "clam.exe", false},
		{"clam.bin-be.cpio", "clam.exe", false},
		{"clam.7z", "clam.exe", false},
		{"clam.cab", "clam.exe", false},
		{"clam.arj", "clam.exe", false},
		{"clam.tnef", "clam.exe", false},
		{"clam.exe.binhex", "clam.exe", true},
		{"clam.exe.mbox.uu", "clam.exe", true},
		{"clam.exe.szdd", "", false},      // MS-DOS COMPRESS.EXE (SZDD)
		{"clam.chm", "", false},           // compiled HTML help (ITSF)
		{"clam.sis", "", false},           // Symbian installer
		{"clam_IScab_ext.exe", "", false}, // InstallShield cabinet beside a setup.exe
		{"clam_IScab_int.exe", "", false}, // InstallShield cabinet in a setup.exe
		{"clam_ISmsi_ext.exe", "", false}, // InstallShield MSI
		{"clam_ISmsi_int.exe", "", false}, // InstallShield MSI
		{"clam-nsis.exe", "", false},      // NSIS installer
		{"clam.ea05.exe", "", false},      // AutoIt
		{"clam.ea06.exe", "", false},      // AutoIt
		{"clam.ole.doc", "", false},       // OLE2 compound file
	} {
		t.Run(tc.file, func(t *testing.T) {
			data := archivetest.ClamFile(t, tc.file)
			msg := attachMessage(tc.file, data)
			if tc.text {
				msg = textMessage("", data)
			}
			if tc.member == "" {
				verdict(t, strip, msg, filters.Pass)
				return
			}
			verdict(t, strip, msg, filters.Replace, "archive member "+tc.member+" matches *.exe")
		})
	}
}

// TestContainerTextAfterProse: a file uuencoded or BinHex-encoded after
// more prose than a head holds is still an archive member (and an embedded
// file) of its text part.
func TestContainerTextAfterProse(t *testing.T) {
	prose := strings.Repeat("As discussed on the phone, the installer follows below.\n", 200)
	for _, tc := range []struct {
		name  string
		build builder
		label string
	}{
		{"uuencode", uuencodeText, "uuencoded file"},
		{"BinHex", binhexText, "BinHex file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			msg := textMessage(prose, tc.build(t, exe()))
			verdict(t, filter(t, `archive_filenames = ["*.exe"]`), msg, filters.Replace, "archive member setup.exe matches *.exe")
			verdict(t, filter(t, `extensions = ["exe"]`), msg, filters.Replace, tc.label+" setup.exe: extension exe")
		})
	}
}

// zeros is a script line making zeros.bin, a sparse file of n of zeros.
func zeros(n string) string { return "truncate -s " + n + " zeros.bin && " }

// TestContainerBombs: decompression bombs in every kind that can carry
// one — a member of hundreds of MB of zeros (a huge ratio, or a declared
// size over archive_max_size), more members than archive_max_entries, and
// containers nested deeper than archive_depth — are on_archive_limit's
// (reject by default), within the bounds of a case: nothing is unpacked
// beyond the limits, and memory stays bounded.
//
// Kinds that store without compressing (cpio, TNEF, uuencode) carry no
// ratio bomb of their own (a cpio.gz is the gzip case); BinHex's run-length
// encoding reaches about 85:1, under archive_max_ratio. Disk images
// compress nothing either, but many files sharing one extent (hard links,
// as genisoimage writes them) declare more than archive_max_size.
func TestContainerBombs(t *testing.T) {
	none := map[string][]byte{}
	links := "head -c 1048576 /dev/zero > f0 && for i in $(seq 599); do ln f0 f$i; done && "
	t.Run("ratio", func(t *testing.T) {
		f := filter(t, `archive_filenames = ["*.exe"]`)
		for _, tc := range []struct {
			name, attach string
			build        func(t testing.TB) []byte
		}{
			{"zip (1 GiB)", "invoice.pdf", func(testing.TB) []byte { return archivetest.Zip() }},
			{"gzip (1 GiB)", "invoice.pdf", func(testing.TB) []byte { return archivetest.Gzip(archivetest.GigK, "zeros.bin") }},
			{"bzip2", "zeros.bin.bz2", func(t testing.TB) []byte {
				return script(zeros("200M")+"bzip2 -1 -c zeros.bin > ../out", "bzip2")(t, none)
			}},
			{"xz", "zeros.bin.xz", func(t testing.TB) []byte {
				return script(zeros("200M")+"xz -0 -T1 -c zeros.bin > ../out", "xz")(t, none)
			}},
			{"zstd", "zeros.bin.zst", func(t testing.TB) []byte {
				return script(zeros("200M")+"zstd -q -1 -c zeros.bin > ../out", "zstd")(t, none)
			}},
			{"tar (sparse, 1 GiB declared)", "invoice.pdf", func(t testing.TB) []byte {
				return script(zeros("1G")+"tar -S -cf ../out zeros.bin", "tar")(t, none)
			}},
			{"tar.gz", "invoice.pdf", func(t testing.TB) []byte {
				return script(zeros("200M")+"tar cf - zeros.bin | gzip -9 > ../out", "tar", "gzip")(t, none)
			}},
			{"tar.bz2", "invoice.pdf", func(t testing.TB) []byte {
				return script(zeros("200M")+"tar cf - zeros.bin | bzip2 -1 > ../out", "tar", "bzip2")(t, none)
			}},
			{"tar.xz", "invoice.pdf", func(t testing.TB) []byte {
				return script(zeros("200M")+"tar cf - zeros.bin | xz -0 -T1 > ../out", "tar", "xz")(t, none)
			}},
			{"tar.zst", "invoice.pdf", func(t testing.TB) []byte {
				return script(zeros("200M")+"tar cf - zeros.bin | zstd -q -1 > ../out", "tar", "zstd")(t, none)
			}},
			{"7z", "report.docx", func(t testing.TB) []byte {
				return script(zeros("200M")+"7z a -bd -bso0 -mx1 ../out.7z zeros.bin && mv ../out.7z ../out", "7z")(t, none)
			}},
			// gcab deflates slowly: 64 MiB make the same ratio (about 600:1).
			{"cab", "report.docx", func(t testing.TB) []byte {
				return script(zeros("64M")+"gcab -c -z ../out zeros.bin", "gcab")(t, none)
			}},
			{"arj", "report.docx", func(t testing.TB) []byte {
				return script(zeros("200M")+"arj a -y -m1 ../out.arj zeros.bin >/dev/null && mv ../out.arj ../out", "arj")(t, none)
			}},
			{"rar v5 (1 GiB declared)", "report.docx", func(testing.TB) []byte {
				return archivetest.Rar5(0, archivetest.RarFile{Name: "zeros.bin", Content: "\x00", Declared: 1 << 30})
			}},
			{"rar v4 (1 GiB declared)", "report.docx", func(testing.TB) []byte {
				return archivetest.Rar4(0, archivetest.RarFile{Name: "zeros.bin", Content: "\x00", Declared: 1 << 30})
			}},
			{"ISO 9660 (600 links to 1 MiB)", "invoice.pdf", func(t testing.TB) []byte {
				return script(links+"genisoimage -quiet -J -o ../out .", "genisoimage")(t, none)
			}},
			{"UDF bridge (600 links to 1 MiB)", "invoice.pdf", func(t testing.TB) []byte {
				return script(links+"genisoimage -quiet -J -udf -o ../out .", "genisoimage")(t, none)
			}},
			{"gzip in a zip in a 7z", "report.docx", func(t testing.TB) []byte {
				return sevenZ(t, one("a.zip", zipOf(t, one("b.gz", archivetest.Gzip(archivetest.GigK, "zeros.bin")))))
			}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				msg := attachMessage(tc.attach, tc.build(t))
				verdict(t, f, msg, filters.Reject, "rejected: "+tc.attach+" (decompression bomb: ")
			})
		}
		// gzip -1 packs zeros about 229:1, under archive_max_ratio: the
		// 200 MB tar is unpacked (to the spool) and listed, within the
		// bounds, its member under archive_max_size.
		t.Run("tar.gz 229:1, within the limits", func(t *testing.T) {
			data := script(zeros("200M")+"tar cf - zeros.bin | gzip -1 > ../out", "tar", "gzip")(t, none)
			verdict(t, f, attachMessage("invoice.pdf", data), filters.Pass)
		})
	})
	t.Run("entries", func(t *testing.T) {
		// A tar of many small files is mostly padding, which compresses
		// over archive_max_ratio: the ratio is not what is tested here.
		f := filter(t, `archive_filenames = ["*.exe"]`, `archive_max_entries = 1000`, `archive_max_ratio = 1000000`)
		files := map[string][]byte{}
		for i := range 1100 {
			// Not empty: an empty file's uuencoded block is no block.
			files[fmt.Sprintf("f%04d.txt", i)] = []byte("x")
		}
		for _, k := range containerKinds {
			switch k.name {
			case "gzip", "bzip2", "xz", "zstd":
				continue // one member each
			case "BinHex":
				continue // one file a block; many blocks are the uuencode case
			}
			t.Run(k.name, func(t *testing.T) {
				verdict(t, f, k.message(k.build(t, files)), filters.Reject, "(archive has more than 1000 entries)")
			})
		}
	})
	t.Run("depth", func(t *testing.T) {
		f := filter(t, `archive_filenames = ["*.exe"]`)
		for _, k := range containerKinds {
			if k.name == "UDF bridge" {
				continue // the ISO 9660 case
			}
			t.Run(k.name, func(t *testing.T) {
				// setup.exe in the same kind seven times over: beyond the
				// default archive_depth (3), and beyond twice as many
				// compressed streams. Compressed arj members are not looked
				// into at all: stored ones are nested.
				build := k.build
				if k.name == "arj" {
					build = arjStored
				}
				data := build(t, exe())
				for i := range 7 {
					data = build(t, one(fmt.Sprintf("level%d%s", 6-i, path.Ext(k.attach)), data))
				}
				// Under a name that does not say .exe (the streams name
				// their member after it).
				if k.attach != "" && k.attach != "winmail.dat" {
					k.attach = "invoice.pdf"
				}
				verdict(t, f, k.message(data), filters.Reject, "(archive nested more than 3 levels deep (at ")
			})
		}
		// Each xz -9 level declares a 64 MiB dictionary, which the
		// decoder (github.com/ulikunitz/xz) allocates whole, however
		// little the stream holds: the streams of one attachment may hold
		// 64 MiB of decoders together, so the second level is unreadable
		// (quarantined) instead of costing 64 MiB more a level: the heap
		// holds one dictionary.
		t.Run("xz -9 chain", func(t *testing.T) {
			b := script("cat * | xz -9 -c > ../out", "xz")
			data := b(t, exe())
			for i := range 7 {
				data = b(t, one(fmt.Sprintf("level%d.xz", 6-i), data))
			}
			verdictAlloc(t, f, attachMessage("invoice.pdf", data), 2*caseAlloc, caseAlloc+caseAlloc/4, filters.Reject, "(unreadable xz archive ")
		})
		t.Run("clam_cache_emax.tgz", func(t *testing.T) {
			verdict(t, f, attachMessage("clam_cache_emax.tgz", archivetest.ClamFile(t, "clam_cache_emax.tgz")), filters.Reject,
				"(archive nested more than 3 levels deep (at clam_cache_emax.tar/clam01.tgz/clam01.tar/clam02.tgz/clam02.tar/clam03.tgz")
		})
	})
}
