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
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    ValidationInfo,
    field_validator,
    model_validator,
)

from bot.regions import CITYWIDE, RegionTable, chongqing_today


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
    def sentence(self) -> str:
        """What every channel says of the claim: the one place these sentences are written."""
        return {"false": "经核实，网传信息系谣言。", "misleading": "经核实，网传信息不实。",
                "misconception": "经核实，该说法属于认识误区。",
                "unproven": "经核实，该信息目前未经证实，请勿转发。"}[self.value]

    @property
    def english(self) -> str:
        """schema.org ClaimReview's reviewRating.alternateName in English."""
        return {"false": "False", "misleading": "Misleading", "misconception": "Misconception",
                "unproven": "Unproven"}[self.value]


class Urgency(StrEnum):
    normal = "normal"
    urgent = "urgent"


def _known_region(name: str, info: ValidationInfo) -> str:
    """A region name or alias, resolved against the table in the validation context, if any.

    The day that decides what a name means is Chongqing's (``now`` in the context), never the machine's.
    """
    table: RegionTable | None = (info.context or {}).get("regions")
    if table is None:
        return name
    return table.resolve(name, chongqing_today((info.context or {}).get("now")))  # UnknownRegion is a ValueError


UNPRINTABLE = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f"  # C0 (tab, LF, CR aside), DEL, C1
    "\u00ad\u061c\u180e\u200b\u200c\u200e\u200f"  # soft hyphen, zero-width, bidi marks (ZWJ U+200D joins emoji)
    "\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb]"  # line/paragraph separators, bidi embeddings and
)  # isolates, word joiner and invisible operators, BOM, interlinear annotation: https://www.unicode.org/reports/tr9/
"""Characters no field may hold: no platform shows them, XML forbids C0, PostgreSQL refuses NUL, and bidi
controls or invisible characters make a text read differently from what it holds. One rule for intake (which
refuses them) and rendering (which drops them from older stored text)."""

_INVISIBLE = frozenset("\u200d\u3164\u115f\u1160\uffa0\u2800\ufe0e\ufe0f")  # joiners, fillers, variation selectors


def _printable(value: str, info: ValidationInfo) -> str:
    """No control, bidi or invisible characters, and at least one visible character (text read back from the
    store was checked when it came in, by the rules of its day, and is taken as it is)."""
    if (info.context or {}).get("stored"):
        return value
    if found := UNPRINTABLE.search(value):
        raise ValueError(f"contains the invisible or control character U+{ord(found[0]):04X} "
                         f"at position {found.start() + 1}; remove it")
    if all(c.isspace() or c in _INVISIBLE for c in value):
        raise ValueError("has no visible character")
    return value


def _now_and_utc(value: datetime, info: ValidationInfo) -> tuple[datetime, datetime]:
    """The validation's clock (``now`` in the context, for tests) and ``value`` in UTC, or a ValueError."""
    now: datetime = (info.context or {}).get("now") or datetime.now(UTC)
    try:
        return now, value.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{value.isoformat()} is out of range") from None


def _plausible_time(value: datetime, info: ValidationInfo) -> datetime:
    """An embargo at most a year ahead, and a time every store can hold."""
    if (info.context or {}).get("stored"):
        return value
    now, utc = _now_and_utc(value, info)
    if utc.year < 2000:
        raise ValueError(f"{value.isoformat()} is before 2000; write the time the notice may be published")
    if utc > now + timedelta(days=366):
        raise ValueError(f"{value.isoformat()} is more than a year ahead; an embargo may be at most a year long")
    return value


def Text(max_length: int) -> Any:
    """Non-blank printable text (surrounding whitespace stripped) of at most ``max_length`` characters."""
    return Annotated[str, Field(min_length=1, max_length=max_length), AfterValidator(_printable)]


