upstream "mail" {
  address = "127.0.0.1:110"
}

shutdown_timeout = "5s"
