package policy

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/zclconf/go-cty/cty"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/proxy"
	"github.com/popgate/popgate/proxy/pop3"
)

// Defaults for values the configuration leaves out. Those of the proxy
// and of the spool are defined once, by the packages that use them.
const (
	DefaultShutdownTimeout     = 30 * time.Second
	DefaultMaxConnections      = 1000
	DefaultMaxConnectionsPerIP = 50
	DefaultLoginTimeout        = proxy.DefaultLoginTimeout
	DefaultIdleTimeout         = proxy.DefaultIdleTimeout
	DefaultMaxCommandLine      = pop3.MaxCommandLine // RFC 2449 §4
	DefaultConnectTimeout      = proxy.DefaultConnectTimeout
	DefaultUpstreamTimeout     = proxy.DefaultUpstreamTimeout
	DefaultMaxStatusLine       = pop3.MaxStatusLine // RFC 2449 §4
	DefaultSpoolMemoryLimit    = filters.DefaultMemoryLimit
	DefaultLogLevel            = "info"
	DefaultLogFormat           = "json"
	DefaultProxyHeaderTimeout  = proxy.DefaultProxyHeaderTimeout
)

// Bounds of the line-length limits: below 64 octets POP3 commands do not fit,
// and above 64 KiB a line limit no longer bounds memory usefully.
const (
	minLineLimit = 64
	maxLineLimit = 64 * 1024
)

// rfc1939MinIdle is the shortest inactivity autologout timer RFC 1939 §3
// allows a POP3 server.
const rfc1939MinIdle = 10 * time.Minute

// maxPEMFileSize bounds certificate, key and CA files read for validation.
const maxPEMFileSize = 16 << 20

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)

// build runs the second phase: it evaluates and validates every value of the
// proxy-core blocks and records the pending ones.
func (d *decoder) build(root *rootSchema, body hcl.Body) *Config {
	cfg := &Config{
		Upstreams:       map[string]*Upstream{},
		ShutdownTimeout: d.duration(root.ShutdownTimeout, DefaultShutdownTimeout, true),
	}

	cfg.Deliveries = d.deliveries(root.Deliveries)
	firstUpstream := map[string]hcl.Range{}
	for _, s := range root.Upstreams {
		u := d.upstream(s)
		if r := single(d, "release", s.Release); r != nil {
			u.Release = d.upstreamRelease(r, cfg.Deliveries)
		}
		if first, dup := firstUpstream[s.Name]; dup {
			d.errorf(s.NameRange, "Duplicate upstream",
				"An upstream named %q was already defined at %s. Upstream names must be unique.", s.Name, posString(first))
			continue
		}
		firstUpstream[s.Name] = s.NameRange
		cfg.Upstreams[s.Name] = u
	}

	firstListener := map[string]hcl.Range{}
	firstAddress := map[string]hcl.Range{}
	for _, s := range root.Listeners {
		l := d.listener(s, cfg.Upstreams)
		if first, dup := firstListener[s.Name]; dup {
			d.errorf(s.NameRange, "Duplicate listener",
				"A listener named %q was already defined at %s. Listener names must be unique.", s.Name, posString(first))
			continue
		}
		firstListener[s.Name] = s.NameRange
		if l.Address != "" && !anyPort(l.Address) {
			if first, dup := firstAddress[l.Address]; dup {
				d.errorf(s.Address.Expr.Range(), "Duplicate listener address",
					"Another listener already listens on %q (at %s).", l.Address, posString(first))
			} else {
				firstAddress[l.Address] = s.Address.Expr.Range()
			}
		}
		cfg.Listeners = append(cfg.Listeners, l)
	}
	if len(root.Listeners) == 0 {
		d.errorf(body.MissingItemRange(), "No listener",
			`The configuration needs at least one listener block, such as listener "pop3" { address = "127.0.0.1:1110" upstream = "mail" }.`)
	}

	cfg.Log = d.log(single(d, "log", root.Log))
	cfg.Spool = d.spool(single(d, "spool", root.Spool))
	d.routes(root.Routes, cfg)
	d.filtersAndPolicies(root, cfg)
	cfg.indexPolicies()
	cfg.indexRoutes()
	cfg.Metrics = d.metrics(single(d, "metrics", root.Metrics))
	cfg.Memory = d.memory(single(d, "memory", root.Memory), cfg.Quarantine)
	cfg.Notify = d.notify(single(d, "notify", root.Notify), cfg.Deliveries, cfg.Quarantine)
	return cfg
}

