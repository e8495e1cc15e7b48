#!/usr/bin/env python3
"""Mint JWTs for tests/access.rs with PyJWT (and generate key pairs with cryptography).

Usage:
  mint.py keygen ES256|EdDSA|RS256 DIR   writes DIR/private.pem and DIR/public.pem (PKCS#8 / SPKI)
  mint.py sign                     reads JSON lines on stdin, one token request each:
                                     {"alg": "HS256", "key": "<path>", "claims": {...},
                                      "headers": {...}}   ("headers" optional; alg "none"
                                                           takes no key)
                                   and prints one token per line, flushed.
Exits 0 on success, 2 on a usage error, 1 on anything else.
"""

import json
import os
import sys

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa


def keygen(alg, out):
    if alg == "ES256":
        key = ec.generate_private_key(ec.SECP256R1())
    elif alg == "EdDSA":
        key = ed25519.Ed25519PrivateKey.generate()
    elif alg == "RS256":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        print(f"keygen: unsupported algorithm {alg}", file=sys.stderr)
        sys.exit(2)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with open(os.path.join(out, "private.pem"), "wb") as f:
        f.write(private)
    with open(os.path.join(out, "public.pem"), "wb") as f:
        f.write(public)


def sign():
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        req = json.loads(line)
        alg = req["alg"]
        if alg == "none":
            key = None
        else:
            with open(req["key"], "rb") as f:
                key = f.read()
            if alg.startswith("HS"):
                key = key.rstrip()
        token = jwt.encode(req["claims"], key, algorithm=alg, headers=req.get("headers"))
        print(token, flush=True)


def main(argv):
    if len(argv) == 4 and argv[1] == "keygen":
        keygen(argv[2], argv[3])
    elif len(argv) == 2 and argv[1] == "sign":
        sign()
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv)
