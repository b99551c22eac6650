# Mistakes in scanners, filters and policies, each reported where it is.
listener "pop3" {
  address  = "127.0.0.1:1110"
  upstream = "mail"
}

upstream "mail" {
  address = "127.0.0.1:110"
}

scanner "sophos" "s" {
}

filter "virusscan" "v" {
}

filter "strip" "dangerous" {
  extensions = ["exe"]
}

filter "strip" "dangerous" {
  extensions = ["scr"]
}

filter "strip" "spare" {
  extensions = ["js"]
}

policy "default" {
  chain = ["dangerous", "missing", "dangerous", 42, "v"]
}

policy "default" {
  chain = []
}
