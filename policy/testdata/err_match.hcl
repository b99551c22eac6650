listener "pop3" {
  address  = "127.0.0.1:1110"
  upstream = "mail"
}

upstream "mail" {
  address = "127.0.0.1:110"
}

policy "a" {
  match {
    users     = ["[bad"]
    clients   = ["10.0.0.0/33", "not-an-ip"]
    listeners = ["nope"]
    upstreams = ["gone"]
  }
}

policy "b" {
  match {
  }
}

policy "c" {
}

policy "d" {
}
