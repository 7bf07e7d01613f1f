"""The failure kinds the runner understands: each says whether a retry can help."""

from __future__ import annotations


class JobError(Exception):
    """A job attempt failed; `str(exc)` is what the user reads."""

    retryable: bool = True

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        if retryable is not None:
            self.retryable = retryable


class PermanentJobError(JobError):
    """Retrying cannot help (bad input, unknown job type, expired output)."""

    retryable = False


def is_retryable(exc: BaseException) -> bool:
    """Errors of our external-service modules carry `retryable`; unknown errors may pass."""
    return bool(getattr(exc, "retryable", True))
