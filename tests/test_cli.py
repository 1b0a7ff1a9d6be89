"""The debunkbot command, run as editors and operators run it: a real process, real outlets on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import notice_data, until

LOG_KEYS = {"notice", "outlet", "status", "reason", "attempts", "http_status", "error", "delivered_at",
            "published_at", "published_url"}


async def debunkbot(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", *args, env=os.environ | env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    return proc.returncode or 0, out.decode(), err.decode()


async def bot_env(
    tmp_path: Path, loopback: Callable[..., Any], n: int, database_url: str, **script: Any
) -> tuple[Any, dict[str, str]]:
    outlets, matrix = await loopback(n, script=script)
    env = {"DEBUNKBOT_DATABASE_URL": database_url,
           "DEBUNKBOT_OUTLETS": str(tmp_path / "outlets.yaml"),
           "DEBUNKBOT_RETRY_SCHEDULE": "0.05,0.05", "DEBUNKBOT_SCAN_INTERVAL": "0.1",
           "COLUMNS": "200"}
    env |= {o.secret_env: matrix.secret_for(o.id) for o in matrix.outlets}
    return outlets, env


async def test_submit_then_run_until_idle_delivers_everywhere_and_the_log_shows_it(
    tmp_path: Path, loopback: Callable[..., Any], database_url: str
) -> None:
    outlets, env = await bot_env(tmp_path, loopback, 8, database_url, **{"outlet-0003": [503]})
    notice = tmp_path / "n.yaml"
    notice.write_text(yaml.safe_dump(notice_data(), allow_unicode=True), encoding="utf-8")

    code, out, err = await debunkbot(env, "submit", str(notice))
    assert code == 0, err
    assert "cq-test-001 stored, 8 deliveries" in out

    code, _, err = await debunkbot(env, "run", "--until-idle")
    assert code == 0, err
    assert len(outlets.delivered()) == 8 and outlets.refused == []

    code, out, _ = await debunkbot(env, "log", "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 8 and all(set(r) == LOG_KEYS for r in rows)
    assert {r["status"] for r in rows} == {"delivered"}
    assert next(r for r in rows if r["outlet"] == "outlet-0003")["attempts"] == 2

    code, out, _ = await debunkbot(env, "log", "--attempts", "--json", "--outlet", "outlet-0003")
    assert [json.loads(line)["http_status"] for line in out.splitlines()] == [503, 200]

    code, out, _ = await debunkbot(env, "status", "cq-test-001")
    assert code == 0 and "every outlet (8) has cq-test-001" in out


async def test_submit_exits_2_naming_the_bad_file_and_still_stores_the_good_one(
    tmp_path: Path, loopback: Callable[..., Any], database_url: str
) -> None:
    _, env = await bot_env(tmp_path, loopback, 2, database_url)
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(notice_data(), allow_unicode=True), encoding="utf-8")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(notice_data(ref="bad", regions=["火星"]), allow_unicode=True), encoding="utf-8")

    code, _, err = await debunkbot(env, "submit", str(good), str(bad))
    assert code == 2
    assert "bad.yaml" in err and "regions" in err and "火星" in err

    code, out, _ = await debunkbot(env, "status", "cq-test-001")
    assert code == 0 and "2 outlets without cq-test-001" in out
    code, _, err = await debunkbot(env, "status", "bad")
    assert code == 2 and "no notice with ref 'bad'" in err


async def test_a_missing_secret_stops_start_up_as_incomplete_configuration_before_anything_is_sent(
    tmp_path: Path, loopback: Callable[..., Any], database_url: str
) -> None:
    outlets, env = await bot_env(tmp_path, loopback, 3, database_url)
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(notice_data(), allow_unicode=True), encoding="utf-8")
    assert (await debunkbot(env, "submit", str(good)))[0] == 0
    del env["TEST_SECRET_0001"]

    code, _, err = await debunkbot(env, "run", "--until-idle")
    assert code == 4  # not 2, a bad file: the configuration is right but incomplete
    assert "configuration is incomplete" in err
    assert "1 outlet secret(s) not set in the environment: TEST_SECRET_0001" in err
    assert len(err.strip().splitlines()) <= 3 and "make try" in err
    assert outlets.posts == [] and sum(outlets.tries.values()) == 0
    code, _, err = await debunkbot(env, "submit", str(good))
    assert code == 4


async def test_render_previews_what_an_outlet_would_get(tmp_path: Path, loopback: Callable[..., Any], database_url: str) -> None:
    _, env = await bot_env(tmp_path, loopback, 2, database_url)
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(notice_data(), allow_unicode=True), encoding="utf-8")
    await debunkbot(env, "submit", str(good))
    code, out, _ = await debunkbot(env, "render", "cq-test-001", "--outlet", "outlet-0001")
    assert code == 0 and "【辟谣】" in out and "ClaimReview" in out


async def test_the_daemon_takes_inbox_files_and_stops_cleanly_on_sigterm(
    tmp_path: Path, loopback: Callable[..., Any], database_url: str
) -> None:
    outlets, env = await bot_env(tmp_path, loopback, 4, database_url)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    env["DEBUNKBOT_INBOX"] = str(inbox)
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "bot", "run", env=os.environ | env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    (inbox / "n.yaml").write_text(yaml.safe_dump(notice_data(), allow_unicode=True), encoding="utf-8")
    await until(lambda: len(outlets.delivered()) == 4, proc=proc, what="the notice at every outlet")
    proc.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 0, err.decode()
    assert len(outlets.delivered()) == 4
    assert (inbox / "accepted" / "n.yaml").exists()


async def test_retry_requeues_failed_deliveries_and_their_next_try_is_logged_as_manual(
    tmp_path: Path, loopback: Callable[..., Any], database_url: str
) -> None:
    outlets, env = await bot_env(tmp_path, loopback, 4, database_url, **{"outlet-0003": [400]})
    notice = tmp_path / "n.yaml"
    notice.write_text(yaml.safe_dump(notice_data(), allow_unicode=True), encoding="utf-8")
    assert (await debunkbot(env, "submit", str(notice)))[0] == 0
    assert (await debunkbot(env, "run", "--until-idle"))[0] == 0

    code, out, _ = await debunkbot(env, "retry", "--outlet", "outlet-0003", "--since", "1h", "--dry-run")
    assert code == 0 and "would requeue 1 delivery\n" in out and "nothing changed" in out
    code, out, _ = await debunkbot(env, "log", "--json", "--status", "failed")
    assert [json.loads(line)["outlet"] for line in out.splitlines()] == ["outlet-0003"]

    code, out, _ = await debunkbot(env, "retry", "--status", "failed")
    assert code == 0 and "requeued 1 delivery;" in out
    assert (await debunkbot(env, "run", "--until-idle"))[0] == 0
    code, out, _ = await debunkbot(env, "log", "--attempts", "--json", "--outlet", "outlet-0003")
    tries = [json.loads(line) for line in out.splitlines()]
    assert [(t["attempt"], t["trigger"], t["http_status"]) for t in tries] == [(1, "scheduled", 400), (2, "manual", 200)]
    assert outlets.tries["outlet-0003"] == 2


async def test_outlets_lists_health_and_resume_sends_what_a_paused_outlet_held(
    tmp_path: Path, loopback: Callable[..., Any], database_url: str
) -> None:
    outlets, env = await bot_env(tmp_path, loopback, 3, database_url, **{"outlet-0001": [410]})
    for ref in ("first", "second"):
        path = tmp_path / f"{ref}.yaml"
        path.write_text(yaml.safe_dump(notice_data(ref=ref, title=ref), allow_unicode=True), encoding="utf-8")
        assert (await debunkbot(env, "submit", str(path)))[0] == 0
        assert (await debunkbot(env, "run", "--until-idle"))[0] == 0

    code, out, _ = await debunkbot(env, "outlets", "--json")
    health = {row["outlet"]: row for row in map(json.loads, out.splitlines())}
    assert code == 0 and set(health) == {"outlet-0000", "outlet-0001", "outlet-0002"}
    paused = health["outlet-0001"]
    assert (paused["status"], paused["consecutive_failures"], paused["pending"], paused["failed"]) == ("paused", 1, 1, 1)
    assert "410" in paused["paused_reason"]
    assert health["outlet-0000"]["status"] == "ok" and health["outlet-0000"]["last_success_at"]
    code, out, _ = await debunkbot(env, "outlets")
    assert code == 0 and "paused" in out and "debunkbot outlets resume ID" in out

    code, out, _ = await debunkbot(env, "outlets", "resume", "outlet-0001")
    assert code == 0 and "resumed outlet-0001: 1 held delivery due now" in out
    assert (await debunkbot(env, "run", "--until-idle"))[0] == 0
    assert outlets.delivered()["outlet-0001"] and outlets.tries["outlet-0001"] == 2
    code, _, err = await debunkbot(env, "outlets", "resume", "outlet-0001")
    assert code == 2 and "is not paused" in err


async def test_submit_refuses_every_hostile_file_in_one_line_each_without_a_traceback(
    tmp_path: Path, loopback: Callable[..., Any], database_url: str
) -> None:
    from bench.hostile_files import HOSTILE

    _, env = await bot_env(tmp_path, loopback, 2, database_url)
    paths = []
    for name, write_hostile, _ in HOSTILE.values():
        write_hostile(tmp_path / name)
        paths.append(str(tmp_path / name))
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(notice_data(), allow_unicode=True), encoding="utf-8")

    code, out, err = await debunkbot(env, "submit", *paths, str(good))

    assert code == 2 and "Traceback" not in err
    for name, _, expected in HOSTILE.values():
        assert f"rejected {tmp_path / name}:" in err and expected in err
    assert "cq-test-001 stored, 2 deliveries" in out


async def test_run_refuses_hostile_files_in_the_inbox_and_delivers_the_good_one_beside_them(
    tmp_path: Path, loopback: Callable[..., Any], database_url: str
) -> None:
    from bench.hostile_files import HOSTILE

    outlets, env = await bot_env(tmp_path, loopback, 2, database_url)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for name, write_hostile, _ in HOSTILE.values():
        write_hostile(inbox / name)
    (inbox / "good.yaml").write_text(yaml.safe_dump(notice_data(), allow_unicode=True), encoding="utf-8")
    secret = tmp_path / "secret.yaml"
    secret.write_text("root:$6$hash\n", encoding="utf-8")
    (inbox / "link.yaml").symlink_to(secret)
    os.mkfifo(inbox / "pipe.yaml")  # opening it for reading would block the daemon forever

    code, _, err = await debunkbot(env | {"DEBUNKBOT_INBOX": str(inbox)}, "run", "--until-idle")

    assert code == 0, err
    assert len(outlets.delivered()) == 2
    assert (inbox / "accepted" / "good.yaml").exists()
    for name, _, expected in HOSTILE.values():
        assert expected in (inbox / "rejected" / f"{name}.error.txt").read_text(encoding="utf-8")
    assert "a symbolic link" in (inbox / "rejected" / "link.yaml.error.txt").read_text(encoding="utf-8")
    assert (inbox / "rejected" / "link.yaml").is_symlink() and secret.read_text() == "root:$6$hash\n"
    assert "not a regular file" in (inbox / "rejected" / "pipe.yaml.error.txt").read_text(encoding="utf-8")
    assert not [p for p in inbox.iterdir() if p.is_file() or p.is_symlink()]  # nothing left to choke on


def write_notice(path: Path, **fields: Any) -> Path:
    path.write_text(yaml.safe_dump(notice_data(**fields), allow_unicode=True), encoding="utf-8")
    return path


async def test_nothing_a_user_wrote_is_read_as_console_markup(
    tmp_path: Path, loopback: Callable[..., Any], database_url: str
) -> None:
    _, env = await bot_env(tmp_path, loopback, 2, database_url)
    bad = write_notice(tmp_path / "[bold]bad.yaml", ref="[/]")
    code, _, err = await debunkbot(env, "submit", str(bad))
    assert code == 2 and "MarkupError" not in err
    assert "[bold]bad.yaml" in err and "(ref '[/]') field 'ref'" in err

    matrix = yaml.safe_load((tmp_path / "outlets.yaml").read_text(encoding="utf-8"))
    matrix["outlets"][0]["id"] = "[red]Bad"
    (tmp_path / "outlets.yaml").write_text(yaml.safe_dump(matrix, allow_unicode=True), encoding="utf-8")
    code, _, err = await debunkbot(env, "submit", str(write_notice(tmp_path / "ok.yaml")))
    assert code == 2 and "outlet '[red]Bad' field 'id'" in err and "'^[a-z0-9][a-z0-9_-]{0,63}$'" in err


async def test_tables_at_80_columns_never_cut_a_ref_or_an_outlet_id_and_wide_shows_the_whole_error(
    tmp_path: Path, loopback: Callable[..., Any], database_url: str
) -> None:
    _, env = await bot_env(tmp_path, loopback, 3, database_url, **{"outlet-0002": [400]})
    env["COLUMNS"] = "80"
    refs = ["cq-2026-1127-001", "cq-2026-1127-002"]
    for ref in refs:
        assert (await debunkbot(env, "submit", str(write_notice(tmp_path / f"{ref}.yaml", ref=ref))))[0] == 0
    assert (await debunkbot(env, "run", "--until-idle"))[0] == 0

    for args in (["log"], ["log", "--attempts"], ["status", refs[0]], ["outlets"], ["retry", "--dry-run"]):
        code, out, err = await debunkbot(env, *args)
        assert code == 0, err
        assert all(len(line) <= 80 for line in out.splitlines()), out
        words = set(out.split())
        assert {"outlet-0000", "outlet-0001", "outlet-0002"} & words, out
        assert "…" not in out, out
    code, out, _ = await debunkbot(env, "log")
    assert set(refs) <= set(out.split()) and {"outlet-0000", "outlet-0001", "outlet-0002"} <= set(out.split())
    code, out, _ = await debunkbot(env, "log", "--wide", "--status", "failed")
    assert "HTTP 400" in out and "outlet-0002" in out


async def test_outlets_lists_every_outlet_of_the_matrix_on_a_fresh_store_without_its_secrets(
    tmp_path: Path, loopback: Callable[..., Any], database_url: str
) -> None:
    _, env = await bot_env(tmp_path, loopback, 4, database_url)
    secretless = {k: v for k, v in env.items() if not k.startswith("TEST_SECRET_")}
    code, out, err = await debunkbot(secretless, "outlets", "--json")
    assert code == 0, err
    assert [json.loads(line)["outlet"] for line in out.splitlines()] == [f"outlet-{i:04d}" for i in range(4)]
    code, out, _ = await debunkbot(secretless, "outlets")
    assert "4 outlets" in out and "outlet-0003" in out


async def test_regions_is_a_table_and_a_bad_date_is_one_line() -> None:
    code, out, err = await debunkbot({"COLUMNS": "80"}, "regions", "--on", "2026-13-45")
    assert code == 2 and err.strip() == "--on: '2026-13-45' is not a date; write YYYY-MM-DD, e.g. 2026-01-25"
    code, out, _ = await debunkbot({"COLUMNS": "80"}, "regions", "--on", "2026-01-25")
    assert code == 0 and "\t" not in out and "39 district-level units on 2026-01-25" in out
    assert "两江新区" in out and "江北区" not in out.split()


async def test_retry_says_an_open_breaker_holds_what_it_requeued_and_how_to_close_it(
    tmp_path: Path, loopback: Callable[..., Any], database_url: str
) -> None:
    _, env = await bot_env(tmp_path, loopback, 2, database_url, **{"outlet-0001": [400, 400]})
    env |= {"DEBUNKBOT_BREAKER_THRESHOLD": "2", "DEBUNKBOT_BREAKER_COOLDOWN": "3600"}
    for ref in ("a", "b"):
        assert (await debunkbot(env, "submit", str(write_notice(tmp_path / f"{ref}.yaml", ref=ref))))[0] == 0
    assert (await debunkbot(env, "run", "--until-idle"))[0] == 0
    code, out, _ = await debunkbot(env, "outlets", "--json")
    assert next(json.loads(line) for line in out.splitlines() if '"outlet-0001"' in line)["breaker_open_until"]

    code, out, _ = await debunkbot(env, "retry", "--outlet", "outlet-0001")
    assert code == 0 and "requeued 2 deliveries" in out
    assert "outlet-0001 has its breaker open until" in out and "its 2 deliveries wait until then" in out
    assert "debunkbot outlets resume outlet-0001" in out


async def test_retry_since_takes_an_iso_time_and_a_time_without_offset_is_chongqing_time(
    tmp_path: Path, loopback: Callable[..., Any], database_url: str
) -> None:
    from datetime import UTC, datetime, timedelta

    from bot.regions import CHONGQING

    _, env = await bot_env(tmp_path, loopback, 2, database_url, **{"outlet-0001": [400]})
    assert (await debunkbot(env, "submit", str(write_notice(tmp_path / "n.yaml"))))[0] == 0
    assert (await debunkbot(env, "run", "--until-idle"))[0] == 0
    now = datetime.now(UTC)
    before = (now - timedelta(minutes=30)).astimezone(CHONGQING).replace(tzinfo=None).isoformat(timespec="seconds")
    after = (now + timedelta(minutes=30)).astimezone(CHONGQING).replace(tzinfo=None).isoformat(timespec="seconds")
    for since, expected in ((before, "would requeue 1 delivery\n"), (after, "would requeue 0 deliveries"),
                            ((now - timedelta(minutes=5)).isoformat(), "would requeue 1 delivery\n"),
                            ((now + timedelta(minutes=5)).isoformat(), "would requeue 0 deliveries")):
        code, out, err = await debunkbot(env, "retry", "--since", since, "--dry-run")
        assert code == 0 and expected in out, (since, out, err)
    code, _, err = await debunkbot(env, "retry", "--since", "yesterday")
    assert code == 2 and "'yesterday' is neither an ISO 8601 time nor an age" in err


async def test_submit_says_it_waits_for_a_locked_store_and_exits_3_when_the_store_stays_locked(
    tmp_path: Path, loopback: Callable[..., Any], database_url: str
) -> None:
    import sqlite3

    if not database_url.startswith("sqlite"):
        pytest.skip("a write lock held by another process is SQLite's case; PostgreSQL's faults take the same path")
    _, env = await bot_env(tmp_path, loopback, 2, database_url)
    assert (await debunkbot(env, "db", "upgrade"))[0] == 0
    holder = sqlite3.connect(database_url.removeprefix("sqlite:///"))
    holder.execute("BEGIN IMMEDIATE")  # another process writing, for longer than submit waits
    try:
        code, out, err = await debunkbot(env, "submit", str(write_notice(tmp_path / "n.yaml")))
    finally:
        holder.rollback()
        holder.close()
    assert code == 3, err
    assert "waiting for the store" in err and "another process is writing to it" in err
    assert "not stored, the store is unavailable (database is locked)" in err and "Submit it again" in err
    code, out, _ = await debunkbot(env, "submit", str(tmp_path / "n.yaml"))
    assert code == 0 and "cq-test-001 stored, 2 deliveries" in out


async def test_an_expired_notice_is_cancelled_by_the_running_bot_and_status_and_log_say_so(
    tmp_path: Path, loopback: Callable[..., Any], database_url: str
) -> None:
    from datetime import UTC, datetime, timedelta

    outlets, env = await bot_env(tmp_path, loopback, 2, database_url, **{"outlet-0001": [503] * 1000})
    env["DEBUNKBOT_RETRY_SCHEDULE"] = ",".join(["0.2"] * 1000)
    expires = datetime.now(UTC) + timedelta(seconds=12)  # room for the submit process to start
    notice = write_notice(tmp_path / "n.yaml", expires_at=expires.isoformat())
    code, _, err = await debunkbot(env, "submit", str(notice))
    assert code == 0, err

    code, _, err = await debunkbot(env, "run", "--until-idle")  # retries outlet-0001 until the notice expires

    assert code == 0, err
    assert "notice cq-test-001 expired: 1 unsent delivery cancelled" in err
    assert outlets.tries["outlet-0001"] >= 1 and {p.outlet for p in outlets.posts} == {"outlet-0000"}
    code, out, _ = await debunkbot(env, "status", "cq-test-001")
    assert "cq-test-001 expired at " in out and "nothing of it is sent" in out
    assert "outlet-0001  已取消 cancelled: expired" in out
    code, out, _ = await debunkbot(env, "log", "--status", "cancelled", "--json")
    (row,) = [json.loads(line) for line in out.splitlines()]
    assert (row["outlet"], row["status"], row["reason"], row["error"]) == ("outlet-0001", "cancelled", "expired",
                                                                           "HTTP 503")
    assert row["attempts"] == outlets.tries["outlet-0001"]  # each request the outlet got is a try begun in time


async def test_a_token_is_printed_once_listed_without_itself_revoked_and_every_step_is_audited_as_the_local_user(
    tmp_path: Path, loopback: Callable[..., Any], database_url: str
) -> None:
    import getpass
    import socket

    from bot.store import Store

    _, env = await bot_env(tmp_path, loopback, 1, database_url)
    code, token, err = await debunkbot(env, "token", "create", "--role", "editor", "--name", "张三")
    assert code == 0 and "token 1 for 张三 (editor)" in err and "shown this once" in err
    token = token.strip()
    assert token.startswith("dbk_") and len(token) > 40

    code, out, _ = await debunkbot(env, "token", "list", "--json")
    (listed,) = [json.loads(line) for line in out.splitlines()]
    assert (listed["id"], listed["name"], listed["role"], listed["revoked_at"]) == (1, "张三", "editor", None)
    assert token not in out
    store = Store.open(database_url)
    try:
        assert store.access.authenticate(token).name == "张三"  # type: ignore[union-attr]
        assert code == 0 and (await debunkbot(env, "token", "revoke", "1"))[0] == 0
        assert store.access.authenticate(token) is None
    finally:
        store.close()
    code, _, err = await debunkbot(env, "token", "revoke", "1")
    assert code == 2 and "no token 1 that is not already revoked" in err
    code, _, err = await debunkbot(env, "token", "create", "--role", "boss", "--name", "x")
    assert code == 2

    code, out, _ = await debunkbot(env, "audit", "--json")
    trail = [json.loads(line) for line in out.splitlines()]
    assert [(r["action"], r["subject"]) for r in trail] == [("token.create", "1"), ("token.revoke", "1")]
    assert {(r["actor"], r["role"], r["source"]) for r in trail} == {
        (getpass.getuser(), "local", f"cli@{socket.gethostname()}")}
    assert token not in out
    code, out, _ = await debunkbot(env, "audit")
    assert code == 0 and "token.revoke" in out and "2 changes" in out


async def test_outlets_pause_holds_an_outlets_deliveries_and_submit_pause_resume_retry_are_audited(
    tmp_path: Path, loopback: Callable[..., Any], database_url: str
) -> None:
    outlets, env = await bot_env(tmp_path, loopback, 2, database_url, **{"outlet-0000": [400]})
    code, out, _ = await debunkbot(env, "outlets", "pause", "outlet-0001", "--reason", "对方系统升级")
    assert code == 0 and "paused outlet-0001" in out
    code, _, err = await debunkbot(env, "outlets", "pause", "outlet-0001", "--reason", "again")
    assert code == 2 and "already paused" in err
    code, _, err = await debunkbot(env, "outlets", "pause", "nowhere", "--reason", "x")
    assert code == 2 and "no outlet 'nowhere'" in err

    assert (await debunkbot(env, "submit", str(write_notice(tmp_path / "n.yaml"))))[0] == 0
    assert (await debunkbot(env, "run", "--until-idle"))[0] == 0
    assert "outlet-0001" not in outlets.delivered()
    code, out, _ = await debunkbot(env, "status", "cq-test-001")
    assert "outlet paused: 对方系统升级" in out

    assert (await debunkbot(env, "retry", "--dry-run"))[0] == 0
    assert (await debunkbot(env, "retry"))[0] == 0
    assert (await debunkbot(env, "outlets", "resume", "outlet-0001"))[0] == 0
    code, out, _ = await debunkbot(env, "audit", "--json")
    trail = [json.loads(line) for line in out.splitlines()]
    assert [(r["action"], r["subject"]) for r in trail] == [
        ("outlet.pause", "outlet-0001"), ("notice.submit", "cq-test-001"), ("deliveries.retry", "cq-test-001"),
        ("outlet.resume", "outlet-0001")]
    assert trail[0]["detail"]["reason"] == "对方系统升级" and trail[1]["detail"]["deliveries"] == 2
    assert trail[2]["detail"]["outlets"] == ["outlet-0000"]
