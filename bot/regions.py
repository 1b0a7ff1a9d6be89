"""Chongqing's district-level units, dated: which names editors may use and what they mean on a day.

The table is data (config/regions.yaml); this module loads it, refuses a bad one, and resolves
names. A unit that was abolished resolves to its successor from the day of the change.

    >>> table = RegionTable.load(Path("config/regions.yaml"))
    >>> table.resolve("渝中", on=date(2026, 11, 27))
    '渝中区'
    >>> table.resolve("江北区", on=date(2025, 6, 1)), table.resolve("江北区", on=date(2026, 2, 1))
    ('江北区', '两江新区')
    >>> table.resolve("重庆市", on=date(2026, 11, 27)) == CITYWIDE
    True
    >>> len(table.units_on(date(2025, 6, 1))), len(table.units_on(date(2026, 11, 27)))
    (41, 39)
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

# libyaml's loader when PyYAML has it built in (its wheels do): the same documents, ~10x faster to read
SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

CITYWIDE = "全市"
"""The pseudo-region of a notice or outlet that concerns the whole city."""


class Tier(StrEnum):
    """An outlet's level in the 5+41+N matrix: the city's platforms, the district-level media centres, the others."""

    city = "city"
    district = "district"
    other = "other"

CHONGQING = timezone(timedelta(hours=8), "Asia/Shanghai")
"""Chongqing's time: UTC+8 all year (China has had no daylight saving time since 1991), so a fixed offset
is exact and needs no tz database."""


def chongqing_today(now: datetime | None = None) -> date:
    """The date in Chongqing at ``now`` (default: this instant). Dates that decide what a region name means
    are Chongqing's, never the machine's zone.

    >>> chongqing_today(datetime(2026, 1, 24, 19, 0, tzinfo=UTC))  # 03:00 on the 25th in Chongqing
    datetime.date(2026, 1, 25)
    """
    return (now or datetime.now(UTC)).astimezone(CHONGQING).date()


Kind = Literal["district", "county", "autonomous_county", "functional_area"]


class RegionTableError(ValueError):
    """The region table file cannot be used; the message names the file and each bad entry and field."""


class UnknownRegion(ValueError):
    """A name that is neither a unit, an alias, nor citywide on the day asked about."""


@dataclass(frozen=True)
class Region:
    """One district-level unit.

    >>> jiangbei = Region("江北区", "district", ("江北",), valid_until=date(2026, 1, 25), successor="两江新区")
    >>> jiangbei.exists_on(date(2026, 1, 24)), jiangbei.exists_on(date(2026, 1, 25))
    (True, False)
    """

    name: str
    kind: str
    aliases: tuple[str, ...] = ()
    valid_from: date | None = None
    valid_until: date | None = None
    successor: str | None = None
    group: str | None = None  # 主城都市区, 渝东北 or 渝东南: how pages lay the districts out

    def exists_on(self, day: date) -> bool:
        """True from valid_from (included) until valid_until (excluded)."""
        return (self.valid_from is None or self.valid_from <= day) and (
            self.valid_until is None or day < self.valid_until
        )


# The file's shape, in one place. Cross-entry rules (uniqueness, successors) are checked after.
_Name = Annotated[str, Field(min_length=1, max_length=50)]


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: _Name
    kind: Kind
    aliases: list[_Name] = Field(default_factory=list)
    valid_from: date | None = None
    valid_until: date | None = None
    successor: _Name | None = None
    group: _Name | None = None


class _Citywide(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: Literal["全市"]  # the code refers to it as CITYWIDE
    aliases: list[_Name] = Field(default_factory=list)


class _TableFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    citywide: _Citywide
    regions: Annotated[list[_Entry], Field(min_length=1)]


@dataclass(frozen=True)
class RegionTable:
    """The units in file order, plus the names that mean the whole city. Build it with ``load``."""

    regions: tuple[Region, ...]
    citywide_aliases: tuple[str, ...] = ()
    _by_name: dict[str, Region] = field(init=False, repr=False, compare=False)
    _by_any_name: dict[str, Region] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {r.name: r for r in self.regions})
        object.__setattr__(self, "_by_any_name", {n: r for r in self.regions for n in (r.name, *r.aliases)})

    @classmethod
    def load(cls, path: Path) -> RegionTable:
        """Read and check the whole file; raise RegionTableError listing every problem by entry and field.

        >>> RegionTable.load(Path("config/regions.yaml")).resolve("石柱", date(2026, 1, 1))  # doctest: +SKIP
        '石柱土家族自治县'
        """
        try:
            raw = yaml.load(path.read_text(encoding="utf-8"), Loader=SafeLoader)
        except FileNotFoundError:
            raise RegionTableError(f"{path}: region table not found (set DEBUNKBOT_REGIONS)") from None
        # PyYAML raises a bare ValueError for an impossible unquoted date such as 2026-02-30.
        except (yaml.YAMLError, UnicodeDecodeError, ValueError) as exc:
            raise RegionTableError(f"{path}: not valid UTF-8 YAML: {_one_line(exc)}") from None
        if not isinstance(raw, dict):
            raise RegionTableError(f"{path}: expected a mapping with top-level 'citywide:' and 'regions:'")
        try:
            parsed = _TableFile.model_validate(raw)
        except ValidationError as exc:
            raise _refusal(path, [_describe(err, raw) for err in exc.errors()]) from None

        table = cls(
            tuple(
                Region(e.name, e.kind, tuple(e.aliases), e.valid_from, e.valid_until, e.successor, e.group)
                for e in parsed.regions
            ),
            tuple(parsed.citywide.aliases),
        )
        problems = list(_problems(table))
        if problems:
            raise _refusal(path, problems)
        return table

    def resolve(self, name: str, on: date) -> str:
        """The canonical name ``name`` stands for on ``on``: a unit's full name, or CITYWIDE.

        Accepts full names and aliases, ignoring surrounding whitespace. An abolished unit
        resolves to its successor (following the chain). Raises UnknownRegion otherwise.

        >>> RegionTable.load(Path("config/regions.yaml")).resolve(" 渝北 ", on=date(2026, 1, 25))
        '两江新区'
        """
        key = name.strip()
        if key == CITYWIDE or key in self.citywide_aliases:
            return CITYWIDE
        region = self._by_any_name.get(key)
        if region is None:
            raise UnknownRegion(self._unknown(key))
        if region.valid_from is not None and on < region.valid_from:
            raise UnknownRegion(f"unknown region {key!r} on {on}: {region.name} exists from {region.valid_from}")
        # Terminates: load() checks that each successor exists on its predecessor's valid_until,
        # so valid_until strictly increases along a chain and no chain can loop.
        while not region.exists_on(on):
            if region.successor is None:
                raise UnknownRegion(
                    f"unknown region {key!r} on {on}: {region.name} was abolished on {region.valid_until}"
                )
            region = self._by_name[region.successor]
        return region.name

    def units_on(self, day: date) -> list[Region]:
        """The district-level units that exist on ``day``, in file order.

        >>> [u.name for u in RegionTable.load(Path("config/regions.yaml")).units_on(date(2026, 11, 27))][:3]
        ['万州区', '黔江区', '涪陵区']
        """
        return [region for region in self.regions if region.exists_on(day)]

    def _unknown(self, name: str) -> str:
        known = [CITYWIDE, *self.citywide_aliases, *self._by_any_name]
        match = difflib.get_close_matches(name, known, n=1)
        if not match:
            return f"unknown region {name!r}"
        canonical = self._by_any_name[match[0]].name if match[0] in self._by_any_name else CITYWIDE
        return f"unknown region {name!r}; did you mean {canonical!r}?"


def _problems(table: RegionTable) -> Iterator[str]:
    """Rules that span entries: unique names, known successors that exist when they take over."""
    owner: dict[str, str] = {CITYWIDE: CITYWIDE}
    for alias in table.citywide_aliases:
        if alias in owner:
            yield f"citywide field 'aliases': {alias!r} is listed twice"
        owner.setdefault(alias, CITYWIDE)
    for region in table.regions:
        label = f"region {region.name!r}"
        if region.name in owner:
            yield f"{label} field 'name': {region.name!r} is already used by {owner[region.name]}"
        owner.setdefault(region.name, region.name)
    for region in table.regions:
        label = f"region {region.name!r}"
        for index, alias in enumerate(region.aliases):
            if alias == region.name or alias in region.aliases[:index]:
                yield f"{label} field 'aliases': {alias!r} is listed twice"
            elif alias in owner:
                yield f"{label} field 'aliases': {alias!r} is already used by {owner[alias]}"
            owner.setdefault(alias, region.name)
        if region.valid_from and region.valid_until and region.valid_from >= region.valid_until:
            yield f"{label} field 'valid_until': {region.valid_until} is not after valid_from {region.valid_from}"
        if region.successor is None:
            continue
        successor = table._by_name.get(region.successor)
        if region.valid_until is None:
            yield f"{label} field 'successor': a successor needs a valid_until (the day it takes over)"
        elif successor is None:
            yield f"{label} field 'successor': unknown region {region.successor!r} (use a full name from this file)"
        elif not successor.exists_on(region.valid_until):
            yield (f"{label} field 'successor': {successor.name} does not exist on {region.valid_until}, "
                   "the day it should take over")


def _describe(error: Any, raw: dict[str, Any]) -> str:
    """One pydantic error as "region '江北区' field 'valid_until': …", or "field 'citywide.name': …"."""
    loc = error["loc"]
    if len(loc) >= 2 and loc[0] == "regions" and isinstance(loc[1], int):
        entry = raw["regions"][loc[1]]
        name = entry.get("name") if isinstance(entry, dict) else None
        label = f"region {name!r}" if isinstance(name, str) and name.strip() else f"region #{loc[1] + 1}"
        rest = loc[2:]
        return f"{label} field {_dotted(rest)!r}: {error['msg']}" if rest else f"{label}: {error['msg']}"
    return f"field {_dotted(loc)!r}: {error['msg']}"


def _dotted(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc)


def _refusal(path: Path, problems: list[str]) -> RegionTableError:
    if len(problems) == 1:
        return RegionTableError(f"{path}: {problems[0]}")
    return RegionTableError(f"{path}: {len(problems)} problems:\n  " + "\n  ".join(problems))


def _one_line(exc: Exception) -> str:
    return re.sub(r"\s+", " ", str(exc)).strip()[:300]
