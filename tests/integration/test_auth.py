"""Token verification against real keys and a real JWKS endpoint on loopback."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import api.auth
from api.auth import AuthError, TokenVerifier, verify_worker_secret
from devstack.postgres import free_port
from devstack.tokens import mint_dev_token
from tests.support.background_server import BackgroundServer
from tests.support.tokens import (
    EC_KEY,
    EC_KID,
    RSA_KEY,
    RSA_KID,
    b64url,
    es256,
    handmade,
    jwk,
    published_keys,
    rs256,
)

SECRET = "super-secret-jwt-token-with-at-least-32-characters-long"
USER_ID = uuid.uuid4()


@dataclass
class JwksEndpoint:
    """What the stand-in for Supabase Auth serves, and how often it was asked."""

    url: str = ""
    keys: list[Any] = field(default_factory=list)
    fetches: int = 0
    down: bool = False

    def reset(self) -> None:
        self.keys = published_keys()
        self.fetches = 0
        self.down = False


@pytest.fixture(scope="module")
def jwks_server() -> Iterator[JwksEndpoint]:
    endpoint = JwksEndpoint()

    async def jwks(request: Request) -> Response:
        endpoint.fetches += 1
        if endpoint.down:
            return Response("unavailable", status_code=503)
        return JSONResponse({"keys": endpoint.keys})

    app = Starlette(routes=[Route("/auth/v1/.well-known/jwks.json", jwks)])
    with BackgroundServer(app) as server:
        endpoint.url = server.url
        yield endpoint


@pytest.fixture
def jwks(jwks_server: JwksEndpoint) -> JwksEndpoint:
    jwks_server.reset()
    return jwks_server


@pytest.fixture
async def verifier(jwks: JwksEndpoint) -> AsyncIterator[TokenVerifier]:
    async with httpx.AsyncClient() as http:
        yield TokenVerifier(supabase_url=jwks.url, jwt_secret=None, http=http)


def claims(jwks: JwksEndpoint, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "aud": "authenticated",
        "role": "authenticated",
        "sub": str(USER_ID),
        "email": "user@example.test",
        "iss": f"{jwks.url}/auth/v1",
        "iat": now,
        "exp": now + 3600,
    }
    base.update(overrides)
    return {key: value for key, value in base.items() if value is not None}


def bearer(token: str) -> str:
    return f"Bearer {token}"


async def refused(verifier: TokenVerifier, header: str | None, message: str) -> None:
    with pytest.raises(AuthError) as caught:
        await verifier.verify(header)
    assert str(caught.value) == message
    if header and len(header) > 20:
        assert header.split()[-1] not in str(caught.value)
        assert caught.value.__cause__ is None


# -- accepted


async def test_valid_es256(verifier: TokenVerifier, jwks: JwksEndpoint) -> None:
    user = await verifier.verify(bearer(es256(claims(jwks))))
    assert user.user_id == USER_ID
    assert user.email == "user@example.test"
    assert user.role == "authenticated"
    assert user.claims["sub"] == str(USER_ID)


async def test_valid_rs256(verifier: TokenVerifier, jwks: JwksEndpoint) -> None:
    user = await verifier.verify(bearer(rs256(claims(jwks))))
    assert user.user_id == USER_ID


async def test_valid_hs256_with_secret(jwks: JwksEndpoint) -> None:
    verifier = TokenVerifier(supabase_url=jwks.url, jwt_secret=SECRET)
    token = mint_dev_token(SECRET, USER_ID, email="a@b.test", issuer=f"{jwks.url}/auth/v1")
    user = await verifier.verify(bearer(token))
    assert (user.user_id, user.email) == (USER_ID, "a@b.test")
    assert jwks.fetches == 0
    await verifier.aclose()


async def test_keys_are_cached(verifier: TokenVerifier, jwks: JwksEndpoint) -> None:
    for _ in range(3):
        await verifier.verify(bearer(es256(claims(jwks))))
        await verifier.verify(bearer(rs256(claims(jwks))))
    assert jwks.fetches == 1


async def test_expiry_within_leeway_is_accepted(
    verifier: TokenVerifier, jwks: JwksEndpoint
) -> None:
    token = es256(claims(jwks, exp=int(time.time()) - 3))
    assert (await verifier.verify(bearer(token))).user_id == USER_ID


async def test_rotated_key_is_picked_up(verifier: TokenVerifier, jwks: JwksEndpoint) -> None:
    await verifier.verify(bearer(es256(claims(jwks))))
    new_key = ec.generate_private_key(ec.SECP256R1())
    jwks.keys.append(jwk(new_key.public_key(), "ec-key-2", "ES256"))
    user = await verifier.verify(bearer(es256(claims(jwks), key=new_key, kid="ec-key-2")))
    assert user.user_id == USER_ID
    assert jwks.fetches == 2


# -- refused: the header


async def test_missing_header(verifier: TokenVerifier) -> None:
    await refused(verifier, None, "Missing authorization header")
    await refused(verifier, "  ", "Missing authorization header")


async def test_not_bearer(verifier: TokenVerifier, jwks: JwksEndpoint) -> None:
    token = es256(claims(jwks))
    await refused(verifier, f"Basic {token}", "Authorization header must be a Bearer token")
    await refused(verifier, token, "Authorization header must be a Bearer token")


async def test_garbage(verifier: TokenVerifier) -> None:
    await refused(verifier, "Bearer ", "Invalid token")
    await refused(verifier, "Bearer not-a-jwt", "Invalid token")
    await refused(verifier, "Bearer aaaa.bbbb.cccc", "Invalid token")
    await refused(verifier, "Bearer " + "a" * 20000, "Invalid token")


# -- refused: algorithm and key


async def test_alg_none(verifier: TokenVerifier, jwks: JwksEndpoint) -> None:
    token = handmade({"alg": "none", "typ": "JWT"}, claims(jwks), None)
    await refused(verifier, bearer(token), "Invalid token")
    token = handmade({"alg": "none", "kid": EC_KID}, claims(jwks), None)
    await refused(verifier, bearer(token), "Invalid token")


async def test_hs256_signed_with_rsa_public_key(jwks: JwksEndpoint) -> None:
    pem = RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    token = handmade({"alg": "HS256", "typ": "JWT", "kid": RSA_KID}, claims(jwks), pem)
    for secret in (None, SECRET):
        verifier = TokenVerifier(supabase_url=jwks.url, jwt_secret=secret)
        await refused(verifier, bearer(token), "Invalid token")
        await verifier.aclose()


async def test_hs256_without_secret(verifier: TokenVerifier, jwks: JwksEndpoint) -> None:
    token = mint_dev_token(SECRET, USER_ID, issuer=f"{jwks.url}/auth/v1")
    await refused(verifier, bearer(token), "Invalid token")


async def test_hs256_with_the_wrong_secret(jwks: JwksEndpoint) -> None:
    verifier = TokenVerifier(supabase_url=jwks.url, jwt_secret=SECRET)
    token = mint_dev_token("another-secret-of-at-least-32-characters!!", USER_ID)
    await refused(verifier, bearer(token), "Invalid token")


async def test_alg_must_match_the_kids_key(verifier: TokenVerifier, jwks: JwksEndpoint) -> None:
    await refused(verifier, bearer(rs256(claims(jwks), kid=EC_KID)), "Invalid token")
    other_ec = ec.generate_private_key(ec.SECP256R1())
    await refused(verifier, bearer(es256(claims(jwks), key=other_ec, kid=RSA_KID)), "Invalid token")


async def test_unsupported_algorithms(verifier: TokenVerifier, jwks: JwksEndpoint) -> None:
    token = jwt.encode(claims(jwks), RSA_KEY, algorithm="PS256", headers={"kid": RSA_KID})
    await refused(verifier, bearer(token), "Invalid token")
    token = jwt.encode(claims(jwks), SECRET * 2, algorithm="HS512")
    await refused(verifier, bearer(token), "Invalid token")


async def test_tampered_payload(verifier: TokenVerifier, jwks: JwksEndpoint) -> None:
    genuine = es256(claims(jwks))
    forged = es256(claims(jwks, sub=str(uuid.uuid4())))
    header, _, signature = genuine.split(".")
    tampered = f"{header}.{forged.split('.')[1]}.{signature}"
    await refused(verifier, bearer(tampered), "Invalid token")


async def test_wrong_key_same_kid(verifier: TokenVerifier, jwks: JwksEndpoint) -> None:
    impostor = ec.generate_private_key(ec.SECP256R1())
    await refused(verifier, bearer(es256(claims(jwks), key=impostor)), "Invalid token")


async def test_missing_kid(verifier: TokenVerifier, jwks: JwksEndpoint) -> None:
    token = jwt.encode(claims(jwks), EC_KEY, algorithm="ES256")
    await refused(verifier, bearer(token), "Invalid token")


# -- refused: the JWKS


async def test_unknown_kid_refreshes_once(verifier: TokenVerifier, jwks: JwksEndpoint) -> None:
    await verifier.verify(bearer(es256(claims(jwks))))
    assert jwks.fetches == 1
    await refused(verifier, bearer(es256(claims(jwks), kid="unknown-1")), "Invalid token")
    assert jwks.fetches == 2
    await refused(verifier, bearer(es256(claims(jwks), kid="unknown-2")), "Invalid token")
    assert jwks.fetches == 2
    await verifier.verify(bearer(es256(claims(jwks))))
    assert jwks.fetches == 2


async def test_unknown_kid_refreshes_again_after_the_interval(
    verifier: TokenVerifier, jwks: JwksEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(api.auth.time, "monotonic", lambda: clock[0])
    await refused(verifier, bearer(es256(claims(jwks), kid="unknown")), "Invalid token")
    assert jwks.fetches == 1
    clock[0] += 31
    await refused(verifier, bearer(es256(claims(jwks), kid="unknown")), "Invalid token")
    assert jwks.fetches == 2


async def test_jwks_down(jwks: JwksEndpoint) -> None:
    jwks.down = True
    async with httpx.AsyncClient() as http:
        verifier = TokenVerifier(supabase_url=jwks.url, jwt_secret=None, http=http)
        token = bearer(es256(claims(jwks)))
        await refused(verifier, token, "Authentication keys unavailable")
        await refused(verifier, token, "Authentication keys unavailable")
        assert jwks.fetches == 1


async def test_jwks_unreachable() -> None:
    closed = free_port()  # nobody listens there
    verifier = TokenVerifier(supabase_url=f"http://127.0.0.1:{closed}", jwt_secret=None)
    token = es256({"sub": str(USER_ID)})
    await refused(verifier, bearer(token), "Authentication keys unavailable")
    await verifier.aclose()


async def test_stale_keys_survive_an_outage(
    verifier: TokenVerifier, jwks: JwksEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(api.auth.time, "monotonic", lambda: clock[0])
    await verifier.verify(bearer(es256(claims(jwks))))
    jwks.down = True
    clock[0] += 601
    for _ in range(3):
        assert (await verifier.verify(bearer(es256(claims(jwks))))).user_id == USER_ID
    assert jwks.fetches == 2
    jwks.down = False
    clock[0] += 11
    await verifier.verify(bearer(es256(claims(jwks))))
    assert jwks.fetches == 3


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
async def test_unusable_jwks_entries_are_ignored(
    verifier: TokenVerifier, jwks: JwksEndpoint
) -> None:
    small_rsa = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 (refusing it is the point)
    jwks.keys = [
        {"kty": "oct", "kid": "sym", "k": b64url(SECRET.encode())},
        jwk(small_rsa.public_key(), "small", "RS256"),
        {**jwk(EC_KEY.public_key(), EC_KID, "ES256"), "use": "enc"},
        "not a key",
        jwk(RSA_KEY.public_key(), RSA_KID, "RS256"),
    ]
    await refused(verifier, bearer(es256(claims(jwks))), "Invalid token")
    small = jwt.encode(claims(jwks), small_rsa, algorithm="RS256", headers={"kid": "small"})
    await refused(verifier, bearer(small), "Invalid token")
    assert (await verifier.verify(bearer(rs256(claims(jwks))))).user_id == USER_ID


# -- refused: the claims


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"exp": int(time.time()) - 60}, "Token expired"),
        ({"exp": None}, "Invalid token"),
        ({"nbf": int(time.time()) + 300}, "Token not yet valid"),
        ({"iat": int(time.time()) + 300}, "Token not yet valid"),
        ({"aud": "anon"}, "Invalid token audience"),
        ({"aud": None}, "Invalid token"),
        ({"iss": "https://evil.example/auth/v1"}, "Invalid token issuer"),
        ({"iss": None}, "Invalid token"),
        ({"sub": None}, "Invalid token"),
        ({"sub": "not-a-uuid"}, "Invalid token subject"),
        ({"role": "anon"}, "Token role not allowed"),
        ({"role": "service_role"}, "Token role not allowed"),
        ({"role": None}, "Token role not allowed"),
    ],
)
async def test_bad_claims(
    verifier: TokenVerifier, jwks: JwksEndpoint, overrides: dict[str, Any], message: str
) -> None:
    await refused(verifier, bearer(es256(claims(jwks, **overrides))), message)


async def test_hs256_claims_are_checked_too(jwks: JwksEndpoint) -> None:
    verifier = TokenVerifier(supabase_url=None, jwt_secret=SECRET)
    expired = mint_dev_token(SECRET, USER_ID, ttl_seconds=-60)
    await refused(verifier, bearer(expired), "Token expired")
    anon = jwt.encode({**claims(jwks), "role": "anon"}, SECRET, algorithm="HS256")
    await refused(verifier, bearer(anon), "Token role not allowed")
    rs_without_url = rs256(claims(jwks))
    await refused(verifier, bearer(rs_without_url), "Invalid token")


# -- mint_dev_token and the worker secret


async def test_mint_dev_token_round_trip() -> None:
    verifier = TokenVerifier(supabase_url=None, jwt_secret=SECRET)
    token = mint_dev_token(SECRET, USER_ID, email="dev@example.test", ttl_seconds=60)
    user = await verifier.verify(bearer(token))
    assert (user.user_id, user.email, user.role) == (USER_ID, "dev@example.test", "authenticated")
    assert user.claims["aud"] == "authenticated"
    assert user.claims["exp"] - user.claims["iat"] == 60
    assert "iss" not in user.claims
    assert (await verifier.verify(bearer(mint_dev_token(SECRET, USER_ID)))).email is None


async def test_mint_dev_token_with_issuer() -> None:
    verifier = TokenVerifier(supabase_url="http://127.0.0.1:54321/", jwt_secret=SECRET)
    token = mint_dev_token(SECRET, USER_ID, issuer="http://127.0.0.1:54321/auth/v1")
    assert (await verifier.verify(bearer(token))).user_id == USER_ID
    await refused(verifier, bearer(mint_dev_token(SECRET, USER_ID)), "Invalid token")


def test_worker_secret() -> None:
    assert verify_worker_secret("Bearer s3cret-value", "s3cret-value")
    assert not verify_worker_secret("Bearer wrong", "s3cret-value")
    assert not verify_worker_secret("s3cret-value", "s3cret-value")
    assert not verify_worker_secret("Basic s3cret-value", "s3cret-value")
    assert not verify_worker_secret(None, "s3cret-value")
    assert not verify_worker_secret("Bearer s3cret-value-and-more", "s3cret-value")
    assert not verify_worker_secret("Bearer ", "")
    assert not verify_worker_secret("Bearer None", None)
    assert not verify_worker_secret("Bearer ", None)


# -- verified tokens are remembered (bounded in time and number)


async def test_a_verified_token_is_remembered_for_a_minute_at_most(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    verifier = TokenVerifier(supabase_url=None, jwt_secret=SECRET)
    token = mint_dev_token(SECRET, USER_ID, ttl_seconds=3600)
    await verifier.verify(bearer(token))
    calls: list[str] = []
    decode = jwt.decode

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append("decode")
        return decode(*args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counted)
    assert (await verifier.verify(bearer(token))).user_id == USER_ID
    assert calls == []
    now = time.time()
    monkeypatch.setattr(api.auth.time, "time", lambda: now + api.auth.VERIFIED_TTL_SECONDS + 1)
    assert (await verifier.verify(bearer(token))).user_id == USER_ID
    assert calls == ["decode"]


async def test_a_remembered_token_is_forgotten_at_its_exp(monkeypatch: pytest.MonkeyPatch) -> None:
    verifier = TokenVerifier(supabase_url=None, jwt_secret=SECRET)
    token = mint_dev_token(SECRET, USER_ID, ttl_seconds=30)
    await verifier.verify(bearer(token))
    assert verifier._recall(token) is not None
    now = time.time()
    monkeypatch.setattr(api.auth.time, "time", lambda: now + 31)
    assert verifier._recall(token) is None  # so the next call decodes it, and refuses it
