"""The store: atomic intake, leases, per-outlet limits, embargo release."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from bot.model import Notice
from bot.outlets import Outlet
from bot.store import AttemptRecord, RefConflict, Store

OUTLETS = [Outlet(id=f"o{i}", name=f"站点{i}", tier="district", channel="webhook", url="https://x.example/",
                  secret_env="S") for i in range(5)]
LEASE = timedelta(seconds=30)


def test_a_notice_and_its_deliveries_are_stored_together_or_not_at_all(
    store: Store, make_notice: Callable[..., Notice]
) -> None:
    store.queue.add_notices([(make_notice(ref="kept"), OUTLETS)], source="t")
    with pytest.raises(RefConflict):
        store.queue.add_notices([(make_notice(ref="new"), OUTLETS), (make_notice(ref="kept", title="改了"), OUTLETS)],
                                source="t")
    assert store.log.notice("new") is None
    assert len(store.log.deliveries()) == 5


def test_each_delivery_has_its_own_stable_message_id(store: Store, make_notice: Callable[..., Notice]) -> None:
    store.queue.add_notices([(make_notice(), OUTLETS)], source="t")
    ids = [r["message_id"] for r in store.log.deliveries()]
    assert len(set(ids)) == 5 and all(i.startswith("msg_") for i in ids)


def test_a_claim_respects_the_per_outlet_limit_across_notices(store: Store, make_notice: Callable[..., Notice]) -> None:
    for n in range(4):
        store.queue.add_notices([(make_notice(ref=f"n{n}", title=f"第{n}条"), OUTLETS[:2])], source="t")
    first = store.queue.claim(100, per_outlet=2, lease=LEASE)
    assert sorted(c.outlet_id for c in first) == ["o0", "o0", "o1", "o1"]
    # in flight already counts against the limit
    assert store.queue.claim(100, per_outlet=2, lease=LEASE) == []
    assert len(store.queue.claim(100, per_outlet=3, lease=LEASE)) == 2


def test_each_claim_takes_its_own_outlets_limits_and_lease(store: Store, make_notice: Callable[..., Notice]) -> None:
    """One store builds its claim statement once and binds each claim's values: none keeps an earlier claim's."""
    for n in range(3):
        store.queue.add_notices([(make_notice(ref=f"n{n}", title=f"第{n}条"), OUTLETS[:3])], source="t")
    now = datetime.now(UTC)
    assert [c.outlet_id for c in store.queue.claim(1, 2, LEASE, now=now, outlets=["o0"])] == ["o0"]
    short = store.queue.claim(10, 1, timedelta(seconds=5), now=now, outlets=["o1", "o2"])
    assert sorted(c.outlet_id for c in short) == ["o1", "o2"]
    # o0 has one in flight: room for two more of its three
    assert [c.outlet_id for c in store.queue.claim(10, 3, LEASE, now=now, outlets=["o0"])] == ["o0", "o0"]
    # the short leases have run out, the others have not
    later = store.queue.claim(10, 3, LEASE, now=now + timedelta(seconds=6), outlets=["o0", "o1", "o2"])
    assert sorted(c.outlet_id for c in later) == ["o1"] * 3 + ["o2"] * 3
    assert {c.delivery_id for c in short} <= {c.delivery_id for c in later}


def test_an_expired_lease_is_claimed_again_after_a_crash(store: Store, make_notice: Callable[..., Notice]) -> None:
    store.queue.add_notices([(make_notice(), OUTLETS[:1])], source="t")
    now = datetime.now(UTC)
    (claim,) = store.queue.claim(10, 2, LEASE, now=now)
    assert store.queue.claim(10, 2, LEASE, now=now + timedelta(seconds=29)) == []
    crashed_owner = store.owner
    store.owner = "another-bot"
    (again,) = store.queue.claim(10, 2, LEASE, now=now + timedelta(seconds=31))
    assert again.delivery_id == claim.delivery_id and again.message_id == claim.message_id
    # the crashed owner's late answer does not overwrite the new owner's claim
    store.owner = crashed_owner
    store.queue.record([AttemptRecord(claim.delivery_id, claim.outlet_id, 1, now, 5.0, "failed", 400, "HTTP 400")])
    assert store.log.deliveries()[0]["status"] == "pending"
    assert len(store.log.attempts()) == 1
    # the new owner's answer moves it on: the owner is the store's at each record, not at its first
    store.owner = "another-bot"
    store.queue.record([AttemptRecord(again.delivery_id, again.outlet_id, 2, now, 5.0, "delivered", 200)])
    assert store.log.deliveries()[0]["status"] == "delivered"


def test_recorded_attempts_move_deliveries_on(store: Store, make_notice: Callable[..., Notice]) -> None:
    store.queue.add_notices([(make_notice(), OUTLETS[:3])], source="t")
    now = datetime.now(UTC)
    a, b, c = store.queue.claim(10, 2, LEASE, now=now)
    store.queue.record([
        AttemptRecord(a.delivery_id, a.outlet_id, 1, now, 12.5, "delivered", 200),
        AttemptRecord(b.delivery_id, b.outlet_id, 1, now, 30.0, "retry", 503, "HTTP 503",
                      next_attempt_at=now + timedelta(hours=1)),
        AttemptRecord(c.delivery_id, c.outlet_id, 1, now, 1.0, "failed", 404, "HTTP 404"),
    ])
    rows = {r["outlet"]: r for r in store.log.deliveries()}
    assert rows["o0"]["status"] == "delivered" and rows["o0"]["delivered_at"] is not None
    assert rows["o1"]["status"] == "pending" and rows["o1"]["next_attempt_at"] == now + timedelta(hours=1)
    assert rows["o2"]["status"] == "failed" and rows["o2"]["error"] == "HTTP 404"
    assert store.queue.claim(10, 2, LEASE, now=now + timedelta(minutes=59)) == []
    assert [c.attempt for c in store.queue.claim(10, 2, LEASE, now=now + timedelta(hours=1))] == [2]


def test_an_embargoed_notice_is_held_until_its_publish_time(store: Store, make_notice: Callable[..., Notice]) -> None:
    now = datetime.now(UTC)
    notice = make_notice(publish_at=(now + timedelta(hours=2)).isoformat())
    store.queue.add_notices([(notice, OUTLETS[:2])], source="t", now=now)
    assert {r["status"] for r in store.log.deliveries()} == {"held"}
    assert store.queue.claim(10, 2, LEASE, now=now + timedelta(hours=3)) == []
    assert store.queue.release_due(now=now + timedelta(hours=1)) == 0
    assert store.queue.release_due(now=now + timedelta(hours=2, seconds=1)) == 2
    assert len(store.queue.claim(10, 2, LEASE, now=now + timedelta(hours=2, seconds=1))) == 2


def test_given_back_claims_are_claimable_at_once(store: Store, make_notice: Callable[..., Notice]) -> None:
    store.queue.add_notices([(make_notice(), OUTLETS[:2])], source="t")
    assert len(store.queue.claim(10, 2, LEASE)) == 2
    assert store.queue.release_claims() == 2
    assert len(store.queue.claim(10, 2, LEASE)) == 2


def test_a_rate_limited_outlet_gets_no_more_than_its_window_allows_and_waits_for_it(
    store: Store, make_notice: Callable[..., Notice]
) -> None:
    from channels import RateLimit

    robot = OUTLETS[0]
    limits = {robot.id: (RateLimit.parse("20/min"),)}
    store.queue.add_notices([(make_notice(ref=f"n{i}", title=f"第{i}条"), [robot]) for i in range(30)], source="t")
    now = datetime.now(UTC)
    sent = 0
    for second in range(0, 60, 1):  # a busy minute, claiming and answering as fast as we can
        at = now + timedelta(seconds=second)
        claims = store.queue.claim(100, per_outlet=5, lease=LEASE, now=at, rate_limits=limits)
        store.queue.record([AttemptRecord(c.delivery_id, c.outlet_id, c.attempt, at, 1.0, "delivered", 200)
                               for c in claims], now=at)
        sent += len(claims)
    assert sent == 20
    # the other ten wait for the window, held with the reason, and go out when it frees
    waiting = store.log.deliveries(status="held")
    assert len(waiting) == 10 and store.log.deliveries(status="pending") == []
    (reason,) = {r["reason"] for r in waiting}
    assert reason.startswith("rate limit until ")
    until = datetime.fromisoformat(reason.removeprefix("rate limit until "))
    assert until >= (now + timedelta(seconds=59)).replace(microsecond=0)
    later = now + timedelta(seconds=61)
    assert len(store.queue.claim(100, per_outlet=20, lease=LEASE, now=later, rate_limits=limits)) == 10


def test_rate_limits_parse_the_way_operators_write_them() -> None:
    import pytest as _pytest

    from channels import RateLimit

    assert RateLimit.parse("20/min") == RateLimit(20, 60)
    assert RateLimit.parse("5/s") == RateLimit(5, 1)
    assert RateLimit.parse("100 / 10min") == RateLimit(100, 600)
    with _pytest.raises(ValueError, match="should look like"):
        RateLimit.parse("fast")


def test_a_write_from_another_process_is_seen_by_the_next_look(
    store: Store, make_notice: Callable[..., Notice]
) -> None:
    if store.postgres:
        pytest.skip("SQLite's data_version; PostgreSQL wakes workers by LISTEN/NOTIFY (tests/test_dispatch.py)")
    assert store.cluster.changed_since_last_look() is False  # the first look only takes the baseline
    assert store.cluster.changed_since_last_look() is False
    other = Store.open(str(store.engine.url))  # another process's connection
    try:
        other.queue.add_notices([(make_notice(), OUTLETS)], source="t")
    finally:
        other.close()
    assert store.cluster.changed_since_last_look() is True
    assert store.cluster.changed_since_last_look() is False


def test_a_write_transaction_holds_the_writers_lock_file_from_its_start_to_its_commit(
    store: Store, make_notice: Callable[..., Notice]
) -> None:
    if store.postgres:
        pytest.skip("SQLite's writers queue on a lock file; PostgreSQL's take row locks")
    # another process asks for the writers' turn (bot.store.engine.Db._writer_turn) during a write and after it
    probe = ("import fcntl, sys\nf = open(sys.argv[1])\ntry:\n    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
             "except BlockingIOError:\n    print('waits')\nelse:\n    print('its turn')")

    def other_writer() -> str:
        return subprocess.run([sys.executable, "-c", probe, f"{store.engine.url.database}-writers"],
                              capture_output=True, text=True, check=True).stdout.strip()

    store.queue.add_notices([(make_notice(ref="before"), OUTLETS)], source="t")
    with store.db.tx() as conn:
        conn.execute(sa.text("UPDATE notices SET source = 'edited' WHERE ref = 'before'"))
        assert other_writer() == "waits"
    assert other_writer() == "its turn"
    with pytest.raises(RuntimeError), store.db.tx() as conn:  # a rolled-back write gives its turn up too
        conn.execute(sa.text("UPDATE notices SET source = 'lost' WHERE ref = 'before'"))
        raise RuntimeError("refused")
    assert other_writer() == "its turn"
    with store.db.read() as conn:
        assert conn.execute(sa.text("SELECT source FROM notices WHERE ref = 'before'")).scalar_one() == "edited"


def test_requeue_makes_failed_deliveries_due_with_a_fresh_schedule_and_a_dry_run_changes_nothing(
    store: Store, make_notice: Callable[..., Notice]
) -> None:
    store.queue.add_notices([(make_notice(), OUTLETS[:3])], source="t")
    now = datetime.now(UTC)
    claims = store.queue.claim(10, 2, LEASE, now=now)
    store.queue.record([AttemptRecord(c.delivery_id, c.outlet_id, 1, now, 5.0,
                                         "delivered" if c.outlet_id == "o0" else "failed", 500, "HTTP 500")
                           for c in claims])
    would = store.queue.requeue(outlet_id="o1", dry_run=True)
    assert [r["outlet"] for r in would] == ["o1"] and store.log.counts() == {"delivered": 1, "failed": 2}
    assert {r["outlet"] for r in store.queue.requeue()} == {"o1", "o2"}
    assert store.log.counts() == {"delivered": 1, "pending": 2}
    again = store.queue.claim(10, 2, LEASE)
    assert {(c.attempt, c.schedule_start, c.trigger) for c in again} == {(2, 1, "manual")}
    assert store.queue.requeue() == []  # nothing failed any more


def test_requeue_since_takes_only_deliveries_that_failed_after_that_time(
    store: Store, make_notice: Callable[..., Notice]
) -> None:
    early = datetime.now(UTC) - timedelta(hours=3)
    store.queue.add_notices([(make_notice(), OUTLETS[:2])], source="t", now=early)
    (c0, c1) = store.queue.claim(10, 2, LEASE, now=early)
    store.queue.record([AttemptRecord(c0.delivery_id, "o0", 1, early, 5.0, "failed", 400, "HTTP 400")], now=early)
    store.queue.record([AttemptRecord(c1.delivery_id, "o1", 1, early, 5.0, "failed", 400, "HTTP 400")])
    assert [r["outlet"] for r in store.queue.requeue(since=early + timedelta(hours=1))] == ["o1"]


def test_pruning_deletes_old_attempts_and_keeps_notices_and_delivery_outcomes(
    store: Store, make_notice: Callable[..., Notice]
) -> None:
    old = datetime.now(UTC) - timedelta(days=100)
    store.queue.add_notices([(make_notice(), OUTLETS[:1])], source="t", now=old)
    (claim,) = store.queue.claim(10, 2, LEASE, now=old)
    store.queue.record([AttemptRecord(claim.delivery_id, "o0", 1, old, 5.0, "delivered", 200)], now=old)
    assert store.queue.prune_attempts(datetime.now(UTC) - timedelta(days=90)) == 1
    assert store.log.attempts() == []
    (row,) = store.log.deliveries()
    assert (row["status"], row["attempts"], row["http_status"]) == ("delivered", 1, 200)
    assert store.log.notice("cq-test-001") is not None


def test_alerts_are_raised_once_per_key(store: Store, make_notice: Callable[..., Notice]) -> None:
    store.queue.add_notices([(make_notice(urgency="urgent"), OUTLETS[:2])], source="t")
    later = datetime.now(UTC) + timedelta(minutes=11)
    assert store.outbox.flag_late_urgent(timedelta(minutes=10), now=later) == 1
    assert store.outbox.flag_late_urgent(timedelta(minutes=10), now=later) == 0  # raised already
    (alert,) = store.outbox.unsent()
    assert alert["kind"] == "urgent-late" and "2 outlet(s) without it" in alert["text"]
    store.outbox.mark_sent([alert["id"]])
    assert store.outbox.unsent() == []
    assert store.outbox.flag_late_urgent(timedelta(minutes=10), now=later) == 0


@pytest.mark.parametrize("rate_limited", [False, True])
def test_one_outlets_backlog_does_not_starve_the_others(
    store: Store, make_notice: Callable[..., Notice], rate_limited: bool
) -> None:
    from bot.outlets import RateLimit

    backlog = [Outlet(id=f"big{i}", name=f"大{i}", tier="city", channel="webhook", url="https://x.example/",
                      secret_env="S") for i in range(5)]
    small = [Outlet(id=f"small{i:02}", name=f"小{i}", tier="district", channel="webhook",
                    url="https://x.example/", secret_env="S") for i in range(45)]
    start = datetime.now(UTC) - timedelta(minutes=10)
    store.queue.add_notices([(make_notice(ref=f"old{n}", title=f"旧{n}"), backlog) for n in range(100)],
                            source="t", now=start)
    store.queue.add_notices([(make_notice(ref="new", title="新"), small)], source="t", now=start + timedelta(minutes=1))
    limits = {o.id: (RateLimit(1, 60),) for o in backlog} if rate_limited else None
    now = datetime.now(UTC)

    first = store.queue.claim(100, per_outlet=2, lease=LEASE, now=now, rate_limits=limits)

    per_outlet = {o: sum(c.outlet_id == o for c in first) for o in {c.outlet_id for c in first}}
    assert {o.id for o in small} <= per_outlet.keys()  # every small outlet gets its delivery in the first claim
    assert all(per_outlet[o.id] == (1 if rate_limited else 2) for o in backlog)
    assert len(first) == 45 + 5 * (1 if rate_limited else 2)
    # what is claimed is the oldest of each outlet's queue
    assert all(store.queue.notices_by_id([c.notice_id])[c.notice_id][0].ref in ("old0", "old1", "new") for c in first)
    store.queue.record([AttemptRecord(c.delivery_id, c.outlet_id, c.attempt, now, 1.0, "delivered", 200)
                        for c in first], now=now)
    second = store.queue.claim(100, per_outlet=2, lease=LEASE, now=now, rate_limits=limits)
    assert len(second) == (0 if rate_limited else 10)  # a rate-limited outlet waits for its window


def test_an_embargo_committed_during_a_release_is_never_half_released(
    postgres_url: str, make_notice: Callable[..., Notice]
) -> None:
    """PostgreSQL, READ COMMITTED: a held notice committed by another process while release_due runs is
    either released with its deliveries or left for the next release, never marked released with its
    deliveries still held (which would hold them forever)."""
    import sqlalchemy as sa

    from bot.store import deliveries, notices

    store, other = Store.open(postgres_url), Store.open(postgres_url)
    now = datetime.now(UTC)
    store.queue.add_notices([(make_notice(ref="first", publish_at=(now + timedelta(hours=1)).isoformat()), OUTLETS)],
                            source="t", now=now)
    done = []

    @sa.event.listens_for(store.engine, "after_cursor_execute")
    def commit_another_embargo_meanwhile(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE") and not done:
            done.append(True)  # between release_due's statements, another process commits a notice now due
            other.queue.add_notices([(make_notice(ref="second", title="第二条",
                                                  publish_at=(now + timedelta(hours=1)).isoformat()), OUTLETS)],
                                    source="t", now=now)

    def half_released() -> list[str]:
        with store.engine.connect() as conn:
            return list(conn.execute(
                sa.select(notices.c.ref).distinct().select_from(notices.join(deliveries))
                .where(notices.c.released_at.is_not(None), deliveries.c.status == "held")).scalars())

    later = now + timedelta(hours=2)
    store.queue.release_due(now=later)
    assert done and half_released() == []
    store.queue.release_due(now=later)  # the next run releases what came in meanwhile
    assert half_released() == [] and store.log.counts() == {"pending": 10}
    store.close()
    other.close()


def test_a_process_whose_clock_runs_ahead_does_not_take_over_a_live_lease(
    postgres_url: str, make_notice: Callable[..., Notice]
) -> None:
    """PostgreSQL: leases, rate windows and due times are on the database's clock, so a worker whose clock
    is ten minutes ahead neither double-claims a leased delivery nor records times from its own future."""
    honest = Store.open(postgres_url)
    ahead = Store.open(postgres_url, clock=lambda: datetime.now(UTC) + timedelta(minutes=10))
    honest.queue.add_notices([(make_notice(), OUTLETS[:1])], source="t")
    (claim,) = honest.queue.claim(10, 2, LEASE)
    assert ahead.queue.claim(10, 2, LEASE) == []  # its clock says the 30 s lease ran out long ago
    # what the skewed process measured lands on the database's clock
    started = ahead.db.clock()
    honest.owner, ahead.owner = "gone", honest.owner  # the lease is ahead's to record (a takeover, say)
    ahead.queue.record([AttemptRecord(claim.delivery_id, claim.outlet_id, 1, started, 5.0, "retry", 503, "HTTP 503",
                                      next_attempt_at=started + timedelta(seconds=5))])
    (attempt,) = honest.log.attempts()
    assert abs(attempt["started_at"] - datetime.now(UTC)) < timedelta(minutes=1)
    assert honest.queue.claim(10, 2, LEASE) == []  # the retry is 5 s away on everyone's clock, not 10 min ago
    honest.close()
    ahead.close()


def test_the_delivery_log_says_why_each_held_delivery_waits(store: Store, make_notice: Callable[..., Notice]) -> None:
    from bot.health import HealthPolicy
    from bot.outlets import RateLimit

    now = datetime.now(UTC)
    store.queue.add_notices([(make_notice(ref="later", publish_at=(now + timedelta(hours=1)).isoformat()),
                              OUTLETS[:1])], source="t", now=now)
    store.queue.add_notices([(make_notice(ref="b", title="乙"), OUTLETS[1:]),
                             (make_notice(ref="c", title="丙"), OUTLETS[1:4])], source="t", now=now)
    limits = {"o3": (RateLimit(1, 60),)}
    claims = {c.outlet_id: c for c in store.queue.claim(10, 1, LEASE, now=now, rate_limits=limits)}
    assert claims.keys() == {"o1", "o2", "o3", "o4"}
    outcome = {"o1": dict(outcome="failed", http_status=410, error="HTTP 410", pause_outlet="o1"),
               "o2": dict(outcome="retry", http_status=503, error="HTTP 503", next_attempt_at=now),
               "o3": dict(outcome="delivered", http_status=200), "o4": dict(outcome="delivered", http_status=200)}
    store.queue.record([AttemptRecord(c.delivery_id, o, 1, now, 5.0, **outcome[o]) for o, c in claims.items()],
                       now=now, policy=HealthPolicy(breaker_threshold=1))
    assert store.queue.claim(10, 1, LEASE, now=now, rate_limits=limits) == []

    held = {(r["notice"], r["outlet"]): r["reason"] for r in store.log.deliveries(status="held")}
    assert held.pop(("later", "o0")).startswith("embargo until ")
    assert held.pop(("c", "o1")) == "outlet paused: HTTP 410"
    assert held.pop(("b", "o2")).startswith("breaker open until ")
    assert held.pop(("c", "o2")).startswith("breaker open until ")
    # when its window frees: a minute after the send that used it up (not a guess made while it was in flight)
    assert held.pop(("c", "o3")) == f"rate limit until {(now + timedelta(seconds=60)).isoformat(timespec='seconds')}"
    assert held == {}
    assert store.log.deliveries(status="pending") == []
    assert store.log.tiers() == {"district": {"held": 5, "failed": 1, "delivered": 2}}
    assert store.log.counts("c") == {"held": 3}

    # paged with a cursor, filtered by tier and state: the shape the web API reads
    first = store.log.page(tier="district", limit=5)
    rest = store.log.page(tier="district", after=first.next, limit=5)
    assert len(first.rows) == 5 and len(rest.rows) == 3 and rest.next is None
    assert [r["id"] for r in first.rows + rest.rows] == sorted(r["id"] for r in store.log.deliveries())
    assert store.log.page(tier="city").rows == []


def test_a_rate_window_filled_by_a_send_in_flight_waits_a_short_guess_made_good_once_the_send_is_recorded(
    store: Store, make_notice: Callable[..., Notice]
) -> None:
    from bot.outlets import RateLimit
    from bot.store.tables import outlet_health

    def waits_until() -> datetime:
        with store.engine.connect() as conn:
            return conn.execute(sa.select(outlet_health.c.rate_limited_until)
                                .where(outlet_health.c.outlet_id == "o0")).scalar_one()

    now = datetime.now(UTC)
    store.queue.add_notices([(make_notice(ref="a"), OUTLETS[:1]), (make_notice(ref="b", title="乙"), OUTLETS[:1])],
                            source="t", now=now)
    limits = {"o0": (RateLimit(1, 60),)}
    (claim,) = store.queue.claim(10, 2, LEASE, now=now, rate_limits=limits)
    assert waits_until() == now + timedelta(seconds=1)  # when the send will have started is not known yet
    assert store.queue.claim(10, 2, LEASE, now=now + timedelta(seconds=0.5), rate_limits=limits) == []
    assert waits_until() == now + timedelta(seconds=1)  # kept, not pushed on by every claim
    store.queue.record([AttemptRecord(claim.delivery_id, "o0", 1, now, 5.0, outcome="delivered", http_status=200)],
                       now=now)
    assert store.queue.claim(10, 2, LEASE, now=now + timedelta(seconds=0.6), rate_limits=limits) == []
    assert waits_until() == now + timedelta(seconds=60)  # the window's end, once its send is recorded


def test_any_text_an_outlet_answers_is_stored_and_the_platform_code_with_it(
    store: Store, make_notice: Callable[..., Notice]
) -> None:
    store.queue.add_notices([(make_notice(), OUTLETS[:1])], source="t")
    (claim,) = store.queue.claim(10, 2, LEASE)
    now = datetime.now(UTC)
    store.queue.record([AttemptRecord(claim.delivery_id, "o0", 1, now, 5.0, "retry", 200, "errcode 45009 \udc80",
                                      response='{"ok":true}\x00 \ud800', next_attempt_at=now, platform_code="45009")])
    (attempt,) = store.log.attempts()
    assert attempt["response"] == '{"ok":true}\ufffd \ufffd' and attempt["error"] == "errcode 45009 \ufffd"
    assert attempt["platform_code"] == "45009"
    assert store.log.deliveries()[0]["error"] == "errcode 45009 \ufffd"


# -- urgent lanes ---------------------------------------------------------------------------------------

def test_an_urgent_notice_is_claimed_within_one_claim_cycle_of_a_10000_delivery_backlog(
    store: Store, make_notice: Callable[..., Notice]
) -> None:
    outlets = [Outlet(id=f"o{i:02}", name=f"站点{i}", tier="district", channel="webhook", url="https://x.example/",
                      secret_env="S") for i in range(50)]
    start = datetime.now(UTC) - timedelta(minutes=10)
    for batch in range(4):
        store.queue.add_notices([(make_notice(ref=f"old{batch}-{n}", title=f"旧{n}"), outlets) for n in range(50)],
                                source="t", now=start)
    assert store.log.counts() == {"pending": 10_000}
    now = datetime.now(UTC)
    in_flight = store.queue.claim(100, per_outlet=2, lease=LEASE, now=now)  # every outlet's room is taken
    assert len(in_flight) == 100

    store.queue.add_notices([(make_notice(ref="urgent", title="紧急", urgency="urgent"), outlets)], source="t", now=now)
    assert store.queue.claim(100, per_outlet=2, lease=LEASE, now=now) == []  # no room until the sends in flight end
    store.queue.record([AttemptRecord(c.delivery_id, c.outlet_id, c.attempt, now, 1.0, "delivered", 200)
                        for c in in_flight], now=now)
    urgent_id = store.log.notice("urgent")[0]  # type: ignore[index]

    # the next claim: every outlet's urgent delivery, ahead of the 9,900 normal ones waiting longer, each outlet
    # within its cap
    claims = store.queue.claim(100, per_outlet=2, lease=LEASE, now=now)
    assert [c.notice_id == urgent_id for c in claims] == [True] * 50 + [False] * 50
    assert all(c.urgent for c in claims[:50]) and not any(c.urgent for c in claims[50:])
    assert {c.outlet_id for c in claims[:50]} == {o.id for o in outlets}
    assert max(sum(c.outlet_id == o.id for c in claims) for o in outlets) == 2
    # a smaller claim takes only urgent ones
    store.queue.release_claims()
    assert all(c.urgent for c in store.queue.claim(30, per_outlet=2, lease=LEASE, now=now))


def test_an_urgent_delivery_keeps_its_outlets_rate_limit(store: Store, make_notice: Callable[..., Notice]) -> None:
    from bot.outlets import RateLimit

    now = datetime.now(UTC)
    store.queue.add_notices([(make_notice(ref="old"), OUTLETS[:1])], source="t", now=now - timedelta(minutes=1))
    (sent,) = store.queue.claim(10, 2, LEASE, now=now, rate_limits={"o0": (RateLimit(1, 60),)})
    store.queue.record([AttemptRecord(sent.delivery_id, "o0", 1, now, 1.0, "delivered", 200)], now=now)
    store.queue.add_notices([(make_notice(ref="urgent", urgency="urgent"), OUTLETS[:1])], source="t", now=now)

    limits = {"o0": (RateLimit(1, 60),)}
    assert store.queue.claim(10, 2, LEASE, now=now + timedelta(seconds=30), rate_limits=limits) == []
    (urgent,) = store.queue.claim(10, 2, LEASE, now=now + timedelta(seconds=61), rate_limits=limits)
    assert urgent.urgent


# -- expiry ---------------------------------------------------------------------------------------------

def test_after_expiry_a_delivery_in_retry_is_cancelled_never_claimed_and_the_log_says_expired(
    store: Store, make_notice: Callable[..., Notice]
) -> None:
    now = datetime.now(UTC)
    expires = now + timedelta(minutes=5)
    store.queue.add_notices([(make_notice(ref="short", expires_at=expires.isoformat()), OUTLETS[:2]),
                             (make_notice(ref="lasting", title="长期"), OUTLETS[:2])], source="t", now=now)
    first = store.queue.claim(10, 2, LEASE, now=now)
    store.queue.record([AttemptRecord(c.delivery_id, c.outlet_id, 1, now, 1.0, "retry", 503, "HTTP 503",
                                      next_attempt_at=now + timedelta(minutes=10)) for c in first], now=now)

    later = expires + timedelta(minutes=6)  # the retries are due, the notice has expired
    assert store.queue.cancel_expired(now=expires - timedelta(seconds=1)) == {}
    assert {store.queue.notices_by_id([c.notice_id])[c.notice_id][0].ref
            for c in store.queue.claim(10, 2, LEASE, now=later)} == {"lasting"}  # never handed out, even uncancelled
    store.queue.release_claims()
    assert store.queue.cancel_expired(now=later) == {"short": 2}
    assert store.queue.cancel_expired(now=later) == {}

    rows = store.log.deliveries(ref="short")
    assert [(r["status"], r["reason"], r["attempts"], r["http_status"], r["error"]) for r in rows] == [
        ("cancelled", "expired", 1, 503, "HTTP 503")] * 2  # the last try's answer stays: why it had not gone out
    assert store.log.counts("short") == {"cancelled": 2}
    assert len(store.log.deliveries(status="cancelled")) == 2
    assert {r["status"] for r in store.log.deliveries(ref="lasting")} == {"pending"}


def test_a_claimed_delivery_is_cancelled_by_its_claimer_not_under_its_feet(
    store: Store, make_notice: Callable[..., Notice]
) -> None:
    now = datetime.now(UTC)
    expires = now + timedelta(seconds=10)
    store.queue.add_notices([(make_notice(expires_at=expires.isoformat()), OUTLETS[:1])], source="t", now=now)
    (claim,) = store.queue.claim(10, 2, LEASE, now=now)
    assert claim.expires_at == expires

    # under a live lease its send may have started: expiry leaves it to the claimer
    assert store.queue.cancel_expired(now=expires + timedelta(seconds=1)) == {}
    store.queue.record([AttemptRecord(claim.delivery_id, claim.outlet_id, claim.attempt, expires, 0.0, "cancelled",
                                      error="expired")], now=expires)
    (row,) = store.log.deliveries()
    assert (row["status"], row["reason"], row["attempts"]) == ("cancelled", "expired", 0)
    assert store.log.attempts() == []  # nothing was sent, so no attempt is logged
    assert store.health.all()["o0"].consecutive_failures == 0


def test_an_embargoed_notice_that_expires_while_held_is_cancelled(
    store: Store, make_notice: Callable[..., Notice]
) -> None:
    now = datetime.now(UTC)
    notice = make_notice(publish_at=(now + timedelta(hours=1)).isoformat(),
                         expires_at=(now + timedelta(hours=2)).isoformat())
    store.queue.add_notices([(notice, OUTLETS[:3])], source="t", now=now)
    assert store.queue.cancel_expired(now=now + timedelta(hours=2, seconds=1)) == {"cq-test-001": 3}
    assert store.log.counts() == {"cancelled": 3}
    assert store.queue.release_due(now=now + timedelta(hours=3)) == 0


def test_a_claim_cancels_what_expired_in_its_own_transaction_and_claims_only_the_rest(
    store: Store, make_notice: Callable[..., Notice]
) -> None:
    now = datetime.now(UTC)
    store.queue.add_notices([(make_notice(ref="old", expires_at=(now + timedelta(minutes=1)).isoformat()),
                              OUTLETS[:2])], source="t", now=now)
    store.queue.add_notices([(make_notice(ref="live"), OUTLETS[:2])], source="t", now=now)
    later = now + timedelta(minutes=2)

    cancelled: dict[str, int] = {}
    claims = store.queue.claim(10, 2, LEASE, now=later, cancelled=cancelled)

    assert cancelled == {"old": 2}
    assert {store.queue.notices_by_id([c.notice_id])[c.notice_id][0].ref for c in claims} == {"live"}
    assert store.log.counts(ref="old") == {"cancelled": 2}
    assert store.queue.claim(10, 2, LEASE, now=later, outlets=[], cancelled=cancelled) == []  # nothing to send to


def test_an_urgent_notice_that_expired_raises_no_late_alert_for_what_was_cancelled(
    store: Store, make_notice: Callable[..., Notice]
) -> None:
    now = datetime.now(UTC)
    notice = make_notice(urgency="urgent", expires_at=(now + timedelta(minutes=5)).isoformat())
    store.queue.add_notices([(notice, OUTLETS[:2])], source="t", now=now)
    later = now + timedelta(minutes=20)
    assert store.queue.cancel_expired(now=later) == {"cq-test-001": 2}
    assert store.outbox.flag_late_urgent(timedelta(minutes=10), now=later) == 0  # nothing left anyone can do


def test_a_failed_delivery_of_an_expired_notice_is_not_requeued(
    store: Store, make_notice: Callable[..., Notice]
) -> None:
    now = datetime.now(UTC)
    store.queue.add_notices([(make_notice(ref="brief", expires_at=(now + timedelta(minutes=5)).isoformat()),
                              OUTLETS[:1]), (make_notice(ref="lasting", title="长期"), OUTLETS[:1])], source="t", now=now)
    claims = store.queue.claim(10, 2, LEASE, now=now)
    store.queue.record([AttemptRecord(c.delivery_id, c.outlet_id, 1, now, 1.0, "failed", 400, "HTTP 400")
                        for c in claims], now=now)
    later = now + timedelta(minutes=10)
    assert [r["notice"] for r in store.queue.requeue(now=later)] == ["lasting"]
    assert store.log.deliveries(ref="brief")[0]["status"] == "failed"


def test_the_notices_list_counts_the_deliveries_of_the_notices_it_shows_and_no_others(
    store: Store, make_notice: Callable[..., Notice]
) -> None:
    import sqlalchemy as sa

    for n in range(3):
        store.queue.add_notices([(make_notice(ref=f"n{n}", title=f"第{n}条"), OUTLETS[:n + 1])], source="t")
    ids = {ref: store.log.notice(ref)[0] for ref in ("n0", "n1", "n2")}  # type: ignore[index]
    statements: list[tuple[str, Any]] = []

    def seen(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        statements.append((statement, params))

    sa.event.listen(store.engine, "before_cursor_execute", seen)
    try:
        page = store.log.notices(limit=2, newest_first=True)
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", seen)
    assert [(r["ref"], r["state"], r["pending"], r["delivered"]) for r in page.rows] == [
        ("n2", "pending", 3, 0), ("n1", "pending", 2, 0)]
    grouped = [params for statement, params in statements if "GROUP BY" in statement.upper()]
    assert len(grouped) == 1, statements  # one count, of the page's notices: not every delivery in the store
    assert set(grouped[0].values() if isinstance(grouped[0], dict) else grouped[0]) == {ids["n2"], ids["n1"]}
