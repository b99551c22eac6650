# minimal.hcl — the smallest complete popgate configuration (docs/ARCHITECTURE.md §2):
# one listener, one upstream, a clamd scanner, three filters, a quarantine and
# the policy that chains the filters.
listener "pop3" {
  address  = "127.0.0.1:1110"
  upstream = "mail"                   # where sessions go unless a route says otherwise
  # tls {                             # optional: offers STLS; implicit = true for 995-style
  #   cert_file = "/etc/popgate/cert.pem"
  #   key_file  = "/etc/popgate/key.pem"
  # }
  #
  # The tls block above is commented out only because popgate checks, when it
  # loads a configuration, that the certificate and key files exist and match;
  # this example must load on any machine. Uncomment it once the files exist.
  # examples/tls.hcl shows TLS in full.
}
upstream "mail" {
  address = "127.0.0.1:110"
  tls     = "none"                    # none | starttls | implicit
  # ca_file = "...", server_name = "..."
}
scanner "clamav" "local" {
  addresses = ["tcp://127.0.0.1:3310"]
  timeout   = "30s"
  max_size  = "25MB"
}
filter "clamav" "av" {
  scanner = "local"
}
filter "strip" "dangerous" {
  extensions = ["exe", "scr", "js", "vbs", "bat", "cmd", "com", "pif", "docm", "xlsm"]
}
filter "tag" "stamp" {
  headers = { "X-Popgate-Scanned" = "yes" }
}
quarantine {
  dir = "/var/lib/popgate/quarantine"
}
policy "default" {
  chain    = ["av", "dangerous", "stamp"]
  on_error = "tempfail"                # tempfail | pass | reject
}
