# Numbers too large or too small to be settings are refused before anything
# is evaluated, wherever they are.
listener "pop3" {
  address         = "127.0.0.1:1110"
  upstream        = "mail"
  max_connections = 1e9999999
}

upstream "mail" {
  address     = "127.0.0.1:110"
  server_name = "${-2.5e-400000}"
}

filter "tag" "big" {
  limit = 1e309
  fine  = 1e308
}
