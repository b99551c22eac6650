# Unknown attributes and blocks, wrong labels, repeated single blocks.
listen "pop3" {
  address = "127.0.0.1:1110"
}

listener "pop3" {
  adress   = "127.0.0.1:1110"
  upstream = "mail"
  tls = "implicit"
  proxy_protocl {
  }
}

listener {
  address = "127.0.0.1:1111"
}

upstream "mail" {
  address = "127.0.0.1:110"
  tls {
  }
}

filter "strip" {
}

log {
  level = "info"
}

log {
  level = "debug"
}

colour = "blue"
