// Package dkimtest signs and verifies DKIM in tests with go-msgauth and a
// key generated for the test: the public key is looked up in the Signer,
// never in DNS. The tests of the signature detection, the chain and the end
// to end suite share it, so that "still verifies" always means what a real
// verifier says.
package dkimtest

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"testing"

	"github.com/emersion/go-msgauth/dkim"
)

// Signer signs for one domain and selector with its own Ed25519 key.
type Signer struct {
	Domain, Selector string
	key              ed25519.PrivateKey
}

// New returns a Signer with a fresh key.
func New(t testing.TB, domain, selector string) *Signer {
	t.Helper()
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &Signer{Domain: domain, Selector: selector, key: key}
}

// Sign returns msg with a DKIM-Signature field on top that signs the
// header fields named in headers (h=, in that order; a name may repeat to
// oversign it) and the body, with canonicalization "relaxed/relaxed" when
// relaxed is set, else "simple/simple".
func (s *Signer) Sign(t testing.TB, msg []byte, headers []string, relaxed bool) []byte {
	t.Helper()
	can := dkim.CanonicalizationSimple
	if relaxed {
		can = dkim.CanonicalizationRelaxed
	}
	var out bytes.Buffer
	err := dkim.Sign(&out, bytes.NewReader(msg), &dkim.SignOptions{
		Domain: s.Domain, Selector: s.Selector, Signer: s.key,
		HeaderKeys: headers, HeaderCanonicalization: can, BodyCanonicalization: can,
	})
	if err != nil {
		t.Fatalf("dkim sign: %v", err)
	}
	return out.Bytes()
}

// Verify checks every DKIM signature of msg against the keys of signers
// (none other is known) and returns nil when the message has at least one
// and all of them verify.
func Verify(msg []byte, signers ...*Signer) error {
	txt := map[string]string{}
	for _, s := range signers {
		pub := s.key.Public().(ed25519.PublicKey)
		txt[s.Selector+"._domainkey."+s.Domain] = "v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(pub)
	}
	vs, err := dkim.VerifyWithOptions(bytes.NewReader(msg), &dkim.VerifyOptions{
		LookupTXT: func(domain string) ([]string, error) {
			if r, ok := txt[domain]; ok {
				return []string{r}, nil
			}
			return nil, fmt.Errorf("no key for %s in this test", domain)
		},
	})
	if err != nil {
		return err
	}
	if len(vs) == 0 {
		return errors.New("no DKIM signature")
	}
	var errs []error
	for _, v := range vs {
		if v.Err != nil {
			errs = append(errs, fmt.Errorf("d=%s: %w", v.Domain, v.Err))
		}
	}
	return errors.Join(errs...)
}
