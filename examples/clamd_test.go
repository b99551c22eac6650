package examples_test

import (
	"crypto/md5"
	"encoding/hex"
	"fmt"
	"os"
	"testing"

	"github.com/popgate/popgate/examples"
)

// eicar is the 68-byte EICAR anti-virus test file (eicar.org).
const eicar = `X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*`

// clamExe is ClamAV's test file (Debian clamav-testfiles), which every
// other file there holds in some container or packer.
const clamExe = "/usr/share/clamav-testfiles/clam.exe"

// TestClamdSignatures checks examples/clamd, the signature database of the
// demo's clamd and of scripts/testenv.sh's: exactly the EICAR test file, as
// an .hdb hash line and an .ndb body signature, and ClamAV's clam.exe as an
// .hdb line, each one line, and the embedded copies are the files.
func TestClamdSignatures(t *testing.T) {
	sum := md5.Sum([]byte(eicar))
	want := map[string]string{
		"clamd/popgate-eicar.hdb":           fmt.Sprintf("%x:%d:Eicar-Test-Signature\n", sum, len(eicar)),
		"clamd/popgate-eicar.ndb":           "Eicar-Test-Signature:0:*:" + hex.EncodeToString([]byte(eicar)) + "\n",
		"clamd/popgate-clamav-testfile.hdb": "aa15bcf478d165efd2065190eb473bcb:544:ClamAV-Test-File\n",
	}
	if exe, err := os.ReadFile(clamExe); err == nil {
		if got := fmt.Sprintf("%x:%d:ClamAV-Test-File\n", md5.Sum(exe), len(exe)); got != want["clamd/popgate-clamav-testfile.hdb"] {
			t.Errorf("%s is %q, not the file the signature names", clamExe, got)
		}
	} else {
		t.Logf("%s not installed (Debian clamav-testfiles): the clam.exe line is not checked against it", clamExe)
	}
	if got := fmt.Sprintf("%x", sum); got != "44d88612fea8a8f36de82e1278abb02f" {
		t.Fatalf("EICAR md5 %s: the test string is not the EICAR file", got)
	}
	entries, err := os.ReadDir("clamd")
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != len(want) {
		t.Errorf("examples/clamd holds %d files, want %d (clamd loads every one)", len(entries), len(want))
	}
	for path, w := range want {
		onDisk, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if string(onDisk) != w {
			t.Errorf("%s = %q, want %q", path, onDisk, w)
		}
		embedded, err := examples.ClamdSignatures.ReadFile(path)
		if err != nil || string(embedded) != string(onDisk) {
			t.Errorf("examples.ClamdSignatures %s differs from the file (%v)", path, err)
		}
	}
}
