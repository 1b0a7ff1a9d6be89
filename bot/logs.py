"""The daemon's log: ISO 8601 times with the zone, never wrapped in a file, and no credential in any line.

Readable lines by default; with ``DEBUNKBOT_LOG_FORMAT=json``, one JSON object per line (python-json-logger):
``time``, ``level``, ``logger``, ``message``, and wherever the record concerns one delivery or notice, the
fields ``log_fields`` names (``notice_ref``, ``outlet_id``, ``delivery_id``, ``attempt``, ``trigger``,
``duration_ms``), passed as ``extra=``.

Every record goes through one redaction filter on the handler, library records and tracebacks
included: the matrix's secret values, URL and JSON credentials (``access_token=``, ``key=``,
``sign=``, a DingTalk or Feishu ``"sign"``), ``whsec_`` keys and a database URL's password.
Libraries that log URLs (httpx's ``HTTP Request: POST …?access_token=…``) or chatter are held
to warnings.

    >>> setup_logging(verbose=False, secrets=["SECabc123"], log_format="json")   # doctest: +SKIP
    >>> log.warning("%s: attempt %d failed", where, n, extra=log_fields(outlet_id="o1", attempt=n))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import re
import sys
import traceback
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from pythonjsonlogger.json import JsonFormatter

# httpx logs every request's URL at INFO; aiohttp, uvicorn, apscheduler and the database libraries chatter
QUIET_LIBRARIES = ("httpx", "httpcore", "aiohttp", "alembic", "asyncio", "sqlalchemy", "psycopg", "hpack", "uvicorn")
# the daemon logs a failed job itself (bot.scheduler), with what happens next
SILENT_LIBRARIES = ("apscheduler",)

_CREDENTIAL_NAMES = r"access_token|token|key|sign|signature|secret|appsecret|password|ticket"
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # a URL query or form: ?access_token=…, &key=…, &sign=… (DingTalk, WeCom, WeChat, Weibo)
    (re.compile(rf"(?i)\b({_CREDENTIAL_NAMES})=[^&\s\"'<>]+"), r"\1=[redacted]"),
    # JSON: Feishu's body carries "sign", WeChat's token call "secret", its answer "access_token"
    (re.compile(rf"(?i)([\"'](?:{_CREDENTIAL_NAMES})[\"']\s*:\s*[\"'])[^\"']*"), r"\1[redacted]"),
    (re.compile(r"whsec_[A-Za-z0-9+/=]+"), "whsec_[redacted]"),
    (re.compile(r"(://[^/\s:@]+:)[^@\s/]+@"), r"\1[redacted]@"),  # scheme://user:password@host
)
# This process's name in every line, when it is one of several writing to the same stderr: `run --processes N`
# names its send-only processes "send-only process 1"…; the leading process's lines carry none.
PROCESS_NAME_ENV = "DEBUNKBOT_PROCESS_NAME"
MIN_SECRET = 6  # shorter values would redact ordinary words
# what every LogRecord has; anything else on a record came from ``extra=``
_RECORD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def log_fields(
    notice_ref: str | None = None, outlet_id: str | None = None, delivery_id: int | None = None,
    attempt: int | None = None, trigger: str | None = None, duration_ms: float | None = None, **more: Any,
) -> dict[str, Any]:
    """The structured fields of a record about a notice, an outlet, a delivery or an attempt, for ``extra=``;
    those not given are left out.

    >>> log_fields(outlet_id="cq-ybq-rmt", attempt=2, duration_ms=151.234)
    {'outlet_id': 'cq-ybq-rmt', 'attempt': 2, 'duration_ms': 151.2}
    """
    if duration_ms is not None:
        duration_ms = round(duration_ms, 1)
    given = dict(notice_ref=notice_ref, outlet_id=outlet_id, delivery_id=delivery_id, attempt=attempt,
                 trigger=trigger, duration_ms=duration_ms, **more)
    return {name: value for name, value in given.items() if value is not None}


class Redactor(logging.Filter):
    """Rewrites each record, traceback included, with every credential replaced."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        super().__init__()
        self.secrets: list[str] = []
        self.learn(secrets)

    def learn(self, secrets: Iterable[str | None]) -> None:
        """Redact these secrets too (a reloaded matrix's); the ones known before stay redacted."""
        parts: set[str] = set(self.secrets)
        for secret in filter(None, secrets):
            # TOKEN:SIGNING_SECRET (channels.base), and a whsec_ key's base64 without its prefix
            for part in {secret, *secret.split(":")}:
                parts |= {part, part.removeprefix("whsec_")}
        self.secrets = sorted((p for p in parts if len(p) >= MIN_SECRET), key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "[secret]")
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
        if record.stack_info:
            message += "\n" + record.stack_info
        record.msg, record.args = self.redact(message), None
        record.exc_info = record.exc_text = record.stack_info = None  # already in the message, redacted
        for name, value in list(vars(record).items()):  # the extra= fields: JSON lines show each of them
            if name not in _RECORD_ATTRIBUTES and not isinstance(value, bool | int | float | None):
                setattr(record, name, self.redact(value if isinstance(value, str) else str(value)))
        return True


