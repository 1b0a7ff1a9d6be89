"""Intake: every bad input gets one clear message naming file and field, and loses nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

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
    "control character": ("bad.json", notice_data(title="标题\u0000"), "field 'title': contains the control character U+0000"),
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
    assert [r["notice"] for r in store.delivery_log()] == ["good-one"] * 4


def test_one_bad_notice_rejects_its_whole_file_and_stores_nothing_of_it(
    tmp_path: Path, store: Store, matrix: OutletMatrix, regions: RegionTable
) -> None:
    path = write(tmp_path / "two.yaml", [notice_data(ref="fine"), notice_data(ref="broken", verdict="?")])
    (result,) = submit_files([path], store, matrix, regions)
    assert "notice 2 (ref 'broken') field 'verdict'" in result.error
    assert store.delivery_log() == [] and store.notice("fine") is None


def test_yaml_words_editors_type_stay_text(tmp_path: Path, store: Store, matrix: OutletMatrix,
                                           regions: RegionTable) -> None:
    path = write(tmp_path / "n.yaml", "ref: 007\ntitle: 标题\nrumour: 说法\ntruth: 真相\nverdict: false\nauthority: 某局\n")
    (result,) = submit_files([path], store, matrix, regions)
    assert result.ok, result.error
    _, notice = store.notice("007")
    assert notice.verdict.value == "false"


def test_regions_resolve_aliases_and_only_concerned_outlets_get_deliveries(
    tmp_path: Path, store: Store, matrix: OutletMatrix, regions: RegionTable
) -> None:
    path = write(tmp_path / "n.yaml", notice_data(regions=["渝中"]))
    (result,) = submit_files([path], store, matrix, regions)
    assert result.ok and result.added[0].deliveries == 4
    _, notice = store.notice("cq-test-001")
    assert notice.regions == ("渝中区",)
    other = write(tmp_path / "m.yaml", notice_data(ref="elsewhere", regions=["万州"]))
    (result,) = submit_files([other], store, matrix, regions)
    # the citywide outlets take it, the 渝中区 centre does not
    assert {r["outlet"] for r in store.delivery_log(ref="elsewhere")} == {"outlet-0000", "outlet-0001", "outlet-0002"}


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
    assert len(store.delivery_log()) == 4
    assert store.notice("cq-test-001")[1].truth == notice_data()["truth"]


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
    assert store.notice("bad") is None and store.notice("cq-test-001") is not None


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
    assert store.notice("cq-test-001") is None and store.delivery_log() == []
