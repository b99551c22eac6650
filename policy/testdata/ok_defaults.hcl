# The smallest valid file: every other value takes its default.
listener "pop3" {
  address  = "127.0.0.1:1110"
  upstream = "mail"
}

upstream "mail" {
  address = "127.0.0.1:110"
}
