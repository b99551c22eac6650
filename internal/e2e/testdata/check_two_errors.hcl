# Two mistakes: `popgate check` must report both, each as file:line:col.
listener "pop3" {
  address      = "127.0.0.1:1110"
  upstream     = "mail"
  idle_timeout = "ten minutes"
}

upstream "mail" {
  address = "127.0.0.1:110"
  tls     = "ssl"
}