RegionName = Annotated[str, Field(min_length=1, max_length=40), AfterValidator(_printable),
                       AfterValidator(_known_region)]


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
    publish_at: Annotated[AwareDatetime, AfterValidator(_plausible_time)] | None = None
    expires_at: AwareDatetime | None = None  # after it, deliveries not yet made are cancelled (reason "expired")
    sources: Annotated[tuple[Source, ...], Field(max_length=20)] = ()
    # a correction (更正) of the notice already stored under this ref: what the editor says changed, and why.
    # Neither is the notice's content (nor its hash): they are kept with the version they make.
    correct: bool = False
    correction_note: Text(2000) | None = None

    @model_validator(mode="after")
    def _correction_says_why(self) -> Notice:
        if self.correct and not self.correction_note:
            raise ValueError("correct: true needs a correction_note saying what was wrong and what changed")
        return self

    @field_validator("regions")
    @classmethod
    def _citywide_or_distinct(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        """Omitted or naming 全市 means citywide; otherwise each unit once, in the editor's order."""
        if not names:
            raise ValueError("an empty list; omit the field or write [全市] for a citywide notice")
        if CITYWIDE in names:
            return (CITYWIDE,)
        return tuple(dict.fromkeys(names))

    @field_validator("expires_at")
    @classmethod
    def _expires_later(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        """After the notice is published, and not already past when it is submitted."""
        if value is None or (info.context or {}).get("stored"):
            return value
        now, utc = _now_and_utc(value, info)
        publish_at = info.data.get("publish_at")
        if publish_at is not None and utc <= publish_at:
            raise ValueError(f"{value.isoformat()} is not after publish_at ({publish_at.isoformat()}); "
                             "a notice must be published before it expires")
        if utc <= now:
            raise ValueError(f"{value.isoformat()} is already past; a notice that has expired would reach no outlet")
        if utc > now + timedelta(days=3660):
            raise ValueError(f"{value.isoformat()} is more than ten years ahead; omit expires_at for a notice "
                             "that does not expire")
        return value

    @property
    def citywide(self) -> bool:
        return self.regions == (CITYWIDE,)

    def content_hash(self) -> str:
        """Same notice, same hash: re-submitting identical content is a no-op."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    def canonical_json(self) -> str:
        data = self.model_dump(mode="json", exclude={"correct", "correction_note"})
        if data["expires_at"] is None:  # notices stored before expires_at existed keep their hash
            del data["expires_at"]
        return json.dumps(data, ensure_ascii=False, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_stored(cls, payload: str | dict[str, Any]) -> Notice:
        data = json.loads(payload) if isinstance(payload, str) else payload
        return cls.model_validate(data, context={"stored": True})


# The fields a correction may change, as a reader of a 更正 names them, in the order they are listed.
FIELD_LABELS = {"title": "标题", "rumour": "网传内容", "verdict": "核实结论", "truth": "事实", "authority": "核实单位",
                "regions": "涉及区域", "category": "类别", "sources": "来源", "urgency": "紧急程度",
                "publish_at": "发布时间", "expires_at": "有效期"}


def differences(old: Notice, new: Notice) -> list[tuple[str, Any, Any]]:
    """The fields that differ between two versions of a notice, as (field, old value, new value) in JSON form.

    >>> [f for f, _, _ in differences(notice, notice.model_copy(update={"truth": "另一说法"}))]  # doctest: +SKIP
    ['truth']
    """
    before, after = old.model_dump(mode="json"), new.model_dump(mode="json")
    return [(field, before[field], after[field]) for field in FIELD_LABELS if before[field] != after[field]]


class Change(BaseModel):
    """What a delivery carries beyond an ordinary post: a correction (更正) of the version the outlet has, or the
    retraction (撤回) of the notice. ``note``: the correction_note, or the retraction's reason."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["correction", "retraction"]
    version: int  # the version it carries (a retraction: the latest)
    previous_version: int | None = None  # the version the outlet has (a correction)
    previous_message_id: str | None = None  # that version's webhook-id at this outlet
    note: str
    changed: tuple[str, ...] = ()  # the fields the correction changed (FIELD_LABELS' keys)
    at: datetime  # when it was corrected or retracted

    @property
    def changed_labels(self) -> list[str]:
        return [FIELD_LABELS[f] for f in self.changed]
