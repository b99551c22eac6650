// Package tlsfiles keeps the TLS material popgate reads from files current
// while it runs: listener certificates (several per listener, picked by the
// name the client asks for), an upstream's client certificate and its CA
// bundle. A Watcher polls the files and reloads what changed; Reload (on
// SIGHUP) reloads everything at once. Material that cannot be used (a file
// missing or half written, a key that does not match its certificate) is
// refused with a log line and the material in use stays. A swap is atomic:
// a handshake sees the old set or the new one, and connections that already
// finished their handshake are not touched.
package tlsfiles

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rs/zerolog"
)

// PollInterval is how often a Watcher looks at its files. A change is
// loaded once the files have held still for one interval (5 to 10 seconds
// after the write): renewal tools replace a certificate and its key one
// after the other, and the pair in between does not match.
const PollInterval = 5 * time.Second

// Pair names a certificate chain file and its private key file (PEM).
type Pair struct{ CertFile, KeyFile string }

// Hooks are told about reloads, for metrics. Either may be nil.
type Hooks struct {
	// Reloaded counts one load of a source's files: ok, or refused.
	Reloaded func(ok bool)
	// Certificate reports the expiry of the leaf certificate in a file,
	// each time the file is loaded.
	Certificate func(file string, notAfter time.Time)
}

// Watcher owns the sources (a listener's certificates, an upstream's client
// certificate, a CA bundle) and reloads them.
type Watcher struct {
	log   zerolog.Logger
	hooks Hooks

	mu      sync.Mutex // guards sources and their stamps; serialises loads
	sources []*source
}

// source is one unit that is loaded, and refused, as a whole: every file a
// listener's certificates need, so a listener never serves a mix of old
// and new.
type source struct {
	name  string // for logs: "listener pop3s"
	paths []string
	// load reads the files and swaps the material in; on error the
	// material in use stays.
	load    func() error
	seen    []stamp // the files as last loaded (or refused)
	pending []stamp // a change seen at the last poll, loaded once it holds still
}

// stamp identifies a file's content without reading it: a rename over the
// file or a swapped symbolic link (certbot's live/ links, Kubernetes'
// ..data link) changes the inode, an edit in place the size or mtime.
// Symbolic links are followed.
type stamp struct {
	dev, ino uint64
	size     int64
	mtime    int64
	err      string // the file cannot be read: the error is the stamp
}

func stampOf(path string) stamp {
	fi, err := os.Stat(path)
	if err != nil {
		return stamp{err: err.Error()}
	}
	st := stamp{size: fi.Size(), mtime: fi.ModTime().UnixNano()}
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		st.dev, st.ino = uint64(sys.Dev), sys.Ino // Dev is not a uint64 everywhere
	}
	return st
}

func stampsOf(paths []string) []stamp {
	out := make([]stamp, len(paths))
	for i, p := range paths {
		out[i] = stampOf(p)
	}
	return out
}

// New returns a Watcher logging to log; Run polls.
func New(log zerolog.Logger, hooks Hooks) *Watcher {
	return &Watcher{log: log, hooks: hooks}
}

// add loads a new source once and keeps it if that worked: a file that
// cannot be used at start is an error of the caller's (popgate does not
// start without its certificates).
func (w *Watcher) add(name string, paths []string, load func() error) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	src := &source{name: name, paths: paths, load: load, seen: stampsOf(paths)}
	if err := load(); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	w.sources = append(w.sources, src)
	return nil
}

// Run polls every PollInterval until ctx ends.
func (w *Watcher) Run(ctx context.Context) {
	t := time.NewTicker(PollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			w.Poll()
		}
	}
}

// Poll reloads every source whose files changed before the previous poll
// and have not changed since.
func (w *Watcher) Poll() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, src := range w.sources {
		now := stampsOf(src.paths)
		switch {
		case slices.Equal(now, src.seen):
			src.pending = nil
		case !slices.Equal(now, src.pending):
			src.pending = now // still moving: wait one more interval
		default:
			w.reload(src, now)
		}
	}
}

// Reload reloads every source now, changed or not (SIGHUP).
func (w *Watcher) Reload() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, src := range w.sources {
		w.reload(src, stampsOf(src.paths))
	}
}

func (w *Watcher) reload(src *source, now []stamp) {
	// The stamps are taken before the files are read: a write that lands
	// during the load changes them again and is picked up by a later poll.
	src.seen, src.pending = now, nil
	err := src.load()
	if w.hooks.Reloaded != nil {
		w.hooks.Reloaded(err == nil)
	}
	if err != nil {
		w.log.Error().Err(err).Str("source", src.name).Strs("files", src.paths).
			Msg("TLS files refused: the certificates in use stay")
		return
	}
	w.log.Info().Str("source", src.name).Strs("files", src.paths).Msg("TLS files loaded")
}

