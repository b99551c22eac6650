# demo.hcl — the configuration `popgate demo` runs with (embedded in the
# binary). The demo starts a small built-in POP3 server on 127.0.0.1:1111 with
# a sample mailbox, and popgate in front of it on 127.0.0.1:1110.

# Clients connect here. Plain POP3, no TLS: it listens on loopback only.
listener "pop3" {
  address  = "127.0.0.1:1110" # where popgate accepts clients
  upstream = "demo"           # every session is relayed to the upstream below
}

# The built-in demo POP3 server; `popgate demo` starts it on this address.
upstream "demo" {
  address = "127.0.0.1:1111" # host:port of the POP3 server
  tls     = "none"           # the demo server speaks plain POP3 on loopback
}

# Human-readable logs on standard error, one line per event.
log {
  level  = "info"    # debug | info | warn | error
  format = "console" # console for people, json for log collectors
}
