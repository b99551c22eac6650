package policy

import "github.com/hashicorp/hcl/v2"

// The structs below are the first decoding phase: gohcl checks the shape of
// the file (which attributes and blocks exist where, how many labels, no
// duplicates of single blocks) and hands over attributes undecoded, so that
// each value is evaluated and validated with its own source range. Blocks
// that later parts of popgate decode keep their body whole (",remain").

type rootSchema struct {
	ShutdownTimeout *hcl.Attribute `hcl:"shutdown_timeout,optional"`

	Listeners []*listenerSchema `hcl:"listener,block"`
	Upstreams []*upstreamSchema `hcl:"upstream,block"`
	Log       []*logSchema      `hcl:"log,block"`   // at most one
	Spool     []*spoolSchema    `hcl:"spool,block"` // at most one

	Scanners   []*typedBlock       `hcl:"scanner,block"`
	Filters    []*typedBlock       `hcl:"filter,block"`
	Policies   []*policySchema     `hcl:"policy,block"`
	Quarantine []*quarantineSchema `hcl:"quarantine,block"` // at most one
	Routes     []*routeSchema      `hcl:"route,block"`
	Metrics    []*metricsSchema    `hcl:"metrics,block"` // at most one
	Memory     []*memorySchema     `hcl:"memory,block"`  // at most one
	Deliveries []*deliverySchema   `hcl:"delivery,block"`
	Notify     []*notifySchema     `hcl:"notify,block"` // at most one
}

type listenerSchema struct {
	Name      string    `hcl:"name,label"`
	NameRange hcl.Range `hcl:"name,label_range"`
	DefRange  hcl.Range `hcl:",def_range"`

	Address             *hcl.Attribute         `hcl:"address,optional"`
	Upstream            *hcl.Attribute         `hcl:"upstream,optional"`
	Transparent         *hcl.Attribute         `hcl:"transparent,optional"`
	TProxy              *hcl.Attribute         `hcl:"tproxy,optional"`
	MaxConnections      *hcl.Attribute         `hcl:"max_connections,optional"`
	MaxConnectionsPerIP *hcl.Attribute         `hcl:"max_connections_per_ip,optional"`
	LoginTimeout        *hcl.Attribute         `hcl:"login_timeout,optional"`
	IdleTimeout         *hcl.Attribute         `hcl:"idle_timeout,optional"`
	MaxCommandLine      *hcl.Attribute         `hcl:"max_command_line,optional"`
	LoginRouting        *hcl.Attribute         `hcl:"login_routing,optional"`
	LoginRequiresTLS    *hcl.Attribute         `hcl:"login_requires_tls,optional"`
	PlaintextLoginFrom  *hcl.Attribute         `hcl:"plaintext_login_from,optional"`
	TLS                 []*listenerTLSSchema   `hcl:"tls,block"`            // at most one
	ProxyProtocol       []*proxyProtocolSchema `hcl:"proxy_protocol,block"` // at most one
	LoginThrottle       []*loginThrottleSchema `hcl:"login_throttle,block"` // at most one
}

type proxyProtocolSchema struct {
	DefRange hcl.Range `hcl:",def_range"`

	Trusted *hcl.Attribute `hcl:"trusted,optional"`
	Timeout *hcl.Attribute `hcl:"timeout,optional"`
}

type listenerTLSSchema struct {
	DefRange hcl.Range `hcl:",def_range"`

	CertFile     *hcl.Attribute       `hcl:"cert_file,optional"`
	KeyFile      *hcl.Attribute       `hcl:"key_file,optional"`
	Implicit     *hcl.Attribute       `hcl:"implicit,optional"`
	Certificates []*certificateSchema `hcl:"certificate,block"`
}

// certificateSchema is a `certificate` block inside a listener's tls block:
// one more certificate, picked by the server name a client asks for.
type certificateSchema struct {
	DefRange hcl.Range `hcl:",def_range"`

	CertFile *hcl.Attribute `hcl:"cert_file,optional"`
	KeyFile  *hcl.Attribute `hcl:"key_file,optional"`
}

type upstreamSchema struct {
	Name      string    `hcl:"name,label"`
	NameRange hcl.Range `hcl:"name,label_range"`
	DefRange  hcl.Range `hcl:",def_range"`

	Address          *hcl.Attribute `hcl:"address,optional"`
	TLS              *hcl.Attribute `hcl:"tls,optional"`
	CAFile           *hcl.Attribute `hcl:"ca_file,optional"`
	ServerName       *hcl.Attribute `hcl:"server_name,optional"`
	TLSVerify        *hcl.Attribute `hcl:"tls_verify,optional"`
	CertFile         *hcl.Attribute `hcl:"cert_file,optional"`
	KeyFile          *hcl.Attribute `hcl:"key_file,optional"`
	ConnectTimeout   *hcl.Attribute `hcl:"connect_timeout,optional"`
	Timeout          *hcl.Attribute `hcl:"timeout,optional"`
	MaxStatusLine    *hcl.Attribute `hcl:"max_status_line,optional"`
	ProxyProtocol    *hcl.Attribute `hcl:"proxy_protocol,optional"`
	LoginRequiresTLS *hcl.Attribute `hcl:"login_requires_tls,optional"`

	Release []*upstreamReleaseSchema `hcl:"release,block"` // at most one
}

type logSchema struct {
	DefRange hcl.Range `hcl:",def_range"`

	Level  *hcl.Attribute `hcl:"level,optional"`
	Format *hcl.Attribute `hcl:"format,optional"`
	File   *hcl.Attribute `hcl:"file,optional"`
}

type spoolSchema struct {
	DefRange hcl.Range `hcl:",def_range"`

	Dir         *hcl.Attribute `hcl:"dir,optional"`
	MemoryLimit *hcl.Attribute `hcl:"memory_limit,optional"`
}

// typedBlock is `KIND "TYPE" "NAME" { … }` (scanner, filter).
type typedBlock struct {
	Type      string    `hcl:"type,label"`
	TypeRange hcl.Range `hcl:"type,label_range"`
	Name      string    `hcl:"name,label"`
	NameRange hcl.Range `hcl:"name,label_range"`
	DefRange  hcl.Range `hcl:",def_range"`
	Body      hcl.Body  `hcl:",remain"`
}

type metricsSchema struct {
	DefRange hcl.Range `hcl:",def_range"`

	Address        *hcl.Attribute `hcl:"address,optional"`
	AdminTokenFile *hcl.Attribute `hcl:"admin_token_file,optional"`
}

func (s *listenerTLSSchema) defRange() hcl.Range   { return s.DefRange }
func (s *logSchema) defRange() hcl.Range           { return s.DefRange }
func (s *spoolSchema) defRange() hcl.Range         { return s.DefRange }
func (s *metricsSchema) defRange() hcl.Range       { return s.DefRange }
func (s *proxyProtocolSchema) defRange() hcl.Range { return s.DefRange }
