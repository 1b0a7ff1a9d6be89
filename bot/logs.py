"""The daemon's log: ISO 8601 times with the zone, never wrapped in a file, and no credential in any line.

Every record goes through one redaction filter on the handler, library records and tracebacks
included: the matrix's secret values, URL and JSON credentials (``access_token=``, ``key=``,
``sign=``, a DingTalk or Feishu ``"sign"``), ``whsec_`` keys and a database URL's password.
Libraries that log URLs (httpx's ``HTTP Request: POST …?access_token=…``) or chatter are held
to warnings.

    >>> setup_logging(verbose=False, secrets=["SECabc123"])            # doctest: +SKIP
"""

from __future__ import annotations

import logging
import re
import sys
import traceback
from collections.abc import Iterable
from datetime import UTC, datetime

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
MIN_SECRET = 6  # shorter values would redact ordinary words


class Redactor(logging.Filter):
    """Rewrites each record, traceback included, with every credential replaced."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        super().__init__()
        parts: set[str] = set()
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
        return True


class IsoFormatter(logging.Formatter):
    """``2026-11-28T14:05:09.123+08:00 WARNING debunkbot: …``: the machine's zone, always written out."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return datetime.fromtimestamp(record.created, UTC).astimezone().isoformat(timespec="milliseconds")


def setup_logging(verbose: bool, secrets: Iterable[str | None] = (), stream: object = None) -> logging.Handler:
    """Log to stderr: Rich's columns on a terminal, plain unwrapped lines otherwise (a file, a pipe, journald)."""
    out = stream or sys.stderr
    handler: logging.Handler
    if getattr(out, "isatty", lambda: False)():
        from rich.console import Console
        from rich.logging import RichHandler
        from rich.text import Text

        handler = RichHandler(console=Console(file=out, soft_wrap=True), show_path=False, omit_repeated_times=False,
                              log_time_format=lambda when: Text(when.astimezone().isoformat(timespec="seconds")))
    else:
        handler = logging.StreamHandler(out)  # type: ignore[arg-type]
        handler.setFormatter(IsoFormatter())
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
