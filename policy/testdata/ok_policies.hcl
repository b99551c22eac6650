# Which policy applies: the first policy with a matching match block, in
# file order; else the one without a match block (the default).
listener "office" {
  address  = "127.0.0.1:1110"
  upstream = "mail"
}

listener "public" {
  address  = "127.0.0.1:1111"
  upstream = "mail"
}

upstream "mail" {
  address = "127.0.0.1:110"
}

filter "strip" "dangerous" {
  extensions = ["exe"]
}

filter "tag" "stamp" {
  headers = { "X-Scanned" = "yes" }
}

policy "default" {
  chain = ["dangerous", "stamp"]
}

policy "executives" {
  chain = ["stamp"]
  match {
    users = ["ceo@example.com", "cfo@*"]
  }
}

policy "lab" {
  chain = []
  match {
    domains   = ["lab.example.com", "*.test"]
    clients   = ["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"]
    listeners = ["office"]
  }
}
