package rspamd

import (
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/internal/hcldecode"
)

func init() {
	filters.RegisterScanner("rspamd", filters.ScannerKind[Config]{Decode: decodeScanner, Build: filters.BuildScanner(NewScanner)})
}

// Bounds of the scanner block's settings.
const (
	minPolicyDuration = time.Second
	maxPolicyDuration = time.Hour
	// rspamd's own default limit (options max_message) is 50 MiB; its
	// administrator may raise it, popgate holds no message above 2 GiB.
	maxPolicySize = 2 << 30
)

// scannerBlock is the body of `scanner "rspamd" "NAME" { … }`.
type scannerBlock struct {
	Addresses          *hcl.Attribute `hcl:"addresses"`
	Timeout            *hcl.Attribute `hcl:"timeout,optional"`
	MaxSize            *hcl.Attribute `hcl:"max_size,optional"`
	Password           *hcl.Attribute `hcl:"password,optional"`
	Controller         *hcl.Attribute `hcl:"controller,optional"`
	ControllerPassword *hcl.Attribute `hcl:"controller_password,optional"`
	HealthInterval     *hcl.Attribute `hcl:"health_interval,optional"`
}

// DecodeConfig decodes and checks the body of an rspamd scanner block.
func DecodeConfig(body hcl.Body, eval *hcl.EvalContext) (Config, hcl.Diagnostics) {
	var blk scannerBlock
	diags := gohcl.DecodeBody(body, eval, &blk)
	if diags.HasErrors() {
		return Config{}, diags
	}
	d := &hcldecode.Decoder{Eval: eval}
	if blk.Addresses == nil {
		d.Missing(body, "addresses", `addresses = ["http://127.0.0.1:11333"]`)
		return Config{}, append(diags, d.Diags...)
	}
	var cfg Config
	cfg.Addresses = d.Addresses(blk.Addresses, "rspamd", `"http://127.0.0.1:11333"`, ParseAddress)
	cfg.Timeout = d.Duration(blk.Timeout, DefaultTimeout, minPolicyDuration, maxPolicyDuration)
	cfg.MaxSize = d.Size(blk.MaxSize, DefaultMaxSize, maxPolicySize, "2GiB")
	cfg.HealthInterval = d.Duration(blk.HealthInterval, DefaultHealthInterval, minPolicyDuration, maxPolicyDuration)
	cfg.Password, _ = d.Str(blk.Password)
	if c, ok := d.Str(blk.Controller); ok {
		if _, err := ParseAddress(c); err != nil {
			d.Errorf(blk.Controller.Expr.Range(), "Invalid rspamd controller address", "%s.", err)
		}
		cfg.Controller = c
	}
	cfg.ControllerPassword, _ = d.Str(blk.ControllerPassword)
	switch {
	case blk.ControllerPassword != nil && blk.Controller == nil:
		d.Errorf(blk.ControllerPassword.Expr.Range(), "Password without a controller",
			`controller_password is for the controller that learns; name it with controller = "http://127.0.0.1:11334", or remove the password.`)
	case blk.Controller != nil && cfg.ControllerPassword == "" && !d.Diags.HasErrors():
		d.Diags = append(d.Diags, filters.Diagnostic(hcl.DiagWarning, blk.Controller.Expr.Range(), "Controller without a password",
			"rspamd's controller wants its password (or enable_password) to learn from any address not in its secure_ip; set controller_password, e.g. controller_password = env(\"RSPAMD_PASSWORD\")."))
	}
	return cfg, append(diags, d.Diags...)
}

// decodeScanner is the rspamd scanner kind's decode step.
func decodeScanner(_ string, body hcl.Body, dc *filters.DecodeContext) (Config, hcl.Diagnostics) {
	return DecodeConfig(body, dc.Eval)
}
