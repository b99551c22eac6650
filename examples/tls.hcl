# tls.hcl — TLS on both sides of popgate.
#
# Clients reach popgate with implicit TLS (POP3S, port 995 style) or with
# plain POP3 upgraded by STLS (port 110 style); popgate reaches its servers
# with STARTTLS (the POP3 STLS command) or implicit TLS.
#
# popgate checks at load time that the certificate, key and CA files exist and
# are valid. The paths come from environment variables, with the usual
# locations as defaults, so one file serves every machine:
#   POPGATE_TLS_CERT  PEM certificate chain for the listeners
#   POPGATE_TLS_KEY   PEM private key of that certificate
#   POPGATE_CA_FILE   PEM roots that signed the upstream servers' certificates

# POP3S: the TLS handshake comes first, before the POP3 greeting.
listener "pop3s" {
  address  = "0.0.0.0:995"
  upstream = "mailstore"
  tls {
    cert_file = env("POPGATE_TLS_CERT", "/etc/popgate/cert.pem")
    key_file  = env("POPGATE_TLS_KEY", "/etc/popgate/key.pem")
    implicit  = true
  }
  max_connections        = 5000
  max_connections_per_ip = 20
}

# Plain POP3 on 110, with STLS offered in CAPA (implicit defaults to false).
listener "pop3" {
  address  = "0.0.0.0:110"
  upstream = "legacy"
  tls {
    cert_file = env("POPGATE_TLS_CERT", "/etc/popgate/cert.pem")
    key_file  = env("POPGATE_TLS_KEY", "/etc/popgate/key.pem")
  }
  login_timeout = "30s" # before USER/PASS or AUTH completes
  idle_timeout  = "10m" # after login; RFC 1939 §3 asks for at least 10 minutes
}

# The mail store answers POP3S; its certificate is signed by an internal CA.
upstream "mailstore" {
  address         = "mailstore.internal:995"
  tls             = "implicit"
  ca_file         = env("POPGATE_CA_FILE", "/etc/popgate/internal-ca.pem")
  server_name     = "pop.example.com" # the name in the server's certificate
  connect_timeout = "5s"              # dialing and the TLS handshake
  timeout         = "2m"              # waiting for each response
}

# An older server: plain POP3 upgraded with STLS, certificate checked against
# the system roots (no ca_file).
upstream "legacy" {
  address = "legacy.example.com:110"
  tls     = "starttls"
}
