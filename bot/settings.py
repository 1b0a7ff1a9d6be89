"""Settings, read from the environment (``DEBUNKBOT_*``) by pydantic-settings only.

    >>> settings = Settings(retry_schedule="1,2")
    >>> settings.retry_delays
    (1.0, 2.0)
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config"
TEMPLATES = ROOT / "templates"


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
