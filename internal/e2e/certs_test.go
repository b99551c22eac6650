package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/testenv"
)

// testCA issues the certificates of the renewal tests.
type testCA struct {
	t    *testing.T
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
	file string // the CA certificate, PEM
}

func newTestCA(t *testing.T, dir string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1000), Subject: pkix.Name{CommonName: "popgate renewal test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign, IsCA: true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	ca := &testCA{t: t, cert: cert, key: key, pool: x509.NewCertPool(), file: filepath.Join(dir, "ca.pem")}
	ca.pool.AddCert(cert)
	writePEM(t, ca.file, "CERTIFICATE", der)
	return ca
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// issue writes a server certificate for names (and 127.0.0.1) with the
// given serial and its key to dir/NAME.pem and dir/NAME-key.pem.
func (ca *testCA) issue(dir, name string, serial int64, names ...string) (certFile, keyFile string) {
	t := ca.t
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: names[0]},
		DNSNames: names, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Duration(serial) * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
	writePEM(t, certFile, "CERTIFICATE", der)
	writePEM(t, keyFile, "PRIVATE KEY", kb)
	return certFile, keyFile
}

// relink points the symbolic link at link to target by renaming a new link
// over it, as certbot updates its live/ directory.
func relink(t *testing.T, target, link string) {
	t.Helper()
	tmp := link + ".new"
	if err := os.Symlink(target, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, link); err != nil {
		t.Fatal(err)
	}
}

