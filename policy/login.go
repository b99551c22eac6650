package policy

import (
	"net/netip"
	"time"

	"github.com/hashicorp/hcl/v2"

	"github.com/popgate/popgate/proxy/throttle"
)

// Defaults of the login_throttle block (docs/CONFIG.md says why these).
const (
	DefaultThrottleAddressFailures = throttle.DefaultAddressFailures
	DefaultThrottleNameFailures    = throttle.DefaultNameFailures
	DefaultThrottleWindow          = throttle.DefaultWindow
	DefaultThrottleLockout         = throttle.DefaultLockout
	DefaultThrottleDelay           = throttle.DefaultDelay
	DefaultThrottleMaxDelay        = throttle.DefaultMaxDelay
)

// LoginThrottle is a listener's login_throttle block: how failed logins
// are slowed down and then refused, per client address and per login name.
// Without the block a listener gets the defaults; `enabled = false` turns
// throttling off (Listener.LoginThrottle is nil then).
type LoginThrottle struct {
	// AddressFailures is how many attempts a client address (an IPv6
	// client: its /64) may fail within Window before it is locked out
	// (attribute address_failures, default 10; 0: no limit per address).
	AddressFailures int
	// NameFailures is the same per login name (attribute name_failures,
	// default 5; 0: no limit per name).
	NameFailures int
	// Window is how long failures are counted from the first (attribute
	// window, default "10m").
	Window time.Duration
	// Lockout is how long a locked address or name is refused (attribute
	// lockout, default "15m").
	Lockout time.Duration
	// Delay is the wait before the third attempt after two failures,
	// doubling with each further failure up to MaxDelay (attributes delay,
	// default "1s", "0s" for none; max_delay, default "8s").
	Delay    time.Duration
	MaxDelay time.Duration
	// Allow lists networks never throttled (attribute allow).
	Allow []netip.Prefix
}

type loginThrottleSchema struct {
	DefRange hcl.Range `hcl:",def_range"`

	Enabled         *hcl.Attribute `hcl:"enabled,optional"`
	AddressFailures *hcl.Attribute `hcl:"address_failures,optional"`
	NameFailures    *hcl.Attribute `hcl:"name_failures,optional"`
	Window          *hcl.Attribute `hcl:"window,optional"`
	Lockout         *hcl.Attribute `hcl:"lockout,optional"`
	Delay           *hcl.Attribute `hcl:"delay,optional"`
	MaxDelay        *hcl.Attribute `hcl:"max_delay,optional"`
	Allow           *hcl.Attribute `hcl:"allow,optional"`
}

func (s *loginThrottleSchema) defRange() hcl.Range { return s.DefRange }

// loginThrottle decodes a listener's login_throttle block (nil: none).
func (d *decoder) loginThrottle(s *loginThrottleSchema) *LoginThrottle {
	t := &LoginThrottle{
		AddressFailures: DefaultThrottleAddressFailures, NameFailures: DefaultThrottleNameFailures,
		Window: DefaultThrottleWindow, Lockout: DefaultThrottleLockout,
		Delay: DefaultThrottleDelay, MaxDelay: DefaultThrottleMaxDelay,
	}
	if s == nil {
		return t
	}
	enabled := d.boolean(s.Enabled, true)
	t.AddressFailures = d.integer(s.AddressFailures, DefaultThrottleAddressFailures, 0, 1<<20)
	t.NameFailures = d.integer(s.NameFailures, DefaultThrottleNameFailures, 0, 1<<20)
	t.Window = d.duration(s.Window, DefaultThrottleWindow, false)
	t.Lockout = d.duration(s.Lockout, DefaultThrottleLockout, false)
	t.Delay = d.duration(s.Delay, DefaultThrottleDelay, true)
	t.MaxDelay = d.duration(s.MaxDelay, max(DefaultThrottleMaxDelay, t.Delay), true)
	if t.MaxDelay < t.Delay {
		d.errorf(s.MaxDelay.Expr.Range(), "Invalid duration", "max_delay (%s) must not be shorter than delay (%s).", t.MaxDelay, t.Delay)
	}
	t.Allow = d.prefixes(s.Allow, "Invalid allowed address", "10.0.0.0/8")
	if !enabled {
		return nil
	}
	if t.AddressFailures == 0 && t.NameFailures == 0 {
		d.warnf(s.DefRange, "Login throttle without limits",
			"address_failures and name_failures are both 0, so no login is ever refused; write enabled = false to say so, or set a limit.")
	}
	return t
}
