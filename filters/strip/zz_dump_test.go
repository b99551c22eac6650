package strip

import (
	"os"
	"testing"
)

func TestDump(t *testing.T) {
	f := mustFilter(t, corpusPolicy)
	for _, n := range []string{os.Getenv("DUMP")} {
		if n == "" {
			t.Skip()
		}
		v, out := run(t, f, readCorpus(t, n))
		t.Logf("%v %q\n%s", v.Action, v.Reason, out)
	}
}
