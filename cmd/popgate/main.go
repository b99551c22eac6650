// Command popgate is a POP3 filtering proxy. See README.md.
//
//	popgate [run] -c FILE|DIR   run the proxy (default command)
//	popgate check -c FILE|DIR   validate a configuration
//	popgate demo                run a built-in mailbox behind popgate, on loopback
//	popgate quarantine …        browse and recover quarantined originals
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

	"github.com/hashicorp/hcl/v2"
	"github.com/rs/zerolog"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/policy"
	"github.com/popgate/popgate/proxy"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

const defaultConfig = "/etc/popgate/popgate.hcl"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	filters.Version = version
	cmd := "run"
	if len(args) > 0 && args[0] != "" && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "run":
		return cmdRun(args, stderr)
	case "check":
		return cmdCheck(args, stdout, stderr)
	case "demo":
		return cmdDemo(args, stdout, stderr)
	case "quarantine":
		return cmdQuarantine(args, stdout, stderr)
	case "version":
		printVersion(stdout)
		return 0
	case "help", "-h", "--help":
		usage(stdout)
		return 0
	}
	fmt.Fprintf(stderr, "popgate: unknown command %q\n", cmd)
	usage(stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprint(w, `usage:
  popgate [run] -c FILE|DIR   run the proxy (SIGTERM drains, SIGHUP re-checks the config)
  popgate check -c FILE|DIR   validate a configuration; every problem as file:line:col
  popgate demo                a sample mailbox behind popgate on loopback, with curl lines to try
  popgate quarantine list|show ID|export ID [-o FILE]   browse and recover quarantined originals
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
		_ = cfg.Close()
		return nil
	}
	return cfg
}

// loadForRun is load for a running proxy: errors are printed for a human
// (popgate refuses to start), but warnings go to the log, in its format.
func loadForRun(path string, stderr io.Writer) (*policy.Config, hcl.Diagnostics) {
	cfg, diags := policy.Load(path)
	if diags.HasErrors() {
		policy.WriteDiagnostics(stderr, diags, cfg.Files)
		_ = cfg.Close()
		return nil, diags
	}
	return cfg, diags
}

func logDiagnostics(log zerolog.Logger, diags hcl.Diagnostics) {
	for _, d := range diags {
		ev := log.Warn()
		if d.Severity == hcl.DiagError {
			ev = log.Error()
		}
		if d.Subject != nil {
			ev = ev.Str("at", fmt.Sprintf("%s:%d:%d", d.Subject.Filename, d.Subject.Start.Line, d.Subject.Start.Column))
		}
		ev.Str("detail", d.Detail).Msg("config: " + d.Summary)
	}
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
	cfg, diags := loadForRun(path, stderr)
	if cfg == nil {
		return 1
	}
	defer cfg.Close()
	log, closeLog, err := newLogger(cfg.Log, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "popgate: %v\n", err)
		return 1
	}
	defer closeLog.Close()
	cfg.SetLogger(log)
	logDiagnostics(log, diags)
	opts, err := proxyOptions(cfg, log)
	if err != nil {
		log.Error().Err(err).Msg("configuration")
		return 1
	}
	srv, err := proxy.New(opts)
	if err != nil {
		log.Error().Err(err).Msg("configuration")
		return 1
	}
	if err := srv.Listen(); err != nil {
		log.Error().Err(err).Msg("listen")
		return 1
	}
	log.Info().Str("version", version).Str("config", path).Msg("popgate started")
	return serveUntilSignal(srv, cfg, path, stderr)
}

// serveUntilSignal serves until SIGTERM/SIGINT, then drains for the
// configured shutdown timeout. SIGHUP re-validates the configuration.
func serveUntilSignal(srv *proxy.Server, cfg *policy.Config, path string, stderr io.Writer) int {
	log := srv.Logger()
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)
	served := make(chan error, 1)
	go func() { served <- srv.Serve() }()
	for {
		select {
		case err := <-served:
			if err != nil {
				log.Error().Err(err).Msg("serve")
				return 1
			}
			return 0
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				// Listener and upstream changes need a restart; the
				// check keeps an admin from restarting into a bad file.
				if path == "" {
					continue
				}
				next, diags := policy.Load(path)
				logDiagnostics(log, diags)
				_ = next.Close()
				if diags.HasErrors() {
					log.Error().Msg("SIGHUP: configuration has errors; running configuration unchanged")
				} else {
					log.Warn().Msg("SIGHUP: configuration is valid, but changes take effect only after a restart")
				}
				continue
			}
			log.Info().Str("signal", sig.String()).Dur("timeout", cfg.ShutdownTimeout).Msg("draining")
			ctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
			err := srv.Shutdown(ctx)
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
	fmt.Fprintf(w, "popgate %s\n%s %s/%s\n", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
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
