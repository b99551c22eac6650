package main

import (
	"cmp"
	"context"
	"encoding/base64"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/popgate/popgate/examples"
	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/internal/pop3server"
	"github.com/popgate/popgate/policy"
	"github.com/popgate/popgate/policy/generation"
)

const (
	demoUser     = "demo"
	demoPassword = "demo"
)

// cmdDemo runs the embedded default: a small POP3 server with a sample
// mailbox on the demo upstream's address, and popgate in front of it with
// examples/demo.hcl.
func cmdDemo(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "", "address for popgate instead of demo.hcl's listener address")
	mailbox := fs.String("mailbox", "", "address for the sample mailbox server instead of demo.hcl's upstream address")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	// demo.hcl's scanner reads POPGATE_DEMO_CLAMD: a clamd of the user's,
	// or else the one started here.
	clamdNote, clamdLine := "", ""
	if addr, ok := os.LookupEnv("POPGATE_DEMO_CLAMD"); ok {
		clamdNote = "POPGATE_DEMO_CLAMD=" + addr
		clamdLine = fmt.Sprintf("  clamd (POPGATE_DEMO_CLAMD):        %s\n", addr)
	} else if clamd, err := startDemoClamd(30 * time.Second); err != nil {
		clamdNote = "The demo did not start its own clamd: " + err.Error() + "."
	} else {
		defer clamd.Stop()
		if err := os.Setenv("POPGATE_DEMO_CLAMD", clamd.Addr); err != nil {
			fmt.Fprintf(stderr, "popgate demo: %v\n", err)
			return 1
		}
		clamdLine = fmt.Sprintf("  clamd (started for the demo):     %s   pid %d, %s, signatures: examples/clamd (EICAR only)\n",
			clamd.Addr, clamd.Pid, cmp.Or(clamd.Version, "ClamAV"))
	}
	cfg, diags := policy.LoadBytes("demo.hcl", examples.Demo)
	if diags.HasErrors() {
		policy.WriteDiagnostics(stderr, diags, cfg.Files)
		return 1
	}
	log, logOut, err := generation.NewLogger(cfg.Log, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "popgate demo: %v\n", err)
		return 1
	}
	defer logOut.Close()

	up := cfg.Upstreams[cfg.Listeners[0].Upstream]
	mailLn, err := net.Listen("tcp", cmp.Or(*mailbox, up.Address))
	if err != nil {
		fmt.Fprintf(stderr, "popgate demo: the sample mailbox server needs %s: %v\n", cmp.Or(*mailbox, up.Address), err)
		return 1
	}
	mail := pop3server.New(pop3server.Config{
		Users:     map[string]string{demoUser: demoPassword},
		Mailboxes: map[string][]pop3server.Message{demoUser: demoMailbox()},
		Hostname:  "demo.popgate.invalid",
	})
	go func() { _ = mail.Serve(mailLn) }()
	defer mail.Close()

	// The demo's own copy of demo.hcl: the mailbox server may have picked
	// its port (":0"), and popgate follows; -listen moves popgate.
	up.Address = mailLn.Addr().String()
	if *listen != "" {
		cfg.Listeners[0].Address = *listen
	}
	scanning := demoScanning(cfg, log, clamdNote)
	svc, err := generation.Start(cfg, "", generation.Options{Log: log, Version: popgateVersion()})
	if err != nil {
		fmt.Fprintf(stderr, "popgate demo: %v\n", err)
		return 1
	}
	addr := svc.Addrs()[0].String()
	base := fmt.Sprintf("pop3://%s", addr)
	auth := fmt.Sprintf("-u %s:%s", demoUser, demoPassword)
	// The commands name this binary as it was started (bin/popgate under
	// make demo), so they work as printed.
	self := "popgate"
	if strings.Contains(os.Args[0], "/") {
		self = os.Args[0]
	}
	fmt.Fprintf(stdout, `popgate demo
  sample mailbox server (built in): %s   user %q password %q
%s  popgate (examples/demo.hcl):      %s

Try, in another terminal:
  curl %s %s/            # list the mailbox through popgate
  curl %s %s/1           # a clean message: tagged X-Popgate-Scanned and -Verdict, nothing else changed
  curl %s %s/2           # invoice.pdf.exe attached: cut out by the strip rules, the rest untouched
  curl %s %s/3           # report.txt, the EICAR test file: only clamd catches it; a notice naming the signature instead
  curl %s %s/ -X UIDL    # unique ids, relayed
  curl -v %s %s/1 2>&1 | grep '^<'   # the raw POP3 dialogue

%s

Quarantined originals:
  %s quarantine list -dir %s
  %s quarantine export -dir %s ID     # the original, byte for byte

Press Ctrl-C to stop.
`, mailLn.Addr(), demoUser, demoPassword, clamdLine, addr,
		auth, base, auth, base, auth, base, auth, base, auth, base, auth, base,
		scanning, self, cfg.Quarantine.Dir, self, cfg.Quarantine.Dir)
	return serveUntilSignal(svc, false, logOut)
}

