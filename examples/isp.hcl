# isp.hcl — an ISP or hoster front end: one popgate for many domains, each
# user routed to the mailbox server that holds their mail, with per-domain
# filtering policies.
#
# Users log in with their full address ("bob@example.com"). route blocks pick
# the mailbox server from the login; policy blocks with a match block pick
# what is done to the mail; everybody else gets the default policy.
#
# Because the mailbox server is known only once the client has said who it
# is, popgate greets clients itself ("+OK popgate ready") on these listeners
# and connects upstream on USER, AUTH PLAIN or AUTH LOGIN. APOP and other SASL
# mechanisms are refused here: their proof is bound to the server's own
# greeting or challenge, which the client has not seen.
#
# The listener certificate comes from environment variables, with the usual
# locations as defaults (as in examples/tls.hcl):
#   POPGATE_TLS_CERT  PEM certificate chain popgate shows to clients
#   POPGATE_TLS_KEY   PEM private key of that certificate
# On a machine without these files `popgate check` reports "File not found".

# --- Listeners ----------------------------------------------------------------

# POP3 with STLS on 110.
listener "pop3" {
  address  = "0.0.0.0:110"
  upstream = "store1" # logins that no route claims go here
  tls {
    cert_file = env("POPGATE_TLS_CERT", "/etc/popgate/cert.pem")
    key_file  = env("POPGATE_TLS_KEY", "/etc/popgate/key.pem")
  }
  max_connections        = 20000
  max_connections_per_ip = 100 # carrier-grade NAT puts many users behind one address

  # Support staff can reach a user's mail on a given server with a login such
  # as "bob@example.com#store2" (sent to store2 as "bob@example.com"). Only
  # the upstream blocks listed here can be picked this way — never an
  # arbitrary host, so popgate cannot be used as an open relay; a "#NAME"
  # suffix naming anything else is refused.
  login_routing = ["store1", "store2", "store3"]

  # The HAProxy pair in front of the popgate fleet (examples/haproxy.cfg)
  # sends PROXY v2 headers: logs, per-IP limits and policies see the real
  # client. Direct clients from elsewhere are still served as they are.
  proxy_protocol {
    trusted = ["10.20.0.2", "10.20.0.3"]
  }
}

# POP3S on 995: the same users, the same routes.
listener "pop3s" {
  address  = "0.0.0.0:995"
  upstream = "store1"
  tls {
    cert_file = env("POPGATE_TLS_CERT", "/etc/popgate/cert.pem")
    key_file  = env("POPGATE_TLS_KEY", "/etc/popgate/key.pem")
    implicit  = true
  }
  max_connections        = 20000
  max_connections_per_ip = 100
  proxy_protocol {
    trusted = ["10.20.0.2", "10.20.0.3"]
  }
}

# --- Mailbox servers ----------------------------------------------------------

# The mailbox servers sit on the ISP's private backend network and speak plain
# POP3 there; clients' passwords are protected by TLS up to popgate.
upstream "store1" {
  address         = "10.20.0.11:110"
  tls             = "none"
  connect_timeout = "3s"
}

upstream "store2" {
  address         = "10.20.0.12:110"
  tls             = "none"
  connect_timeout = "3s"
}

upstream "store3" {
  address         = "10.20.0.13:110"
  tls             = "none"
  connect_timeout = "3s"
}

# A reseller's server across the internet: STLS, certificate checked against
# the system roots (no ca_file), name taken from the address.
upstream "reseller" {
  address = "pop.reseller.example:110"
  tls     = "starttls"
}

# --- Routes -------------------------------------------------------------------
# Tried in file order; the first route whose attributes all match picks the
# upstream (alternatives within one attribute: any may match). Globs are
# case-insensitive; "*.example.com" matches subdomains but not example.com
# itself, so list both. Put exceptions before the general rules.

# A few mailboxes of example.com were moved to the new server.
route {
  users    = ["ceo@example.com", "board-*@example.com"]
  upstream = "store3"
}

route {
  domains  = ["example.com", "*.example.com"]
  upstream = "store1"
}

route {
  domains  = ["example.org", "example.net", "*.example.net"]
  upstream = "store2"
}

# The reseller's customers may use only the STLS listener.
route {
  domains   = ["reseller-customer.example"]
  listeners = ["pop3"]
  upstream  = "reseller"
}

# --- Scanning and filters -----------------------------------------------------

scanner "clamav" "farm" {
  addresses      = ["tcp://10.20.1.21:3310", "tcp://10.20.1.22:3310", "tcp://10.20.1.23:3310"]
  timeout        = "60s"
  max_size       = "25MB"
  max_concurrent = 256 # many sessions download at once
}

filter "clamav" "av" {
  scanner = "farm"
}

# Business customers: no programs, no macros, nothing hidden in zips.
filter "strip" "strict" {
  rule "programs" {
    extensions = ["exe", "scr", "com", "pif", "bat", "cmd", "js", "vbs", "hta", "msi", "lnk", "ps1"]
  }
  rule "macros" {
    extensions = ["docm", "xlsm", "pptm"]
  }
  rule "zipped-programs" {
    archive_filenames  = ["*.exe", "*.scr", "*.js", "*.vbs"]
    encrypted_archives = true
    action             = "quarantine" # withhold the whole message
  }
}

# Everybody else: the short form (the attributes directly in the block make
# one rule, named like the filter).
filter "strip" "basic" {
  extensions = ["exe", "scr", "com", "pif", "bat", "cmd", "js", "vbs"]
}

filter "tag" "stamp" {
  headers = { "X-Virus-Scanned" = "popgate" }
}

# example.org wants its users to see which messages were scanned.
filter "tag" "subject" {
  subject_prefix = "[scanned]" # the original Subject is kept in X-Popgate-Original-Subject
  verdicts       = true
}

quarantine {
  dir = "/var/lib/popgate/quarantine"
}

# --- Policies -----------------------------------------------------------------
# The first policy whose match block matches, in file order, applies; a login
# that none matches gets the policy without a match block (the default). The
# policy is chosen once the mailbox server accepted the login.

# Business domains.
policy "business" {
  match {
    domains = ["example.com", "*.example.com", "example.net", "*.example.net"]
  }
  chain    = ["av", "strict", "stamp"]
  on_error = "tempfail"
}

policy "example-org" {
  match {
    domains = ["example.org"]
  }
  chain = ["av", "basic", "subject"]
}

# The ISP's own help desk, from its office network, reads mail unfiltered
# (e.g. to look at a message a customer reported).
policy "helpdesk" {
  match {
    users   = ["helpdesk-*@isp.example"]
    clients = ["203.0.113.0/24", "2001:db8:100::/48"]
  }
  chain = []
}

# Everybody else. Without a default, a login no policy matches would be
# refused with -ERR [SYS/PERM].
policy "default" {
  chain    = ["av", "basic", "stamp"]
  on_error = "tempfail"
}

# Prometheus metrics, /healthz and /readyz for the balancers' health checks,
# on the management network only.
metrics {
  address = "10.20.0.21:9110"
}
