package policy

import (
	"crypto/x509"
	"net/mail"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/filters/quarantine/notify"
	"github.com/popgate/popgate/filters/quarantine/release"
)

// Delivery protocols and TLS modes of a delivery block.
const (
	DeliverySMTP = "smtp"
	DeliveryLMTP = "lmtp"

	DeliveryTLSNone     = "none"
	DeliveryTLSStartTLS = "starttls"
	DeliveryTLSImplicit = "implicit"
)

// Defaults of the release, retention and notification settings.
const (
	DefaultQuarantineRetention = 30 * 24 * time.Hour
	DefaultPurgeInterval       = time.Hour
	DefaultLinkTTL             = 7 * 24 * time.Hour
	DefaultDeliveryTimeout     = 60 * time.Second
	DefaultReleaseRecipient    = "%u"
	DefaultAdminInterval       = 15 * time.Minute
	DefaultAdminDelay          = time.Minute
	// DefaultReleaseKeyFile is the release key's file in the quarantine
	// directory when the release block names none; popgate creates it.
	DefaultReleaseKeyFile = "release.key"
)

// Delivery is one `delivery "NAME"` block: an SMTP or LMTP server popgate
// hands mail to (released originals, notifications).
type Delivery struct {
	Name     string
	Address  string // host:port (attribute address, required)
	Protocol string // DeliverySMTP (default) or DeliveryLMTP (attribute protocol)
	// TLS is DeliveryTLSNone (default), DeliveryTLSStartTLS or
	// DeliveryTLSImplicit (attribute tls).
	TLS        string
	CAFile     string // attribute ca_file: trusted roots; default the system's
	ServerName string // attribute server_name; default the host of Address
	Username   string // attribute username: AUTH PLAIN when set
	Password   string // attribute password
	Helo       string // attribute helo; default the host name
	// Timeout bounds connecting, each command and the message transfer
	// (attribute timeout, default "60s").
	Timeout time.Duration
	Range   hcl.Range
}

// UpstreamRelease is an upstream's `release` block: how a released original
// gets back into a mailbox of that upstream.
type UpstreamRelease struct {
	// Via names the delivery block (attribute via, required).
	Via string
	// Recipient maps the login name to the envelope recipient (attribute
	// recipient, default "%u"): %u is the login, %n its part before "@",
	// %d its part after "@", %% a percent sign.
	Recipient string
	// From is the envelope sender (attribute from); "" is the null sender.
	From string
}

// RecipientFor maps login to the envelope recipient of a release.
func (r *UpstreamRelease) RecipientFor(login string) string {
	return ExpandLogin(r.Recipient, login)
}

// ExpandLogin expands %u, %n, %d and %% in pattern for login.
func ExpandLogin(pattern, login string) string {
	local, domain, _ := strings.Cut(login, "@")
	var b strings.Builder
	for i := 0; i < len(pattern); i++ {
		c := pattern[i]
		if c != '%' || i+1 == len(pattern) {
			b.WriteByte(c)
			continue
		}
		i++
		switch pattern[i] {
		case 'u':
			b.WriteString(login)
		case 'n':
			b.WriteString(local)
		case 'd':
			b.WriteString(domain)
		default:
			b.WriteByte(pattern[i])
		}
	}
	return b.String()
}

// QuarantineRelease is the quarantine's `release` block.
type QuarantineRelease struct {
	// KeyFile holds the secret that signs release marks and links
	// (attribute key_file, default DefaultReleaseKeyFile in the quarantine
	// directory, created at start when missing).
	KeyFile string
	// LinkURL is the base URL of popgate's HTTP listener as users reach it
	// (attribute link_url); notices carry release links only when it is
	// set.
	LinkURL string
	// LinkTTL is how long a release link is valid (attribute link_ttl,
	// default "7d").
	LinkTTL time.Duration
}

// Notify is the `notify` block: mail about what the quarantine holds.
type Notify struct {
	Via  string // the delivery block (attribute via, required)
	From string // attribute from; default the quarantine's notice_from
	// Admin receives a digest when something is held (attribute admin),
	// at most one per AdminInterval (attribute admin_interval, "15m"),
	// the first AdminDelay after a quiet spell (attribute admin_delay,
	// "1m").
	Admin                     []string
	AdminInterval, AdminDelay time.Duration
	AdminSubject              string // attribute admin_subject: a template; "" = the default
	AdminTemplate             string // attribute admin_template; "" = the default
	// UserDigest, when set, sends each user one mail per period listing
	// what was held for them (attribute user_digest, a duration).
	UserDigest   time.Duration
	UserSubject  string // attribute user_subject
	UserTemplate string // attribute user_template
}

type deliverySchema struct {
	Name      string    `hcl:"name,label"`
	NameRange hcl.Range `hcl:"name,label_range"`
	DefRange  hcl.Range `hcl:",def_range"`

	Address    *hcl.Attribute `hcl:"address,optional"`
	Protocol   *hcl.Attribute `hcl:"protocol,optional"`
	TLS        *hcl.Attribute `hcl:"tls,optional"`
	CAFile     *hcl.Attribute `hcl:"ca_file,optional"`
	ServerName *hcl.Attribute `hcl:"server_name,optional"`
	Username   *hcl.Attribute `hcl:"username,optional"`
	Password   *hcl.Attribute `hcl:"password,optional"`
	Helo       *hcl.Attribute `hcl:"helo,optional"`
	Timeout    *hcl.Attribute `hcl:"timeout,optional"`
}