// single returns the one block of a kind that may appear at most once, or
// nil; it reports every extra one. (gohcl would report duplicates too, but
// decoding them as a slice lets the message name the first block the way
// every other diagnostic names a position.)
func single[T interface{ defRange() hcl.Range }](d *decoder, kind string, blocks []T) T {
	var zero T
	if len(blocks) == 0 {
		return zero
	}
	for _, b := range blocks[1:] {
		d.errorf(b.defRange(), "Duplicate "+kind+" block",
			"Only one %s block is allowed; the first one is at %s.", kind, posString(blocks[0].defRange()))
	}
	return blocks[0]
}

func (d *decoder) checkName(kind, name string, r hcl.Range) {
	if !nameRE.MatchString(name) {
		d.errorf(r, "Invalid "+kind+" name",
			`%q is not a valid name: use letters, digits, "_", "-" and ".", starting with a letter or digit.`, name)
	}
}

// requireAttr reports a missing required attribute at the block header.
func (d *decoder) requireAttr(attr *hcl.Attribute, block hcl.Range, what, name, example string) bool {
	if attr != nil {
		return true
	}
	d.errorf(block, "Missing required argument",
		"The %s block must set %s, such as %s.", what, name, example)
	return false
}

// address evaluates a host:port attribute. A listener may leave the host
// empty (every interface) and use port 0 (any free port); an upstream needs
// both.
func (d *decoder) address(attr *hcl.Attribute, listen bool) string {
	v, ok := d.value(attr, cty.String)
	if !ok {
		return ""
	}
	s := v.AsString()
	r := attr.Expr.Range()
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		var why string
		if ae, ok := err.(*net.AddrError); ok {
			why = ae.Err
		} else {
			why = err.Error()
		}
		d.errorf(r, "Invalid address", `%q is not a host:port address (%s); write it like "127.0.0.1:110", "[::1]:995" or "mail.example.com:110".`, s, why)
		return ""
	}
	p, err := strconv.ParseUint(port, 10, 16)
	switch {
	case err != nil && listen:
		d.errorf(r, "Invalid address", "The port of %q must be a number from 0 to 65535.", s)
		return ""
	case err != nil || (p == 0 && !listen):
		d.errorf(r, "Invalid address", "The port of %q must be a number from 1 to 65535.", s)
		return ""
	case host == "" && !listen:
		d.errorf(r, "Invalid address", "%q has no host; an upstream address needs one, like \"127.0.0.1:110\".", s)
		return ""
	}
	return s
}

func (d *decoder) listener(s *listenerSchema, upstreams map[string]*Upstream) *Listener {
	d.checkName("listener", s.Name, s.NameRange)
	l := &Listener{Name: s.Name, Range: s.DefRange}
	if d.requireAttr(s.Address, s.DefRange, "listener", "address", `address = "127.0.0.1:1110"`) {
		l.Address = d.address(s.Address, true)
	}
	l.Transparent = d.boolean(s.Transparent, false)
	l.TProxy = d.boolean(s.TProxy, false)
	if l.TProxy && !l.Transparent {
		d.errorf(s.TProxy.Range, "TPROXY without transparent",
			"tproxy = true says how connections are intercepted for a transparent listener; set transparent = true as well.")
	}

	if s.Upstream != nil {
		if v, ok := d.value(s.Upstream, cty.String); ok {
			l.Upstream = v.AsString()
			if _, known := upstreams[l.Upstream]; !known {
				d.errorf(s.Upstream.Expr.Range(), "Unknown upstream",
					"Listener %q refers to upstream %q, but there is no upstream block with that name.%s",
					s.Name, l.Upstream, knownNames(upstreams))
			}
		}
	} else if !l.Transparent {
		d.errorf(s.DefRange, "Missing upstream",
			`Listener %q needs upstream = "NAME" naming an upstream block, unless it has transparent = true.`, s.Name)
	}

	l.MaxConnections = d.integer(s.MaxConnections, DefaultMaxConnections, 1, 1<<30)
	l.MaxConnectionsPerIP = d.integer(s.MaxConnectionsPerIP, DefaultMaxConnectionsPerIP, 1, 1<<30)
	l.LoginTimeout = d.duration(s.LoginTimeout, DefaultLoginTimeout, false)
	l.IdleTimeout = d.duration(s.IdleTimeout, DefaultIdleTimeout, false)
	if l.IdleTimeout < rfc1939MinIdle {
		d.warnf(s.IdleTimeout.Expr.Range(), "Idle timeout below the RFC 1939 minimum",
			"RFC 1939 §3 says a POP3 server's inactivity autologout timer MUST be at least 10 minutes; with %s, clients that stay idle longer after logging in are disconnected.",
			l.IdleTimeout)
	}
	l.MaxCommandLine = d.integer(s.MaxCommandLine, DefaultMaxCommandLine, minLineLimit, maxLineLimit)
	for _, u := range d.stringList(s.LoginRouting) {
		if upstreams[u.value] == nil {
			d.errorf(u.rng, "Unknown upstream", "login_routing: there is no upstream block named %q; a login may only pick upstreams listed here.", u.value)
			continue
		}
		l.LoginRouting = append(l.LoginRouting, u.value)
	}

	if t := single(d, "tls", s.TLS); t != nil {
		l.TLS = d.listenerTLS(t)
	}
	if pp := single(d, "proxy_protocol", s.ProxyProtocol); pp != nil {
		l.ProxyProtocol = d.proxyProtocol(pp)
	}
	l.LoginThrottle = d.loginThrottle(single(d, "login_throttle", s.LoginThrottle))
	l.LoginRequiresTLS = d.boolean(s.LoginRequiresTLS, false)
	l.PlaintextLoginFrom = d.prefixes(s.PlaintextLoginFrom, "Invalid plaintext login address", "10.0.0.0/8")
	switch {
	case l.LoginRequiresTLS && l.TLS == nil:
		d.warnf(s.LoginRequiresTLS.Range, "Login requires TLS without TLS",
			"Listener %q has no tls block, so its clients cannot start TLS: only APOP and hashed SASL mechanisms (CRAM-MD5, SCRAM) can log in, and clients in plaintext_login_from.", s.Name)
	case s.PlaintextLoginFrom != nil && !l.LoginRequiresTLS:
		d.warnf(s.PlaintextLoginFrom.Range, "Plaintext login exemption without the requirement",
			"plaintext_login_from exempts clients from login_requires_tls, which is off on listener %q; set login_requires_tls = true.", s.Name)
	}
	return l
}

