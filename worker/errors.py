"""The project's exceptions share one root, and two decisions are made by type, never by
duck typing: whether retrying can help (`retryable`, which the runner follows) and what the
user may read (`user_message`; None: the text is for operators, the user reads a generic
message and the error is logged)."""

from __future__ import annotations


class ImagegenError(Exception):
    """The root of every exception the project defines."""

    retryable: bool = True  # an unknown failure may pass: a later attempt is worth it
    user_message: str | None = None


class UserFacingError(ImagegenError):
    """An error whose message is written for the user: `user_message` is the message."""

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.user_message = message
        if retryable is not None:
            self.retryable = retryable


class JobError(UserFacingError):
    """A job attempt failed; `str(exc)` is what the user reads."""


class PermanentJobError(JobError):
    """Retrying cannot help (bad input, unknown job type, expired output)."""

    retryable = False


def is_retryable(exc: BaseException) -> bool:
    """The project's errors say; anything else (a bug, a library's error) may pass."""
    return exc.retryable if isinstance(exc, ImagegenError) else True


class JobSnoozed(ImagegenError):
    """Not a failure: the job waits for something outside it (the provider's rate limit)
    and goes back to the queue for `seconds` without spending an attempt (the runner calls
    snooze_job, sql/0060_snooze_job.sql), so the wait holds no worker slot."""

    def __init__(self, seconds: float, reason: str) -> None:
        super().__init__(reason)
        self.seconds = max(0.0, seconds)
        self.reason = reason