type upstreamReleaseSchema struct {
	DefRange hcl.Range `hcl:",def_range"`

	Via       *hcl.Attribute `hcl:"via,optional"`
	Recipient *hcl.Attribute `hcl:"recipient,optional"`
	From      *hcl.Attribute `hcl:"from,optional"`
}

type quarantineReleaseSchema struct {
	DefRange hcl.Range `hcl:",def_range"`

	KeyFile *hcl.Attribute `hcl:"key_file,optional"`
	LinkURL *hcl.Attribute `hcl:"link_url,optional"`
	LinkTTL *hcl.Attribute `hcl:"link_ttl,optional"`
}

type notifySchema struct {
	DefRange hcl.Range `hcl:",def_range"`

	Via           *hcl.Attribute `hcl:"via,optional"`
	From          *hcl.Attribute `hcl:"from,optional"`
	Admin         *hcl.Attribute `hcl:"admin,optional"`
	AdminInterval *hcl.Attribute `hcl:"admin_interval,optional"`
	AdminDelay    *hcl.Attribute `hcl:"admin_delay,optional"`
	AdminSubject  *hcl.Attribute `hcl:"admin_subject,optional"`
	AdminTemplate *hcl.Attribute `hcl:"admin_template,optional"`
	UserDigest    *hcl.Attribute `hcl:"user_digest,optional"`
	UserSubject   *hcl.Attribute `hcl:"user_subject,optional"`
	UserTemplate  *hcl.Attribute `hcl:"user_template,optional"`
}

func (s *upstreamReleaseSchema) defRange() hcl.Range   { return s.DefRange }
func (s *quarantineReleaseSchema) defRange() hcl.Range { return s.DefRange }
func (s *notifySchema) defRange() hcl.Range            { return s.DefRange }

func (d *decoder) deliveries(schemas []*deliverySchema) map[string]*Delivery {
	out := map[string]*Delivery{}
	first := map[string]hcl.Range{}
	for _, s := range schemas {
		d.checkName("delivery", s.Name, s.NameRange)
		if r, dup := first[s.Name]; dup {
			d.errorf(s.NameRange, "Duplicate delivery", "A delivery named %q was already defined at %s.", s.Name, posString(r))
			continue
		}
		first[s.Name] = s.NameRange
		out[s.Name] = d.delivery(s)
	}
	return out
}

func (d *decoder) delivery(s *deliverySchema) *Delivery {
	dl := &Delivery{Name: s.Name, Range: s.DefRange}
	if d.requireAttr(s.Address, s.DefRange, "delivery", "address", `address = "127.0.0.1:24"`) {
		dl.Address = d.address(s.Address, false)
	}
	dl.Protocol = d.enum(s.Protocol, DeliverySMTP, DeliverySMTP, DeliveryLMTP)
	dl.TLS = d.enum(s.TLS, DeliveryTLSNone, DeliveryTLSNone, DeliveryTLSStartTLS, DeliveryTLSImplicit)
	dl.ServerName = d.str(s.ServerName, "")
	dl.Username = d.str(s.Username, "")
	dl.Password = d.str(s.Password, "")
	dl.Helo = d.str(s.Helo, "")
	dl.Timeout = d.duration(s.Timeout, DefaultDeliveryTimeout, false)
	if s.CAFile != nil {
		var b []byte
		dl.CAFile, b = d.readPEM(s.CAFile, "CERTIFICATE")
		if b != nil && !x509.NewCertPool().AppendCertsFromPEM(b) {
			d.errorf(s.CAFile.Expr.Range(), "Invalid PEM file", "ca_file: %s holds no usable certificate.", dl.CAFile)
		}
	}
	if (dl.Username == "") != (dl.Password == "") {
		d.errorf(s.DefRange, "Incomplete credentials", "Delivery %q needs both username and password for AUTH, or neither.", s.Name)
	}
	if dl.Username != "" && dl.TLS == DeliveryTLSNone {
		d.warnf(s.Username.Range, "Password without TLS",
			"Delivery %q sends its password without TLS; popgate refuses that unless the server is on a loopback address. Set tls = \"starttls\" or \"implicit\".", s.Name)
	}
	return dl
}

