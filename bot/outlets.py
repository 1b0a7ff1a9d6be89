"""The outlet matrix: who gets a notice, over which channel, with which secret.

The whole file is validated before anything is sent; one bad entry refuses start-up
and the error names the outlet id and the field.

    >>> matrix = load_matrix(Path("config/outlets.yaml"), environ={...})  # doctest: +SKIP
    >>> [o.id for o in matrix.concerned_by(notice)]                        # doctest: +SKIP
    >>> [(r.outlet.id, r.why) for r in matrix.reach(notice) if not r.reached]  # doctest: +SKIP

Who gets a notice (``reach``, the one place that decides it): by default a citywide outlet gets every
notice and a district outlet citywide notices and those naming its region. An outlet may say instead
``receive: all``, or ``regions: [...]`` and/or ``categories: [...]``: citywide notices, plus those that
match every filter it sets.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from bot.model import Notice, RegionName, Text
from bot.regions import CITYWIDE, RegionTable, SafeLoader, Tier, chongqing_today
from channels import CHANNELS, AlertChannel, AnyChannel, RateLimit


class MatrixError(ValueError):
    """The outlet matrix cannot be used; nothing was loaded and nothing was sent. ``problems``: one line per
    problem with an entry, ``outlet 'ID' field 'FIELD': what is wrong`` (empty when the file as a whole is)."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


class IncompleteMatrix(MatrixError):
    """The matrix is right but the environment lacks outlet secrets: configuration, not a mistake in a file."""

    def __init__(self, path: Path, missing: list[str], unset: list[str] | None = None) -> None:
        self.missing = missing
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        super().__init__(f"{path}: {len(missing)} outlet secret(s) not set in the environment: {shown}", unset)


