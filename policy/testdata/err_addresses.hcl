listener "a" {
  address  = "127.0.0.1"
  upstream = "no-port"
}

listener "b" {
  address  = "127.0.0.1:pop3"
  upstream = "no-port"
}

listener "c" {
  address  = "127.0.0.1:1110"
  upstream = "no-port"
}

listener "d" {
  address  = "127.0.0.1:1110"
  upstream = "no-port"
}

upstream "no-port" {
  address = "mail.example.com"
}

upstream "port-zero" {
  address = "mail.example.com:0"
}

upstream "no-host" {
  address = ":110"
}

upstream "big-port" {
  address = "mail.example.com:70000"
}

upstream "missing" {
  tls = "none"
}
