"""Every page at every role: 200 where the role allows it, a clear 403 page where not; every form refuses a
forged CSRF token; an editor's text shows as text on every page."""

from __future__ import annotations

import pytest

from bot.store import Role
from tests.web.conftest import Newsroom, csrf_of

HOSTILE = "<script>alert(1)</script> {{ 7*7 }} [点我](javascript:alert(2)) <img src=x onerror=alert(3)>"


def pages(ref: str, cell: int) -> list[tuple[str, Role]]:
    """Each page and the least role that may see it."""
    return [("/notices", Role.viewer), (f"/notices/{ref}", Role.viewer), (f"/notices/{ref}/cells/{cell}", Role.viewer),
            ("/log", Role.viewer), ("/log.csv", Role.viewer), ("/outlets", Role.viewer), ("/audit", Role.operator)]


def forms(ref: str, cell: int) -> list[tuple[str, Role]]:
    """Each form that changes something and the least role that may send it."""
    return [(f"/notices/{ref}/cells/{cell}/retry", Role.operator), (f"/notices/{ref}/cells/{cell}/resume", Role.operator),
            ("/outlets/dist-nanan/pause", Role.operator), ("/outlets/dist-nanan/resume", Role.operator)]


async def test_every_page_at_every_role_is_200_or_a_clear_403(newsroom: Newsroom) -> None:
    ref = newsroom.submit()
    cell = newsroom.attempt("dist-nanan")
    for role in Role:
        browser = await newsroom.login(role)
        for path, least in pages(ref, cell):
            answer = await browser.get(path)
            if role >= least:
                assert answer.status_code == 200, (role, path, answer.text[:300])
            else:
                assert answer.status_code == 403, (role, path)
                assert "此页面需要" in answer.text and "<h1>" in answer.text


@pytest.mark.parametrize("role", [Role.viewer, Role.editor, Role.operator])
async def test_every_form_refuses_a_forged_csrf_token_and_a_role_below_it_and_changes_nothing(
        newsroom: Newsroom, role: Role) -> None:
    ref = newsroom.submit()
    cell = newsroom.attempt("dist-nanan")
    browser = await newsroom.login(role)
    good = csrf_of(await browser.get("/notices"))
    audit_before = len(newsroom.store.audit.page().rows)
    for path, least in forms(ref, cell):
        for data in ({"csrf": "forged", "reason": "x"}, {"reason": "x"}):
            assert (await browser.post(path, data=data)).status_code == 403, path
        if role < least:
            assert (await browser.post(path, data={"csrf": good, "reason": "x"})).status_code == 403, path
    assert len(newsroom.store.audit.page().rows) == audit_before
    assert newsroom.store.log.delivery(cell)["status"] == "failed" and newsroom.store.health.paused() == {}


async def test_an_editors_text_shows_as_text_on_every_page(newsroom: Newsroom) -> None:
    ref = newsroom.submit(title=HOSTILE[:120], category="{{ 7*7 }}<b>")
    cell = newsroom.attempt("dist-nanan", error=HOSTILE)
    newsroom.store.health.pause("n-group", HOSTILE)
    operator = await newsroom.login(Role.operator)
    for path, _ in pages(ref, cell):
        if path.endswith(".csv"):
            continue
        text = (await operator.get(path)).text
        assert "<script>alert" not in text and "<img src=x" not in text, path
        assert 'href="javascript:' not in text, path
        if path in ("/notices", f"/notices/{ref}"):
            assert "{{ 7*7 }}" in text, path  # a template's braces are the editor's text, not evaluated
    matrix = (await operator.get(f"/notices/{ref}")).text
    assert "&lt;script&gt;alert(1)&lt;/script&gt; {{ 7*7 }} [点我](javascript:alert(2))" in matrix
    detail = (await operator.get(f"/notices/{ref}/cells/{cell}")).text
    assert "&lt;img src=x onerror=alert(3)&gt;" in detail
