"""The tests' one way to make tokens: the project's HS256 secret, and an EC and an RSA key
that the stack's JWKS endpoint publishes (tests/support/stack.py), as Supabase Auth's does."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

JWT_SECRET = "a-jwt-secret-for-the-tests-0123456789abcdef"
WORKER_SECRET = "worker-secret-for-tests-0123456789"
EC_KID = "ec-key-1"
RSA_KID = "rsa-key-1"
EC_KEY = ec.generate_private_key(ec.SECP256R1())
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwk(public_key: Any, kid: str, alg: str) -> dict[str, Any]:
    algorithm = jwt.algorithms.ECAlgorithm if alg == "ES256" else jwt.algorithms.RSAAlgorithm
    key = algorithm.to_jwk(public_key, as_dict=True)
    return {**key, "kid": kid, "alg": alg, "use": "sig"}


def published_keys() -> list[dict[str, Any]]:
    """The public halves of EC_KEY and RSA_KEY, as a JWKS lists them."""
    return [
        jwk(EC_KEY.public_key(), EC_KID, "ES256"),
        jwk(RSA_KEY.public_key(), RSA_KID, "RS256"),
    ]


def claims(user_id: uuid.UUID, issuer: str | None, **overrides: Any) -> dict[str, Any]:
    """A signed-in user's claims as Supabase Auth issues them; an override of None drops
    that claim."""
    now = int(time.time())
    base = {
        "aud": "authenticated",
        "role": "authenticated",
        "sub": str(user_id),
        "iss": issuer,
        "iat": now,
        "exp": now + 600,
    } | overrides
    return {key: value for key, value in base.items() if value is not None}


def hs256(payload: dict[str, Any], secret: str = JWT_SECRET) -> str:
    return jwt.encode(payload, secret, algorithm="HS256")


def es256(payload: dict[str, Any], key: Any = EC_KEY, kid: str = EC_KID) -> str:
    return jwt.encode(payload, key, algorithm="ES256", headers={"kid": kid})


def rs256(payload: dict[str, Any], kid: str = RSA_KID) -> str:
    return jwt.encode(payload, RSA_KEY, algorithm="RS256", headers={"kid": kid})


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def handmade(header: dict[str, Any], payload: dict[str, Any], key: bytes | None) -> str:
    """A token PyJWT would refuse to make: unsigned, or HMAC over a public key."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
    if key is None:
        return f"{signing_input}."
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"