func (d *decoder) proxyProtocol(s *proxyProtocolSchema) *ProxyProtocol {
	pp := &ProxyProtocol{Timeout: d.duration(s.Timeout, DefaultProxyHeaderTimeout, false)}
	if d.requireAttr(s.Trusted, s.DefRange, "proxy_protocol", "trusted", `trusted = ["10.0.0.0/8"] (the load balancers' addresses)`) {
		errs := d.errorCount()
		pp.Trusted = d.prefixes(s.Trusted, "Invalid trusted address", "10.0.0.0/8")
		if len(pp.Trusted) == 0 && d.errorCount() == errs {
			d.errorf(s.Trusted.Expr.Range(), "No trusted address",
				"trusted must list at least one address or prefix: PROXY headers are accepted only from these sources.")
		}
	}
	return pp
}

func (d *decoder) metrics(s *metricsSchema) *Metrics {
	if s == nil {
		return nil
	}
	m := &Metrics{}
	if d.requireAttr(s.Address, s.DefRange, "metrics", "address", `address = "127.0.0.1:9110"`) {
		m.Address = d.address(s.Address, true)
	}
	if s.AdminTokenFile != nil {
		if raw, path, ok := d.pathAttr(s.AdminTokenFile); ok {
			b, err := os.ReadFile(path)
			if err != nil {
				d.fileProblem(s.AdminTokenFile, raw, path, err)
			} else if m.AdminToken = strings.TrimSpace(string(b)); len(m.AdminToken) < 16 {
				d.errorf(s.AdminTokenFile.Expr.Range(), "Admin token too short", "admin_token_file: %s holds %d characters; the admin API needs a token of at least 16 (such as the output of `openssl rand -hex 32`).", path, len(m.AdminToken))
			}
		}
	}
	return m
}

// anyPort tells whether a valid listener address asks for any free port.
func anyPort(addr string) bool {
	_, port, _ := net.SplitHostPort(addr)
	p, err := strconv.ParseUint(port, 10, 16)
	return err == nil && p == 0
}

// knownNames lists the upstream names for a diagnostic, the first ten in
// alphabetical order.
func knownNames(m map[string]*Upstream) string {
	if len(m) == 0 {
		return " The configuration has no upstream block."
	}
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	const show = 10
	if len(names) > show {
		return fmt.Sprintf(" Known upstreams include %s, and %d more.", strings.Join(quoteEach(names[:show]), ", "), len(names)-show)
	}
	return " Known upstreams: " + strings.Join(quoteEach(names), ", ") + "."
}

