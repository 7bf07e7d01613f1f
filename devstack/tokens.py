"""Access tokens shaped like Supabase's, signed with the project's JWT secret: for the
dev stack's user, the tests and the benchmarks. The product only verifies tokens
(api/auth.py); it never mints one."""

from __future__ import annotations

import time
import uuid
from typing import Any

import jwt

from api.auth import AUDIENCE, USER_ROLE


def mint_dev_token(
    secret: str,
    user_id: uuid.UUID,
    *,
    email: str | None = None,
    ttl_seconds: int = 3600,
    issuer: str | None = None,
) -> str:
    """An HS256 access token shaped like Supabase's, for the embedded default and tests."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "aud": AUDIENCE,
        "role": USER_ROLE,
        "sub": str(user_id),
        "iat": now,
        "exp": now + ttl_seconds,
        "aal": "aal1",
        "is_anonymous": False,
        "app_metadata": {"provider": "email", "providers": ["email"]},
        "user_metadata": {},
    }
    if email is not None:
        claims["email"] = email
    if issuer is not None:
        claims["iss"] = issuer
    return jwt.encode(claims, secret, algorithm="HS256")
