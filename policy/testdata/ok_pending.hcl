# Blocks of later versions load with one warning each, and so does a short
# idle timeout. Their insides are not checked yet.
listener "pop3" {
  address      = "127.0.0.1:1110"
  upstream     = "mail"
  idle_timeout = "5m"
}

upstream "mail" {
  address = "127.0.0.1:110"
}

scanner "clamav" "local" {
  addresses = ["tcp://127.0.0.1:3310"]
  anything  = goes.here
}

filter "strip" "dangerous" {
  extensions = ["exe"]
}

quarantine {
  dir = "/var/lib/popgate/quarantine"
}

policy "default" {
  chain = ["dangerous"]
}

route {
  domain   = "example.com"
  upstream = "mail"
}

route {
  user = "bob"
}

metrics {
  address = "127.0.0.1:9100"
}
