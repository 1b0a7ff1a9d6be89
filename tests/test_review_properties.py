"""A property of review before release, over random sequences of submit, edit, sign, send back and urgent release:
a notice is released (stored, with deliveries) only with N sign-offs by N distinct people other than its authors,
each on the content that was released; an urgent release only by an operator after at least one. The test keeps
its own account of who signed what content, and compares it with what the store released."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from bot.model import Notice
from bot.regions import RegionTable
from bot.store import Actor, RefConflict, ReviewConflict, ReviewRefused, Store, deliveries, notices
from tests.conftest import notice_data

ROLES = {"编辑甲": "editor", "编辑乙": "reviewer", "审核甲": "reviewer", "审核乙": "reviewer", "审核丙": "operator",
         "值班": "operator", "访客": "viewer"}
PEOPLE = sorted(ROLES)
TRUTHS = ["经核实，水位平稳。", "经核实，水位平稳，未见异常。", "经核实，水位较昨日下降0.3米。"]

submit = st.tuples(st.just("submit"), st.sampled_from(PEOPLE), st.sampled_from(range(len(TRUTHS))))
# a stage, or 0: the stage the draft waits for as the test counts it (a reviewer reading the queue)
sign = st.tuples(st.just("sign"), st.sampled_from(PEOPLE), st.sampled_from([0, 0, 0, 1, 2, 3]))
step = st.one_of(  # signing is most of what happens (and what Hypothesis tries first): drawn six times as often
    sign, sign, sign, sign, sign, sign, submit,
    st.tuples(st.just("return"), st.sampled_from(PEOPLE), st.just(0)),
    st.tuples(st.just("release"), st.sampled_from(PEOPLE), st.just(0)),
)


@dataclass
class Account:
    """What the test saw succeed: the draft's content and authors, and the sign-offs that should count."""

    content: int | None = None
    authors: set[str] = field(default_factory=set)
    signed: list[tuple[str, int]] = field(default_factory=list)  # (who, content variant they signed)
    released: bool = False
    urgent_by: str | None = None


@pytest.fixture(scope="module")
def review_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    path: Path = tmp_path_factory.mktemp("review") / "store.sqlite3"
    store = Store.open(f"sqlite:///{path}")
    yield store
    store.close()


refs = itertools.count()


@pytest.mark.parametrize("stages", [1, 2, 3])
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.tuples(submit).map(list), more=st.lists(step, min_size=4, max_size=20), urgent=st.booleans())
def test_a_notice_is_released_only_with_every_stage_signed_by_distinct_non_authors_on_the_released_content(
    review_store: Store, regions: RegionTable, stages: int, steps: list[tuple[str, str, int]],
    more: list[tuple[str, str, int]], urgent: bool,
) -> None:
    store = review_store
    store.review.stages = stages
    ref = f"prop-{next(refs)}"
    account = Account()

    def notice(variant: int) -> Notice:
        return Notice.model_validate(notice_data(ref=ref, truth=TRUTHS[variant],
                                                 urgency="urgent" if urgent else "normal"),
                                     context={"regions": regions})

    for position, (kind, drawn, arg) in enumerate(steps + more):
        # step i's person is shifted by i: every sequence of people can still be drawn, and the simplest draw
        # (all zeros, where Hypothesis starts) is a different person at each step, not one person throughout
        who = PEOPLE[(PEOPLE.index(drawn) + position) % len(PEOPLE)]
        actor = Actor(who, ROLES[who], "test")
        try:
            if kind == "submit":
                added = store.review.submit([notice(arg)], f"api:{who}", actor)[0]
                if added.created:  # a new draft, or an edit: the sign-offs so far stop counting
                    account.content, account.signed = arg, []
                    account.authors.add(who)
            elif kind == "sign":
                state = store.review.sign(ref, arg or len(account.signed) + 1, actor, None, lambda n: [])
                account.signed.append((who, account.content))  # type: ignore[arg-type]
                account.released = state.state == "released"
            elif kind == "return":
                store.review.return_(ref, actor, "请修改")
                account.signed = []
            else:
                store.review.release(ref, actor, "紧急", lambda n: [])
                account.released, account.urgent_by = True, who
        except (ReviewRefused, ReviewConflict, LookupError, RefConflict):
            continue

    with store.engine.connect() as conn:
        stored = conn.execute(sa.select(notices.c.id, notices.c.payload, notices.c.content_hash)
                              .where(notices.c.ref == ref)).first()
        made = conn.execute(sa.select(sa.func.count()).select_from(deliveries)
                            .where(deliveries.c.notice_id == (stored.id if stored else -1))).scalar_one()
    assert (stored is not None) == account.released
    event("released urgently" if account.urgent_by else "released" if stored is not None else "still a draft")
    if stored is None:
        assert made == 0
        return
    released = Notice.from_stored(stored.payload)
    assert released.truth == TRUTHS[account.content]  # type: ignore[index]
    signers = [who for who, _ in account.signed]
    assert len(set(signers)) == len(signers), "a person signed two stages"
    assert not set(signers) & account.authors, "an author signed"
    assert all(variant == account.content for _, variant in account.signed), "a sign-off was on other content"
    if account.urgent_by is None:
        assert len(signers) == stages
    else:
        assert 1 <= len(signers) < stages and ROLES[account.urgent_by] == "operator" and urgent
        assert account.urgent_by not in account.authors
    state = store.review.get(ref)
    assert state is not None and state.state == "released"
    assert [(d.actor, d.content_hash) for d in state.signed] == [(who, stored.content_hash) for who in signers]
