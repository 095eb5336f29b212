#!/usr/bin/env python3
"""Benchmark key and token generator for bench/run.sh.

Writes to OUT:
  key.pem          the private signing key (kept, so a rerun can reuse tokens)
  pub.pem          its public key as SubjectPublicKeyInfo PEM (HAProxy jwt_verify)
  jwks.json        the same key as a JWKS document (scopegate's jwks_uri)
  tokens_hot.txt   one valid token with the scope `bench:read`
  tokens_cold.txt  COUNT distinct valid tokens with `bench:read` (the cold pool)
  tokens_deny.txt  one valid token without `bench:read` (-> 403)
  tokens.json      what was generated (alg, count, exp), to decide on reuse

Tokens are reused while alg, count, issuer and audience match and they stay
valid for at least another 6 hours; signing 200k RSA tokens takes about a
minute on two cores.
"""

import argparse
import base64
import json
import multiprocessing
import os
import sys
import time

try:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
except ImportError:  # run.sh installs it; say so when run by hand
    sys.exit("tokengen: needs the 'cryptography' package (pip install cryptography)")

KID = "bench-1"
MIN_LIFETIME = 6 * 3600
LIFETIME = 2 * 86400


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64_json(obj) -> str:
    return b64(json.dumps(obj, separators=(",", ":")).encode())


def int_bytes(n: int, length=None) -> bytes:
    length = length or (n.bit_length() + 7) // 8
    return n.to_bytes(length, "big")


_KEY = None
_ALG = None


def _init_worker(key_pem: bytes, alg: str):
    global _KEY, _ALG
    _KEY = serialization.load_pem_private_key(key_pem, password=None)
    _ALG = alg


def sign(signing_input: bytes) -> bytes:
    if _ALG == "RS256":
        return _KEY.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    der = _KEY.sign(signing_input, ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    return int_bytes(r, 32) + int_bytes(s, 32)


def make_token(claims: dict) -> str:
    header = {"alg": _ALG, "kid": KID, "typ": "JWT"}
    signing_input = (b64_json(header) + "." + b64_json(claims)).encode()
    return signing_input.decode() + "." + b64(sign(signing_input))


def _cold_chunk(job):
    start, end, base = job
    out = []
    for i in range(start, end):
        claims = dict(base)
        claims["sub"] = f"user-{i}"
        claims["jti"] = f"bench-{i}"
        out.append(make_token(claims))
    return out


def new_key(alg: str):
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def public_jwk(key, alg: str) -> dict:
    pub = key.public_key().public_numbers()
    if alg == "RS256":
        jwk = {"kty": "RSA", "n": b64(int_bytes(pub.n)), "e": b64(int_bytes(pub.e))}
    else:
        jwk = {"kty": "EC", "crv": "P-256", "x": b64(int_bytes(pub.x, 32)), "y": b64(int_bytes(pub.y, 32))}
    jwk.update({"kid": KID, "use": "sig", "alg": alg})
    return jwk


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--count", type=int, default=200_000)
    p.add_argument("--alg", choices=["RS256", "ES256"], default="RS256")
    p.add_argument("--issuer", default="https://bench.scopegate.test")
    p.add_argument("--audience", default="bench-api")
    p.add_argument("--scope", default="bench:read")
    p.add_argument("--procs", type=int, default=os.cpu_count() or 1)
    args = p.parse_args()

    os.makedirs(args.out, exist_ok=True)
    meta_path = os.path.join(args.out, "tokens.json")
    now = int(time.time())
    want = {"alg": args.alg, "count": args.count, "issuer": args.issuer, "audience": args.audience, "scope": args.scope}
    try:
        with open(meta_path) as f:
            meta = json.load(f)
        if all(meta.get(k) == v for k, v in want.items()) and meta["exp"] - now > MIN_LIFETIME:
            print(f"tokengen: reusing {args.count} {args.alg} tokens in {args.out} (valid until {meta['exp']})")
            return
    except (OSError, ValueError, KeyError):
        pass

    t0 = time.time()
    key = new_key(args.alg)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    pub_pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def write(name, data, mode="w"):
        path = os.path.join(args.out, name)
        with open(path + ".tmp", mode) as f:
            f.write(data)
        os.replace(path + ".tmp", path)

    exp = now + LIFETIME
    base = {"iss": args.issuer, "aud": args.audience, "iat": now, "exp": exp, "client_id": "bench-client", "scope": "openid " + args.scope}

    _init_worker(key_pem, args.alg)
    hot = make_token(dict(base, sub="user-hot", jti="bench-hot"))
    deny = make_token(dict(base, sub="user-deny", jti="bench-deny", scope="openid bench:other"))

    chunk = 2000
    jobs = [(s, min(s + chunk, args.count), base) for s in range(0, args.count, chunk)]
    with multiprocessing.Pool(args.procs, initializer=_init_worker, initargs=(key_pem, args.alg)) as pool:
        cold = [t for part in pool.imap(_cold_chunk, jobs) for t in part]

    write("key.pem", key_pem.decode())
    write("pub.pem", pub_pem.decode())
    write("jwks.json", json.dumps({"keys": [public_jwk(key, args.alg)]}, indent=1) + "\n")
    write("tokens_hot.txt", hot + "\n")
    write("tokens_deny.txt", deny + "\n")
    write("tokens_cold.txt", "\n".join(cold) + "\n")
    write("tokens.json", json.dumps(dict(want, exp=exp, kid=KID)) + "\n")
    print(f"tokengen: {args.count} {args.alg} tokens in {time.time() - t0:.1f}s -> {args.out}")


if __name__ == "__main__":
    main()
