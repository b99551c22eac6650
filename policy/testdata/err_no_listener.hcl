# Upstreams alone do nothing.
upstream "mail" {
  address = "127.0.0.1:110"
}