class IsoFormatter(logging.Formatter):
    """``2026-11-28T14:05:09.123+08:00 WARNING debunkbot: …``: the machine's zone, always written out; a named
    process's lines say whose they are: ``… INFO debunkbot [send-only process 1]: …``."""

    def __init__(self, process_name: str | None = None) -> None:
        named = f" [{process_name.replace('%', '%%')}]" if process_name else ""
        super().__init__(f"%(asctime)s %(levelname)s %(name)s{named}: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return datetime.fromtimestamp(record.created, UTC).astimezone().isoformat(timespec="milliseconds")


class JsonLines(JsonFormatter):
    """``{"time": "2026-11-28T14:05:09.123+08:00", "level": "WARNING", "logger": "debunkbot", "message": …,
    "outlet_id": …}``: one object a line, UTF-8 as it is (no \\u escapes), the ``extra=`` fields included."""

    def __init__(self, process_name: str | None = None) -> None:
        super().__init__("{asctime}{levelname}{name}{message}", style="{", json_ensure_ascii=False,
                         rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                         static_fields={"process_name": process_name} if process_name else None)

    formatTime = IsoFormatter.formatTime


def setup_logging(verbose: bool, secrets: Iterable[str | None] = (), stream: object = None,
                  log_format: str = "text") -> logging.Handler:
    """Log to stderr: JSON lines with ``log_format="json"``; else Rich's columns on a terminal, plain unwrapped
    lines otherwise (a file, a pipe, journald). Each names the process when ``PROCESS_NAME_ENV`` does."""
    out = stream or sys.stderr
    process_name = os.environ.get(PROCESS_NAME_ENV) or None
    handler: logging.Handler
    if log_format == "json":
        handler = logging.StreamHandler(out)  # type: ignore[arg-type]
        handler.setFormatter(JsonLines(process_name))
        logging.captureWarnings(True)  # a Python warning is a JSON line too, not a bare one
    elif getattr(out, "isatty", lambda: False)():
        from rich.console import Console
        from rich.logging import RichHandler
        from rich.text import Text

        handler = RichHandler(console=Console(file=out, soft_wrap=True), show_path=False, omit_repeated_times=False,
                              log_time_format=lambda when: Text(when.astimezone().isoformat(timespec="seconds")))
        if process_name:
            handler.setFormatter(logging.Formatter(f"[{process_name.replace('%', '%%')}] %(message)s"))
    else:
        handler = logging.StreamHandler(out)  # type: ignore[arg-type]
        handler.setFormatter(IsoFormatter(process_name))
    handler.addFilter(Redactor(secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.getLogger("debunkbot").setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in SILENT_LIBRARIES:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    return handler
