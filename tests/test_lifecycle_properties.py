"""A stateful property test of corrections and retractions over the store's claim and record path: for any
interleaving of submit, correct, retract, claims, crashes (sends that reached the outlet, never recorded) and
answers, no outlet receives an older version after a newer one, nothing but the retraction after it, and once
everything is answered every outlet that received the notice ends on the latest version (or the retraction)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from bot.model import Notice
from bot.store import AttemptRecord, Claim, Store
from tests.conftest import chaos_matrix, notice_data, whsec

LEASE = timedelta(seconds=30)


class NoticeLife(RuleBasedStateMachine):
    store: Store
    matrix: Any
    regions: Any

    def __init__(self) -> None:
        super().__init__()
        self.now = datetime.now(UTC)
        self.version = 0
        self.retracted = False
        self.in_hand: list[Claim] = []
        self.received: dict[str, list[tuple[int, str]]] = {o.id: [] for o in self.matrix.outlets}
        self.confirmed: set[str] = set()  # outlets with a recorded delivery (the store knows they have it)
        self.store.engine.dispose()
        with self.store.db.tx() as conn:
            for table in ("attempts", "deliveries", "notice_versions", "notices", "outlet_health"):
                conn.exec_driver_sql(f"DELETE FROM {table}")

    def notice(self, **extra: Any) -> Notice:
        return Notice.model_validate(notice_data(truth=f"第{self.version}版事实。", **extra),
                                     context={"regions": self.regions})

    @precondition(lambda self: self.version == 0)
    @rule()
    def submit(self) -> None:
        self.version = 1
        self.store.queue.add_notices([(self.notice(), self.matrix.outlets)], source="test", now=self.now)

    @precondition(lambda self: self.version >= 1 and not self.retracted)
    @rule()
    def correct(self) -> None:
        self.version += 1
        self.store.queue.add_notices([(self.notice(correct=True, correction_note="更正"), self.matrix.outlets)],
                                     source="test", now=self.now)

    @precondition(lambda self: self.version >= 1 and not self.retracted)
    @rule()
    def retract(self) -> None:
        self.retracted = True
        self.store.lifecycle.retract("cq-test-001", "撤回", None, now=self.now)

    @rule()
    def claim(self) -> None:
        self.in_hand += self.store.queue.claim(10, 1, LEASE, now=self.now)

    @precondition(lambda self: self.in_hand)
    @rule(index=st.integers(0, 9), outcome=st.sampled_from(["delivered", "retry", "failed"]),
          reached=st.booleans())
    def answer(self, index: int, outcome: str, reached: bool) -> None:
        claim = self.in_hand.pop(index % len(self.in_hand))
        if outcome == "delivered" or reached and outcome == "retry":  # a timeout may hide a send that arrived
            self.received[claim.outlet_id].append((claim.version, claim.carries))
        if outcome == "delivered":
            self.confirmed.add(claim.outlet_id)
        self.store.queue.record([AttemptRecord(
            claim.delivery_id, claim.outlet_id, claim.attempt, self.now, 1.0, outcome,
            next_attempt_at=self.now, version=claim.version, carries=claim.carries)], now=self.now)

    @rule(reached=st.booleans())
    def crash(self, reached: bool) -> None:
        """The process dies: its claims are lost (sent or not), and their leases run out."""
        if reached:
            for claim in self.in_hand:
                self.received[claim.outlet_id].append((claim.version, claim.carries))
        self.in_hand = []
        self.now += LEASE + timedelta(seconds=1)

    @invariant()
    def never_an_older_version_and_nothing_after_the_retraction(self) -> None:
        for got in self.received.values():
            versions = [v for v, carried in got if carried != "retraction"]
            assert versions == sorted(versions), got
            if any(carried == "retraction" for _, carried in got):
                first = next(i for i, (_, c) in enumerate(got) if c == "retraction")
                assert all(c == "retraction" for _, c in got[first:]), got

    def teardown(self) -> None:
        """Everything answered, delivered: each outlet that had it ends on the latest version or the retraction."""
        for _ in range(20):
            claims = self.store.queue.claim(100, 1, LEASE, now=self.now)
            if not claims and not self.in_hand:
                break
            for claim in [*self.in_hand, *claims]:
                self.received[claim.outlet_id].append((claim.version, claim.carries))
                self.confirmed.add(claim.outlet_id)
                self.store.queue.record([AttemptRecord(claim.delivery_id, claim.outlet_id, claim.attempt, self.now,
                                                       1.0, "delivered", version=claim.version,
                                                       carries=claim.carries)], now=self.now)
            self.in_hand = []
            self.now += LEASE + timedelta(seconds=1)  # a failed delivery stays failed; leases run out
        self.never_an_older_version_and_nothing_after_the_retraction()
        failed = {r["outlet"] for r in self.store.log.deliveries() if r["status"] == "failed"}
        for outlet, got in self.received.items():
            if outlet not in self.confirmed:  # only a timeout or a crash knows it arrived: the store cannot
                continue
            if outlet in failed:  # the outlet refused what came next: an operator's retry sends it
                continue
            if got and self.retracted:
                assert got[-1][1] == "retraction", (outlet, got)
            elif got and self.version:
                assert got[-1][0] == self.version, (outlet, got)


def test_no_interleaving_sends_an_outlet_an_older_version_or_anything_after_the_retraction(
    store: Store, tmp_path: Any, regions: Any
) -> None:
    NoticeLife.store = store
    NoticeLife.regions = regions
    NoticeLife.matrix = chaos_matrix(tmp_path, regions, {o: f"http://127.0.0.1:9/{o}" for o in ("a", "b", "c")},
                                     {o: whsec() for o in ("a", "b", "c")})
    machine = NoticeLife.TestCase
    machine.settings = settings(max_examples=50, deadline=None, stateful_step_count=20,
                                suppress_health_check=list(HealthCheck))
    machine().runTest()
