package policy

import (
	"crypto/x509"
	"path/filepath"
	"time"

	"github.com/hashicorp/hcl/v2"
)

// Message memory stores.
const (
	MemoryEmbedded = "embedded"
	MemoryRedis    = "redis"
	MemoryOff      = "off"
)

// Defaults of the memory block.
const (
	DefaultMemoryRetention = 30 * 24 * time.Hour
	DefaultMemoryTimeout   = 250 * time.Millisecond
	// DefaultMemoryFile is the embedded store's file in the quarantine
	// directory when the memory block names none.
	DefaultMemoryFile = "memory.db"
)

// Memory is the `memory` block: where popgate remembers what its chains
// decided for each message (docs/CONFIG.md). Without a memory block the
// memory is embedded, in DefaultMemoryFile of the quarantine directory;
// without a quarantine either, it is off.
type Memory struct {
	// Store is MemoryEmbedded, MemoryRedis or MemoryOff (attribute store,
	// default "embedded").
	Store string
	// Path is the embedded store's file (attribute path).
	Path string
	// Retention is how long a record not used is kept (attribute
	// retention, default "30d").
	Retention time.Duration
	// Timeout bounds each lookup; a slower store is a miss, which costs a
	// scan (attribute timeout, default "250ms").
	Timeout time.Duration
	// Redis is the redis block, for Store == MemoryRedis.
	Redis *Redis
}

// Redis is the `redis` block of memory: a Redis server shared by instances.
type Redis struct {
	Address  string // host:port (attribute address, required)
	Username string // attribute username (ACL user), default none
	Password string // attribute password, default none
	DB       int    // attribute db, default 0
	TLS      bool   // attribute tls, default false
	CAFile   string // attribute ca_file: trusted roots for TLS; default the system's
}

type memorySchema struct {
	DefRange hcl.Range `hcl:",def_range"`

	Store     *hcl.Attribute `hcl:"store,optional"`
	Path      *hcl.Attribute `hcl:"path,optional"`
	Retention *hcl.Attribute `hcl:"retention,optional"`
	Timeout   *hcl.Attribute `hcl:"timeout,optional"`
	Redis     []*redisSchema `hcl:"redis,block"` // at most one
}

type redisSchema struct {
	DefRange hcl.Range `hcl:",def_range"`

	Address  *hcl.Attribute `hcl:"address,optional"`
	Username *hcl.Attribute `hcl:"username,optional"`
	Password *hcl.Attribute `hcl:"password,optional"`
	DB       *hcl.Attribute `hcl:"db,optional"`
	TLS      *hcl.Attribute `hcl:"tls,optional"`
	CAFile   *hcl.Attribute `hcl:"ca_file,optional"`
}

func (s *memorySchema) defRange() hcl.Range { return s.DefRange }
func (s *redisSchema) defRange() hcl.Range  { return s.DefRange }

// memory decodes the memory block; cfg.Quarantine must be decoded already.
func (d *decoder) memory(s *memorySchema, q *Quarantine) *Memory {
	m := &Memory{Store: MemoryEmbedded, Retention: DefaultMemoryRetention, Timeout: DefaultMemoryTimeout}
	if s == nil {
		if q == nil || q.Dir == "" {
			return nil
		}
		m.Path = filepath.Join(q.Dir, DefaultMemoryFile)
		return m
	}
	m.Store = d.enum(s.Store, MemoryEmbedded, MemoryEmbedded, MemoryRedis, MemoryOff)
	m.Retention = d.duration(s.Retention, DefaultMemoryRetention, false)
	m.Timeout = d.duration(s.Timeout, DefaultMemoryTimeout, false)
	r := single(d, "redis", s.Redis)
	switch m.Store {
	case MemoryOff:
		return nil
	case MemoryEmbedded:
		if r != nil {
			d.warnf(r.DefRange, "Redis block without the redis store", `The memory is embedded (store = "embedded"), so its redis block has no effect. Set store = "redis" to share the memory through Redis.`)
		}
		if _, path, ok := d.pathAttr(s.Path); ok {
			m.Path = path
		} else if s.Path == nil {
			if q == nil || q.Dir == "" {
				d.errorf(s.DefRange, "Missing required argument", `The embedded memory needs path = "/var/lib/popgate/memory.db" when there is no quarantine block (whose directory holds it by default).`)
			} else {
				m.Path = filepath.Join(q.Dir, DefaultMemoryFile)
			}
		}
	case MemoryRedis:
		if s.Path != nil {
			d.warnf(s.Path.Range, "Path without the embedded store", "path is the embedded store's file; with store = \"redis\" it has no effect.")
		}
		if r == nil {
			d.errorf(s.DefRange, "Missing redis block", `store = "redis" needs a redis block, such as redis { address = "127.0.0.1:6379" }.`)
			return m
		}
		m.Redis = d.redis(r)
	}
	return m
}

func (d *decoder) redis(s *redisSchema) *Redis {
	r := &Redis{}
	if d.requireAttr(s.Address, s.DefRange, "redis", "address", `address = "127.0.0.1:6379"`) {
		r.Address = d.address(s.Address, false)
	}
	r.Username = d.str(s.Username, "")
	r.Password = d.str(s.Password, "")
	r.DB = d.integer(s.DB, 0, 0, 1<<20)
	r.TLS = d.boolean(s.TLS, false)
	if s.CAFile != nil {
		var b []byte
		r.CAFile, b = d.readPEM(s.CAFile, "CERTIFICATE")
		if b != nil && !x509.NewCertPool().AppendCertsFromPEM(b) {
			d.errorf(s.CAFile.Expr.Range(), "Invalid PEM file", "ca_file: %s holds no usable certificate.", r.CAFile)
		}
		if !r.TLS {
			d.warnf(s.CAFile.Range, "TLS setting without TLS", "ca_file has no effect without tls = true.")
		}
	}
	return r
}

// Rescan is a policy's rescan attribute: when a message the memory holds as
// deliverable is scanned again.
type Rescan struct {
	// Off: the policy does not use the memory ("always": every download
	// is scanned).
	Off bool
	// OnSignatureChange: when the scanners' signature versions changed
	// since the scan ("on-signature-change", the default).
	OnSignatureChange bool
	// After: when the scan is older than this (a duration such as "24h").
	After time.Duration
}

// rescan decodes a policy's rescan attribute.
func (d *decoder) rescan(attr *hcl.Attribute) Rescan {
	if attr == nil {
		return Rescan{OnSignatureChange: true}
	}
	v := d.str(attr, "")
	switch v {
	case "on-signature-change":
		return Rescan{OnSignatureChange: true}
	case "never":
		return Rescan{}
	case "always":
		return Rescan{Off: true}
	}
	if dur, err := ParseDuration(v); err == nil && dur > 0 {
		return Rescan{After: dur}
	}
	d.errorf(attr.Expr.Range(), "Invalid value",
		`rescan must be "on-signature-change" (the default), "never", "always" or a duration such as "24h" or "7d", not %q.`, v)
	return Rescan{OnSignatureChange: true}
}
