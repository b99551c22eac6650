# Mistakes in the signed and encrypted settings.
listener "pop3" {
  address  = "127.0.0.1:1110"
  upstream = "mail"
}

upstream "mail" {
  address = "127.0.0.1:110"
}

filter "strip" "attachments" {
  extensions = ["exe"]
  signed     = "ignore"
}

filter "tag" "stamp" {
  headers = { "X-Scanned" = "yes" }
  signed  = 1
}

filter "tag" "encrypted" {
  headers = { "X-Encrypted" = "maybe" }
}

policy "default" {
  chain     = ["attachments"]
  encrypted = "pass"
}

policy "headers" {
  chain     = ["stamp"]
  encrypted = "reject"
  match {
    domains = ["lab.example.com"]
  }
}

quarantine {
  dir = "/var/lib/popgate/quarantine"
}
