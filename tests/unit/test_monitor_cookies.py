"""The monitor page's session cookie (api/monitor.py): signed, expiring, bound to the key
derived from the worker secret."""

from __future__ import annotations

from pydantic import SecretStr

from api.monitor import SESSION_SECONDS, SessionCookies, session_key
from worker.settings import Settings


def test_a_cookie_is_valid_until_it_expires() -> None:
    cookies = SessionCookies(b"k" * 32)
    value = cookies.issue(now=1_000)

    assert cookies.valid(value, now=1_000 + SESSION_SECONDS - 1)
    assert not cookies.valid(value, now=1_000 + SESSION_SECONDS)


def test_a_changed_expiry_signature_or_key_is_refused() -> None:
    cookies = SessionCookies(b"k" * 32)
    expires, _, signature = cookies.issue(now=1_000).partition(".")

    assert not cookies.valid(f"{int(expires) + 3600}.{signature}", now=1_000)
    assert not cookies.valid(f"{expires}.{signature[:-1]}0", now=1_000)
    assert not SessionCookies(b"j" * 32).valid(f"{expires}.{signature}", now=1_000)
    for garbage in ("", ".", "abc.def", f"-1.{signature}", "9" * 300):
        assert not cookies.valid(garbage, now=1_000)


def test_the_key_follows_the_worker_secret() -> None:
    one = session_key(Settings(worker_secret=SecretStr("secret-one-0123456789")))
    again = session_key(Settings(worker_secret=SecretStr("secret-one-0123456789")))
    other = session_key(Settings(worker_secret=SecretStr("secret-two-0123456789")))

    assert one == again != other
    assert b"secret-one" not in one
