# Bad sizes, durations, numbers and enumerations: every one is reported.
shutdown_timeout = "-1s"

listener "pop3" {
  address                = "127.0.0.1:1110"
  upstream               = "mail"
  max_connections        = 0
  max_connections_per_ip = 2.5
  login_timeout          = "0s"
  idle_timeout           = "10"
  max_command_line       = 10
  transparent            = "maybe"
  proxy_protocol {
    trusted = ["10.0.0.0/33", "lb.example.com"]
    timeout = "soon"
  }
}

listener "lb" {
  address  = "127.0.0.1:1111"
  upstream = "mail"
  tproxy   = true
  proxy_protocol {
    trusted = []
  }
}

upstream "mail" {
  address         = "127.0.0.1:110"
  tls             = "ssl"
  connect_timeout = "fast"
  timeout         = ["60s"]
  max_status_line = 100000
  proxy_protocol  = "v3"
}

log {
  level  = "verbose"
  format = "text"
}

spool {
  memory_limit = "25M"
}

upstream "nulls" {
  address = null
  tls     = null
}

metrics {
  address = "localhost"
}
