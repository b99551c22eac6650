package tlsfiles

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// testPair is a self-signed certificate with its key, as PEM.
type testPair struct {
	serial    int64
	cert, key []byte
}

func newPair(t *testing.T, serial int64, rsaKey bool, names ...string) testPair {
	t.Helper()
	var key crypto.Signer
	var err error
	if rsaKey {
		key, err = rsa.GenerateKey(rand.Reader, 2048)
	} else {
		key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	}
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: "tlsfiles test"},
		DNSNames:     names,
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Duration(serial) * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IsCA:         true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return testPair{serial, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb})}
}

// write puts b at path by writing a temporary file and renaming it, as
// renewal tools do.
func write(t *testing.T, path string, b []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func (p testPair) install(t *testing.T, dir, name string) Pair {
	t.Helper()
	files := Pair{filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")}
	write(t, files.CertFile, p.cert)
	write(t, files.KeyFile, p.key)
	return files
}

// recorder collects what the hooks and the log report.
type recorder struct {
	mu          sync.Mutex
	ok, refused int
	expiry      map[string]time.Time
	log         bytes.Buffer
	logMu       sync.Mutex
}

func (r *recorder) Write(p []byte) (int, error) {
	r.logMu.Lock()
	defer r.logMu.Unlock()
	return r.log.Write(p)
}

func (r *recorder) logged() string {
	r.logMu.Lock()
	defer r.logMu.Unlock()
	return r.log.String()
}

func newWatcher(t *testing.T) (*Watcher, *recorder) {
	rec := &recorder{expiry: map[string]time.Time{}}
	w := New(zerolog.New(rec), Hooks{
		Reloaded: func(ok bool) {
			rec.mu.Lock()
			defer rec.mu.Unlock()
			if ok {
				rec.ok++
			} else {
				rec.refused++
			}
		},
		Certificate: func(file string, notAfter time.Time) {
			rec.mu.Lock()
			defer rec.mu.Unlock()
			rec.expiry[file] = notAfter
		},
	})
	return w, rec
}

func serialOf(t *testing.T, c *tls.Certificate) int64 {
	t.Helper()
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return leaf.SerialNumber.Int64()
}

// hello is a ClientHello of a TLS 1.3 client that accepts ECDSA and RSA
// certificates, naming name.
func hello(name string) *tls.ClientHelloInfo {
	return &tls.ClientHelloInfo{ServerName: name, SupportedVersions: []uint16{tls.VersionTLS13},
		SignatureSchemes: []tls.SignatureScheme{tls.ECDSAWithP256AndSHA256, tls.PSSWithSHA256},
		SupportedCurves:  []tls.CurveID{tls.CurveP256, tls.X25519}}
}

// TestServerCertificatesBySNI: the certificate for the name a client asks
// for: exact names, wildcards for one label, case and a trailing dot
// ignored, the first certificate for no name or an unknown one, and among
// an ECDSA and an RSA certificate for one name the one the client can use.
func TestServerCertificatesBySNI(t *testing.T) {
	dir := t.TempDir()
	w, _ := newWatcher(t)
	pairs := []Pair{
		newPair(t, 1, false, "pop.example.com").install(t, dir, "default"),
		newPair(t, 2, false, "mail.example.org", "*.example.net").install(t, dir, "org"),
		newPair(t, 3, false, "a.example.net").install(t, dir, "exact"),
		newPair(t, 4, true, "mail.example.org").install(t, dir, "org-rsa"),
	}
	sc, err := w.ServerCertificates("listener test", pairs)
	if err != nil {
		t.Fatal(err)
	}
	rsaOnly := hello("mail.example.org")
	rsaOnly.SignatureSchemes = []tls.SignatureScheme{tls.PSSWithSHA256}
	for _, c := range []struct {
		name  string
		hello *tls.ClientHelloInfo
		want  int64
	}{
		{"no name", hello(""), 1},
		{"exact", hello("mail.example.org"), 2},
		{"case and trailing dot", hello("MAIL.Example.ORG."), 2},
		{"wildcard", hello("b.example.net"), 2},
		{"exact before wildcard", hello("a.example.net"), 3},
		{"wildcard is one label", hello("x.b.example.net"), 1},
		{"wildcard needs a label", hello("example.net"), 1},
		{"unknown", hello("other.example"), 1},
		{"the key type the client takes", rsaOnly, 4},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := sc.GetCertificate(c.hello)
			if err != nil {
				t.Fatal(err)
			}
			if s := serialOf(t, got); s != c.want {
				t.Errorf("%q got certificate %d, want %d", c.hello.ServerName, s, c.want)
			}
		})
	}
}

