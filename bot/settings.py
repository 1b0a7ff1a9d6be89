"""Settings, read from the environment (``DEBUNKBOT_*``) by pydantic-settings only.

    >>> settings = Settings(retry_schedule="1,2")
    >>> settings.retry_delays
    (1.0, 2.0)
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config"
TEMPLATES = ROOT / "templates"


def parse_duration(text: str, name: str = "the duration") -> timedelta:
    """A duration such as ``90s``, ``30m``, ``2h`` or ``7d`` (a bare number is seconds).

    >>> parse_duration("2h"), parse_duration("1.5d")
    (datetime.timedelta(seconds=7200), datetime.timedelta(days=1, seconds=43200))
    """
    import re

    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|m|min|h|d)?", text.strip())
    if not match or float(match[1]) <= 0:
        raise ValueError(f"{name} must be a positive duration such as 90s, 30m, 2h or 7d, got {text!r}")
    return timedelta(seconds=float(match[1]) * {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}[match[2] or "s"])


def parse_bind(text: str) -> tuple[str, int]:
    """``host:port`` as (host, port); an IPv6 host is written in brackets, ``[::1]:8700``.

    >>> parse_bind("[::1]:8700")
    ('::1', 8700)
    """
    host, colon, port = text.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        host = ""  # an IPv6 address without brackets: its port cannot be told apart
    if not colon or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"DEBUNKBOT_HTTP_BIND must be host:port, such as 127.0.0.1:8700 or [::1]:8700 "
                         f"(port 0: any free port), got {text!r}")
    return host, int(port)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DEBUNKBOT_", extra="ignore")

    database_url: str = f"sqlite:///{ROOT / 'var' / 'debunkbot.sqlite3'}"
    outlets: Path = CONFIG / "outlets.yaml"
    regions: Path = CONFIG / "regions.yaml"
    inbox: Path | None = None
    max_notices_per_file: int = Field(default=1000, ge=1, description="notices one file may hold")

    concurrency: int = Field(default=200, ge=1, description="sends in flight at once, all outlets together")
    per_outlet_concurrency: int = Field(default=2, ge=1, description="sends in flight at once to one outlet")
    http_timeout: float = Field(default=15.0, gt=0, description="seconds for one send, connect to last byte")
    retry_schedule: str = "5,300,1800,7200,18000,36000,36000"
    urgent_retry_schedule: str = Field(default="2,10,30,120,600", description="seconds between the tries of "
                                       "an urgent notice's delivery: a tighter schedule than retry_schedule")
    retry_jitter: float = Field(default=0.2, ge=0, lt=1)
    retry_after_max: float = Field(default=3600.0, gt=0, description="cap on an outlet's Retry-After")
    response_max_bytes: int = Field(default=4096, ge=0, description="response bytes kept per attempt")
    scan_interval: float = Field(default=2.0, gt=0, description="seconds between inbox scans and polls")
    shutdown_grace: float = Field(default=10.0, ge=0, description="seconds in-flight sends get to finish on stop")
    lease_seconds: float = Field(default=60.0, gt=0, description="how long a claimed delivery stays claimed")
    public_ip: str | None = Field(default=None, description="this machine's public IP address, sent as Weibo's "
                                  "required rip for weibo outlets without options.rip")
    http_bind: str = Field(default="127.0.0.1:8700", description="host:port (or [::1]:port) where the web server "
                           "listens: the API, the feeds, /healthz, /readyz, /metrics; port 0 picks a free one")
    slow_send_after: float = Field(default=1.0, gt=0, description="seconds after which a send stops counting "
                                   "against concurrency (a slow lane as large again)")
    wake_poll_interval: float = Field(default=0.015, gt=0, description="seconds between looks for other "
                                      "processes' writes to the store (submit from the CLI)")
    breaker_threshold: int = Field(default=5, ge=1, description="failed tries in a row that open an outlet's breaker")
    breaker_cooldown: float = Field(default=300.0, gt=0, description="seconds an open breaker waits before a probe")
    auto_pause_after: float = Field(default=86400.0, gt=0, description="seconds of only failures before an outlet is paused")
    urgent_deadline: float = Field(default=10.0, gt=0, description="minutes an urgent notice has to reach every outlet")
    alert_interval: float = Field(default=300.0, ge=0, description="seconds between two operator alert messages at least")
    attempt_retention_days: float = Field(default=90.0, gt=0, description="days attempts are kept in the log")
    public_url: str | None = Field(default=None, description="the bot's web server as districts reach it "
                                   "(https://piyao.example.gov.cn): the base of receipt links; without it, none")
    receipt_key: SecretStr | None = Field(default=None, description="the key receipt links are signed with (at least "
                                          "32 characters; the same in every process)")
    receipt_ttl: str = Field(default="7d", description="how long a receipt link works")
    publish_within: str = Field(default="24h", description="how long a district has to republish a notice: a "
                                "reminder halfway, an operator alert at the end")
    urgent_publish_within: str = Field(default="2h", description="publish_within for urgent notices")
    language: Literal["zh_Hans", "en"] = Field(default="zh_Hans", description="the pages' language when the "
                                               "browser asks for neither Chinese nor English")
    session_secret: SecretStr | None = Field(default=None, description="the key that signs the pages' session "
                                             "cookies; without it a random one (sessions end at a restart)")
    session_hours: float = Field(default=12.0, gt=0, description="hours a pages login lasts")
    review_stages: int = Field(default=0, ge=0, le=3, description="sign-offs by different reviewers a notice "
                               "needs before it is sent (先审后发: 初审, 复审, 终审); 0: a submitted notice is approved")
    review_alert_after: float = Field(default=240.0, gt=0, description="minutes a notice may wait for its next "
                                      "review stage before it is flagged and the operators are alerted")
    local_roles: str = Field(default="", description="roles of local users for the CLI's review commands, "
                             "name=role separated by commas (zhang=reviewer,li=operator); DEBUNKBOT_TOKEN wins")
    token: SecretStr | None = Field(default=None, description="an API token the CLI acts with (its holder's name "
                                    "and role), instead of the local user")
    log_format: Literal["text", "json"] = Field(default="text", description="the log on stderr: readable "
                                                "lines, or one JSON object per line")

    @field_validator("retry_schedule", "urgent_retry_schedule")
    @classmethod
    def _schedule_is_seconds(cls, value: str, info: ValidationInfo) -> str:
        name = f"DEBUNKBOT_{(info.field_name or '').upper()}"
        try:
            delays = [float(part) for part in value.split(",") if part.strip()]
        except ValueError:
            raise ValueError(f"{name} must be seconds separated by commas, got {value!r}") from None
        if any(delay < 0 for delay in delays):
            raise ValueError(f"{name} has a negative delay: {value!r}")
        return value

    @field_validator("receipt_ttl", "publish_within", "urgent_publish_within")
    @classmethod
    def _is_duration(cls, value: str, info: ValidationInfo) -> str:
        parse_duration(value, f"DEBUNKBOT_{(info.field_name or '').upper()}")
        return value

    @field_validator("public_url")
    @classmethod
    def _is_base_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if not value.startswith(("https://", "http://")) or any(c in value for c in "?# \t\n"):
            raise ValueError(f"DEBUNKBOT_PUBLIC_URL must be an http(s) URL without a query, such as "
                             f"https://piyao.example.gov.cn, got {value!r}")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _receipts_have_a_key(self) -> Settings:
        key = self.receipt_key.get_secret_value() if self.receipt_key else ""
        if self.public_url and len(key) < 32:
            raise ValueError("DEBUNKBOT_PUBLIC_URL is set, so receipt links are signed: set DEBUNKBOT_RECEIPT_KEY to "
                             "at least 32 random characters, the same in every process (python -c 'import secrets; "
                             "print(secrets.token_urlsafe(32))')")
        return self

    @property
    def receipt_lifetime(self) -> timedelta:
        return parse_duration(self.receipt_ttl)

    @property
    def publish_windows(self) -> tuple[timedelta, timedelta]:
        """(normal, urgent) publish_within."""
        return parse_duration(self.publish_within), parse_duration(self.urgent_publish_within)

    @field_validator("http_bind")
    @classmethod
    def _bind_is_host_and_port(cls, value: str) -> str:
        parse_bind(value)
        return value

    @property
    def http_host(self) -> str:
        return parse_bind(self.http_bind)[0]

    @property
    def http_port(self) -> int:
        return parse_bind(self.http_bind)[1]

    @property
    def retry_delays(self) -> tuple[float, ...]:
        return tuple(float(part) for part in self.retry_schedule.split(",") if part.strip())

    @property
    def urgent_retry_delays(self) -> tuple[float, ...]:
        return tuple(float(part) for part in self.urgent_retry_schedule.split(",") if part.strip())
