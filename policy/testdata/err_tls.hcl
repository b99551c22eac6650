listener "no-key" {
  address  = "127.0.0.1:1110"
  upstream = "verified"
  tls {
    cert_file = env("POPGATE_TEST_CERT")
  }
}

listener "missing-files" {
  address  = "127.0.0.1:1111"
  upstream = "verified"
  tls {
    cert_file = "does-not-exist/cert.pem"
    key_file  = "/does-not-exist/key.pem"
  }
}

listener "junk" {
  address  = "127.0.0.1:1112"
  upstream = "verified"
  tls {
    cert_file = "files/junk.pem"
    key_file  = "files"
  }
}

listener "mismatch" {
  address  = "127.0.0.1:1113"
  upstream = "verified"
  tls {
    cert_file = env("POPGATE_TEST_CERT")
    key_file  = env("POPGATE_TEST_OTHER_KEY")
    implicit  = "yes"
  }
}

listener "empty" {
  address  = "127.0.0.1:1114"
  upstream = "verified"
  tls {
    cert_file = ""
    key_file  = env("POPGATE_TEST_KEY")
  }
  tls {
    cert_file = env("POPGATE_TEST_CERT")
    key_file  = env("POPGATE_TEST_KEY")
  }
}

upstream "verified" {
  address = "127.0.0.1:995"
  tls     = "implicit"
  ca_file = "files/missing-ca.pem"
}

upstream "junk-ca" {
  address = "127.0.0.1:996"
  tls     = "starttls"
  ca_file = "files/junk.pem"
}

upstream "unverified" {
  address    = "127.0.0.1:997"
  tls        = "starttls"
  tls_verify = false
}

upstream "plain" {
  address     = "127.0.0.1:110"
  ca_file     = env("POPGATE_TEST_CA")
  server_name = "pop.example.com"
  tls_verify  = false
}

listener "sni" {
  address  = "127.0.0.1:1115"
  upstream = "verified"
  tls {
    certificate {
      cert_file = env("POPGATE_TEST_SNI_CERT")
    }
    certificate {
      cert_file = env("POPGATE_TEST_SNI_CERT")
      key_file  = env("POPGATE_TEST_KEY")
    }
    certificate {
      cert_file = env("POPGATE_TEST_NONAME_CERT")
      key_file  = env("POPGATE_TEST_NONAME_KEY")
    }
  }
}

listener "no-certificate" {
  address  = "127.0.0.1:1116"
  upstream = "verified"
  tls {
    implicit = true
  }
}

upstream "half-client-cert" {
  address   = "127.0.0.1:998"
  tls       = "implicit"
  cert_file = env("POPGATE_TEST_CERT")
}

upstream "plain-client-cert" {
  address   = "127.0.0.1:999"
  cert_file = env("POPGATE_TEST_CERT")
  key_file  = env("POPGATE_TEST_KEY")
}
