"""The outlet matrix: who gets a notice, over which channel, with which secret.

The whole file is validated before anything is sent; one bad entry refuses start-up
and the error names the outlet id and the field.

    >>> matrix = load_matrix(Path("config/outlets.yaml"), environ={...})  # doctest: +SKIP
    >>> [o.id for o in matrix.concerned_by(notice)]                        # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, ClassVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bot.model import Notice
from bot.regions import CITYWIDE, RegionTable

SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when built in: a big matrix loads ~10x faster


class Tier(StrEnum):
    city = "city"
    district = "district"
    other = "other"


@dataclass(frozen=True)
class RateLimit:
    """At most ``count`` sends to one outlet in any ``seconds``-long window.

    >>> RateLimit.parse("20/min")
    RateLimit(count=20, seconds=60.0)
    """

    count: int
    seconds: float

    UNITS: ClassVar[dict[str, float]] = {"s": 1.0, "sec": 1.0, "min": 60.0, "h": 3600.0}

    @classmethod
    def parse(cls, text: str) -> RateLimit:
        match = re.fullmatch(r"(\d+)/(\d+(?:\.\d+)?)?(s|sec|min|h)", text.replace(" ", ""))
        if not match or int(match[1]) < 1:
            raise ValueError(f"rate limit {text!r} should look like '20/min', '5/s' or '100/10min'")
        return cls(int(match[1]), float(match[2] or 1) * cls.UNITS[match[3]])


class MatrixError(ValueError):
    """The outlet matrix cannot be used; nothing was loaded and nothing was sent."""


class Outlet(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
    name: Annotated[str, Field(min_length=1, max_length=100)]
    tier: Tier
    region: str = CITYWIDE
    channel: str
    url: Annotated[str, Field(pattern=r"^https?://[^\s]+$")] | None = None
    secret_env: Annotated[str, Field(pattern=r"^[A-Z_][A-Z0-9_]*$")] | None = None
    rate_limits: tuple[str, ...] | None = None  # e.g. ["20/min"]; default: the channel's
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("rate_limits")
    @classmethod
    def _rate_limits_parse(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for text in value or ():
            RateLimit.parse(text)
        return value

    def limits(self) -> tuple[RateLimit, ...]:
        """This outlet's rate limits: its own if set, else its channel's defaults."""
        if self.rate_limits is not None:
            return tuple(RateLimit.parse(text) for text in self.rate_limits)
        from channels import CHANNELS

        return tuple(CHANNELS[self.channel].rate_limits)

    @field_validator("channel")
    @classmethod
    def _channel_is_known(cls, value: str) -> str:
        from channels import CHANNELS

        if value not in CHANNELS:
            raise ValueError(f"unknown channel {value!r}; known: {', '.join(sorted(CHANNELS))}")
        return value


class _MatrixFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    outlets: list[dict[str, Any]]
    operators: list[dict[str, Any]] = Field(default_factory=list)  # where operator alerts go


@dataclass(frozen=True)
class OutletMatrix:
    outlets: tuple[Outlet, ...]
    _secrets: Mapping[str, str] = field(default_factory=dict, repr=False)
    operators: tuple[Outlet, ...] = ()  # operator channels: alerts only, never notices

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_id", {outlet.id: outlet for outlet in self.outlets})

    by_id: dict[str, Outlet] = field(init=False, repr=False)

    def __len__(self) -> int:
        return len(self.outlets)

    def rate_limits(self) -> dict[str, tuple[RateLimit, ...]]:
        """outlet id -> its rate limits, for the outlets that have any."""
        return {o.id: limits for o in self.outlets if (limits := o.limits())}

    def secret_for(self, outlet_id: str) -> str | None:
        """The outlet's secret, from the environment variable its entry names. Never log it."""
        return self._secrets.get(outlet_id)

    def concerned_by(self, notice: Notice) -> list[Outlet]:
        """Citywide outlets get every notice; a district outlet gets citywide ones and its own region's."""
        return [o for o in self.outlets if notice.citywide or o.region == CITYWIDE or o.region in notice.regions]


