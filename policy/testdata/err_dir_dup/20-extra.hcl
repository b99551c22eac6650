# A second file that repeats names of the first.
upstream "mail" {
  address = "127.0.0.1:111"
}

log {
  level = "debug"
}

policy "default" {
  chain = []
}

quarantine {
  dir = "/srv/quarantine"
}
