"""A debunk notice (辟谣通报), as editors write it and as the store keeps it.

    >>> notice = Notice.model_validate({
    ...     "ref": "cq-2026-001", "title": "网传某区自来水有毒系谣言",
    ...     "rumour": "自来水有毒", "truth": "水质检测全部合格", "verdict": "false",
    ...     "authority": "重庆市水务局",
    ... })
    >>> notice.verdict.label
    '谣言'
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import date
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    ValidationInfo,
    field_validator,
)

from bot.regions import CITYWIDE, RegionTable


class Verdict(StrEnum):
    false = "false"
    misleading = "misleading"
    misconception = "misconception"
    unproven = "unproven"

    @property
    def label(self) -> str:
        """The word a Chinese reader sees."""
        return {"false": "谣言", "misleading": "不实", "misconception": "误区", "unproven": "未经证实"}[self.value]

    @property
    def english(self) -> str:
        """schema.org ClaimReview's reviewRating.alternateName in English."""
        return {"false": "False", "misleading": "Misleading", "misconception": "Misconception",
                "unproven": "Unproven"}[self.value]


class Urgency(StrEnum):
    normal = "normal"
    urgent = "urgent"


def _known_region(name: str, info: ValidationInfo) -> str:
    """A region name or alias, resolved against the table in the validation context, if any."""
    table: RegionTable | None = (info.context or {}).get("regions")
    if table is None:
        return name
    return table.resolve(name, (info.context or {}).get("on") or date.today())  # UnknownRegion is a ValueError


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _printable(value: str) -> str:
    """No control characters: no platform shows them, XML forbids them, PostgreSQL refuses NUL."""
    if found := _CONTROL.search(value):
        raise ValueError(f"contains the control character U+{ord(found[0]):04X} at position {found.start() + 1}")
    return value


def Text(max_length: int) -> Any:
    """Non-blank printable text (surrounding whitespace stripped) of at most ``max_length`` characters."""
    return Annotated[str, Field(min_length=1, max_length=max_length), AfterValidator(_printable)]


RegionName = Annotated[str, Field(min_length=1, max_length=40), AfterValidator(_known_region)]


class Source(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    title: Text(200)
    url: HttpUrl


class Notice(BaseModel):
    """One approved notice. Validate with ``context={"regions": table}`` to check region names."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    ref: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]
    title: Text(120)
    rumour: Text(2000)
    truth: Text(5000)
    verdict: Verdict
    authority: Text(200)
    regions: Annotated[tuple[RegionName, ...], Field(max_length=50)] = (CITYWIDE,)
    category: Text(40) | None = None
    urgency: Urgency = Urgency.normal
    publish_at: AwareDatetime | None = None
    sources: Annotated[tuple[Source, ...], Field(max_length=20)] = ()

    @field_validator("regions")
    @classmethod
    def _citywide_or_distinct(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        """Omitted or naming 全市 means citywide; otherwise each unit once, in the editor's order."""
        if not names or CITYWIDE in names:
            return (CITYWIDE,)
        return tuple(dict.fromkeys(names))

    @property
    def citywide(self) -> bool:
        return self.regions == (CITYWIDE,)

    def content_hash(self) -> str:
        """Same notice, same hash: re-submitting identical content is a no-op."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    def canonical_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), ensure_ascii=False, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_stored(cls, payload: str | dict[str, Any]) -> Notice:
        data = json.loads(payload) if isinstance(payload, str) else payload
        return cls.model_validate(data)
