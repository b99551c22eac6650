# Several certificates per listener (SNI), and an upstream client
# certificate.

listener "hosting" {
  address  = "127.0.0.1:0"
  upstream = "mtls"
  tls {
    implicit = true
    certificate {
      cert_file = env("POPGATE_TEST_CERT")
      key_file  = env("POPGATE_TEST_KEY")
    }
    certificate {
      cert_file = env("POPGATE_TEST_SNI_CERT")
      key_file  = env("POPGATE_TEST_SNI_KEY")
    }
  }
}

listener "mixed" {
  address  = "127.0.0.1:0"
  upstream = "mtls"
  tls {
    cert_file = env("POPGATE_TEST_NONAME_CERT")
    key_file  = env("POPGATE_TEST_NONAME_KEY")
    certificate {
      cert_file = env("POPGATE_TEST_SNI_CERT")
      key_file  = env("POPGATE_TEST_SNI_KEY")
    }
  }
}

upstream "mtls" {
  address   = "pop.example.com:995"
  tls       = "implicit"
  ca_file   = env("POPGATE_TEST_CA")
  cert_file = env("POPGATE_TEST_CERT")
  key_file  = env("POPGATE_TEST_KEY")
}