func (d *decoder) listenerTLS(s *listenerTLSSchema) *ListenerTLS {
	t := &ListenerTLS{Implicit: d.boolean(s.Implicit, false)}
	// cert_file and key_file are the default certificate; with certificate
	// blocks they may be left out (the first block is the default then).
	attrs := s.CertFile != nil || s.KeyFile != nil
	switch {
	case attrs:
		if p, _, ok := d.keyPair(s.CertFile, s.KeyFile, s.DefRange, "tls"); ok {
			t.Certificates = append(t.Certificates, p)
		}
	case len(s.Certificates) == 0:
		d.errorf(s.DefRange, "Missing certificate",
			`The tls block needs a certificate: cert_file and key_file, such as cert_file = "/etc/popgate/cert.pem" and key_file = "/etc/popgate/key.pem", or certificate blocks holding them.`)
	}
	for i, c := range s.Certificates {
		if p, ok := d.certificate(c, i == 0 && !attrs); ok {
			t.Certificates = append(t.Certificates, p)
		}
	}
	return t
}

// certificate decodes a certificate block of a listener's tls block. Only
// the default (first) certificate is served to clients that name no server
// or one no certificate is for; any other is chosen by its DNS names alone.
func (d *decoder) certificate(s *certificateSchema, isDefault bool) (KeyPair, bool) {
	p, leaf, ok := d.keyPair(s.CertFile, s.KeyFile, s.DefRange, "certificate")
	if ok && !isDefault && len(leaf.DNSNames) == 0 {
		d.warnf(s.DefRange, "Certificate never chosen",
			"%s has no DNS names (subject alternative names): clients asking for a server name never get it, and it is not the listener's first certificate.", p.CertFile)
	}
	return p, ok
}

// keyPair decodes a cert_file and key_file pair of the block at block (a
// listener's tls, a certificate, an upstream): both are required, must be
// PEM, and must form a usable certificate and key. It returns the leaf
// certificate too.
func (d *decoder) keyPair(certAttr, keyAttr *hcl.Attribute, block hcl.Range, what string) (KeyPair, *x509.Certificate, bool) {
	var p KeyPair
	haveCert := d.requireAttr(certAttr, block, what, "cert_file", `cert_file = "/etc/popgate/cert.pem"`)
	haveKey := d.requireAttr(keyAttr, block, what, "key_file", `key_file = "/etc/popgate/key.pem"`)
	var certPEM, keyPEM []byte
	if haveCert {
		p.CertFile, certPEM = d.readPEM(certAttr, "CERTIFICATE")
	}
	if haveKey {
		p.KeyFile, keyPEM = d.readPEM(keyAttr, "PRIVATE KEY")
	}
	if certPEM == nil || keyPEM == nil {
		return p, nil, false
	}
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		d.errorf(block, "Invalid certificate or key",
			"%s and %s do not form a usable certificate and key: %s.", p.CertFile, p.KeyFile, strings.TrimPrefix(err.Error(), "tls: "))
		return p, nil, false
	}
	return p, c.Leaf, true
}

// pathAttr evaluates a path attribute. It returns the path as written and
// resolved against the configuration directory; ok is false when the value
// is absent, in error, or empty (reported).
func (d *decoder) pathAttr(attr *hcl.Attribute) (raw, resolved string, ok bool) {
	v, ok := d.value(attr, cty.String)
	if !ok {
		return "", "", false
	}
	raw = v.AsString()
	if raw == "" {
		d.errorf(attr.Expr.Range(), "Invalid value", "%s must not be empty.", attr.Name)
		return "", "", false
	}
	return raw, resolvePath(d.baseDir, raw), true
}

// fileProblem reports a file that cannot be used.
func (d *decoder) fileProblem(attr *hcl.Attribute, raw, resolved string, err error) {
	summary := "Cannot read file"
	if os.IsNotExist(err) {
		summary = "File not found"
	}
	hint := ""
	if raw != resolved {
		hint = fmt.Sprintf(" Relative paths are relative to the configuration file's directory, so %q is %s.", raw, resolved)
	}
	d.errorf(attr.Expr.Range(), summary, "%s: %v.%s", attr.Name, cleanPathError(err), hint)
}

// readPEM reads the file attr names and checks that it holds a PEM block
// whose type ends with wantType. It returns the resolved path, and the
// contents or nil after reporting a problem.
func (d *decoder) readPEM(attr *hcl.Attribute, wantType string) (string, []byte) {
	raw, path, ok := d.pathAttr(attr)
	if !ok {
		return path, nil
	}
	b, err := readRegularFile(path, maxPEMFileSize)
	if err != nil {
		d.fileProblem(attr, raw, path, err)
		return path, nil
	}
	rest := b
	for {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			d.errorf(attr.Expr.Range(), "Invalid PEM file", "%s: %s holds no PEM %s block.", attr.Name, path, wantType)
			return path, nil
		}
		if strings.HasSuffix(blk.Type, wantType) {
			return path, b
		}
	}
}

