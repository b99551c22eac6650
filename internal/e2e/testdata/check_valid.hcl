# A valid configuration: `popgate check` exits 0.
listener "pop3" {
  address  = "127.0.0.1:1110"
  upstream = "mail"
}

listener "backup" {
  address                = "127.0.0.1:1111"
  upstream               = "mail"
  max_connections        = 10
  max_connections_per_ip = 2
  login_timeout          = "30s"
  idle_timeout           = "10m"
}

upstream "mail" {
  address = "127.0.0.1:110"
  tls     = "none"
}

log {
  level  = "info"
  format = "json"
}

shutdown_timeout = "5s"
