listener "pop3" {
  address = "127.0.0.1:1110"
  upstream = "mail
}