def load_matrix(
    path: Path, regions: RegionTable, environ: Mapping[str, str] | None = None, on: date | None = None,
    public_ip: str | None = None,
) -> OutletMatrix:
    """Load and check every entry; raise MatrixError listing every problem, by outlet id and field.

    ``public_ip`` (DEBUNKBOT_PUBLIC_IP) is the machine's address for channels that must send it (Weibo's
    ``rip``); an outlet's own ``options.rip`` wins.
    """
    environ = os.environ if environ is None else environ
    day = on or date.today()
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=SafeLoader)
    except FileNotFoundError:
        raise MatrixError(f"{path}: outlet matrix not found (set DEBUNKBOT_OUTLETS)") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise MatrixError(f"{path}: not valid UTF-8 YAML: {_one_line(exc)}") from None
    try:
        matrix_file = _MatrixFile.model_validate(raw)
    except ValidationError as exc:
        raise MatrixError(f"{path}: expected a top-level 'outlets:' list ({_one_line(exc)})") from None
    # operator channels are entries like any outlet; tier and region do not matter for them
    entries = matrix_file.outlets + [
        {"tier": "other", "region": CITYWIDE, **e} if isinstance(e, dict) else e for e in matrix_file.operators
    ]

    problems: list[str] = []
    outlets: list[Outlet] = []
    secrets: dict[str, str] = {}
    seen: set[str] = set()
    operator_ids: set[str] = set()
    for index, entry in enumerate(entries):
        kind = "operator" if index >= len(matrix_file.outlets) else "outlet"
        label = f"{kind} {entry.get('id')!r}" if isinstance(entry, dict) and entry.get("id") else f"outlet #{index + 1}"
        try:
            outlet = Outlet.model_validate(entry)
        except ValidationError as exc:
            problems += [f"{label} field {_loc(err['loc'])!r}: {err['msg']}" for err in exc.errors()]
            continue
        try:
            outlet = outlet.model_copy(update={"region": regions.resolve(outlet.region, day)})
        except ValueError as exc:
            problems.append(f"{label} field 'region': {exc}")
        if outlet.id in seen:
            problems.append(f"{label} field 'id': duplicate id")
        seen.add(outlet.id)
        from channels import CHANNELS

        channel = CHANNELS[outlet.channel]
        if public_ip and getattr(channel, "sends_public_ip", False) and "rip" not in outlet.options:
            outlet = outlet.model_copy(update={"options": {**outlet.options, "rip": public_ip}})
        problems += [f"{label} field {fld!r}: {msg}" for fld, msg in channel.check_outlet(outlet)]
        if kind == "operator":
            operator_ids.add(outlet.id)
            if not hasattr(channel, "render_alert"):
                problems.append(f"{label} field 'channel': channel {outlet.channel!r} cannot carry operator alerts")
        if outlet.secret_env:
            secret = environ.get(outlet.secret_env)
            if not secret:
                problems.append(f"{label} field 'secret_env': environment variable {outlet.secret_env} is not set")
            else:
                read_secret = getattr(channel, "read_secret", None)  # the credential's shape, checked once here
                try:
                    secrets[outlet.id] = read_secret(secret) if read_secret else secret
                except ValueError as exc:  # the message names the shape, never the secret
                    problems.append(f"{label} field 'secret_env': {outlet.secret_env} {exc}")
        outlets.append(outlet)
    if problems:
        raise MatrixError(f"{path}: " + "; ".join(problems) if len(problems) == 1
                          else f"{path}: {len(problems)} problems:\n  " + "\n  ".join(problems))
    return OutletMatrix(tuple(o for o in outlets if o.id not in operator_ids), secrets,
                        tuple(o for o in outlets if o.id in operator_ids))


def _loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(entry)"


def _one_line(exc: Exception) -> str:
    return re.sub(r"\s+", " ", str(exc)).strip()[:300]
