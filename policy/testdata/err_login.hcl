# Login settings: TLS requirements that cannot be met, throttle mistakes.
listener "no-tls" {
  address            = "127.0.0.1:1110"
  upstream           = "plain"
  login_requires_tls = true
  login_throttle {
    address_failures = -1
    name_failures    = 0
    window           = "0s"
    delay            = "4s"
    max_delay        = "1s"
    allow            = ["10.0.0.0/33"]
  }
  login_throttle {
    enabled = false
  }
}

listener "exempt-only" {
  address              = "127.0.0.1:1111"
  upstream             = "plain"
  plaintext_login_from = ["10.0.0.0/8", "not-an-address"]
  login_throttle {
    address_failures = 0
    name_failures    = 0
  }
}

upstream "plain" {
  address            = "127.0.0.1:110"
  login_requires_tls = true
}