class Outlet(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
    name: Annotated[str, Field(min_length=1, max_length=100)]
    tier: Tier
    region: str = CITYWIDE
    channel: str
    allow_private: bool = False  # url may be a link-local or private address (before url: its check reads this)
    url: Annotated[str, Field(pattern=r"^https?://[^\s]+$")] | None = None
    secret_env: Annotated[str, Field(pattern=r"^[A-Z_][A-Z0-9_]*$")] | None = None
    rate_limits: tuple[str, ...] | None = None  # e.g. ["20/min"]; default: the channel's
    options: dict[str, Any] = Field(default_factory=dict)
    # targeting, instead of the default (see ``reach``): every notice, or citywide ones plus those matching
    # spelled as a notice's regions and category are; the names are resolved by load_matrix (resolve_regions)
    regions: Annotated[tuple[RegionName, ...], Field(min_length=1, max_length=100)] | None = None
    categories: Annotated[tuple[Text(40), ...], Field(min_length=1, max_length=100)] | None = None
    receive: Literal["all"] | None = None  # after the filters: its check reads them

    @field_validator("receive")
    @classmethod
    def _all_or_filters(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value == "all" and (info.data.get("regions") or info.data.get("categories")):
            raise ValueError("receive: all takes every notice; remove it, or remove regions and categories")
        return value

    @field_validator("rate_limits")
    @classmethod
    def _rate_limits_parse(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for text in value or ():
            RateLimit.parse(text)
        return value

    def limits(self, channels: Mapping[str, AnyChannel] = CHANNELS) -> tuple[RateLimit, ...]:
        """This outlet's rate limits: its own if set, else its channel's defaults."""
        if self.rate_limits is not None:
            return tuple(RateLimit.parse(text) for text in self.rate_limits)
        return tuple(channels[self.channel].rate_limits)

    @field_validator("url")
    @classmethod
    def _url_is_public(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value and (problem := _private_address(value, info.data.get("allow_private", False))):
            raise ValueError(f"{value!r} {problem}")
        return value

    @field_validator("channel")
    @classmethod
    def _channel_is_known(cls, value: str, info: ValidationInfo) -> str:
        channels = (info.context or {}).get("channels", CHANNELS)  # load_matrix passes its registry
        if value not in channels:
            raise ValueError(f"unknown channel {value!r}; known: {', '.join(sorted(channels))}")
        return value


# Where a notice must not be posted unless an outlet says ``allow_private: true``: link-local addresses, where
# clouds serve instance metadata and credentials (169.254.169.254 and fd00:ec2::254,
# https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/instancedata-data-retrieval.html; metadata.google.internal,
# https://cloud.google.com/compute/docs/metadata/querying-metadata), and private networks (RFC 1918, RFC 4193).
# Loopback stays allowed: a relay on the bot's own machine is a real set-up, and the demo's outlets are there.
_METADATA_HOSTS = {"metadata.google.internal", "metadata.goog"}


def _private_address(url: str, allow_private: bool) -> str | None:
    """Why ``url`` may not be posted to, or None. Names are not resolved: an address written as one is checked."""
    if allow_private:
        return None
    host = (urlsplit(url).hostname or "").rstrip(".").lower()
    if host in _METADATA_HOSTS:
        return "is a cloud metadata service; set allow_private: true on this outlet if that is really intended"
    try:
        address = ipaddress.ip_address(int(host) if host.isdigit() else host)  # 2852039166 is 169.254.169.254
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    if address.is_loopback:
        return None
    if address.is_link_local or address.is_private or address.is_unspecified or address.is_reserved:
        return ("is a link-local, cloud-metadata or private address; set allow_private: true on this outlet "
                "if that is really intended")
    return None


class _MatrixFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    outlets: Annotated[list[dict[str, Any]], Field(min_length=1)]
    operators: list[dict[str, Any]] = Field(default_factory=list)  # where operator alerts go


@dataclass(frozen=True)
class OutletMatrix:
    outlets: tuple[Outlet, ...]
    _secrets: Mapping[str, str] = field(default_factory=dict, repr=False)
    operators: tuple[Outlet, ...] = ()  # operator channels: alerts only, never notices
    channels: Mapping[str, AnyChannel] = field(default_factory=lambda: CHANNELS, repr=False)  # the registry

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_id", {outlet.id: outlet for outlet in self.outlets})

    by_id: dict[str, Outlet] = field(init=False, repr=False)

    def __len__(self) -> int:
        return len(self.outlets)

    def rate_limits(self) -> dict[str, tuple[RateLimit, ...]]:
        """outlet id -> its rate limits, for the outlets that have any."""
        return {o.id: limits for o in self.outlets if (limits := o.limits(self.channels))}

    def secret_for(self, outlet_id: str) -> str | None:
        """The outlet's secret, from the environment variable its entry names. Never log it."""
        return self._secrets.get(outlet_id)

    def concerned_by(self, notice: Notice) -> list[Outlet]:
        """The outlets the notice goes to (``reach`` says why, and why not the others)."""
        return [r.outlet for r in self.reach(notice) if r.reached]

    def reach(self, notice: Notice) -> list[Reach]:
        """For every outlet, in matrix order: whether the notice goes to it, and why (or why not)."""
        return [reach(outlet, notice) for outlet in self.outlets]


@dataclass(frozen=True)
class Reach:
    """Whether a notice goes to an outlet, and why, in words a district editor reads."""

    outlet: Outlet
    reached: bool
    why: str


def reach(outlet: Outlet, notice: Notice) -> Reach:
    """Whether ``notice`` goes to ``outlet``, and why: the one place targeting is decided.

    >>> reach(yuzhong_centre, notice_for_wanzhou).why                    # doctest: +SKIP
    'for 万州区 only, not its region 渝中区'
    """
    where = "、".join(notice.regions)
    if outlet.receive == "all":
        return Reach(outlet, True, "receive: all")
    if notice.citywide:
        return Reach(outlet, True, "citywide notice")
    if outlet.regions is None and outlet.categories is None:  # the default
        if outlet.region == CITYWIDE:
            return Reach(outlet, True, "citywide outlet: takes every notice")
        if outlet.region in notice.regions:
            return Reach(outlet, True, f"names its region {outlet.region}")
        return Reach(outlet, False, f"for {where} only, not its region {outlet.region}")
    matched, missed = [], []
    if outlet.regions is not None:
        if found := [r for r in notice.regions if r in outlet.regions]:
            matched.append(f"names {'、'.join(found)} (its regions filter)")
        else:
            missed.append(f"for {where} only, none in its regions filter ({'、'.join(outlet.regions)})")
    if outlet.categories is not None:
        if notice.category in outlet.categories:
            matched.append(f"category {notice.category} (its categories filter)")
        else:
            missed.append((f"category {notice.category}" if notice.category else "no category") +
                          f", not in its categories filter ({'、'.join(outlet.categories)})")
    return Reach(outlet, False, "; ".join(missed)) if missed else Reach(outlet, True, "; ".join(matched))


def resolve_regions(outlet: Outlet, table: RegionTable, day: date) -> tuple[Outlet, list[tuple[str, str]]]:
    """The outlet with its region and regions filter resolved on ``day`` (aliases, merged districts), as a
    notice's regions are; and the problems, as (field, message), for names the table does not know."""
    problems: list[tuple[str, str]] = []
    try:
        region = table.resolve(outlet.region, day)
    except ValueError as exc:
        region = outlet.region
        problems.append(("region", str(exc)))
    regions = outlet.regions
    if regions is not None:
        resolved = []
        for index, name in enumerate(regions):
            try:
                resolved.append(table.resolve(name, day))
            except ValueError as exc:
                resolved.append(name)
                problems.append((f"regions.{index}", str(exc)))
        regions = tuple(dict.fromkeys(resolved))
        if CITYWIDE in regions:
            problems.append(("regions", f"names {CITYWIDE}; citywide notices reach every outlet anyway: list "
                                        "districts, or write receive: all for every notice"))
    if region == outlet.region and regions == outlet.regions:
        return outlet, problems  # not copied: a copy of each of 2,000 outlets cost a daemon's start up to 80 ms
    return outlet.model_copy(update={"region": region, "regions": regions}), problems


def load_matrix(
    path: Path, regions: RegionTable, environ: Mapping[str, str] | None = None, on: date | None = None,
    require_secrets: bool = True,
    channels: Mapping[str, AnyChannel] = CHANNELS,
    public_ip: str | None = None,
) -> OutletMatrix:
    """Load and check every entry against the channel registry ``channels``; raise MatrixError listing every
    problem, by outlet id and field, or IncompleteMatrix when all that is wrong is secrets missing from the
    environment (``require_secrets`` False: a matrix to list, never to send with).

    ``public_ip`` (DEBUNKBOT_PUBLIC_IP) is the machine's address for channels that must send it (Weibo's
    ``rip``); an outlet's own ``options.rip`` wins.
    """
    environ = os.environ if environ is None else environ
    day = on or chongqing_today()
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=SafeLoader)
    except FileNotFoundError:
        raise MatrixError(f"{path}: outlet matrix not found (set DEBUNKBOT_OUTLETS)") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise MatrixError(f"{path}: not valid UTF-8 YAML: {_one_line(exc)}") from None
    try:
        matrix_file = _MatrixFile.model_validate(raw)
    except ValidationError as exc:
        if isinstance(raw, dict) and raw.get("outlets") == []:
            raise MatrixError(f"{path}: 'outlets:' is empty; a notice would go nowhere") from None
        raise MatrixError(f"{path}: expected a top-level 'outlets:' list ({_one_line(exc)})") from None
    # operator channels are entries like any outlet; tier and region do not matter for them
    entries = matrix_file.outlets + [
        {"tier": "other", "region": CITYWIDE, **e} if isinstance(e, dict) else e for e in matrix_file.operators
    ]

    problems: list[str] = []
    missing: list[str] = []  # secret variables not set
    unset: list[str] = []  # and where
    outlets: list[Outlet] = []
    secrets: dict[str, str] = {}
    seen: set[str] = set()
    operator_ids: set[str] = set()
    for index, entry in enumerate(entries):
        kind = "operator" if index >= len(matrix_file.outlets) else "outlet"
        label = f"{kind} {entry.get('id')!r}" if isinstance(entry, dict) and entry.get("id") else f"outlet #{index + 1}"
        try:
            outlet = Outlet.model_validate(entry, context={"channels": channels})
        except ValidationError as exc:
            problems += [f"{label} field {_loc(err['loc'])!r}: {_msg(err)}" for err in exc.errors()]
            continue
        outlet, unknown = resolve_regions(outlet, regions, day)
        problems += [f"{label} field {fld!r}: {msg}" for fld, msg in unknown]
        if outlet.id in seen:
            problems.append(f"{label} field 'id': duplicate id")
        seen.add(outlet.id)
        channel = channels[outlet.channel]
        if public_ip and getattr(channel, "sends_public_ip", False) and "rip" not in outlet.options:
            outlet = outlet.model_copy(update={"options": {**outlet.options, "rip": public_ip}})
        problems += [f"{label} field {fld!r}: {msg}" for fld, msg in channel.check_outlet(outlet)]
        if kind == "operator":
            operator_ids.add(outlet.id)
            if not isinstance(channel, AlertChannel):
                problems.append(f"{label} field 'channel': channel {outlet.channel!r} cannot carry operator alerts")
        if outlet.secret_env:
            secret = environ.get(outlet.secret_env)
            if not secret:
                missing.append(outlet.secret_env)
                unset.append(f"{label} field 'secret_env': environment variable {outlet.secret_env} is not set")
            else:
                read_secret = getattr(channel, "read_secret", None)  # the credential's shape, checked once here
                try:
                    secrets[outlet.id] = read_secret(secret) if read_secret else secret
                except ValueError as exc:  # the message names the shape, never the secret
                    problems.append(f"{label} field 'secret_env': {outlet.secret_env} {exc}")
        outlets.append(outlet)
    if problems:
        problems += unset
        raise MatrixError(f"{path}: " + "; ".join(problems) if len(problems) == 1
                          else f"{path}: {len(problems)} problems:\n  " + "\n  ".join(problems), problems)
    if missing and require_secrets:
        raise IncompleteMatrix(path, missing, unset)
    return OutletMatrix(tuple(o for o in outlets if o.id not in operator_ids), secrets,
                        tuple(o for o in outlets if o.id in operator_ids), channels)


def _loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(entry)"


def _msg(err: Any) -> str:
    if err["type"] == "too_short" and err["input"] in ([], ()):
        return "an empty list; omit the field (the default targeting) or list at least one"
    if err["type"] == "tuple_type":
        return f"expected a list, such as [{err['input']}]" if isinstance(err["input"], str) else "expected a list"
    return str(err["msg"])


def _one_line(exc: Exception) -> str:
    return re.sub(r"\s+", " ", str(exc)).strip()[:300]
