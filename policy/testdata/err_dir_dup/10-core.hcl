listener "pop3" {
  address  = "127.0.0.1:1110"
  upstream = "mail"
}

upstream "mail" {
  address = "127.0.0.1:110"
}

log {
  format = "console"
}

quarantine {
  dir = "/var/lib/popgate/quarantine"
}
