# demo.hcl — the configuration `popgate demo` runs with (embedded in the
# binary). The demo starts a small built-in POP3 server on 127.0.0.1:1111 with
# a sample mailbox, and popgate in front of it on 127.0.0.1:1110, scanning,
# stripping and tagging every message it delivers.

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

# Virus scanning with clamd. Unless POPGATE_DEMO_CLAMD names one, `popgate
# demo` starts a clamd of its own (/usr/sbin/clamd, the EICAR-only signatures
# of examples/clamd, a unix socket in a temp dir) and sets POPGATE_DEMO_CLAMD
# to it. If none answers, the demo says so and runs the chain without "av"
# (a real proxy would defer every message instead: see on_error below).
scanner "clamav" "local" {
  addresses = [env("POPGATE_DEMO_CLAMD", "tcp://127.0.0.1:3310")]
  timeout   = "30s"
  max_size  = "25MB"
}

filter "clamav" "av" {
  scanner = "local" # the scanner block above
}

# Attachments that run code on the client are cut out and replaced by a
# short notice; the rest of the message stays byte for byte as it was.
filter "strip" "dangerous" {
  extensions = ["exe", "scr", "js", "vbs", "bat", "cmd", "com", "pif", "docm", "xlsm"]
}

# Every message popgate delivers says so, and what the filters found.
filter "tag" "stamp" {
  headers  = { "X-Popgate-Scanned" = "yes" }
  verdicts = true # X-Popgate-Verdict: av=pass (clean); dangerous=pass
}

# Originals of stripped or withheld messages are kept here first, fsynced,
# before anything else reaches the client: `popgate quarantine list -dir …`.
quarantine {
  dir = env("POPGATE_DEMO_QUARANTINE", "/tmp/popgate-demo-quarantine")
}

policy "default" {
  chain    = ["av", "dangerous", "stamp"] # in this order
  on_error = "tempfail"                   # a scanner failure: -ERR [SYS/TEMP], the client retries later
}
