"""Verify Supabase user access tokens locally: JWKS (ES256, RS256) or the project secret.

The key decides the algorithm: a `kid` names a key from the project's JWKS, whose type
fixes ES256 or RS256; HS256 is accepted only when the project's JWT secret is configured.
No message or log line ever carries the token.
"""

from __future__ import annotations

import asyncio
import hmac
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import structlog
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from worker.errors import UserFacingError

log = structlog.get_logger(__name__)

AUDIENCE = "authenticated"
USER_ROLE = "authenticated"
# The project's service-role key is a JWT with this role (and no subject or audience).
SERVICE_ROLE = "service_role"
LEEWAY_SECONDS = 10
# A kid we do not know triggers a JWKS refresh at most this often, so garbage can't hammer it.
MIN_REFRESH_SECONDS = 30.0
# After a failed fetch, wait this long before asking again (requests fail fast meanwhile).
RETRY_AFTER_FAILURE_SECONDS = 10.0
JWKS_TIMEOUT = httpx.Timeout(5.0)
MAX_TOKEN_LENGTH = 16 * 1024
MIN_RSA_BITS = 2048
# A client sends the same token with every call: once verified, it is trusted again without
# the signature check for this long at most (never past its exp), so a key dropped from
# the JWKS stops working within a minute. At most this many tokens are remembered.
VERIFIED_TTL_SECONDS = 60.0
VERIFIED_MAX_TOKENS = 4096


class AuthError(UserFacingError):
    """The request is not authenticated; `str(exc)` is safe to show the caller."""


@dataclass(frozen=True)
class AuthenticatedUser:
    user_id: uuid.UUID
    email: str | None
    role: str
    claims: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class _SigningKey:
    algorithm: str
    key: Any


class TokenVerifier:
    """Checks `Authorization: Bearer <access token>` against the project's keys."""

    def __init__(
        self,
        *,
        supabase_url: str | None,
        jwt_secret: str | None,
        http: httpx.AsyncClient | None = None,
        jwks_ttl_seconds: float = 600,
    ) -> None:
        base = supabase_url.rstrip("/") if supabase_url else None
        self._issuer = f"{base}/auth/v1" if base else None
        self._jwks_url = f"{base}/auth/v1/.well-known/jwks.json" if base else None
        self._secret = jwt_secret or None
        self._http = http
        self._owns_http = http is None
        self._ttl = jwks_ttl_seconds
        self._keys: dict[str, _SigningKey] = {}
        self._fetched_at: float | None = None
        self._failed_at: float | None = None
        self._kid_refresh_at: float | None = None
        self._lock = asyncio.Lock()
        self._verified: OrderedDict[str, tuple[float, AuthenticatedUser]] = OrderedDict()

    async def verify(self, authorization_header: str | None) -> AuthenticatedUser:
        token = _bearer_token(authorization_header)
        if (known := self._recall(token)) is not None:
            return known
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise AuthError("Invalid token") from None
        algorithm, key = await self._key_for(header)
        claims = self._decode(token, algorithm, key)
        user = _user_from_claims(claims)
        self._remember(token, user)
        return user

    async def is_service_role(self, authorization_header: str | None) -> bool:
        """True for `Bearer <the project's service-role key>`, which the old platform's cron
        job sends: verified like any token (the project's keys, expiry) and with the role
        `service_role`. A user's token, however valid, is not one."""
        try:
            token = _bearer_token(authorization_header)
            algorithm, key = await self._key_for(jwt.get_unverified_header(token))
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "role"], "verify_aud": False},
            )
        except (AuthError, jwt.InvalidTokenError):
            return False
        return claims.get("role") == SERVICE_ROLE

    def _recall(self, token: str) -> AuthenticatedUser | None:
        entry = self._verified.get(token)
        if entry is None:
            return None
        until, user = entry
        if time.time() >= until:
            del self._verified[token]
            return None
        self._verified.move_to_end(token)
        return user

    def _remember(self, token: str, user: AuthenticatedUser) -> None:
        now, expires = time.time(), user.claims.get("exp")
        if not isinstance(expires, int | float) or expires <= now:
            return
        self._verified[token] = (min(float(expires), now + VERIFIED_TTL_SECONDS), user)
        if len(self._verified) > VERIFIED_MAX_TOKENS:
            self._verified.popitem(last=False)

    async def aclose(self) -> None:
        if self._owns_http and self._http is not None:
            await self._http.aclose()
            self._http = None

    async def _key_for(self, header: dict[str, Any]) -> tuple[str, Any]:
        algorithm = header.get("alg")
        if algorithm == "HS256":
            if self._secret is None:
                raise AuthError("Invalid token")
            return "HS256", self._secret
        if algorithm not in ("ES256", "RS256") or self._jwks_url is None:
            raise AuthError("Invalid token")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise AuthError("Invalid token")
        signing_key = await self._signing_key(kid)
        if signing_key.algorithm != algorithm:
            raise AuthError("Invalid token")
        return signing_key.algorithm, signing_key.key

    def _decode(self, token: str, algorithm: str, key: Any) -> dict[str, Any]:
        required = ["exp", "sub", "aud"] + (["iss"] if self._issuer else [])
        try:
            return jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=AUDIENCE,
                issuer=self._issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": required},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("Token expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("Token not yet valid") from None
        except jwt.InvalidAudienceError:
            raise AuthError("Invalid token audience") from None
        except jwt.InvalidIssuerError:
            raise AuthError("Invalid token issuer") from None
        except jwt.InvalidTokenError:
            raise AuthError("Invalid token") from None

    async def _signing_key(self, kid: str) -> _SigningKey:
        async with self._lock:
            now = time.monotonic()
            if self._claim_fetch(kid, now):
                await self._refresh(now)
        if self._fetched_at is None:
            raise AuthError("Authentication keys unavailable")
        signing_key = self._keys.get(kid)
        if signing_key is None:
            raise AuthError("Invalid token")
        return signing_key

    def _claim_fetch(self, kid: str, now: float) -> bool:
        """Whether to fetch the JWKS now; records a refresh made for an unknown kid."""
        if self._failed_at is not None and now - self._failed_at < RETRY_AFTER_FAILURE_SECONDS:
            return False
        if self._fetched_at is None or now - self._fetched_at > self._ttl:
            return True
        if kid in self._keys:
            return False
        if self._kid_refresh_at is not None and now - self._kid_refresh_at < MIN_REFRESH_SECONDS:
            return False
        self._kid_refresh_at = now
        return True

    async def _refresh(self, now: float) -> None:
        assert self._jwks_url is not None
        try:
            keys = await self._fetch_jwks(self._jwks_url)
        except (httpx.HTTPError, ValueError) as exc:
            # Keep the keys we have: a JWKS outage should not log everybody out.
            self._failed_at = now
            log.warning("jwks fetch failed", url=self._jwks_url, error=type(exc).__name__)
            return
        self._keys = keys
        self._fetched_at = now
        self._failed_at = None

    async def _fetch_jwks(self, url: str) -> dict[str, _SigningKey]:
        if self._http is None:
            self._http = httpx.AsyncClient()
        response = await self._http.get(url, timeout=JWKS_TIMEOUT)
        response.raise_for_status()
        document = response.json()
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise ValueError("JWKS has no key list")
        keys = {}
        for jwk in document["keys"]:
            signing_key = _signing_key_from_jwk(jwk)
            if signing_key is not None:
                keys[jwk["kid"]] = signing_key
        return keys


