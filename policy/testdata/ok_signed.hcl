# Signed and encrypted mail: what a filter's change that would break a
# signature becomes (signed, on every filter block), and what happens to a
# message no filter can read (encrypted, on a policy whose chain reads
# content).
listener "pop3" {
  address  = "127.0.0.1:1110"
  upstream = "mail"
}

upstream "mail" {
  address = "127.0.0.1:110"
}

filter "strip" "attachments" {
  extensions = ["exe"]
  signed     = "withhold"
}

filter "tag" "spamtag" {
  subject_prefix = "[SPAM]"
  signed         = "keep"
  release        = "user"
}

filter "tag" "stamp" {
  headers = { "X-Scanned" = "yes" }
}

policy "default" {
  chain = ["attachments", "spamtag", "stamp"]
}

policy "strict" {
  chain     = ["attachments"]
  encrypted = "reject"
  match {
    domains = ["finance.example.com"]
  }
}

policy "headers" {
  chain = ["stamp"]
  match {
    domains = ["lab.example.com"]
  }
}

quarantine {
  dir = "/var/lib/popgate/quarantine"
}
