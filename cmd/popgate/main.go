// Command popgate is a POP3 filtering proxy. See README.md.
//
//	popgate [run] -c FILE|DIR   run the proxy (default command)
//	popgate check -c FILE|DIR   validate a configuration
//	popgate scan -c FILE MSG…   run the chain a session would run on message files
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
	"reflect"
	"runtime"
	"runtime/debug"
	"strings"
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
		return cmdCheckExplain(args, stdout, stderr)
	case "scan":
		return cmdScan(args, stdout, stderr)
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
  popgate [run] -c FILE|DIR   run the proxy (SIGTERM drains, SIGHUP reloads policies)
  popgate check -c FILE|DIR   validate a configuration; every problem as file:line:col
        [--explain USER [--client IP] [--listener NAME] [--json]]   which policy, upstream and chain a login gets
  popgate scan -c FILE|DIR [--user U] [--client IP] [--listener NAME] [-o OUT] [--json] [--quarantine] MSG.eml…
                              run a session's chain on message files (popgate scan -h for output and exit codes)
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
	mon, err := newMonitor(cfg)
	if err != nil {
		log.Error().Err(err).Msg("listen")
		return 1
	}
	opts.Observer = mon.observer()
	srv, err := proxy.New(opts)
	if err != nil {
		log.Error().Err(err).Msg("configuration")
		return 1
	}
	if err := srv.Listen(); err != nil {
		log.Error().Err(err).Msg("listen")
		return 1
	}
	mon.use(cfg, srv.Generation())
	mon.serve(srv, log)
	defer mon.shutdown()
	log.Info().Str("version", version).Str("config", path).Msg("popgate started")
	return serveUntilSignal(srv, cfg, mon, path, stderr)
}

// serveUntilSignal serves until SIGTERM/SIGINT, then drains for the
// configured shutdown timeout. SIGHUP reloads the configuration (see
// reload).
func serveUntilSignal(srv *proxy.Server, cfg *policy.Config, mon *monitor, path string, stderr io.Writer) int {
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
				if path != "" {
					mon.reloaded(reload(srv, cfg, mon, path))
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

// reload loads path afresh on SIGHUP. A configuration with errors is
// refused and the running one stays; a good one becomes the next
// generation: sessions that start from now on get its policies, filters,
// scanners and quarantine, running sessions keep theirs, and its
// predecessor is closed once its last session ends. Listeners and upstreams
// are bound at start: changing them needs a restart, and says so.
func reload(srv *proxy.Server, running *policy.Config, mon *monitor, path string) bool {
	log := srv.Logger()
	next, diags := policy.Load(path)
	logDiagnostics(log, diags)
	if diags.HasErrors() {
		_ = next.Close()
		log.Error().Int64("config_generation", srv.Generation()).Int("errors", len(diags.Errs())).
			Msg("reload refused: the configuration has errors; the running one stays in force")
		return false
	}
	next.SetLogger(log)
	store, err := openQuarantine(next, log)
	if err != nil {
		_ = next.Close()
		log.Error().Err(err).Int64("config_generation", srv.Generation()).Msg("reload refused: quarantine")
		return false
	}
	if changed := boundChanges(running, next); changed != "" {
		log.Warn().Str("changed", changed).Msg("reload: listener, upstream and route changes take effect only after a restart")
	}
	gen := srv.Generation() + 1
	srv.SetPolicy(gen, sessionPolicies(next, store), func() { _ = next.Close() })
	mon.use(next, gen)
	log.Info().Int64("config_generation", gen).Int("policies", len(next.Policies)).Msg("configuration reloaded")
	return true
}

// boundChanges names the listener and upstream settings that differ
// between two configurations (routes included: listeners route with the
// configuration they started with).
func boundChanges(a, b *policy.Config) string {
	var changed []string
	if len(a.Listeners) != len(b.Listeners) {
		changed = append(changed, "listeners")
	} else {
		for i, l := range a.Listeners {
			x, y := *l, *b.Listeners[i]
			x.Range, y.Range = hcl.Range{}, hcl.Range{}
			if !reflect.DeepEqual(x, y) {
				changed = append(changed, "listener "+l.Name)
			}
		}
	}
	strip := func(rs []*policy.Route) []policy.Route {
		var out []policy.Route
		for _, r := range rs {
			c := *r
			c.Range = hcl.Range{}
			out = append(out, c)
		}
		return out
	}
	if !reflect.DeepEqual(strip(a.Routes), strip(b.Routes)) {
		changed = append(changed, "routes")
	}
	if !reflect.DeepEqual(a.Metrics, b.Metrics) {
		changed = append(changed, "metrics")
	}
	for name, u := range a.Upstreams {
		v := b.Upstreams[name]
		if v == nil {
			changed = append(changed, "upstream "+name)
			continue
		}
		x, y := *u, *v
		x.Range, y.Range = hcl.Range{}, hcl.Range{}
		if !reflect.DeepEqual(x, y) {
			changed = append(changed, "upstream "+name)
		}
	}
	return strings.Join(changed, ", ")
}
