// Command popgate is a POP3 filtering proxy. See README.md.
//
//	popgate [run] -c FILE|DIR   run the proxy (default command)
//	popgate check -c FILE|DIR   validate a configuration
//	popgate scan -c FILE MSG…   run the chain a session would run on message files
//	popgate demo                run a built-in mailbox behind popgate, on loopback
//	popgate quarantine …        browse, recover and remove quarantined originals
//	popgate memory …            show or forget what popgate remembers of a message
//	popgate spam learn …        teach rspamd spam or ham, from files or the quarantine
//	popgate version             print versions
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"syscall"

	"github.com/popgate/popgate/policy"
	"github.com/popgate/popgate/policy/generation"
)

// version is stamped by `make build` (-ldflags "-X main.version=TAG");
// without it, Go's build information names the VCS revision.
var version string

// popgateVersion is the release tag or the VCS revision popgate was built
// from, never a bare placeholder.
func popgateVersion() string {
	if version != "" {
		return version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	rev, dirty := "", false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev == "" {
		return "unknown"
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if dirty {
		rev += "-dirty"
	}
	return "rev-" + rev
}

const defaultConfig = "/etc/popgate/popgate.hcl"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	cmd := "run"
	if len(args) > 0 && (args[0] == "-h" || args[0] == "-help" || args[0] == "--help") {
		cmd, args = "help", args[1:]
	} else if len(args) > 0 && args[0] != "" && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "run":
		return cmdRun(args, stderr)
	case "check":
		return cmdCheckExplain(args, stdout, stderr)
	case "scan":
		return cmdScan(args, stdout, stderr)
	case "demo":
		return cmdDemo(args, stdout, stderr)
	case "quarantine":
		return cmdQuarantine(args, stdout, stderr)
	case "memory":
		return cmdMemory(args, stdout, stderr)
	case "spam":
		return cmdSpam(args, stdout, stderr)
	case "version":
		printVersion(stdout)
		return 0
	case "help":
		usage(stdout)
		return 0
	}
	fmt.Fprintf(stderr, "popgate: unknown command %q\n", cmd)
	usage(stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprint(w, `usage:
  popgate [run] -c FILE|DIR   run the proxy (SIGTERM drains, SIGHUP reloads policies and certificates, SIGUSR1 reopens the log file)
  popgate check -c FILE|DIR   validate a configuration; every problem as file:line:col
        [--explain USER [--client IP] [--listener NAME] [--json]]   which policy, upstream and chain a login gets
  popgate scan -c FILE|DIR [--user U] [--client IP] [--listener NAME] [-o OUT] [--json] [--quarantine] MSG.eml…
                              run a session's chain on message files (popgate scan -h for output and exit codes)
  popgate demo                a sample mailbox behind popgate on loopback, with curl lines to try
  popgate quarantine list|show ID|export ID [-o FILE]   browse and recover quarantined originals
  popgate quarantine delete ID…|purge --older-than D    remove quarantined originals ("30d", "36h")
  popgate memory show|forget -c FILE|DIR --user LOGIN --uidl UIDL [--upstream NAME]
                              what popgate remembers of a message; forget it (its next download is scanned)
  popgate spam learn -c FILE|DIR --spam|--ham [--scanner NAME] [--user LOGIN] [--id QUARANTINE_ID]... [MSG.eml...]
                              teach rspamd (the controller of a scanner "rspamd" block) from quarantined originals or files
  popgate version             popgate, Go and dependency versions
`)
}

func configFlag(name string, args []string, stderr io.Writer) (string, bool) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("c", defaultConfig, "configuration file or directory")
	if err := fs.Parse(args); err != nil {
		return "", false
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "popgate %s: unexpected argument %q\n", name, fs.Arg(0))
		return "", false
	}
	return *path, true
}

// load reads a configuration and prints its diagnostics; nil on errors.
func load(path string, stderr io.Writer) *policy.Config {
	cfg, diags := policy.Load(path)
	if len(diags) > 0 {
		policy.WriteDiagnostics(stderr, diags, cfg.Files)
	}
	if diags.HasErrors() {
		return nil
	}
	return cfg
}

func cmdCheck(args []string, stdout, stderr io.Writer) int {
	path, ok := configFlag("check", args, stderr)
	if !ok {
		return 2
	}
	cfg := load(path, stderr)
	if cfg == nil {
		return 1
	}
	fmt.Fprintf(stdout, "%s: OK (%d listeners, %d upstreams)\n", path, len(cfg.Listeners), len(cfg.Upstreams))
	return 0
}

func cmdRun(args []string, stderr io.Writer) int {
	path, ok := configFlag("run", args, stderr)
	if !ok {
		return 2
	}
	// Errors are printed for a human (popgate refuses to start); warnings
	// go to the log, in its format.
	cfg, diags := policy.Load(path)
	if diags.HasErrors() {
		policy.WriteDiagnostics(stderr, diags, cfg.Files)
		return 1
	}
	log, logOut, err := generation.NewLogger(cfg.Log, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "popgate: %v\n", err)
		return 1
	}
	defer logOut.Close()
	generation.LogDiagnostics(log, diags)
	svc, err := generation.Start(cfg, path, generation.Options{Log: log, Version: popgateVersion()})
	if err != nil {
		log.Error().Err(err).Msg("start")
		return 1
	}
	log.Info().Str("version", popgateVersion()).Str("config", path).Msg("popgate started")
	return serveUntilSignal(svc, true, logOut)
}

// serveUntilSignal serves until SIGTERM/SIGINT, then drains for the
// shutdown timeout in force. SIGUSR1 reopens the log file (log rotation);
// SIGHUP does too, and reloads the configuration when reload is set.
func serveUntilSignal(svc *generation.Service, reload bool, logOut *generation.LogOutput) int {
	log := svc.Logger()
	sigs := make(chan os.Signal, 4)
	// Caught until the process exits, never Stopped: a second SIGTERM
	// (a service manager or an operator repeating it) that arrives after
	// the drain but before the exit would otherwise kill popgate by the
	// signal, and a clean stop would look like a crash.
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGUSR1)
	served := make(chan error, 1)
	go func() { served <- svc.Serve() }()
	for {
		select {
		case err := <-served:
			if err != nil {
				log.Error().Err(err).Msg("serve")
				return 1
			}
			return 0
		case sig := <-sigs:
			if sig == syscall.SIGHUP || sig == syscall.SIGUSR1 {
				if err := logOut.Reopen(); err != nil {
					log.Error().Err(err).Msg("log file not reopened: logging on to the previous one")
				} else if logOut.File() != "" {
					log.Info().Str("signal", sig.String()).Msg("log file reopened")
				}
				if sig == syscall.SIGHUP && reload {
					_ = svc.Reload() // it logs why it refused
				}
				continue
			}
			timeout := svc.ShutdownTimeout()
			log.Info().Str("signal", sig.String()).Dur("timeout", timeout).Msg("draining")
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			err := svc.Shutdown(ctx)
			cancel()
			<-served
			if err != nil && !errors.Is(err, context.DeadlineExceeded) {
				log.Error().Err(err).Msg("shutdown")
				return 1
			}
			log.Info().Msg("stopped")
			return 0
		}
	}
}

func printVersion(w io.Writer) {
	fmt.Fprintf(w, "popgate %s\n%s %s/%s\n", popgateVersion(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return
	}
	for _, d := range bi.Deps {
		v := d.Version
		if d.Replace != nil {
			v += " => " + d.Replace.Path + " " + d.Replace.Version
		}
		fmt.Fprintf(w, "  %s %s\n", d.Path, v)
	}
}
