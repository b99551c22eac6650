listener "pop3" {
  address  = env("POPGATE_TEST_UNSET")
  upstream = env("POPGATE_TEST_UNSET", "mail", "extra")
}

upstream "mail" {
  address     = file("files/nope.txt")
  server_name = file("files")
  ca_file     = upper("x")
  tls         = var.tls
}

log {
  file = env("")
}
