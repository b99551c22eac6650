listener "pop3" {
  address       = "127.0.0.1:1110"
  upstream      = "mail"
  login_routing = ["mail", "elsewhere"]
}

upstream "mail" {
  address = "127.0.0.1:110"
}

route {
  users        = ["[x"]
  destinations = ["192.0.2.300"]
  listeners    = ["nope"]
  upstream     = "missing"
}

route {
  upstream = "mail"
}

route {
  domains = ["example.com"]
}
