"""The store's tokens and audit trail, on both backends: hashes only, and each change's audit row written in the
change's own transaction (so a change that fails leaves no row)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from bot.model import Notice
from bot.outlets import Outlet
from bot.store import Actor, RefConflict, Role, Store, api_tokens, audit

EDITOR = Actor("张三", "editor", "203.0.113.7")


def outlets(n: int) -> list[Outlet]:
    return [Outlet(id=f"o{i}", name=f"站点{i}", tier="district", channel="webhook", url="https://x.example/h")
            for i in range(n)]


def test_a_token_is_kept_as_its_sha256_only_and_works_until_it_is_revoked(store: Store) -> None:
    token, row = store.access.create("张三", Role.editor, actor=Actor.local())
    with store.engine.connect() as conn:
        stored = [dict(r._mapping) for r in conn.execute(sa.select(api_tokens))]
    assert token not in repr(stored) and token[4:] not in repr(stored)
    assert stored[0]["token_hash"] == hashlib.sha256(token.encode()).hexdigest()

    caller = store.access.authenticate(token)
    assert caller is not None and (caller.name, caller.role) == ("张三", Role.editor)
    assert store.access.authenticate(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert store.access.authenticate("") is None
    assert store.access.revoke(row["id"])["revoked_at"] is not None  # type: ignore[index]
    assert store.access.authenticate(token) is None
    assert store.access.revoke(row["id"]) is None  # already revoked: nothing changes


def test_roles_are_ordered_with_the_reviewer_between_editor_and_operator() -> None:
    assert Role.viewer < Role.editor < Role.reviewer < Role.operator < Role.admin
    with pytest.raises(ValueError, match="unknown role 'boss'; roles: viewer, editor, reviewer, operator, admin"):
        Role.named("boss")


def test_a_batch_refused_for_a_conflicting_ref_leaves_no_audit_row_for_the_notices_before_it(
    store: Store, make_notice: Callable[..., Notice]
) -> None:
    store.queue.add_notices([(make_notice(ref="a"), outlets(2))], source="t", actor=EDITOR)
    with pytest.raises(RefConflict):
        store.queue.add_notices([(make_notice(ref="b"), outlets(2)), (make_notice(ref="a", truth="改了。"), outlets(2))],
                                source="t", actor=EDITOR)
    assert store.log.notice("b") is None
    assert [(r["action"], r["subject"], r["actor"], r["source"]) for r in store.audit.page().rows] == [
        ("notice.submit", "a", "张三", "203.0.113.7")]


def test_an_audit_row_that_cannot_be_written_takes_its_change_with_it(
    store: Store, make_notice: Callable[..., Notice]
) -> None:
    """The row and the change share one transaction: with the audit table gone, the outlet is not paused."""
    store.queue.add_notices([(make_notice(), outlets(1))], source="t")
    with store.engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE audit RENAME TO audit_away"))
    try:
        with pytest.raises(sa.exc.DBAPIError):
            store.health.pause("o0", "维护", actor=EDITOR)
        assert store.health.paused() == {}
        with pytest.raises(sa.exc.DBAPIError):
            store.access.create("李四", Role.viewer, actor=EDITOR)
        assert store.access.all() == []
    finally:
        with store.engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE audit_away RENAME TO audit"))
    assert store.health.pause("o0", "维护", actor=EDITOR) == 1
    assert [r["action"] for r in store.audit.page().rows] == ["outlet.pause"]


def test_changes_without_an_actor_are_the_daemons_own_and_write_no_row(
    store: Store, make_notice: Callable[..., Notice]
) -> None:
    store.queue.add_notices([(make_notice(), outlets(2))], source="t")
    store.health.pause("o0", "x")
    store.health.resume("o0")
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(audit)).scalar_one() == 0


def test_a_change_outside_the_store_is_audited_on_its_own(store: Store) -> None:
    store.audit.write(Actor("李四", "operator", "203.0.113.9"), "matrix.reload", None, outlets=51, added=["n-new"])
    (row,) = store.audit.page().rows
    assert (row["action"], row["subject"], row["detail"]) == ("matrix.reload", None, {"outlets": 51, "added": ["n-new"]})


def test_the_audit_trail_pages_with_a_cursor_and_filters(store: Store, make_notice: Callable[..., Any]) -> None:
    store.queue.add_notices([(make_notice(ref=f"n{i}", title=f"第{i}条"), outlets(1)) for i in range(5)], source="t",
                            actor=EDITOR)
    store.health.pause("o0", "维护", actor=Actor("李四", "operator", "cli@host"))
    first = store.audit.page(limit=2)
    second = store.audit.page(limit=10, after=first.next)
    assert [r["subject"] for r in first.rows + second.rows] == ["n0", "n1", "n2", "n3", "n4", "o0"]
    assert second.next is None
    assert [r["subject"] for r in store.audit.page(actor="李四").rows] == ["o0"]
    assert store.audit.page(action="outlet.pause").rows[0]["detail"] == {"reason": "维护", "held": 5}
