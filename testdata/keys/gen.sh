#!/usr/bin/env bash
# Regenerates the test-only keys in this directory, one per supported
# algorithm and PEM encoding. They are public test fixtures: never use them
# for anything real. Tests use them so no test package pays for RSA-3072/4096
# generation under -race.
set -euo pipefail
cd "$(dirname "$0")"
openssl genrsa -traditional -out rsa2048-pkcs1.pem 2048 2>/dev/null
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:3072 -out rsa3072-pkcs8.pem 2>/dev/null
openssl genrsa -traditional -out rsa4096-pkcs1.pem 4096 2>/dev/null
openssl ecparam -name prime256v1 -genkey -noout -out p256-sec1.pem
openssl pkcs8 -topk8 -nocrypt -in p256-sec1.pem -out p256-pkcs8.pem
openssl ecparam -name secp384r1 -genkey -noout -out p384-sec1.pem
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-521 -out p521-pkcs8.pem
openssl genpkey -algorithm ED25519 -out ed25519-pkcs8.pem
openssl genrsa -traditional -out rsa1024-pkcs1.pem 1024 2>/dev/null   # unsupported size
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -aes-128-cbc -pass pass:test -out rsa2048-encrypted.pem 2>/dev/null
