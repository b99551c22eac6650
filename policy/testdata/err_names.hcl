listener "pop3" {
  address  = "127.0.0.1:1110"
  upstream = "mail"
}

listener "pop3" {
  address  = "127.0.0.1:1111"
  upstream = "mail"
}

upstream "mail" {
  address = "127.0.0.1:110"
}

upstream "mail" {
  address = "127.0.0.1:111"
}

upstream "bad name" {
  address = "127.0.0.1:112"
}
