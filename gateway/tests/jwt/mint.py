#!/usr/bin/python3
"""Mints the JWTs the gateway tests check, with PyJWT + cryptography: an implementation
independent of the gateway's. Usage: mint.py OUT_DIR [ATTACKER_URL]. Writes the public keys,
an HMAC secret and JWKS documents into OUT_DIR and prints the tokens as one JSON object.
ATTACKER_URL is where tokens signed by an attacker's key point their jku and x5u; the
attacker's JWKS is written to OUT_DIR/evil-jwks.json."""

import base64
import hashlib
import hmac
import json
import os
import sys
import time

import datetime

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

out = sys.argv[1]
attacker_url = sys.argv[2] if len(sys.argv) > 2 else "http://127.0.0.1:9/evil.json"
now = int(time.time())
ISS = "https://issuer.test"
AUD = "sluice-api"


def pem(public, name):
    data = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
    return data


rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ec256 = ec.generate_private_key(ec.SECP256R1())
ec384 = ec.generate_private_key(ec.SECP384R1())
ed = ed25519.Ed25519PrivateKey.generate()
rsa_pem = pem(rsa_key.public_key(), "rsa.pem")
pem(ec256.public_key(), "ec256.pem")
pem(ec384.public_key(), "ec384.pem")
pem(ed.public_key(), "ed.pem")
secret = os.urandom(48).hex().encode()
with open(os.path.join(out, "hmac.secret"), "wb") as f:
    f.write(secret + b"\n")

signing = {
    "HS256": secret, "HS384": secret, "HS512": secret,
    "RS256": rsa_key, "RS384": rsa_key, "RS512": rsa_key, "PS256": rsa_key,
    "ES256": ec256, "ES384": ec384, "EdDSA": ed,
}


def claims(**over):
    c = {"iss": ISS, "aud": AUD, "sub": "alice", "iat": now, "nbf": now - 5, "exp": now + 600}
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


tokens = {}
for alg, key in signing.items():
    tokens[alg] = jwt.encode(claims(), key, algorithm=alg)
tokens["expired"] = jwt.encode(claims(exp=now - 3600, iat=now - 7200, nbf=now - 7200), rsa_key, algorithm="RS256")
tokens["not_yet_valid"] = jwt.encode(claims(nbf=now + 3600), rsa_key, algorithm="RS256")
tokens["issued_in_future"] = jwt.encode(claims(iat=now + 3600), rsa_key, algorithm="RS256")
tokens["wrong_iss"] = jwt.encode(claims(iss="https://evil.test"), rsa_key, algorithm="RS256")
tokens["wrong_aud"] = jwt.encode(claims(aud="other-api"), rsa_key, algorithm="RS256")
good = tokens["RS256"].split(".")
other = jwt.encode(claims(sub="mallory"), rsa_key, algorithm="RS256").split(".")
tokens["bad_signature"] = ".".join([good[0], other[1], good[2]])
# alg "none": header and claims, empty signature.
tokens["alg_none"] = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode()) + "." + b64(json.dumps(claims()).encode()) + "."
# Algorithm confusion: HS256 keyed with the RSA public key's PEM (PyJWT refuses to make
# this, as it should, so it is built by hand).
head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "." + b64(json.dumps(claims()).encode())
tokens["confusion"] = head + "." + b64(hmac.new(rsa_pem, head.encode(), hashlib.sha256).digest())
tokens["scoped"] = jwt.encode(
    claims(sub="svc-reporting", scope="read write", groups=["analysts"], tier="gold"),
    rsa_key, algorithm="RS256")
tokens["unscoped"] = jwt.encode(claims(sub="svc-reporting", scope="read", tier="silver"), rsa_key, algorithm="RS256")

# RFC 7515 §4.1.11: a crit header naming an extension the verifier does not know, or an
# empty or malformed crit, is refused even with a good signature.
tokens["crit_unknown"] = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"crit": ["x-ext"], "x-ext": 1})
tokens["crit_empty"] = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"crit": []})
tokens["crit_exp"] = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"crit": ["exp"]})
tokens["crit_string"] = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"crit": "b64"})
# Header parameters that must never select a key: the attacker signs with a key of their
# own and names it through jwk (embedded), jku/x5u (a URL) or x5c (a certificate), with and
# without a kid the issuer knows.
evil = rsa.generate_private_key(public_exponent=65537, key_size=2048)
evil_jwk = json.loads(RSAAlgorithm.to_jwk(evil.public_key()))
evil_jwk["kid"] = "evil"
with open(os.path.join(out, "evil-jwks.json"), "w") as f:
    json.dump({"keys": [evil_jwk]}, f)
name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issuer.test")])
cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(evil.public_key()).serial_number(1)
        .not_valid_before(datetime.datetime(2020, 1, 1))
        .not_valid_after(datetime.datetime(2100, 1, 1))
        .sign(evil, hashes.SHA256()))
x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
for iss in (ISS, "https://rotating.test"):
    for kid in (None, "evil", "rsa-one"):
        for param, value in (("jwk", evil_jwk), ("jku", attacker_url), ("x5u", attacker_url), ("x5c", [x5c])):
            headers = {param: value}
            if kid:
                headers["kid"] = kid
            name = f"evil_{param}_{kid or 'nokid'}_{'main' if iss == ISS else 'rot'}"
            tokens[name] = jwt.encode(claims(iss=iss), evil, algorithm="RS256", headers=headers)

# Key rotation through a JWKS: two generations of keys, each token naming its kid.
rot = "https://rotating.test"
jwks = {}
for gen in ("one", "two"):
    k = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    e = ec.generate_private_key(ec.SECP256R1())
    o = ed25519.Ed25519PrivateKey.generate()
    keys = []
    for kid, alg, key, conv in ((f"rsa-{gen}", "RS256", k, RSAAlgorithm), (f"ec-{gen}", "ES256", e, ECAlgorithm), (f"ed-{gen}", "EdDSA", o, OKPAlgorithm)):
        jwk = json.loads(conv.to_jwk(key.public_key()))
        if alg == "ES256":
            # PyJWT 2.6 drops leading zero bytes of x and y (1 key in ~128); RFC 7518
            # section 6.2.1.2 wants the full 32 bytes, so they are written here.
            nums = key.public_key().public_numbers()
            jwk["x"] = b64(nums.x.to_bytes(32, "big"))
            jwk["y"] = b64(nums.y.to_bytes(32, "big"))
        jwk["kid"] = kid
        keys.append(jwk)
        tokens[f"{gen}_{alg}"] = jwt.encode(claims(iss=rot, sub=f"rot-{gen}"), key, algorithm=alg, headers={"kid": kid})
        # A second token of the same key, never presented before it is used (so it cannot
        # come from the gateway's cache of verified tokens).
        tokens[f"{gen}_{alg}_fresh"] = jwt.encode(claims(iss=rot, sub=f"rot-{gen}", jti="fresh"), key, algorithm=alg, headers={"kid": kid})
    jwks[gen] = {"keys": keys}
    with open(os.path.join(out, f"jwks-{gen}.json"), "w") as f:
        json.dump(jwks[gen], f)

print(json.dumps(tokens))