func (d *decoder) upstreamRelease(s *upstreamReleaseSchema, deliveries map[string]*Delivery) *UpstreamRelease {
	r := &UpstreamRelease{Recipient: DefaultReleaseRecipient}
	if d.requireAttr(s.Via, s.DefRange, "release", "via", `via = "lmtp"`) {
		r.Via = d.str(s.Via, "")
		if deliveries[r.Via] == nil {
			d.errorf(s.Via.Expr.Range(), "Unknown delivery", "via: there is no delivery block named %q.", r.Via)
		}
	}
	r.Recipient = d.str(s.Recipient, DefaultReleaseRecipient)
	if s.Recipient != nil && !strings.Contains(r.Recipient, "%") {
		d.errorf(s.Recipient.Expr.Range(), "Invalid value", "recipient maps the login name to an address: it needs %%u, %%n or %%d (such as \"%%n@example.com\"), not %q.", r.Recipient)
	}
	r.From = d.str(s.From, "")
	if r.From != "" {
		if _, err := mail.ParseAddress(r.From); err != nil {
			d.errorf(s.From.Expr.Range(), "Invalid address", "from: %q is not a mail address (%v).", r.From, err)
		}
	}
	return r
}

func (d *decoder) quarantineRelease(s *quarantineReleaseSchema, q *Quarantine) {
	q.Release = QuarantineRelease{LinkTTL: DefaultLinkTTL}
	if q.Dir != "" {
		q.Release.KeyFile = filepath.Join(q.Dir, DefaultReleaseKeyFile)
	}
	if s == nil {
		return
	}
	if s.KeyFile != nil {
		if _, path, ok := d.pathAttr(s.KeyFile); ok {
			q.Release.KeyFile = path
		}
	}
	q.Release.LinkURL = strings.TrimRight(d.str(s.LinkURL, ""), "/")
	if u := q.Release.LinkURL; u != "" && !strings.HasPrefix(u, "https://") && !strings.HasPrefix(u, "http://") {
		d.errorf(s.LinkURL.Expr.Range(), "Invalid value", "link_url is the base URL users open, such as \"https://mailgw.example.com:9443\"; %q is not one.", u)
	} else if strings.HasPrefix(u, "http://") {
		d.warnf(s.LinkURL.Expr.Range(), "Release links without TLS", "link_url is plain http: release links travel unencrypted. Put the HTTP listener behind HTTPS.")
	}
	q.Release.LinkTTL = d.duration(s.LinkTTL, DefaultLinkTTL, false)
}

func (d *decoder) notify(s *notifySchema, deliveries map[string]*Delivery, q *Quarantine) *Notify {
	if s == nil {
		return nil
	}
	n := &Notify{}
	if d.requireAttr(s.Via, s.DefRange, "notify", "via", `via = "relay"`) {
		n.Via = d.str(s.Via, "")
		if deliveries[n.Via] == nil {
			d.errorf(s.Via.Expr.Range(), "Unknown delivery", "via: there is no delivery block named %q.", n.Via)
		}
	}
	def := DefaultNoticeFrom
	if q != nil {
		def = q.NoticeFrom
	} else {
		d.errorf(s.DefRange, "Notify without quarantine", "The notify block reports what the quarantine holds, and there is no quarantine block.")
	}
	n.From = d.str(s.From, def)
	if _, err := mail.ParseAddress(n.From); err != nil && s.From != nil {
		d.errorf(s.From.Expr.Range(), "Invalid address", "from: %q is not a mail address (%v).", n.From, err)
	}
	for _, a := range d.stringList(s.Admin) {
		if _, err := mail.ParseAddress(a.value); err != nil {
			d.errorf(a.rng, "Invalid address", "admin: %q is not a mail address (%v).", a.value, err)
			continue
		}
		n.Admin = append(n.Admin, a.value)
	}
	n.AdminInterval = d.duration(s.AdminInterval, DefaultAdminInterval, false)
	n.AdminDelay = d.duration(s.AdminDelay, DefaultAdminDelay, true)
	n.UserDigest = d.duration(s.UserDigest, 0, false)
	for _, t := range []struct {
		attr *hcl.Attribute
		dst  *string
	}{{s.AdminSubject, &n.AdminSubject}, {s.AdminTemplate, &n.AdminTemplate}, {s.UserSubject, &n.UserSubject}, {s.UserTemplate, &n.UserTemplate}} {
		*t.dst = d.str(t.attr, "")
		if *t.dst == "" {
			continue
		}
		if _, err := notify.ParseTemplate(t.attr.Name, *t.dst); err != nil {
			d.errorf(t.attr.Expr.Range(), "Invalid template", "%s: %v.", t.attr.Name, err)
		}
	}
	if len(n.Admin) == 0 && n.UserDigest == 0 {
		d.warnf(s.DefRange, "Notify without recipients", "The notify block names no admin addresses and no user_digest, so nobody is told anything.")
	}
	return n
}

// filterRelease splits the release attribute off a filter block (every
// filter type has it; the type's own decoding gets the rest of the body)
// and returns who may release what the filter held.
func (d *decoder) filterRelease(typ string, body hcl.Body) (release.Permission, hcl.Body) {
	content, rest, diags := body.PartialContent(&hcl.BodySchema{Attributes: []hcl.AttributeSchema{{Name: "release"}}})
	d.diags = append(d.diags, diags...)
	def := release.Permission(filters.FilterReleaseDefault(typ))
	attr := content.Attributes["release"]
	if attr == nil {
		return def, rest
	}
	return release.Permission(d.enum(attr, string(def), string(release.User), string(release.Admin), string(release.Never))), rest
}