func (d *decoder) upstream(s *upstreamSchema) *Upstream {
	d.checkName("upstream", s.Name, s.NameRange)
	u := &Upstream{Name: s.Name, Range: s.DefRange}
	if d.requireAttr(s.Address, s.DefRange, "upstream", "address", `address = "127.0.0.1:110"`) {
		u.Address = d.address(s.Address, false)
	}
	tlsErrs := d.errorCount()
	u.TLS = d.enum(s.TLS, UpstreamTLSNone, UpstreamTLSNone, UpstreamTLSStartTLS, UpstreamTLSImplicit)
	tlsValid := d.errorCount() == tlsErrs
	u.ServerName = d.str(s.ServerName, "")
	u.InsecureSkipVerify = !d.boolean(s.TLSVerify, true)
	u.ConnectTimeout = d.duration(s.ConnectTimeout, DefaultConnectTimeout, false)
	u.Timeout = d.duration(s.Timeout, DefaultUpstreamTimeout, false)
	u.MaxStatusLine = d.integer(s.MaxStatusLine, DefaultMaxStatusLine, minLineLimit, maxLineLimit)
	u.ProxyProtocol = d.enum(s.ProxyProtocol, ProxyProtocolNone, ProxyProtocolNone, ProxyProtocolV1, ProxyProtocolV2)
	u.LoginRequiresTLS = d.boolean(s.LoginRequiresTLS, false)

	if s.CAFile != nil {
		var b []byte
		u.CAFile, b = d.readPEM(s.CAFile, "CERTIFICATE")
		if b != nil && !x509.NewCertPool().AppendCertsFromPEM(b) {
			d.errorf(s.CAFile.Expr.Range(), "Invalid PEM file", "ca_file: %s holds no usable certificate.", u.CAFile)
		}
	}
	if s.CertFile != nil || s.KeyFile != nil {
		if p, _, ok := d.keyPair(s.CertFile, s.KeyFile, s.DefRange, "upstream"); ok {
			u.ClientCertificate = &p
		}
	}

	if tlsValid && u.TLS == UpstreamTLSNone && u.LoginRequiresTLS {
		d.warnf(s.LoginRequiresTLS.Range, "Login requires TLS without TLS",
			"Upstream %q has tls = \"none\", so login_requires_tls refuses every USER/PASS, AUTH PLAIN and AUTH LOGIN through it: only APOP and hashed SASL mechanisms can log in.", s.Name)
	}
	switch {
	case !tlsValid:
	case u.TLS == UpstreamTLSNone:
		for _, a := range []*hcl.Attribute{s.CAFile, s.ServerName, s.TLSVerify, s.CertFile, s.KeyFile} {
			if a != nil {
				d.warnf(a.Range, "TLS setting without TLS",
					"Upstream %q has tls = \"none\", so %s has no effect. Set tls = \"starttls\" or \"implicit\" to use it.", s.Name, a.Name)
			}
		}
	case u.InsecureSkipVerify:
		d.warnf(s.TLSVerify.Expr.Range(), "TLS certificate verification is off",
			"Upstream %q accepts any certificate: anyone on the network path can pose as the server and read users' passwords and mail.", s.Name)
	}
	return u
}

func (d *decoder) log(s *logSchema) Log {
	l := Log{Level: DefaultLogLevel, Format: DefaultLogFormat}
	if s == nil {
		return l
	}
	l.Level = d.enum(s.Level, DefaultLogLevel, "debug", "info", "warn", "error")
	l.Format = d.enum(s.Format, DefaultLogFormat, "json", "console")
	if f := d.str(s.File, ""); f != "" { // "" is standard error
		l.File = resolvePath(d.baseDir, f)
	}
	return l
}

func (d *decoder) spool(s *spoolSchema) Spool {
	sp := Spool{Dir: os.TempDir(), MemoryLimit: DefaultSpoolMemoryLimit}
	if s == nil {
		return sp
	}
	sp.MemoryLimit = d.size(s.MemoryLimit, DefaultSpoolMemoryLimit)
	if raw, dir, ok := d.pathAttr(s.Dir); ok {
		st, err := os.Stat(dir)
		switch {
		case err != nil:
			d.fileProblem(s.Dir, raw, dir, err)
		case !st.IsDir():
			d.errorf(s.Dir.Expr.Range(), "Not a directory", "dir: %s is not a directory.", dir)
		default:
			sp.Dir = dir
		}
	}
	return sp
}