// eicar is the industry-standard antivirus test string (eicar.org): harmless,
// but every scanner reports it.
const eicar = `X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*`

func demoMailbox() []pop3server.Message {
	crlf := func(s string) []byte { return []byte(strings.ReplaceAll(s, "\n", "\r\n")) }
	return []pop3server.Message{
		{UIDL: "demo-clean-1", Data: crlf(`From: Alice <alice@example.com>
To: demo@example.com
Subject: Lunch on Friday?
Date: Mon, 23 Nov 2026 09:15:00 +0000
Message-ID: <clean-1@example.com>
Content-Type: text/plain; charset=utf-8

Hi,

shall we try the new place on the corner on Friday?
.. a line that starts with a dot, to show dot-stuffing survives the trip.

Alice
`)},
		{UIDL: "demo-exe-2", Data: crlf(`From: "Billing" <billing@example.net>
To: demo@example.com
Subject: Your invoice
Date: Mon, 23 Nov 2026 10:02:00 +0000
Message-ID: <exe-2@example.net>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="b1"

--b1
Content-Type: text/plain; charset=us-ascii

Please find your invoice attached.

--b1
Content-Type: application/octet-stream; name="invoice.pdf.exe"
Content-Disposition: attachment; filename="invoice.pdf.exe"
Content-Transfer-Encoding: base64

TVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA
--b1--
`)},
		// The EICAR file under a name and type no strip rule objects to:
		// only the virus scanner can catch it.
		{UIDL: "demo-eicar-3", Data: crlf(`From: Mallory <mallory@example.org>
To: demo@example.com
Subject: Quarterly report
Date: Mon, 23 Nov 2026 11:30:00 +0000
Message-ID: <eicar-3@example.org>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="b3"

--b3
Content-Type: text/plain; charset=us-ascii

Here is the report. (The attachment is the EICAR antivirus test file.)

--b3
Content-Type: text/plain; charset=us-ascii; name="report.txt"
Content-Disposition: attachment; filename="report.txt"
Content-Transfer-Encoding: base64

` + base64.StdEncoding.EncodeToString([]byte(eicar)) + `
--b3--
`)},
	}
}

// demoScanning checks that the demo's scanners (its clamd) answer. If one
// does not, the filters that use it leave the demo's chains (a real
// deployment would defer every message instead), and the returned text says
// why; clamdNote says where the clamd came from, or why the demo could not
// start its own.
func demoScanning(cfg *policy.Config, log zerolog.Logger, clamdNote string) string {
	down := map[string]bool{}
	var why []string
	for _, spec := range cfg.Scanners {
		s, err := spec.Build(&filters.BuildContext{Log: log})
		if err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			err = s.Check(ctx)
			cancel()
			_ = s.Close()
		}
		if err != nil {
			down[spec.Name] = true
			why = append(why, fmt.Sprintf("%s (%v)", spec.Name, err))
		}
	}
	if len(down) == 0 {
		return `Scanning: on (clamd answers): message 3 is withheld by the "av" filter.`
	}
	for _, p := range cfg.Policies {
		var keep []*filters.FilterSpec
		for _, f := range p.Filters {
			if !slices.ContainsFunc(f.Uses, func(s string) bool { return down[s] }) {
				keep = append(keep, f)
			}
		}
		p.Filters = keep
	}
	text := fmt.Sprintf("Scanning: OFF — no clamd answers for %s.\n", strings.Join(why, ", "))
	if clamdNote != "" {
		text += "  " + clamdNote + "\n"
	}
	return text + `  To scan: install clamav-daemon (sudo apt-get install clamav-daemon; make demo run
  as root does it) and start the demo again, or point POPGATE_DEMO_CLAMD at a running
  clamd (tcp://HOST:PORT or unix:///PATH). Message 3 arrives unscanned: the strip rules
  let its report.txt through.`
}
