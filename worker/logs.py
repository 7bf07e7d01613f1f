"""structlog setup: JSON when not on a terminal, and no secret in any line."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any, TextIO, cast

import structlog

_SECRET_KEYS = re.compile(
    r"(token|secret|password|authorization|apikey|api_key|service_role)", re.IGNORECASE
)
_BEARER = re.compile(r"(bearer\s+)[A-Za-z0-9._~+/=-]+", re.I)
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_REDACTED = "[redacted]"
_known_secrets: set[str] = set()


def register_secrets(values: Iterable[str | None]) -> None:
    """Values (tokens, keys) to blank out wherever they appear in a log line."""
    _known_secrets.update(v for v in values if v and len(v) >= 8)


def redact_text(text: str, *secrets: str | None) -> str:
    """The one redactor: `text` without the registered secrets, the given ones, bearer
    tokens or JWTs (every log line passes here; so do error texts that may be logged)."""
    for secret in (*_known_secrets, *secrets):
        if secret:
            text = text.replace(secret, _REDACTED)
    return _JWT.sub(_REDACTED, _BEARER.sub(rf"\1{_REDACTED}", text))


def _redact(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {
            key: _REDACTED if _SECRET_KEYS.search(str(key)) else _redact(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [_redact(item) for item in value]
    return value


def _redact_processor(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    return {
        key: _REDACTED if _SECRET_KEYS.search(key) else _redact(value)
        for key, value in event_dict.items()
    }


class SafeStream:
    """A text stream that, once its reader has gone (a closed pipe: `imagegen dev | tee
    log` after Ctrl-C), drops what is written instead of raising into the code that
    logs, so shutdown still finishes in order."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.gone = False

    def _call(self, action: Callable[[], object]) -> None:
        if self.gone:
            return
        try:
            action()
        except (BrokenPipeError, ValueError):  # ValueError: the stream was closed
            self.gone = True

    def write(self, text: str) -> int:
        self._call(lambda: self.stream.write(text))
        return len(text)

    def flush(self) -> None:
        self._call(self.stream.flush)


_HANDLER_NAME = "imagegen"
# Libraries that log every request at info: their lines say nothing a metric does not.
_QUIET_LOGGERS = ("httpx", "httpcore", "uvicorn.access", "hpack")


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    """One format for every line: ours (structlog) and the libraries' (stdlib logging,
    routed through the same processors, so they are redacted too)."""
    as_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        _redact_processor,
    ]
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    output = cast(TextIO, SafeStream(sys.stderr))
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(output),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(output)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        )
    )
    handler.set_name(_HANDLER_NAME)
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if h.get_name() != _HANDLER_NAME] + [handler]
    root.setLevel(numeric)
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))
