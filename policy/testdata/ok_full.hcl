# Every proxy-core setting, each away from its default.
shutdown_timeout = "1m30s"

listener "pop3s" {
  address                = "[::1]:995"
  upstream               = "store"
  max_connections        = 200
  max_connections_per_ip = 5
  login_timeout          = "20s"
  idle_timeout           = "1h"
  max_command_line       = 1024
  proxy_protocol {
    trusted = ["10.0.0.0/8", "2001:db8::7"]
    timeout = "2s"
  }
  login_throttle {
    address_failures = 20
    name_failures    = 0
    window           = "1h"
    lockout          = "30m"
    delay            = "500ms"
    max_delay        = "4s"
    allow            = ["192.0.2.0/24"]
  }
  tls {
    cert_file = env("POPGATE_TEST_CERT")
    key_file  = env("POPGATE_TEST_KEY")
    implicit  = true
  }
}

listener "gateway" {
  address     = ":0"
  transparent = true
  tproxy      = true
  login_throttle {
    enabled = false
  }
}

listener "stls" {
  address  = "127.0.0.1:0"
  upstream = "legacy"
  login_requires_tls   = true
  plaintext_login_from = ["10.0.0.0/8", "::1"]
  tls {
    cert_file = env("POPGATE_TEST_CERT")
    key_file  = env("POPGATE_TEST_KEY")
  }
}

upstream "store" {
  address         = "store.example.com:995"
  tls             = "implicit"
  ca_file         = env("POPGATE_TEST_CA")
  server_name     = "pop.example.com"
  connect_timeout = "3s"
  timeout         = "2m"
  max_status_line = 4096
  proxy_protocol  = "v2"
  login_requires_tls = true
}

upstream "legacy" {
  address = "[2001:db8::1]:110"
  tls     = "starttls"
}

log {
  level  = "debug"
  format = "console"
  file   = "/var/log/popgate.log"
}

spool {
  dir          = "files"
  memory_limit = "512KiB"
}