// loadPair reads a certificate chain and its key and checks they match.
func loadPair(p Pair) (*tls.Certificate, error) {
	c, err := tls.LoadX509KeyPair(p.CertFile, p.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("%s and %s: %w", p.CertFile, p.KeyFile, err)
	}
	return &c, nil
}

// inUse reports the expiry of a certificate that has just been put in use.
func (w *Watcher) inUse(p Pair, c *tls.Certificate) {
	if w.hooks.Certificate != nil {
		w.hooks.Certificate(p.CertFile, c.Leaf.NotAfter)
	}
}

// ServerCertificates are a listener's certificates, in configuration order.
// GetCertificate picks one per handshake.
type ServerCertificates struct {
	set atomic.Pointer[certSet]
}

// certSet is one loaded generation of a listener's certificates.
type certSet struct {
	certs []*tls.Certificate            // the first is the default
	names map[string][]*tls.Certificate // DNS name (lower case, "*.example.com" for wildcards) → certificates, in order
}

// ServerCertificates loads pairs (at least one) and keeps them current
// under name (for logs).
func (w *Watcher) ServerCertificates(name string, pairs []Pair) (*ServerCertificates, error) {
	if len(pairs) == 0 {
		return nil, fmt.Errorf("%s: no certificate", name)
	}
	sc := &ServerCertificates{}
	var paths []string
	for _, p := range pairs {
		paths = append(paths, p.CertFile, p.KeyFile)
	}
	err := w.add(name, paths, func() error {
		set := &certSet{names: map[string][]*tls.Certificate{}}
		for _, p := range pairs {
			c, err := loadPair(p)
			if err != nil {
				return err
			}
			set.certs = append(set.certs, c)
			for _, n := range c.Leaf.DNSNames {
				n = strings.ToLower(n)
				set.names[n] = append(set.names[n], c)
			}
		}
		sc.set.Store(set)
		for i, p := range pairs {
			w.inUse(p, set.certs[i])
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return sc, nil
}

// GetCertificate is tls.Config.GetCertificate: the certificate for the
// server name the client asked for (SNI), matched against the DNS names of
// the certificates (their subject alternative names): an exact name first,
// then a wildcard for its first label; among several for the name, the
// first the client can use (an ECDSA and an RSA certificate for one name).
// Without a name, or for a name no certificate has, the first certificate.
func (sc *ServerCertificates) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	set := sc.set.Load()
	name := strings.ToLower(strings.TrimSuffix(hello.ServerName, "."))
	cands := set.names[name]
	if cands == nil && name != "" {
		if _, parent, ok := strings.Cut(name, "."); ok && parent != "" {
			cands = set.names["*."+parent]
		}
	}
	for _, c := range cands {
		if hello.SupportsCertificate(c) == nil {
			return c, nil
		}
	}
	if len(cands) > 0 {
		return cands[0], nil
	}
	return set.certs[0], nil
}

// ClientCertificate is the certificate popgate presents to an upstream that
// asks for one.
type ClientCertificate struct {
	cert atomic.Pointer[tls.Certificate]
}

// ClientCertificate loads p and keeps it current under name.
func (w *Watcher) ClientCertificate(name string, p Pair) (*ClientCertificate, error) {
	cc := &ClientCertificate{}
	err := w.add(name, []string{p.CertFile, p.KeyFile}, func() error {
		c, err := loadPair(p)
		if err != nil {
			return err
		}
		cc.cert.Store(c)
		w.inUse(p, c)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return cc, nil
}

// GetClientCertificate is tls.Config.GetClientCertificate.
func (cc *ClientCertificate) GetClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return cc.cert.Load(), nil
}

// Roots is a CA bundle that verifies an upstream's certificate.
type Roots struct {
	pool atomic.Pointer[x509.CertPool]
}

// errNoCertificates is a CA bundle without a usable certificate.
var errNoCertificates = errors.New("no usable certificate in the file")

// Roots loads a PEM CA bundle and keeps it current under name.
func (w *Watcher) Roots(name, file string) (*Roots, error) {
	r := &Roots{}
	err := w.add(name, []string{file}, func() error {
		b, err := os.ReadFile(file)
		if err != nil {
			return err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(b) {
			return fmt.Errorf("%s: %w", file, errNoCertificates)
		}
		r.pool.Store(pool)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return r, nil
}

// Pool returns the CA bundle in force.
func (r *Roots) Pool() *x509.CertPool { return r.pool.Load() }