def _signing_key_from_jwk(jwk: Any) -> _SigningKey | None:
    """The key and the one algorithm it may verify, or None for keys we do not accept."""
    if not isinstance(jwk, dict) or not isinstance(jwk.get("kid"), str):
        return None
    if jwk.get("use", "sig") != "sig":
        return None
    if jwk.get("kty") == "EC" and jwk.get("crv") == "P-256":
        algorithm = "ES256"
    elif jwk.get("kty") == "RSA":
        algorithm = "RS256"
    else:
        return None
    if jwk.get("alg", algorithm) != algorithm:
        return None
    try:
        key = jwt.PyJWK(jwk, algorithm=algorithm).key
    except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError):
        return None
    if isinstance(key, RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        return None
    return _SigningKey(algorithm, key)


def _bearer_token(authorization_header: str | None) -> str:
    if not authorization_header or not authorization_header.strip():
        raise AuthError("Missing authorization header")
    scheme, _, token = authorization_header.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise AuthError("Authorization header must be a Bearer token")
    token = token.strip()
    if not token or len(token) > MAX_TOKEN_LENGTH:
        raise AuthError("Invalid token")
    return token


def _user_from_claims(claims: dict[str, Any]) -> AuthenticatedUser:
    subject = claims.get("sub")
    try:
        user_id = uuid.UUID(subject) if isinstance(subject, str) else None
    except ValueError:
        user_id = None
    if user_id is None:
        raise AuthError("Invalid token subject")
    if claims.get("role") != USER_ROLE:
        raise AuthError("Token role not allowed")
    email = claims.get("email")
    return AuthenticatedUser(
        user_id=user_id,
        email=email if isinstance(email, str) and email else None,
        role=USER_ROLE,
        claims=claims,
    )


def verify_worker_secret(authorization_header: str | None, secret: str | None) -> bool:
    """True when the header is exactly `Bearer <secret>`; never true without a secret."""
    if not secret or not authorization_header:
        return False
    return hmac.compare_digest(authorization_header.strip().encode(), f"Bearer {secret}".encode())
