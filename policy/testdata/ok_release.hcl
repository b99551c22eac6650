# Release, retention and notification: a delivery per upstream, links, digests.
listener "pop3" {
  address  = "127.0.0.1:1110"
  upstream = "mail"
}

delivery "lmtp" {
  address  = "127.0.0.1:24"
  protocol = "lmtp"
}

delivery "relay" {
  address  = "127.0.0.1:25"
  tls      = "starttls"
  username = "popgate"
  password = "secret"
  timeout  = "30s"
}

upstream "mail" {
  address = "127.0.0.1:110"
  release {
    via       = "lmtp"
    recipient = "%n@example.com"
  }
}

scanner "clamav" "clam" {
  addresses = ["tcp://127.0.0.1:3310"]
}

filter "clamav" "av" {
  scanner = "clam"
}

filter "strip" "attachments" {
  extensions = ["exe"]
  release    = "admin"
}

policy "default" {
  chain = ["av", "attachments"]
}

quarantine {
  dir       = "/var/lib/popgate/quarantine"
  retention = "14d"
  release {
    link_url = "https://mailgw.example.com:9443/"
    link_ttl = "3d"
  }
}

notify {
  via            = "relay"
  admin          = ["postmaster@example.com"]
  admin_interval = "1h"
  user_digest    = "24h"
}

metrics {
  address = "127.0.0.1:9110"
}
