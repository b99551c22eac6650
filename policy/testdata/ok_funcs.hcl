# env() and file() in values.
listener "pop3" {
  address  = env("POPGATE_TEST_ADDR")
  upstream = "mail"
}

listener "second" {
  address  = env("POPGATE_TEST_UNSET", "127.0.0.1:2111")
  upstream = "mail"
}

upstream "mail" {
  # file() is relative to this file's directory and drops the final newline.
  address     = file("files/addr.txt")
  tls         = "starttls"
  server_name = "${file("files/secret.txt")}.example.com"
}

log {
  # A variable set to the empty string counts as set.
  file = env("POPGATE_TEST_EMPTY", "/not/used")
}