// servedSerial makes a TLS handshake with addr asking for serverName,
// verifies the certificate against pool and returns its serial number.
func servedSerial(t *testing.T, addr, serverName string, pool *x509.CertPool) int64 {
	t.Helper()
	d := &net.Dialer{Timeout: 10 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{ServerName: serverName, RootCAs: pool})
	if err != nil {
		t.Fatalf("TLS handshake asking for %q: %v", serverName, err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].SerialNumber.Int64()
}

// dialPOPS is dialPOP over implicit TLS.
func dialPOPS(t *testing.T, addr, serverName string, pool *x509.CertPool) (*rawPOP, int64) {
	t.Helper()
	d := &net.Dialer{Timeout: 10 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{ServerName: serverName, RootCAs: pool})
	if err != nil {
		t.Fatal(err)
	}
	return greeted(t, c, addr), c.ConnectionState().PeerCertificates[0].SerialNumber.Int64()
}

// TestCertificateRenewal: the real binary serves a certificate renewed on
// disk the certbot way (symbolic links in live/ swapped to new files in
// archive/) to the next handshake without a restart, while a session that
// started before the swap downloads its message to the last byte; a broken
// pair (a key that does not match) is refused on SIGHUP with a log line and
// a metric, and the renewed certificate stays in use; a second certificate
// on the same listener is served to clients asking for its names (SNI),
// checked with a Go client and with curl --resolve.
func TestCertificateRenewal(t *testing.T) {
	d := testenv.Dovecot(t)
	curl := testenv.LookPath(t, "curl")
	big := bigCleanMsg("renewal", 3<<20)
	u, _ := newMailbox(t, d, [][]byte{big})

	dir := t.TempDir()
	archive, live := filepath.Join(dir, "archive"), filepath.Join(dir, "live")
	for _, sub := range []string{archive, live} {
		if err := os.Mkdir(sub, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	ca := newTestCA(t, dir)
	cert1, key1 := ca.issue(archive, "cert1", 1, "localhost")
	certFile, keyFile := filepath.Join(live, "cert.pem"), filepath.Join(live, "key.pem")
	relink(t, cert1, certFile)
	relink(t, key1, keyFile)
	orgCert, orgKey := ca.issue(dir, "org", 10, "mail.example.org", "*.example.net")

	cfg := fmt.Sprintf(`listener "pop3s" {
  address       = "127.0.0.1:0"
  upstream      = "dovecot"
  login_timeout = "30s"
  tls {
    implicit = true
    certificate {
      cert_file = %s
      key_file  = %s
    }
    certificate {
      cert_file = %s
      key_file  = %s
    }
  }
}
upstream "dovecot" {
  address = %s
}
metrics {
  address = "127.0.0.1:0"
}
log {
  level = "debug"
}
shutdown_timeout = "3s"
`, hclString(certFile), hclString(keyFile), hclString(orgCert), hclString(orgKey), hclString(d.Addr))
	p := startPopgate(t, cfg, "", "pop3s")
	addr := p.addr("pop3s")
	metrics := "http://" + p.metricsAddr() + "/metrics"
	if s := servedSerial(t, addr, "localhost", ca.pool); s != 1 {
		t.Fatalf("served certificate %d at start, want 1", s)
	}

	// A session downloads the big message across the renewal.
	old, serial := dialPOPS(t, addr, "localhost", ca.pool)
	if serial != 1 {
		t.Fatalf("the early session got certificate %d", serial)
	}
	old.ok("USER " + u.Name)
	old.ok("PASS " + u.Password)
	old.ok("RETR 1")
	head := make([]byte, 64<<10)
	if _, err := io.ReadFull(old.r, head); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	cert2, key2 := ca.issue(archive, "cert2", 2, "localhost")
	relink(t, cert2, certFile)
	time.Sleep(50 * time.Millisecond) // the key follows a moment later, as in certbot
	relink(t, key2, keyFile)
	waitUntil(t, "the renewed certificate served", func() bool { return servedSerial(t, addr, "localhost", ca.pool) == 2 })
	took := time.Since(start)
	t.Logf("renewed certificate served %v after the swap", took.Round(100*time.Millisecond))
	p.waitEvents("TLS files loaded", func(evs []logEvent) bool {
		for _, e := range evs {
			if e.str("message") == "TLS files loaded" && e.str("source") == "listener pop3s" {
				return true
			}
		}
		return false
	})

	rest := old.multi()
	if got, want := string(head)+rest, strings.ReplaceAll(string(crlf(big)), "\r\n.", "\r\n.."); got != want {
		t.Fatalf("the session open across the renewal got %d bytes, want %d, byte for byte", len(got), len(want))
	}
	old.ok("QUIT")

	// A broken renewal: the key does not match the certificate.
	cert3, _ := ca.issue(archive, "cert3", 3, "localhost")
	relink(t, cert3, certFile)
	p.signal(syscall.SIGHUP)
	p.waitEvents("the broken pair refused", func(evs []logEvent) bool {
		for _, e := range evs {
			if e.str("message") == "TLS files refused: the certificates in use stay" && e.str("source") == "listener pop3s" &&
				strings.Contains(e.str("error"), "private key does not match public key") {
				return true
			}
		}
		return false
	})
	if s := servedSerial(t, addr, "localhost", ca.pool); s != 2 {
		t.Fatalf("after a broken renewal the listener serves certificate %d, want 2 (the one in use)", s)
	}
	_, page := httpGet(t, metrics)
	if v := metricValue(page, `popgate_tls_reloads_total{result="refused"}`); v < 1 {
		t.Errorf("popgate_tls_reloads_total{result=\"refused\"} = %v, want at least 1", v)
	}
	if v, want := metricValue(page, `popgate_tls_certificate_expiry_timestamp_seconds{file=`+fmt.Sprintf("%q", certFile)+`}`), notAfter(t, cert2); int64(v) != want {
		t.Errorf("expiry gauge of %s = %v, want that of certificate 2 (%d)", certFile, v, want)
	}

	// SNI: the second certificate for its names, the first for others.
	for name, want := range map[string]int64{"mail.example.org": 10, "pop.example.net": 10, "localhost": 2} {
		if s := servedSerial(t, addr, name, ca.pool); s != want {
			t.Errorf("asking for %s got certificate %d, want %d", name, s, want)
		}
	}
	_, port, _ := net.SplitHostPort(addr)
	do := curlRunner(t, curl, u, nil)
	for _, name := range []string{"mail.example.org", "pop.example.net", "localhost"} {
		out := do("--cacert", ca.file, "--resolve", name+":"+port+":127.0.0.1", "pop3s://"+name+":"+port+"/")
		if !strings.HasPrefix(string(out), "1 ") {
			t.Errorf("curl for %s (verifying the certificate for that name): %q", name, out)
		}
	}
}

// notAfter is the expiry (Unix seconds) of the certificate in a PEM file.
func notAfter(t *testing.T, file string) int64 {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c.NotAfter.Unix()
}
