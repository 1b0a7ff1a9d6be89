"""Intake: every bad input gets one clear message naming file and field, and loses nothing."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.hostile_files import HOSTILE
from bot.intake import scan_inbox, submit_files
from bot.outlets import OutletMatrix, load_matrix
from bot.regions import RegionTable
from bot.store import Store
from tests.conftest import notice_data, outlet_entries


@pytest.fixture
def matrix(tmp_path: Path, regions: RegionTable) -> OutletMatrix:
    entries = outlet_entries(3) + [{"id": "dist-yuzhong", "name": "渝中区融媒体中心", "tier": "district",
                                    "region": "渝中区", "channel": "webhook", "secret_env": "S_YZ"}]
    for e in entries:
        e["url"] = "http://127.0.0.1:9/hook"
    path = tmp_path / "outlets.yaml"
    path.write_text(yaml.safe_dump({"outlets": entries}, allow_unicode=True), encoding="utf-8")
    return load_matrix(path, regions, environ={e["secret_env"]: "whsec_" + "A" * 32 for e in entries})


def write(path: Path, content: Any) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    elif path.suffix == ".json":
        path.write_text(json.dumps(content, ensure_ascii=False), encoding="utf-8")
    else:
        path.write_text(yaml.safe_dump(content, allow_unicode=True), encoding="utf-8")
    return path


BAD_FILES = {
    "malformed YAML": ("bad.yaml", "ref: [unclosed\ntitle: x\n", "invalid YAML at line"),
    "malformed JSON": ("bad.json", '{"ref": "x",', "invalid JSON at line 1"),
    "binary file": ("bad.yaml", b"\x89PNG\r\n\x1a\n\x00\x00", "binary file"),
    "not UTF-8": ("bad.yaml", "ref: 谣言\n".encode("gbk"), "not UTF-8"),
    "missing field": ("bad.yaml", {k: v for k, v in notice_data().items() if k != "truth"}, "field 'truth': Field required"),
    "wrong verdict": ("bad.yaml", notice_data(verdict="fake"), "field 'verdict'"),
    "unknown region": ("bad.yaml", notice_data(regions=["火星区"]), "field 'regions.0': unknown region '火星区'"),
    "oversize title": ("bad.yaml", notice_data(title="谣" * 121), "field 'title': String should have at most 120 characters"),
    "bad ref": ("bad.yaml", notice_data(ref="has space"), "field 'ref'"),
    "unknown field": ("bad.yaml", notice_data(verdcit="false"), "field 'verdcit': unknown field"),
    "naive publish_at": ("bad.yaml", "ref: x\npublish_at: 2026-11-27 10:00:00\n", "field 'publish_at'"),
    "duplicate refs in a file": ("bad.yaml", [notice_data(), notice_data(title="别的")], "duplicate ref 'cq-test-001'"),
    "empty file": ("bad.yaml", "", "no notices"),
    "zero-width title": ("bad.yaml", notice_data(title="\u200b\u200b"),
                         "field 'title': contains the invisible or control character U+200B at position 1"),
    "joiner-only title": ("bad.json", notice_data(title="\u200d \u200d"), "field 'title': has no visible character"),
    "RTL override": ("bad.yaml", notice_data(rumour="网传\u202e消息"), "field 'rumour': contains the invisible or "
                     "control character U+202E at position 3"),
    "C1 in JSON": ("bad.json", notice_data(truth="真\u0085相"), "field 'truth': contains the invisible or control "
                   "character U+0085 at position 2"),
    "line separator in JSON": ("bad.json", notice_data(authority="重庆\u2028市"), "field 'authority': contains the "
                               "invisible or control character U+2028 at position 3"),
    "bidi in a source title": ("bad.json", notice_data(sources=[{"title": "\u2067来源", "url": "https://a.example/"}]),
                               "field 'sources.0.title': contains the invisible or control character U+2067"),
    "duplicate YAML key": ("bad.yaml", "ref: a\ntitle: 一\ntitle: 二\n", "key 'title' written twice (also at line 2)"),
    "duplicate JSON key": ("bad.json", '{"ref": "a", "title": "一", "title": "二"}', "key 'title' written twice"),
    "empty regions": ("bad.yaml", notice_data(regions=[]), "field 'regions': an empty list; omit the field or write"),
    "embargo years ahead": ("bad.yaml", notice_data(publish_at="2031-01-01T00:00:00+08:00"),
                            "field 'publish_at': 2031-01-01T00:00:00+08:00 is more than a year ahead"),
    "expiry in the past": ("bad.yaml", notice_data(expires_at="2020-01-01T00:00:00+08:00"),
                           "field 'expires_at': 2020-01-01T00:00:00+08:00 is already past; a notice that has expired "
                           "would reach no outlet"),
    "expiry before publication": ("bad.yaml", notice_data(publish_at="2027-01-02T00:00:00+08:00",
                                                          expires_at="2027-01-01T00:00:00+08:00"),
                                  "field 'expires_at': 2027-01-01T00:00:00+08:00 is not after publish_at "
                                  "(2027-01-02T00:00:00+08:00); a notice must be published before it expires"),
    "naive expires_at": ("bad.yaml", "ref: x\nexpires_at: 2027-11-27 10:00:00\n", "field 'expires_at'"),
    "control character": ("bad.json", notice_data(title="标题\u0000"), 
                          "field 'title': contains the invisible or control character U+0000 at position 3"),
}


@pytest.mark.parametrize("case", BAD_FILES, ids=list(BAD_FILES))
def test_a_bad_file_is_rejected_with_its_name_and_field_and_the_good_file_beside_it_is_kept(
    case: str, tmp_path: Path, store: Store, matrix: OutletMatrix, regions: RegionTable
) -> None:
    name, content, expected = BAD_FILES[case]
    bad = write(tmp_path / name, content)
    good = write(tmp_path / "good.yaml", notice_data(ref="good-one"))

    bad_result, good_result = submit_files([bad, good], store, matrix, regions)

    assert not bad_result.ok and str(bad) in bad_result.error and expected in bad_result.error
    assert good_result.ok
    assert [r["notice"] for r in store.log.deliveries()] == ["good-one"] * 4


def test_an_embargo_up_to_a_year_ahead_is_accepted(
    tmp_path: Path, store: Store, matrix: OutletMatrix, regions: RegionTable
) -> None:
    now = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
    path = write(tmp_path / "n.yaml", notice_data(publish_at="2027-11-27T00:00:00+08:00"))
    (result,) = submit_files([path], store, matrix, regions, now=now)
    assert result.ok, result.error
    (result,) = submit_files([path], store, matrix, regions, now=now.replace(year=2025))
    assert "more than a year ahead" in result.error


@pytest.mark.parametrize("utc_hour", [16, 19, 23])  # 00:00, 03:00 and 07:00 on 2026-01-25 in Chongqing
def test_region_names_mean_what_they_mean_on_chongqings_date_not_the_machines(
    utc_hour: int, tmp_path: Path, store: Store, matrix: OutletMatrix, regions: RegionTable
) -> None:
    now = datetime(2026, 1, 24, utc_hour, 0, tzinfo=UTC)  # still the 24th in UTC
    path = write(tmp_path / "n.yaml", notice_data(regions=["江北"]))
    (result,) = submit_files([path], store, matrix, regions, now=now)
    assert result.ok, result.error
    assert store.log.notice("cq-test-001")[1].regions == ("两江新区",)


def test_a_yaml_folded_block_joins_chinese_lines_without_a_space_and_keeps_spaces_between_words(
    tmp_path: Path, store: Store, matrix: OutletMatrix, regions: RegionTable
) -> None:
    text = yaml.safe_dump(notice_data(), allow_unicode=True).replace(
        "truth: 经核实，目前长江重庆段水位平稳。\n",
        "truth: >-\n  经核实，目前水位平稳。\n  网传视频系旧画面。\n  See the 2026 report\n  online.\n")
    path = write(tmp_path / "n.yaml", text)
    (result,) = submit_files([path], store, matrix, regions)
    assert result.ok, result.error
    assert store.log.notice("cq-test-001")[1].truth == "经核实，目前水位平稳。网传视频系旧画面。 See the 2026 report online."


def test_one_bad_notice_rejects_its_whole_file_and_stores_nothing_of_it(
    tmp_path: Path, store: Store, matrix: OutletMatrix, regions: RegionTable
) -> None:
    path = write(tmp_path / "two.yaml", [notice_data(ref="fine"), notice_data(ref="broken", verdict="?")])
    (result,) = submit_files([path], store, matrix, regions)
    assert "notice 2 (ref 'broken') field 'verdict'" in result.error
    assert store.log.deliveries() == [] and store.log.notice("fine") is None


def test_yaml_words_editors_type_stay_text(tmp_path: Path, store: Store, matrix: OutletMatrix,
                                           regions: RegionTable) -> None:
    path = write(tmp_path / "n.yaml", "ref: 007\ntitle: 标题\nrumour: 说法\ntruth: 真相\nverdict: false\nauthority: 某局\n")
    (result,) = submit_files([path], store, matrix, regions)
    assert result.ok, result.error
    _, notice = store.log.notice("007")
    assert notice.verdict.value == "false"


def test_regions_resolve_aliases_and_only_concerned_outlets_get_deliveries(
    tmp_path: Path, store: Store, matrix: OutletMatrix, regions: RegionTable
) -> None:
    path = write(tmp_path / "n.yaml", notice_data(regions=["渝中"]))
    (result,) = submit_files([path], store, matrix, regions)
    assert result.ok and result.added[0].deliveries == 4
    _, notice = store.log.notice("cq-test-001")
    assert notice.regions == ("渝中区",)
    other = write(tmp_path / "m.yaml", notice_data(ref="elsewhere", regions=["万州"]))
    (result,) = submit_files([other], store, matrix, regions)
    # the citywide outlets take it, the 渝中区 centre does not
    assert {r["outlet"] for r in store.log.deliveries(ref="elsewhere")} == {"outlet-0000", "outlet-0001", "outlet-0002"}


def test_resubmitting_the_same_notice_is_a_no_op_and_different_content_is_refused(
    tmp_path: Path, store: Store, matrix: OutletMatrix, regions: RegionTable
) -> None:
    first = write(tmp_path / "a.yaml", notice_data())
    submit_files([first], store, matrix, regions)
    (again,) = submit_files([first], store, matrix, regions)
    assert again.ok and again.added[0].created is False
    changed = write(tmp_path / "b.yaml", notice_data(truth="改过的内容"))
    (refused,) = submit_files([changed], store, matrix, regions)
    assert not refused.ok and "field 'ref'" in refused.error and "different content" in refused.error
    assert len(store.log.deliveries()) == 4
    assert store.log.notice("cq-test-001")[1].truth == notice_data()["truth"]


def test_the_same_ref_in_two_files_of_one_submission_is_refused_in_the_second(
    tmp_path: Path, store: Store, matrix: OutletMatrix, regions: RegionTable
) -> None:
    a = write(tmp_path / "a.yaml", notice_data())
    b = write(tmp_path / "b.json", notice_data())
    first, second = submit_files([a, b], store, matrix, regions)
    assert first.ok and not second.ok and f"also in {a}" in second.error


def test_the_inbox_moves_files_to_accepted_and_rejected_with_the_reason(
    tmp_path: Path, store: Store, matrix: OutletMatrix, regions: RegionTable
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    write(inbox / "good.yaml", notice_data())
    write(inbox / "bad.yaml", notice_data(ref="bad", verdict="nope"))
    (inbox / "half-written.yaml.tmp").write_text("ref: x")

    results = scan_inbox(inbox, store, matrix, regions)

    assert sorted(r.ok for r in results) == [False, True]
    assert (inbox / "accepted" / "good.yaml").exists()
    assert (inbox / "rejected" / "bad.yaml").exists()
    reason = (inbox / "rejected" / "bad.yaml.error.txt").read_text(encoding="utf-8")
    assert "field 'verdict'" in reason and "bad.yaml" in reason
    assert (inbox / "half-written.yaml.tmp").exists()  # not a notice file yet
    assert store.log.notice("bad") is None and store.log.notice("cq-test-001") is not None
    # the stored notice is audited as the inbox's, naming the file it came from; the rejected one is not
    (row,) = store.audit.page().rows
    assert (row["actor"], row["action"], row["subject"]) == ("inbox", "notice.submit", "cq-test-001")
    assert row["source"].startswith("inbox@") and row["detail"]["source"].endswith("good.yaml")


def test_a_full_disk_refuses_the_submission_clearly_stores_nothing_and_keeps_the_inbox_file(
    tmp_path: Path, store: Store, regions: RegionTable
) -> None:
    import sqlalchemy as sa

    from bot.outlets import Outlet

    if store.postgres:
        pytest.skip("a full disk is simulated with SQLite's max_page_count; PostgreSQL's 53100 takes the same path")
    matrix = OutletMatrix(tuple(Outlet(id=f"o{i}", name=f"站点{i}", tier="district", channel="webhook",
                                       url="https://x.example/", secret_env="S") for i in range(300)))

    @sa.event.listens_for(store.engine, "connect")
    def _no_room_to_grow(dbapi_conn: Any, _record: Any) -> None:  # SQLite's own "database or disk is full"
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA max_page_count={cur.execute('PRAGMA page_count').fetchone()[0]}")
        cur.close()

    store.engine.dispose()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "n.yaml").write_text(yaml.safe_dump(notice_data(), allow_unicode=True), encoding="utf-8")
    (result,) = scan_inbox(inbox, store, matrix, regions)
    assert result.deferred and not result.ok
    assert "the disk holding the store is full" in (result.error or "") and "nothing of this file was stored" in (
        result.error or "")
    assert (inbox / "n.yaml").exists() and not (inbox / "rejected").exists()
    assert store.log.notice("cq-test-001") is None and store.log.deliveries() == []


@pytest.mark.parametrize("case", HOSTILE, ids=list(HOSTILE))
def test_a_hostile_file_is_refused_at_bounded_cost_and_the_good_file_beside_it_is_kept(
    case: str, tmp_path: Path, store: Store, matrix: OutletMatrix, regions: RegionTable
) -> None:
    name, write_hostile, expected = HOSTILE[case]
    write_hostile(tmp_path / name)
    good = write(tmp_path / "good.yaml", notice_data(ref="good-one"))

    bad_result, good_result = submit_files([tmp_path / name, good], store, matrix, regions)

    assert not bad_result.ok and expected in bad_result.error, bad_result.error
    assert len(bad_result.error) < 2000  # a refusal, not a 27 MB essay
    assert good_result.ok and store.log.notice("good-one") is not None


def test_at_most_twenty_errors_are_listed_then_how_many_more(
    tmp_path: Path, store: Store, matrix: OutletMatrix, regions: RegionTable
) -> None:
    path = write(tmp_path / "many.json", [notice_data(ref=f"n{i}", verdict="?") for i in range(30)])
    (result,) = submit_files([path], store, matrix, regions)
    assert result.error.count("field 'verdict'") == 20 and result.error.endswith("and 10 more")


def test_the_notices_per_file_limit_is_a_setting(
    tmp_path: Path, store: Store, matrix: OutletMatrix, regions: RegionTable
) -> None:
    path = write(tmp_path / "three.yaml", [notice_data(ref=f"n{i}") for i in range(3)])
    (result,) = submit_files([path], store, matrix, regions, max_notices=2)
    assert "more than 2 notices in one file" in result.error and store.log.notice("n0") is None
    (result,) = submit_files([path], store, matrix, regions, max_notices=3)
    assert result.ok


def test_two_scanners_on_one_inbox_take_each_file_once_and_losing_a_race_is_silent(
    tmp_path: Path, matrix: OutletMatrix, regions: RegionTable
) -> None:
    import threading

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for i in range(60):
        write(inbox / f"n{i:02d}.yaml", notice_data(ref=f"n{i:02d}"))
    stores = [Store.open(f"sqlite:///{tmp_path / f'{name}.sqlite3'}") for name in ("a", "b")]
    start = threading.Barrier(2)
    results: dict[int, list[Any]] = {}

    def scan(k: int) -> None:
        start.wait()
        results[k] = scan_inbox(inbox, stores[k], matrix, regions)

    threads = [threading.Thread(target=scan, args=(k,)) for k in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(results) == 2 and all(r.ok for k in (0, 1) for r in results[k])  # neither crashed nor refused
    taken = [{a.ref for r in results[k] for a in r.added} for k in (0, 1)]
    assert not taken[0] & taken[1] and len(taken[0] | taken[1]) == 60
    assert len(list((inbox / "accepted").iterdir())) == 60 and not list((inbox / ".processing").iterdir())
    for store in stores:
        store.close()


def test_a_symlink_in_the_inbox_is_refused_and_moved_away_without_opening_its_target(
    tmp_path: Path, store: Store, matrix: OutletMatrix, regions: RegionTable
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    outside = write(tmp_path / "outside.yaml", notice_data(ref="outside"))  # a valid notice: following would accept it
    (inbox / "link.yaml").symlink_to(outside)
    (inbox / "folder.yaml").mkdir()

    results = scan_inbox(inbox, store, matrix, regions)

    assert sorted(r.error.split(": ", 1)[1] for r in results) == [
        "a folder; the inbox takes regular files only (links are never followed)",
        "a symbolic link; the inbox takes regular files only (links are never followed)"]
    assert store.log.notice("outside") is None and outside.exists()
    assert (inbox / "rejected" / "link.yaml").is_symlink() and (inbox / "rejected" / "folder.yaml").is_dir()


def test_submit_does_not_follow_a_symlink_either(
    tmp_path: Path, store: Store, matrix: OutletMatrix, regions: RegionTable
) -> None:
    outside = write(tmp_path / "outside.yaml", notice_data(ref="outside"))
    (tmp_path / "link.yaml").symlink_to(outside)
    (result,) = submit_files([tmp_path / "link.yaml"], store, matrix, regions)
    assert "a symbolic link" in result.error and store.log.notice("outside") is None


async def test_the_daemons_scan_parses_off_the_event_loop_and_only_stores_through_the_store_thread(
    tmp_path: Path, store: Store, matrix: OutletMatrix, regions: RegionTable
) -> None:
    import threading

    from bench.hostile_files import aliases
    from bot.intake import scan_inbox_off_loop

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    write(inbox / "good.yaml", notice_data())
    aliases(inbox / "laughs.yaml")
    through_db: list[str] = []
    loop_thread = threading.get_ident()

    async def db(fn: Any, *args: Any) -> Any:  # stands in for the dispatcher's store thread
        through_db.append(fn.__name__)
        assert threading.get_ident() == loop_thread
        return fn(*args)

    results = await scan_inbox_off_loop(inbox, store, lambda: matrix, regions, 1000, db)

    assert through_db == ["store_files"]  # parsing ran in a worker thread, not on the loop nor the store's thread
    assert sorted(r.ok for r in results) == [False, True] and (inbox / "accepted" / "good.yaml").exists()
    assert (inbox / "rejected" / "laughs.yaml.error.txt").exists()


async def test_the_daemons_scan_targets_a_file_with_the_matrix_as_it_is_once_the_file_is_taken(
    tmp_path: Path, store: Store, matrix: OutletMatrix, regions: RegionTable
) -> None:
    # a scan that began before a reload must not file a notice dropped after it with the matrix of before
    # (tests/test_matrix.py's SIGHUP test caught that once in CI: the new outlet was left out)
    from bot.intake import scan_inbox_off_loop

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    write(inbox / "late.yaml", notice_data(ref="late"))
    asked_while_in_inbox: list[bool] = []

    def current() -> OutletMatrix:
        asked_while_in_inbox.append((inbox / "late.yaml").exists())
        return matrix

    async def db(fn: Any, *args: Any) -> Any:
        return fn(*args)

    (result,) = await scan_inbox_off_loop(inbox, store, current, regions, 1000, db)
    assert result.ok and asked_while_in_inbox == [False]  # asked once, after the file was taken and read


def test_a_notice_read_back_from_the_store_is_taken_as_stored_even_if_todays_rules_refuse_it() -> None:
    from bot.model import Notice

    old = notice_data(rumour="网传\u202e消息", publish_at="2040-01-01T00:00:00+08:00")  # accepted by older rules
    assert Notice.from_stored(old).rumour == "网传\u202e消息"


def test_an_expiring_notice_is_stored_with_its_expiry_and_one_without_keeps_its_content_hash(
    tmp_path: Path, store: Store, matrix: OutletMatrix, regions: RegionTable
) -> None:
    import hashlib

    from bot.model import Notice

    path = write(tmp_path / "n.yaml", notice_data(expires_at="2027-06-01T12:00:00+08:00"))
    (result,) = submit_files([path], store, matrix, regions, now=datetime(2026, 11, 27, tzinfo=UTC))
    assert result.ok, result.error
    _, stored = store.log.notice("cq-test-001")  # type: ignore[misc]
    assert stored.expires_at == datetime(2027, 6, 1, 4, tzinfo=UTC)
    assert {r["status"] for r in store.log.deliveries()} == {"pending"}
    # a notice stored before expires_at existed hashes as it did then, so submitting it again is still a no-op
    plain = Notice.model_validate(notice_data(), context={"regions": regions})
    before = json.dumps({k: v for k, v in plain.model_dump(mode="json").items()
                         if k not in ("expires_at", "correct", "correction_note")},
                        ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    assert plain.content_hash() == hashlib.sha256(before.encode()).hexdigest()
