"""Intake: notice files (UTF-8 YAML or JSON, one notice or a list) into the store.

Each file is all or nothing: one bad notice rejects the whole file and nothing of it is
stored, while the valid files beside it are still accepted. Every error names the file and
the field.

    >>> results = submit_files([Path("notices/today.yaml")], store, matrix, regions)  # doctest: +SKIP
    >>> [r.error for r in results if not r.ok]                                         # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import re
import stat
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from bot.model import Notice
from bot.outlets import OutletMatrix
from bot.regions import RegionTable
from bot.store import STORE_FAULTS, Actor, Added, NotCorrectable, RefConflict, ReviewConflict, Store, describe_fault

MAX_FILE_BYTES = 1024 * 1024
MAX_NOTICES = 1000  # per file; the setting DEBUNKBOT_MAX_NOTICES_PER_FILE
MAX_DEPTH = 8  # nesting: a list of notices, a notice, its sources, a source is 4
MAX_ALIASES = 100  # YAML *alias uses in one file
NODES_PER_NOTICE = 100  # a full notice with 20 sources is under 90 YAML nodes, aliases expanded
MAX_ERRORS = 20  # errors reported per file; the rest are counted
SUFFIXES = (".yaml", ".yml", ".json")


class IntakeError(ValueError):
    """A notice file that cannot be accepted. The message names the file and the field."""


@dataclass
class FileResult:
    path: Path
    added: list[Added] = field(default_factory=list)
    error: str | None = None
    deferred: bool = False  # the file may be fine: the store could not take it (full, locked, gone)

    @property
    def ok(self) -> bool:
        return self.error is None


class _TooBig(yaml.MarkedYAMLError):
    pass


class _TextLoader(yaml.SafeLoader):
    """YAML where only strings, lists, maps, null and timestamps exist, and whose cost is bounded.

    Editors write ``verdict: false`` and ``ref: 007``; YAML 1.1 would turn those into a
    boolean and the number 7. Here they stay the text the editor typed. A key written twice is
    an error (YAML says keys are unique; PyYAML would keep the last). Nesting, *alias uses and
    the size of the document with its aliases expanded are capped while composing, before any
    object is built, so a small file cannot cost gigabytes ("billion laughs").
    """

    def __init__(self, stream: str, max_notices: int) -> None:
        super().__init__(stream)
        self.max_notices = max_notices
        self.depth = 0
        self.aliases = 0
        self.weight: dict[int, int] = {}  # id(node) -> nodes it stands for, aliases expanded

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        mark = self.peek_event().start_mark
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                raise _TooBig(None, None, f"more than {MAX_ALIASES} *aliases", mark)
            return super().compose_node(parent, index)
        if self.depth == 1 and isinstance(index, int) and index >= self.max_notices:
            raise _TooBig(None, None, f"more than {self.max_notices:,} notices in one file (the limit is "
                          "DEBUNKBOT_MAX_NOTICES_PER_FILE); split the file", mark)
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _TooBig(None, None, f"nested deeper than {MAX_DEPTH} levels", mark)
        try:
            node = super().compose_node(parent, index)
        finally:
            self.depth -= 1
        children = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else (
            node.value if isinstance(node, yaml.SequenceNode) else [])
        weight = 1 + sum(self.weight.get(id(child), 1) for child in children)
        if weight > NODES_PER_NOTICE * self.max_notices:
            raise _TooBig(None, None, "too large once its aliases are expanded", mark)
        self.weight[id(node)] = weight
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[str, int] = {}
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                if key.value in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key.value!r} written twice (also at line {seen[key.value]})",
                        key.start_mark)
                seen[key.value] = key.start_mark.line + 1
        return super().construct_mapping(node, deep)

    def construct_scalar(self, node: yaml.ScalarNode) -> Any:
        value = super().construct_scalar(node)
        if node.style == ">":  # folding joins lines with a space, which Chinese never has between characters
            value = _CJK_FOLD.sub("", value)
        return value


_TextLoader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag.rsplit(":", 1)[-1] not in ("bool", "int", "float")]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_CJK = "\u2e80-\u2fff\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef"
_CJK_FOLD = re.compile(f"(?<=[{_CJK}]) (?=[{_CJK}])")


def read_notices(
    path: Path, regions: RegionTable, now: datetime | None = None, max_notices: int = MAX_NOTICES
) -> list[Notice]:
    """Parse and validate one file. Raises IntakeError naming the file, the notice and the field.

    ``now`` decides what region names mean (Chongqing's date) and how far an embargo may reach.
    """
    return check_notices(_load(path, max_notices), str(path), regions, now, max_notices, "file")


@dataclass(frozen=True)
class Refusal:
    """One thing wrong with a submitted notice: its place (0-based) in a list of them, its ref when it names one,
    the field (a pydantic location: ``("sources", 0, "url")``; None: the notice as a whole) and what is wrong."""

    index: int
    ref: str | None
    field: tuple[str | int, ...] | None
    message: str

    def words(self, many: bool) -> str:
        """As the CLI says it: ``notice 3 (ref 'cq-1') field 'verdict': …``."""
        where = f"notice {self.index + 1}" if many else "notice"
        if self.ref is not None:
            where += f" (ref {self.ref[:64]!r})"
        if self.field is None:
            return f"{where}: {self.message}"
        return f"{where} field {_loc(self.field)!r}: {self.message}"

    def path(self, many: bool) -> str:
        """As the API names it: ``notices[2].sources[0].url`` (``notice.verdict`` for a single notice)."""
        path = f"notices[{self.index}]" if many else "notice"
        return path + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in self.field or ())


class NoticesRefused(IntakeError):
    """Notices that fail validation: every refusal, and the message the CLI prints (naming ``where``)."""

    def __init__(self, where: str, refusals: Sequence[Refusal], many: bool) -> None:
        self.refusals, self.many = list(refusals), many
        shown = [r.words(many) for r in refusals[:MAX_ERRORS]]
        if len(refusals) > MAX_ERRORS:
            shown.append(f"and {len(refusals) - MAX_ERRORS:,} more")
        super().__init__(f"{where}: " + (shown[0] if len(shown) == 1 else "\n  " + "\n  ".join(shown)))


def check_notices(
    raw: Any, where: str, regions: RegionTable, now: datetime | None = None, max_notices: int = MAX_NOTICES,
    container: str = "file",
) -> list[Notice]:
    """Validate parsed data (one notice, or a list of them) from a file or an API request, all or nothing.

    Raises IntakeError naming ``where``; NoticesRefused (an IntakeError) lists each refused notice and field.
    """
    items = raw if isinstance(raw, list) else [raw]
    if raw is None or not items:
        raise IntakeError(f"{where}: no notices in {container}")
    if len(items) > max_notices:
        raise IntakeError(f"{where}: {len(items):,} notices in one {container}, over the limit of {max_notices:,} "
                          f"(DEBUNKBOT_MAX_NOTICES_PER_FILE); split the {container}")
    refusals: list[Refusal] = []
    notices: list[Notice] = []
    seen: dict[str, int] = {}
    context = {"regions": regions, "now": now or datetime.now(UTC)}
    for index, item in enumerate(items):
        ref = item["ref"] if isinstance(item, dict) and isinstance(item.get("ref"), str) else None
        if not isinstance(item, dict):
            refusals.append(Refusal(index, ref, None, f"expected a mapping of fields, got {type(item).__name__}"))
            continue
        try:
            notice = Notice.model_validate(item, context=context)
        except ValidationError as exc:
            refusals += [Refusal(index, ref, tuple(err["loc"]), _msg(err)) for err in exc.errors()]
            continue
        if notice.ref in seen:
            refusals.append(Refusal(index, ref, ("ref",),
                                    f"duplicate ref {notice.ref!r} (also notice {seen[notice.ref] + 1})"))
            continue
        seen[notice.ref] = index
        notices.append(notice)
    if refusals:
        raise NoticesRefused(where, refusals, many=len(items) > 1)
    return notices


def store_notices(
    notices: Sequence[Notice], store: Store, matrix: OutletMatrix, source: str, actor: Actor | None = None,
) -> list[Added]:
    """Store notices, each with a delivery for every outlet it concerns, all or nothing (RefConflict: none).
    With review on (``store.review.stages`` > 0) they are kept as drafts instead, without deliveries: those are made
    for the outlets they concern when they are released (``bot.store.review``)."""
    if store.review.stages:
        return store.review.submit(notices, source, actor)
    return store.queue.add_notices([(n, matrix.concerned_by(n)) for n in notices], source=source, actor=actor)


def correction_of(notices: Sequence[Notice], ref: str, where: str, note: str | None) -> Notice:
    """The one notice of ``notices`` stored as the correction of ``ref`` (``debunkbot correct``, the API's
    ``:correct``): ``correct: true`` is implied; ``note`` (or the notice's own correction_note) says why."""
    if len(notices) != 1:
        raise IntakeError(f"{where}: a correction is one notice; found {len(notices)}")
    (notice,) = notices
    if notice.ref != ref:
        raise IntakeError(f"{where}: field 'ref': the notice is {notice.ref!r}, not {ref!r}; a correction keeps its ref")
    note = (note or notice.correction_note or "").strip()
    if not note:
        raise IntakeError(f"{where}: field 'correction_note': a correction needs one, saying what was wrong and "
                          "what changed (or pass --note)")
    return notice.model_copy(update={"correct": True, "correction_note": note})


def submit_files(
    paths: Sequence[Path], store: Store, matrix: OutletMatrix, regions: RegionTable,
    max_notices: int = MAX_NOTICES, now: datetime | None = None, actor: Actor | None = None,
) -> list[FileResult]:
    """Validate and store each file on its own: all of a file, or none of it (audited as ``actor``'s)."""
    return store_files(read_files(paths, regions, max_notices, now), store, matrix, actor)


def read_files(
    paths: Sequence[Path], regions: RegionTable, max_notices: int = MAX_NOTICES, now: datetime | None = None,
) -> list[tuple[FileResult, list[Notice]]]:
    """Parse and validate each file, touching no store (so it can run in any thread)."""
    read: list[tuple[FileResult, list[Notice]]] = []
    for path in paths:
        try:
            read.append((FileResult(path), read_notices(path, regions, now, max_notices)))
        except IntakeError as exc:
            read.append((FileResult(path, error=str(exc)), []))
    return read


def store_files(
    read: Sequence[tuple[FileResult, list[Notice]]], store: Store, matrix: OutletMatrix, actor: Actor | None = None,
) -> list[FileResult]:
    """Store what ``read_files`` accepted, file by file; a ref may be in one file of a submission only."""
    refs_in_run: dict[str, Path] = {}
    for result, notices in read:
        if not result.ok:
            continue
        path = result.path
        try:
            for notice in notices:
                if notice.ref in refs_in_run and refs_in_run[notice.ref] != path:
                    raise IntakeError(f"{path}: notice (ref {notice.ref!r}) field 'ref': duplicate ref, "
                                      f"also in {refs_in_run[notice.ref]}")
            result.added = store_notices(notices, store, matrix, str(path), actor)
            refs_in_run.update({n.ref: path for n in notices})
        except IntakeError as exc:
            result.error = str(exc)
        except (RefConflict, NotCorrectable, ReviewConflict) as exc:
            result.error = f"{path}: field 'ref': {exc}"
        except STORE_FAULTS as exc:
            result.deferred = True
            result.error = (f"{path}: not stored, {describe_fault(exc)}; nothing of this file was stored "
                            "and nothing of it will be sent. Submit it again once the store has room")
    return [result for result, _ in read]


def expand(paths: Iterable[Path]) -> list[Path]:
    """Files as given, and the notice files inside folders (not their accepted/ or rejected/)."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.iterdir()
                           if p.is_file() and p.suffix.lower() in SUFFIXES and not p.name.startswith("."))
        else:
            found.append(path)
    return found


CLAIMS = ".processing"  # inbox/.processing/: files a scan has taken and is reading
STALE_CLAIM = 600.0  # seconds after which a claimed file is taken to be left by a stopped scan


def scan_inbox(
    inbox: Path, store: Store, matrix: OutletMatrix, regions: RegionTable, max_notices: int = MAX_NOTICES,
) -> list[FileResult]:
    """Take every notice file in the drop folder: accepted ones move to accepted/, rejected ones to
    rejected/ with a ``.error.txt`` beside them saying why.

    The inbox is a shared folder. A file is taken by renaming it into ``.processing/`` (atomic: of
    two scanners, one wins and the other skips it without a word). Symbolic links and anything that
    is not a regular file are refused and moved to rejected/ without being opened.
    """
    taken, refused = claim_inbox(inbox)
    return file_away(inbox, taken, refused, submit_files(list(taken), store, matrix, regions, max_notices,
                                                          actor=Actor.inbox()))


async def scan_inbox_off_loop(
    inbox: Path, store: Store, matrix: Callable[[], OutletMatrix], regions: RegionTable, max_notices: int,
    db: Callable[..., Awaitable[Any]],
) -> list[FileResult]:
    """``scan_inbox`` for the daemon: files are claimed, read and filed in a worker thread, so neither the
    event loop (signals, sends) nor the store's thread (``db``, recording attempts) waits while a file is
    parsed; only storing runs through ``db``. The files go to the outlets of ``matrix()`` as it is once they are
    read: a file dropped after a reload reaches the outlets it added, even when the scan began before it."""
    taken, refused = await asyncio.to_thread(claim_inbox, inbox)
    read = await asyncio.to_thread(read_files, list(taken), regions, max_notices)
    results = await db(store_files, read, store, matrix(), Actor.inbox())
    return await asyncio.to_thread(file_away, inbox, taken, refused, results)


def claim_inbox(inbox: Path) -> tuple[dict[Path, Path], list[FileResult]]:
    """Claim the inbox's notice files into .processing/; returns claimed path -> inbox path, and the refused."""
    claims = inbox / CLAIMS
    claims.mkdir(parents=True, exist_ok=True)
    _return_stale_claims(inbox, claims)
    refused: list[FileResult] = []
    taken: dict[Path, Path] = {}
    for entry in sorted(inbox.iterdir()):
        if entry.name.startswith(".") or entry.suffix.lower() not in SUFFIXES:
            continue  # hidden, ours (accepted/, rejected/), or still being written (x.yaml.tmp)
        try:
            mode = entry.lstat().st_mode
        except FileNotFoundError:
            continue  # another scanner took it
        if not stat.S_ISREG(mode):
            kind = ("a symbolic link" if stat.S_ISLNK(mode) else "a folder" if stat.S_ISDIR(mode)
                    else "not a regular file")
            refused.append(FileResult(entry, error=f"{entry}: {kind}; the inbox takes regular files only "
                                                   "(links are never followed)"))
            continue
        claimed = claims / entry.name
        if claimed.exists():
            continue  # a file of that name is being read; this one waits for the next scan
        try:
            entry.rename(claimed)
        except FileNotFoundError:
            continue  # another scanner took it first: normal on a shared inbox
        taken[claimed] = entry
    return taken, refused


def file_away(inbox: Path, taken: dict[Path, Path], refused: list[FileResult],
              results: list[FileResult]) -> list[FileResult]:
    """Accepted files to accepted/, rejected ones to rejected/ with the reason, deferred ones back."""
    for result in results:
        shown = taken[result.path]
        if result.error:
            result.error = result.error.replace(str(result.path), str(shown))
        if result.deferred:
            result.path.rename(shown)  # back to the inbox for the next scan
        else:
            _file_away(inbox, result.path, result.ok, result.error)
        result.path = shown
    for result in refused:
        _file_away(inbox, result.path, False, result.error)
    return refused + results


def _file_away(inbox: Path, path: Path, ok: bool, error: str | None) -> None:
    folder = inbox / ("accepted" if ok else "rejected")
    folder.mkdir(exist_ok=True)
    target = _free_name(folder / path.name)
    try:
        path.rename(target)  # renames a link itself, never its target
    except FileNotFoundError:
        return  # taken away by another scanner meanwhile
    if not ok:
        target.with_name(target.name + ".error.txt").write_text((error or "") + "\n", encoding="utf-8")


def _return_stale_claims(inbox: Path, claims: Path) -> None:
    """Files a stopped scan left in .processing go back to the inbox to be read again."""
    for claimed in claims.iterdir():
        try:
            if time.time() - claimed.lstat().st_ctime > STALE_CLAIM and not (inbox / claimed.name).exists():
                claimed.rename(inbox / claimed.name)
        except FileNotFoundError:
            pass


def _load(path: Path, max_notices: int = MAX_NOTICES) -> Any:
    """The file's data, at bounded cost: a regular file (never through a symlink), size checked before
    reading, nesting and YAML aliases capped. Every failure is an IntakeError."""
    data = _read_regular(path)
    if b"\x00" in data:
        raise IntakeError(f"{path}: binary file, expected UTF-8 YAML or JSON text")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise IntakeError(f"{path}: not UTF-8 text (invalid byte at offset {exc.start}); "
                          "save the file as UTF-8") from None
    if path.suffix.lower() == ".json":
        return parse_json(text, str(path))
    loader = _TextLoader(text, max_notices)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise IntakeError(f"{path}: invalid YAML{at}: {problem}") from None
    except ValueError as exc:  # PyYAML raises a bare ValueError for an impossible date such as 2026-02-30
        raise IntakeError(f"{path}: invalid YAML: {exc}") from None
    finally:
        loader.dispose()


def parse_json(text: str, where: str) -> Any:
    """JSON at bounded cost, as a notice file or an API request holds it: nesting capped, a key written twice
    refused (JSON parsers keep the last). Every failure is an IntakeError naming ``where``."""
    if (depth := _json_depth(text)) > MAX_DEPTH:
        raise IntakeError(f"{where}: invalid JSON: nested deeper than {MAX_DEPTH} levels ({depth:,})")
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        raise IntakeError(f"{where}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except _DuplicateKey as exc:
        raise IntakeError(f"{where}: invalid JSON: key {exc.args[0]!r} written twice in one object") from None


def _read_regular(path: Path) -> bytes:
    """At most MAX_FILE_BYTES + 1 bytes of a regular file, opened without following a symlink."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise IntakeError(f"{path}: a symbolic link; notice files must be regular files "
                              "(links are never followed)") from None
        raise IntakeError(f"{path}: cannot read: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise IntakeError(f"{path}: not a regular file; notice files must be regular files")
        if info.st_size > MAX_FILE_BYTES:
            raise IntakeError(f"{path}: file is {info.st_size:,} bytes, over the {MAX_FILE_BYTES:,}-byte limit")
        data = file.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:  # it grew while we looked
        raise IntakeError(f"{path}: file is over the {MAX_FILE_BYTES:,}-byte limit")
    return data


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


def _json_depth(text: str) -> int:
    """How deep the brackets of a JSON text nest, strings skipped; computed without recursion."""
    depth = deepest = 0
    for match in re.finditer(r"[\[\]{}]", _JSON_STRING.sub("", text)):
        depth += 1 if match[0] in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


class _DuplicateKey(Exception):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(notice)"


def _msg(err: Any) -> str:
    message = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "string_too_long":
        message += f" (it has {len(err['input'])})"
    if err["type"] == "extra_forbidden":
        message = "unknown field"
    return message


def _free_name(target: Path) -> Path:
    n = 1
    candidate = target
    while candidate.exists() or candidate.is_symlink():
        candidate = target.with_name(f"{target.stem}.{n}{target.suffix}")
        n += 1
    return candidate
