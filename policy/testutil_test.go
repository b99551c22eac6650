package policy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// certDir holds throwaway certificates made by TestMain:
//
//	cert.pem, key.pem    a self-signed certificate and its key
//	other-key.pem        a key that does not match cert.pem
//	ca.pem               a CA certificate (the same self-signed cert)
//	sni-cert.pem, sni-key.pem        for mail.example.org and *.example.net
//	noname-cert.pem, noname-key.pem  with no DNS name
//
// Test configurations reach them through environment variables
// (POPGATE_TEST_CERT, POPGATE_TEST_KEY, POPGATE_TEST_OTHER_KEY,
// POPGATE_TEST_CA), and golden output shows the directory as $CERTDIR.
var certDir string

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	dir, err := os.MkdirTemp("", "popgate-policy-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	certDir = dir
	if err := writeTestCerts(dir); err != nil {
		fmt.Fprintln(os.Stderr, "making test certificates:", err)
		return 1
	}
	for k, v := range map[string]string{
		"POPGATE_TEST_CERT":        filepath.Join(dir, "cert.pem"),
		"POPGATE_TEST_KEY":         filepath.Join(dir, "key.pem"),
		"POPGATE_TEST_OTHER_KEY":   filepath.Join(dir, "other-key.pem"),
		"POPGATE_TEST_CA":          filepath.Join(dir, "ca.pem"),
		"POPGATE_TEST_SNI_CERT":    filepath.Join(dir, "sni-cert.pem"),
		"POPGATE_TEST_SNI_KEY":     filepath.Join(dir, "sni-key.pem"),
		"POPGATE_TEST_NONAME_CERT": filepath.Join(dir, "noname-cert.pem"),
		"POPGATE_TEST_NONAME_KEY":  filepath.Join(dir, "noname-key.pem"),
		"POPGATE_TEST_ADDR":        "127.0.0.1:2110",
		"POPGATE_TEST_EMPTY":       "",
	} {
		os.Setenv(k, v)
	}
	os.Unsetenv("POPGATE_TEST_UNSET")
	return m.Run()
}

// writeTestCerts writes a self-signed ECDSA certificate valid for localhost,
// its key, an unrelated second key, and two more self-signed pairs for the
// SNI cases: sni-cert.pem (mail.example.org, *.example.net) and
// noname-cert.pem (no DNS name), with their keys.
func writeTestCerts(dir string) error {
	other, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	b, err := x509.MarshalPKCS8PrivateKey(other)
	if err != nil {
		return err
	}
	files := map[string][]byte{"other-key.pem": pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: b})}
	for _, c := range []struct {
		cert, key string
		names     []string
	}{
		{"cert.pem", "key.pem", []string{"localhost"}},
		{"sni-cert.pem", "sni-key.pem", []string{"mail.example.org", "*.example.net"}},
		{"noname-cert.pem", "noname-key.pem", nil},
	} {
		certPEM, keyPEM, err := selfSigned(c.names)
		if err != nil {
			return err
		}
		files[c.cert], files[c.key] = certPEM, keyPEM
	}
	files["ca.pem"] = files["cert.pem"]
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			return err
		}
	}
	return nil
}

// selfSigned makes a self-signed CA certificate for names and its key, PEM.
func selfSigned(names []string) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "popgate test"},
		DNSNames:              names,
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	b, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: b}), nil
}
