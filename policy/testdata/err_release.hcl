# Mistakes in release, delivery and notify blocks.
listener "pop3" {
  address  = "127.0.0.1:1110"
  upstream = "mail"
}

delivery "lmtp" {
  protocol = "lmtp2"
  username = "only-a-name"
}

upstream "mail" {
  address = "127.0.0.1:110"
  release {
    via       = "missing"
    recipient = "postmaster@example.com"
  }
}

filter "strip" "attachments" {
  extensions = ["exe"]
  release    = "anyone"
}

policy "default" {
  chain = ["attachments"]
}

quarantine {
  dir = "/var/lib/popgate/quarantine"
  release {
    link_url = "mailgw.example.com"
  }
}

notify {
  admin = ["not an address"]
}