// TestPollLoadsSettledChanges: a renamed file, a swapped symbolic link
// (certbot's live/ directory) and an edit in place are each loaded once the
// files have held still for one poll, not in between.
func TestPollLoadsSettledChanges(t *testing.T) {
	dir := t.TempDir()
	archive := filepath.Join(dir, "archive")
	live := filepath.Join(dir, "live")
	for _, d := range []string{archive, live} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	link := func(pair Pair) Pair {
		files := Pair{filepath.Join(live, "cert.pem"), filepath.Join(live, "key.pem")}
		for _, l := range [][2]string{{pair.CertFile, files.CertFile}, {pair.KeyFile, files.KeyFile}} {
			tmp := l[1] + ".new"
			if err := os.Symlink(l[0], tmp); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(tmp, l[1]); err != nil {
				t.Fatal(err)
			}
		}
		return files
	}
	files := link(newPair(t, 1, false, "pop.example.com").install(t, archive, "1"))
	w, rec := newWatcher(t)
	sc, err := w.ServerCertificates("listener test", []Pair{files})
	if err != nil {
		t.Fatal(err)
	}
	serving := func() int64 {
		c, err := sc.GetCertificate(hello("pop.example.com"))
		if err != nil {
			t.Fatal(err)
		}
		return serialOf(t, c)
	}
	steps := []struct {
		what   string
		change func()
	}{
		{"symlink swap", func() { link(newPair(t, 2, false, "pop.example.com").install(t, archive, "2")) }},
		{"rename over", func() {
			newPair(t, 3, false, "pop.example.com").install(t, live, "x")
			link(Pair{filepath.Join(live, "x.crt"), filepath.Join(live, "x.key")})
		}},
	}
	want := int64(1)
	for _, s := range steps {
		s.change()
		w.Poll()
		if got := serving(); got != want {
			t.Fatalf("%s: serving %d right after the change, want %d until the files settle", s.what, got, want)
		}
		w.Poll()
		want++
		if got := serving(); got != want {
			t.Fatalf("%s: serving %d after the files settled, want %d", s.what, got, want)
		}
		w.Poll()
	}
	// An edit in place: same inode, new size and mtime.
	p4 := newPair(t, 4, false, "pop.example.com")
	for _, f := range []struct {
		path string
		b    []byte
	}{{filepath.Join(live, "x.crt"), p4.cert}, {filepath.Join(live, "x.key"), p4.key}} {
		if err := os.WriteFile(f.path, f.b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	w.Poll()
	w.Poll()
	if got := serving(); got != 4 {
		t.Fatalf("edit in place: serving %d, want 4", got)
	}
	if rec.ok != 3 || rec.refused != 0 {
		t.Errorf("reloads: %d ok, %d refused; want 3 ok", rec.ok, rec.refused)
	}
	if got, want := rec.expiry[files.CertFile].Unix(), time.Now().Add(4*time.Hour).Unix(); got < want-60 || got > want {
		t.Errorf("expiry reported for %s: %v", files.CertFile, rec.expiry[files.CertFile])
	}
}

// TestBadFilesRefused: a key that does not match, a truncated certificate
// and a missing file are refused with a log line and a count; the
// certificates in use stay, and the next good files are loaded.
func TestBadFilesRefused(t *testing.T) {
	dir := t.TempDir()
	w, rec := newWatcher(t)
	good := newPair(t, 1, false, "pop.example.com")
	files := good.install(t, dir, "a")
	other := newPair(t, 2, false, "pop.example.com")
	sc, err := w.ServerCertificates("listener test", []Pair{files})
	if err != nil {
		t.Fatal(err)
	}
	for i, bad := range []struct {
		what  string
		apply func()
	}{
		{"mismatched key", func() { write(t, files.KeyFile, other.key) }},
		{"truncated certificate", func() { write(t, files.KeyFile, good.key); write(t, files.CertFile, good.cert[:len(good.cert)/2]) }},
		{"missing file", func() { os.Remove(files.CertFile) }},
	} {
		bad.apply()
		w.Reload()
		c, _ := sc.GetCertificate(hello(""))
		if s := serialOf(t, c); s != 1 {
			t.Fatalf("%s: serving %d, want the old certificate 1", bad.what, s)
		}
		if rec.refused != i+1 {
			t.Fatalf("%s: %d refused, want %d", bad.what, rec.refused, i+1)
		}
		// A refused file is not retried at every poll.
		w.Poll()
		w.Poll()
		if rec.refused != i+1 {
			t.Fatalf("%s: refused again without a change", bad.what)
		}
	}
	if n := strings.Count(rec.logged(), "TLS files refused: the certificates in use stay"); n != 3 {
		t.Errorf("logged %d refusals, want 3:\n%s", n, rec.logged())
	}
	if !strings.Contains(rec.logged(), "private key does not match public key") {
		t.Errorf("the log does not say why:\n%s", rec.logged())
	}
	other.install(t, dir, "a")
	w.Poll()
	w.Poll()
	c, _ := sc.GetCertificate(hello(""))
	if s := serialOf(t, c); s != 2 {
		t.Fatalf("after good files: serving %d, want 2", s)
	}
	// A listener's certificates are one unit: one bad pair keeps them all.
	b := newPair(t, 3, false, "b.example.com").install(t, dir, "b")
	sc2, err := w.ServerCertificates("listener two", []Pair{files, b})
	if err != nil {
		t.Fatal(err)
	}
	newPair(t, 4, false, "pop.example.com").install(t, dir, "a")
	write(t, b.KeyFile, other.key)
	w.Reload()
	if c, _ := sc2.GetCertificate(hello("")); serialOf(t, c) != 2 {
		t.Errorf("listener two serves %d, want the old default 2 while its second pair is broken", serialOf(t, c))
	}
}

// TestStartNeedsGoodFiles: a source that cannot be loaded at start is an
// error, never an empty set.
func TestStartNeedsGoodFiles(t *testing.T) {
	dir := t.TempDir()
	w, _ := newWatcher(t)
	if _, err := w.ServerCertificates("listener none", nil); err == nil {
		t.Error("no certificate accepted")
	}
	if _, err := w.ServerCertificates("listener missing", []Pair{{filepath.Join(dir, "x"), filepath.Join(dir, "y")}}); err == nil {
		t.Error("missing files accepted")
	}
	junk := filepath.Join(dir, "junk.pem")
	write(t, junk, []byte("not PEM"))
	if _, err := w.Roots("upstream x", junk); err == nil {
		t.Error("a CA bundle without certificates accepted")
	}
}

// TestClientCertificateAndRoots: an upstream's client certificate and CA
// bundle are reloaded like listener certificates.
func TestClientCertificateAndRoots(t *testing.T) {
	dir := t.TempDir()
	w, _ := newWatcher(t)
	p1 := newPair(t, 1, false, "client")
	files := p1.install(t, dir, "client")
	cc, err := w.ClientCertificate("upstream x", files)
	if err != nil {
		t.Fatal(err)
	}
	ca := filepath.Join(dir, "ca.pem")
	write(t, ca, p1.cert)
	roots, err := w.Roots("upstream x ca_file", ca)
	if err != nil {
		t.Fatal(err)
	}
	p2 := newPair(t, 2, false, "client")
	p2.install(t, dir, "client")
	write(t, ca, append(append([]byte(nil), p1.cert...), p2.cert...))
	w.Reload()
	c, _ := cc.GetClientCertificate(nil)
	if serialOf(t, c) != 2 {
		t.Errorf("client certificate %d after reload, want 2", serialOf(t, c))
	}
	leaf, _ := x509.ParseCertificate(c.Certificate[0])
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Errorf("the reloaded CA bundle does not verify the new certificate: %v", err)
	}
}

// TestReloadDuringHandshakes: handshakes racing with reloads each get a
// whole certificate (run with -race).
func TestReloadDuringHandshakes(t *testing.T) {
	dir := t.TempDir()
	w, _ := newWatcher(t)
	pairs := []testPair{newPair(t, 1, false, "pop.example.com"), newPair(t, 2, false, "pop.example.com")}
	files := pairs[0].install(t, dir, "a")
	sc, err := w.ServerCertificates("listener test", []Pair{files})
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	for _, p := range pairs {
		pool.AppendCertsFromPEM(p.cert)
	}
	srvCfg := &tls.Config{GetCertificate: sc.GetCertificate}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-done:
				return
			default:
			}
			pairs[i%2].install(t, dir, "a")
			w.Reload()
		}
	})
	for range 50 {
		c, s := net.Pipe()
		errc := make(chan error, 1)
		go func() { errc <- tls.Server(s, srvCfg).Handshake(); s.Close() }()
		cc := tls.Client(c, &tls.Config{ServerName: "pop.example.com", RootCAs: pool})
		if err := cc.Handshake(); err != nil {
			t.Fatalf("handshake during reloads: %v", err)
		}
		c.Close()
		if err := <-errc; err != nil {
			t.Fatalf("server side: %v", err)
		}
	}
	close(done)
	wg.Wait()
}
