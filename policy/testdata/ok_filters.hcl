# Scanners, filters, the quarantine, policies and routes are decoded: each
# filter type checks its own block, and so is the metrics block. A short idle
# timeout loads with a warning.
listener "pop3" {
  address      = "127.0.0.1:1110"
  upstream     = "mail"
  idle_timeout = "5m"
}

upstream "mail" {
  address = "127.0.0.1:110"
}

scanner "clamav" "local" {
  addresses = ["tcp://127.0.0.1:3310"]
}

filter "clamav" "av" {
  scanner  = "local"
  oversize = "reject"
}

filter "strip" "dangerous" {
  extensions = ["exe"]
}

quarantine {
  dir = "/var/lib/popgate/quarantine"
}

policy "default" {
  chain     = ["av", "dangerous"]
  on_error  = "pass"
  top       = "pass"
  keepalive = "15s"
  max_size  = "50MB"
  rejected  = "error"
}

route {
  domains  = ["example.com"]
  upstream = "mail"
}

metrics {
  address = "127.0.0.1:9100"
}
