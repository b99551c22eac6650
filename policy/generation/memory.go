package generation

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/rs/zerolog"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/filters/memory"
	"github.com/popgate/popgate/filters/memory/boltstore"
	"github.com/popgate/popgate/filters/memory/redisstore"
	"github.com/popgate/popgate/policy"
	"github.com/popgate/popgate/proxy"
	"github.com/popgate/popgate/proxy/throttle"
)

// OpenMemory opens the store the memory block describes (nil when the
// memory is off). The store outlives generations: a reload keeps it, and
// the service closes it last.
func OpenMemory(m *policy.Memory, log zerolog.Logger) (memory.Store, error) {
	if m == nil {
		return nil, nil
	}
	switch m.Store {
	case policy.MemoryEmbedded:
		// Its default place is the quarantine directory, which may not
		// exist yet.
		if err := os.MkdirAll(filepath.Dir(m.Path), 0o700); err != nil {
			return nil, fmt.Errorf("message memory: %w", err)
		}
		s, err := boltstore.Open(m.Path, boltstore.Options{Retention: m.Retention}, log.With().Str("memory", m.Path).Logger())
		if err != nil {
			return nil, fmt.Errorf("message memory: %w", err)
		}
		return s, nil
	case policy.MemoryRedis:
		o := redisstore.Options{
			Address: m.Redis.Address, Username: m.Redis.Username, Password: m.Redis.Password, DB: m.Redis.DB,
			Timeout: m.Timeout, Retention: m.Retention, Log: log.With().Str("memory", "redis").Logger(),
		}
		if m.Redis.TLS {
			o.TLS = &tls.Config{MinVersion: tls.VersionTLS12}
			if m.Redis.CAFile != "" {
				pem, err := os.ReadFile(m.Redis.CAFile)
				if err != nil {
					return nil, fmt.Errorf("message memory: %w", err)
				}
				o.TLS.RootCAs = x509.NewCertPool()
				if !o.TLS.RootCAs.AppendCertsFromPEM(pem) {
					return nil, fmt.Errorf("message memory: no certificates in %s", m.Redis.CAFile)
				}
			}
		}
		s, err := redisstore.New(o)
		if err != nil {
			return nil, fmt.Errorf("message memory: %w", err)
		}
		return s, nil
	}
	return nil, fmt.Errorf("message memory: unknown store %q", m.Store)
}

// loginThrottle holds the failed-login counts of every listener, for the
// life of the service. When the message memory is in redis the counts are
// there too, so instances that share the memory share them and a guesser
// cannot spread its attempts over instances.
func loginThrottle(m *policy.Memory, store memory.Store, log zerolog.Logger) *throttle.Throttle {
	o := throttle.Options{Log: log}
	if rs, ok := store.(*redisstore.Store); ok {
		o.Shared = throttle.NewRedis(rs.Client(), "")
		o.Timeout = m.Timeout
	}
	return throttle.New(o)
}

// policyMemory is what a policy's sessions remember with, nil when the
// policy does not use the memory.
func (g *Generation) policyMemory(p *policy.Policy, store memory.Store) *proxy.Memory {
	if store == nil || p.Rescan.Off || len(p.Filters) == 0 {
		return nil
	}
	var used []filters.Scanner
	for _, f := range p.Filters {
		for _, name := range f.Uses {
			for _, s := range g.scanners {
				if s.Name == name && !slices.Contains(used, s.Scanner) {
					used = append(used, s.Scanner)
				}
			}
		}
	}
	m := &proxy.Memory{
		Store:       store,
		Fingerprint: fingerprint(g.Config, p),
		Rescan:      proxy.Rescan{OnSignatureChange: p.Rescan.OnSignatureChange, After: p.Rescan.After},
		Timeout:     g.Config.Memory.Timeout,
	}
	if len(used) > 0 {
		m.Signatures = func() string {
			vs := make([]string, len(used))
			for i, s := range used {
				if vs[i] = s.Version(); vs[i] == "" {
					return "" // not known yet: no change is known either
				}
			}
			return strings.Join(vs, " | ")
		}
	}
	return m
}

// fingerprint identifies what a policy's chain does to a message: the
// filters' kinds, names, decoded settings and signed settings, what
// becomes of an encrypted or a refused message. A record made under another fingerprint is not used.
func fingerprint(cfg *policy.Config, p *policy.Policy) string {
	h := sha256.New()
	fmt.Fprintf(h, "popgate memory v1\x00%s\x00%v\x00%d\x00%v\x00%v\x00", p.Name, p.OnError, p.MaxSize, p.NoticeOnReject, p.Encrypted)
	if cfg.Quarantine != nil {
		fmt.Fprintf(h, "%s\x00", cfg.Quarantine.NoticeFrom)
	}
	for _, f := range p.Filters {
		fmt.Fprintf(h, "%s\x00%s\x00%#v\x00%v\x00", f.Type, f.Name, f.Settings(), cfg.Signed[f.Name])
	}
	return hex.EncodeToString(h.Sum(nil)[:8])
}
