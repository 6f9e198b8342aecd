"""Keys and tokens for tests/auth.rs, made with PyJWT and cryptography: independent of the Rust JWT code in Sluice.

    python jwt_tool.py keys DIR   generate private keys rsa-1, rsa-2 (RSA 2048), ec (P-256) and ed (Ed25519) in DIR,
                                  their public JWKS files (rsa.jwks.json holds both RSA keys; ec.jwks.json,
                                  ed.jwks.json; rsa-1.jwks.json holds rsa-1 alone) and rsa-1.pub.pem
    python jwt_tool.py mint DIR   read a JSON array of token specs on stdin, print a JSON array of tokens

A token spec is {"claims": {...}} plus one of
    "key": "rsa-1" | "rsa-2" | "ec" | "ed", "alg": "RS256", "kid": "rsa-1" (optional)   signed with a key in DIR
    "secret": "...", "alg": "HS256"                                                      signed with an HMAC secret
    "unsigned": true                                                                     alg "none", no signature
    "hmac_with_public_pem": "rsa-1"      HS256 "signed" with the RSA public key's PEM as the HMAC secret (algorithm
                                         confusion; PyJWT refuses to do it, so it is put together by hand here)
"""

import base64
import hashlib
import hmac
import json
import os
import sys

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

PRIVATE = {
    "rsa-1": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "rsa-2": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "ec": lambda: ec.generate_private_key(ec.SECP256R1()),
    "ed": lambda: ed25519.Ed25519PrivateKey.generate(),
}
JWK_OF = {"rsa-1": RSAAlgorithm, "rsa-2": RSAAlgorithm, "ec": ECAlgorithm, "ed": OKPAlgorithm}
SETS = {"rsa": ["rsa-1", "rsa-2"], "rsa-1": ["rsa-1"], "ec": ["ec"], "ed": ["ed"]}


def pem_path(directory, name):
    return os.path.join(directory, name + ".pem")


def keys(directory):
    os.makedirs(directory, exist_ok=True)
    public = {}
    for name, make in PRIVATE.items():
        key = make()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        with open(pem_path(directory, name), "wb") as f:
            f.write(pem)
        jwk = json.loads(JWK_OF[name].to_jwk(key.public_key()))
        jwk["kid"] = name
        public[name] = jwk
        if name == "rsa-1":
            with open(os.path.join(directory, "rsa-1.pub.pem"), "wb") as f:
                f.write(
                    key.public_key().public_bytes(
                        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                    )
                )
    for set_name, members in SETS.items():
        with open(os.path.join(directory, set_name + ".jwks.json"), "w") as f:
            json.dump({"keys": [public[m] for m in members]}, f)


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def mint_one(directory, spec):
    claims = spec["claims"]
    if spec.get("unsigned"):
        return jwt.encode(claims, None, algorithm="none")
    if "hmac_with_public_pem" in spec:
        with open(os.path.join(directory, spec["hmac_with_public_pem"] + ".pub.pem"), "rb") as f:
            secret = f.read()
        header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        payload = b64url(json.dumps(claims).encode())
        signing_input = (header + "." + payload).encode()
        return header + "." + payload + "." + b64url(hmac.new(secret, signing_input, hashlib.sha256).digest())
    headers = {"kid": spec["kid"]} if spec.get("kid") else None
    if "secret" in spec:
        return jwt.encode(claims, spec["secret"], algorithm=spec["alg"], headers=headers)
    with open(pem_path(directory, spec["key"]), "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password=None)
    return jwt.encode(claims, key, algorithm=spec["alg"], headers=headers)


def main():
    command, directory = sys.argv[1], sys.argv[2]
    if command == "keys":
        keys(directory)
    elif command == "mint":
        specs = json.load(sys.stdin)
        json.dump([mint_one(directory, s) for s in specs], sys.stdout)
    else:
        sys.exit("usage: jwt_tool.py keys|mint DIR")


if __name__ == "__main__":
    main()
