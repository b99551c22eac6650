# Routes: the first route that applies picks the upstream, else the
# listener's. login_routing lets a login pick one of the listed upstreams.
listener "pop3" {
  address       = "127.0.0.1:1110"
  upstream      = "mail1"
  login_routing = ["mail2", "mail3"]
}

listener "edge" {
  address     = "127.0.0.1:1111"
  upstream    = "mail1"
  transparent = true
}

upstream "mail1" {
  address = "127.0.0.1:2110"
}

upstream "mail2" {
  address = "127.0.0.1:2111"
}

upstream "mail3" {
  address = "127.0.0.1:2112"
}

route {
  domains   = ["*.example.com"]
  listeners = ["pop3"]
  upstream  = "mail2"
}

route {
  users    = ["vip@*"]
  upstream = "mail3"
}

route {
  destinations = ["192.0.2.10", "198.51.100.0/24"]
  upstream     = "mail2"
}

route {
  destinations = ["198.51.100.0/25", "203.0.113.0/24"] # 198.51.100.0/25: already taken by the route above
  upstream     = "mail3"
}
