listener "typo" {
  address  = "127.0.0.1:1110"
  upstream = "mial"
}

listener "none" {
  address = "127.0.0.1:1111"
}

listener "transparent" {
  address     = "127.0.0.1:1112"
  transparent = true
}

upstream "mail" {
  address = "127.0.0.1:110"
}

upstream "backup" {
  address = "127.0.0.1:111"
}
