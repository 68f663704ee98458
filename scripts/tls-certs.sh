#!/usr/bin/env bash
# Makes the certificates compose.yaml's TLS needs, with openssl, into ./secrets (or
# $DME_SECRETS_DIR):
#   ca.pem, ca-key.pem          a private CA (kept when it exists; every service trusts it)
#   nats.pem, nats-key.pem      the NATS server's certificate: nats, localhost, 127.0.0.1
#   gateway.pem, gateway-key.pem  the gateway's HTTPS certificate: localhost, 127.0.0.1
# Extra names or addresses given as arguments go into both certificates (the host separators on
# other machines dial, the name browsers use). A private CA suits one deployment; for a public
# gateway use a certificate from a public CA instead (DME_TLS_CERT and DME_TLS_KEY).
# Usage: scripts/tls-certs.sh [name-or-address ...]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out="${DME_SECRETS_DIR:-$root/secrets}"
# Days the certificates are valid: two years, below the 825 days some clients accept at most.
days=730
mkdir -p "$out"
umask 077

san() {
  local list="$1" name
  shift
  for name in "$@"; do
    if [[ "$name" =~ ^[0-9.]+$ || "$name" == *:* ]]; then
      list="$list,IP:$name"
    else
      list="$list,DNS:$name"
    fi
  done
  echo "$list"
}

if [[ ! -f "$out/ca.pem" ]]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -subj "/CN=dme CA" -keyout "$out/ca-key.pem" -out "$out/ca.pem" 2>/dev/null
fi

issue() {
  local name="$1" names="$2"
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=dme $name" \
    -keyout "$out/$name-key.pem" -out "$out/$name.csr" 2>/dev/null
  openssl x509 -req -in "$out/$name.csr" -CA "$out/ca.pem" -CAkey "$out/ca-key.pem" \
    -CAcreateserial -days "$days" -out "$out/$name.pem" \
    -extfile <(printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$names") 2>/dev/null
  rm -f "$out/$name.csr"
  echo "tls-certs: $out/$name.pem for $names"
}

issue nats "$(san DNS:nats,DNS:localhost,IP:127.0.0.1 "$@")"
issue gateway "$(san DNS:localhost,IP:127.0.0.1 "$@")"
# The containers read them as root; the CA's key stays private to its owner.
chmod 644 "$out/ca.pem" "$out"/nats*.pem "$out"/gateway*.pem
