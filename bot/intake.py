"""Intake: notice files (UTF-8 YAML or JSON, one notice or a list) into the store.

Each file is all or nothing: one bad notice rejects the whole file and nothing of it is
stored, while the valid files beside it are still accepted. Every error names the file and
the field.

    >>> results = submit_files([Path("notices/today.yaml")], store, matrix, regions)  # doctest: +SKIP
    >>> [r.error for r in results if not r.ok]                                         # doctest: +SKIP
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from bot.model import Notice
from bot.outlets import OutletMatrix
from bot.regions import RegionTable
from bot.store import STORE_FAULTS, Added, RefConflict, Store, describe_fault

MAX_FILE_BYTES = 1024 * 1024
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


class _TextLoader(yaml.SafeLoader):
    """YAML where only strings, lists, maps, null and timestamps exist.

    Editors write ``verdict: false`` and ``ref: 007``; YAML 1.1 would turn those into a
    boolean and the number 7. Here they stay the text the editor typed.
    """


_TextLoader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag.rsplit(":", 1)[-1] not in ("bool", "int", "float")]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def read_notices(path: Path, regions: RegionTable, on: date | None = None) -> list[Notice]:
    """Parse and validate one file. Raises IntakeError naming the file, the notice and the field."""
    raw = _load(path)
    items = raw if isinstance(raw, list) else [raw]
    if raw is None or not items:
        raise IntakeError(f"{path}: no notices in file")
    problems: list[str] = []
    notices: list[Notice] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(items, start=1):
        where = f"notice {index}" if len(items) > 1 else "notice"
        if isinstance(item, dict) and isinstance(item.get("ref"), str):
            where += f" (ref {item['ref']!r})"
        if not isinstance(item, dict):
            problems.append(f"{where}: expected a mapping of fields, got {type(item).__name__}")
            continue
        try:
            notice = Notice.model_validate(item, context={"regions": regions, "on": on or date.today()})
        except ValidationError as exc:
            problems += [f"{where} field {_loc(err['loc'])!r}: {_msg(err)}" for err in exc.errors()]
            continue
        if notice.ref in seen:
            problems.append(f"{where} field 'ref': duplicate ref {notice.ref!r} (also notice {seen[notice.ref]})")
            continue
        seen[notice.ref] = index
        notices.append(notice)
    if problems:
        raise IntakeError(f"{path}: " + ("; ".join(problems) if len(problems) == 1 else "\n  " + "\n  ".join(problems)))
    return notices


def submit_files(
    paths: Sequence[Path], store: Store, matrix: OutletMatrix, regions: RegionTable
) -> list[FileResult]:
    """Validate and store each file on its own: all of a file, or none of it."""
    results: list[FileResult] = []
    refs_in_run: dict[str, Path] = {}
    for path in paths:
        result = FileResult(path)
        results.append(result)
        try:
            notices = read_notices(path, regions)
            for notice in notices:
                if notice.ref in refs_in_run and refs_in_run[notice.ref] != path:
                    raise IntakeError(
                        f"{path}: notice (ref {notice.ref!r}) field 'ref': duplicate ref, also in {refs_in_run[notice.ref]}"
                    )
            result.added = store.queue.add_notices(
                [(n, matrix.concerned_by(n)) for n in notices], source=str(path)
            )
            refs_in_run.update({n.ref: path for n in notices})
        except IntakeError as exc:
            result.error = str(exc)
        except RefConflict as exc:
            result.error = f"{path}: field 'ref': {exc}"
        except STORE_FAULTS as exc:
            result.deferred = True
            result.error = (f"{path}: not stored, {describe_fault(exc)}; nothing of this file was stored "
                            "and nothing of it will be sent. Submit it again once the store has room")
    return results


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


def scan_inbox(inbox: Path, store: Store, matrix: OutletMatrix, regions: RegionTable) -> list[FileResult]:
    """Take every notice file in the drop folder: accepted ones move to accepted/, rejected ones to
    rejected/ with a ``.error.txt`` beside them saying why."""
    inbox.mkdir(parents=True, exist_ok=True)
    results = submit_files(expand([inbox]), store, matrix, regions)
    for result in results:
        if result.deferred:
            continue  # stays in the inbox for the next scan
        folder = inbox / ("accepted" if result.ok else "rejected")
        folder.mkdir(exist_ok=True)
        target = _free_name(folder / result.path.name)
        shutil.move(result.path, target)
        if not result.ok:
            target.with_name(target.name + ".error.txt").write_text((result.error or "") + "\n", encoding="utf-8")
    return results


def _load(path: Path) -> Any:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise IntakeError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise IntakeError(f"{path}: file is {len(data):,} bytes, over the {MAX_FILE_BYTES:,}-byte limit")
    if b"\x00" in data:
        raise IntakeError(f"{path}: binary file, expected UTF-8 YAML or JSON text")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise IntakeError(f"{path}: not UTF-8 text (invalid byte at offset {exc.start}); save the file as UTF-8") from None
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise IntakeError(f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    try:
        return yaml.load(text, Loader=_TextLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise IntakeError(f"{path}: invalid YAML{at}: {problem}") from None


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
    while candidate.exists():
        candidate = target.with_name(f"{target.stem}.{n}{target.suffix}")
        n += 1
    return candidate
