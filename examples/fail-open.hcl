# fail-open.hcl — for sites that prefer getting their mail to being safe.
#
# popgate's defaults fail closed: when it cannot decide about a message (clamd
# down or too slow, a message too large to scan) the client gets
# -ERR [SYS/TEMP], keeps the message on the server and retries later. Some
# sites would rather have the mail now. This file delivers such messages
# anyway, marked with a header, so users and mail rules can tell:
#
#   X-Popgate-Warning: not filtered: av: <why>                  (on_error = "pass")
#   X-Popgate-Warning: not scanned: too large (N bytes > max_size M)   (oversize)
#
# The trade-off is real: while clamd is down, viruses reach the users. And if
# the quarantine cannot store an original (disk full), a message the strip
# filter changed is delivered as its unchanged original, with
#   X-Popgate-Warning: not filtered: quarantine: <why>
# What still holds: a filter that fails is skipped, the others still run (a
# dead scanner does not let an .exe through the strip filter), and a message
# a filter rejects is still withheld (deferred if its original cannot be
# quarantined), never delivered.
#
# This file needs no certificate: clients speak plain POP3 to popgate on the
# local network, and popgate reaches the provider with implicit TLS checked
# against the system roots.

listener "pop3" {
  address  = "0.0.0.0:110"
  upstream = "provider"
}

upstream "provider" {
  address = "pop.provider.example:995"
  tls     = "implicit" # certificate checked against the system roots, name from the address
}

# One local clamd. With fail-open the policy no longer waits for it to come
# back, so a short timeout keeps downloads moving when it hangs.
scanner "clamav" "local" {
  addresses = ["unix:///run/clamav/clamd.ctl", "tcp://127.0.0.1:3310"] # shared round-robin; a scan is retried on the other if one fails
  timeout   = "20s"
  max_size  = "25MB"
}

filter "clamav" "av" {
  scanner  = "local"
  oversize = "pass-with-tag" # too large to scan: delivered with X-Popgate-Warning
}

filter "strip" "dangerous" {
  extensions = ["exe", "scr", "com", "pif", "bat", "cmd", "js", "vbs", "docm", "xlsm"]
  on_limit   = "pass" # a message beyond the MIME caps (nesting, part count) is delivered unexamined
}

# Every delivered message carries the verdicts, so a user (or a mail rule)
# can see "av=error" on a message that was not scanned.
filter "tag" "stamp" {
  verdicts = true # X-Popgate-Verdict: av=pass (clean); dangerous=pass
}

# A message a filter changes or withholds has its original kept here first.
quarantine {
  dir = "/var/lib/popgate/quarantine"
}

policy "default" {
  chain    = ["av", "dangerous", "stamp"]
  on_error = "pass"   # a filter that cannot decide is skipped; the message gets X-Popgate-Warning
  rejected = "notice" # a virus is still withheld: the client gets a notice naming its quarantine id
}
