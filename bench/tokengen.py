#!/usr/bin/env python3
"""Benchmark key and token generator for bench/run.sh.

Writes to OUT:
  key.pem          the private signing key (kept, so a rerun can reuse tokens)
  pub.pem          its public key as SubjectPublicKeyInfo PEM (HAProxy jwt_verify)
  jwks.json        the same key as a JWKS document (scopegate's jwks_uri)
  tokens_hot.txt   one valid token with the scope `bench:read`
  tokens_cold.txt  COUNT distinct valid tokens with `bench:read` (the cold pool)
  tokens_deny.txt  one valid token without `bench:read` (-> 403)
  tokens_bad.txt   `label token` lines that every gateway must refuse with 401:
                   expired, wrong iss, wrong aud, alg none, HS256 keyed with
                   the public key, a broken signature
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


def hs256_token(secret: bytes, claims: dict) -> str:
    import hashlib
    import hmac

    signing_input = b64_json({"alg": "HS256", "kid": KID, "typ": "JWT"}) + "." + b64_json(claims)
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(mac)


def write_bad_tokens(out, pub_pem: bytes, base: dict, hot: str):
    """Tokens every gateway must refuse with 401, one `label token` a line."""
    now = int(time.time())
    base = dict(base, sub="user-bad")
    bad = {
        "expired": make_token(dict(base, iat=now - 7200, exp=now - 3600)),
        "wrong-iss": make_token(dict(base, iss="https://evil.example")),
        "wrong-aud": make_token(dict(base, aud="other-api")),
        "alg-none": b64_json({"alg": "none", "typ": "JWT"}) + "." + b64_json(base) + ".",
        "hs256-pubkey": hs256_token(pub_pem, base),
        "bad-signature": hot[:-4] + ("BBBB" if hot.endswith("AAAA") else "AAAA"),
    }
    path = os.path.join(out, "tokens_bad.txt")
    with open(path + ".tmp", "w") as f:
        f.write("".join(f"{k} {v}\n" for k, v in bad.items()))
    os.replace(path + ".tmp", path)


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
            if not os.path.exists(os.path.join(args.out, "tokens_bad.txt")):
                with open(os.path.join(args.out, "key.pem"), "rb") as f:
                    key_pem = f.read()
                with open(os.path.join(args.out, "pub.pem"), "rb") as f:
                    pub_pem = f.read()
                with open(os.path.join(args.out, "tokens_hot.txt")) as f:
                    hot = f.read().strip()
                _init_worker(key_pem, args.alg)
                base = json.loads(base64.urlsafe_b64decode(hot.split(".")[1] + "=="))
                write_bad_tokens(args.out, pub_pem, base, hot)
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
    write_bad_tokens(args.out, pub_pem, base, hot)
    write("tokens_cold.txt", "\n".join(cold) + "\n")
    write("tokens.json", json.dumps(dict(want, exp=exp, kid=KID)) + "\n")
    print(f"tokengen: {args.count} {args.alg} tokens in {time.time() - t0:.1f}s -> {args.out}")


if __name__ == "__main__":
    main()
