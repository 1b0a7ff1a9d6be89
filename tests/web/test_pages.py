"""The pages' frame through the ASGI transport: login with a token for a session cookie, CSRF, logout, the
language, the Content-Security-Policy and the vendored scripts."""

from __future__ import annotations

import hashlib
import re

from bot.store import Role
from bot.web.pages import CSP, LOGIN_COOKIE, SESSION_COOKIE, STATIC
from tests.web.conftest import Newsroom, csrf_of


async def test_a_page_without_a_session_sends_the_person_to_the_login_form_and_back_after(newsroom: Newsroom) -> None:
    browser = newsroom.client()
    answer = await browser.get("/notices?state=failed")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/login?next=/notices%3Fstate%3Dfailed"
    form = await browser.get(answer.headers["location"])
    assert 'name="next" value="/notices?state=failed"' in form.text
    done = await browser.post("/login", data={"token": newsroom.tokens[Role.viewer], "csrf": csrf_of(form),
                                              "next": "/notices?state=failed"})
    assert done.status_code == 303 and done.headers["location"] == "/notices?state=failed"


async def test_an_htmx_request_without_a_session_is_told_to_redirect_not_given_the_login_page(
        newsroom: Newsroom) -> None:
    answer = await newsroom.client().get("/notices", headers={"HX-Request": "true"})
    assert answer.status_code == 401
    assert answer.headers["hx-redirect"].startswith("/login?next=")


async def test_logging_in_sets_an_httponly_samesite_strict_cookie_that_is_secure_only_over_tls(
        newsroom: Newsroom) -> None:
    for base, secure in (("http://bot", False), ("https://bot", True)):
        browser = newsroom.client(base)
        form = await browser.get("/login")
        answer = await browser.post("/login", data={"token": newsroom.tokens[Role.editor], "csrf": csrf_of(form)})
        cookie = next(v for k, v in answer.headers.multi_items()
                      if k == "set-cookie" and v.startswith(SESSION_COOKIE + "="))
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie
        assert ("Secure" in cookie) is secure
        assert newsroom.tokens[Role.editor] not in cookie  # the cookie names the token, it does not hold it


async def test_a_wrong_token_is_refused_on_the_form_in_chinese_and_no_session_is_given(newsroom: Newsroom) -> None:
    browser = newsroom.client()
    form = await browser.get("/login")
    answer = await browser.post("/login", data={"token": "dbk_not-a-token", "csrf": csrf_of(form)})
    assert answer.status_code == 401
    assert "令牌无效或已被吊销" in answer.text
    assert SESSION_COOKIE not in answer.headers.get("set-cookie", "")


async def test_a_login_without_the_forms_csrf_token_is_refused_even_with_a_good_token(newsroom: Newsroom) -> None:
    browser = newsroom.client()
    await browser.get("/login")  # the login cookie is set, but the form's token is not sent back
    for csrf in ("", "0" * 64):
        answer = await browser.post("/login", data={"token": newsroom.tokens[Role.admin], "csrf": csrf})
        assert answer.status_code == 403
        assert "未做任何更改" in answer.text
        assert SESSION_COOKIE not in answer.headers.get("set-cookie", "")
    stranger = newsroom.client()  # another browser's form token does not fit this browser's login cookie
    form = await stranger.get("/login")
    other = newsroom.client()
    other.cookies.set(LOGIN_COOKIE, "someone-elses-nonce")
    answer = await other.post("/login", data={"token": newsroom.tokens[Role.admin], "csrf": csrf_of(form)})
    assert answer.status_code == 403


async def test_logging_out_needs_the_sessions_csrf_token_and_then_ends_the_session(newsroom: Newsroom) -> None:
    browser = await newsroom.login(Role.viewer)
    refused = await browser.post("/logout", data={"csrf": "forged"})
    assert refused.status_code == 403
    other = await newsroom.login(Role.viewer)  # another session's token is not this one's
    other_csrf = csrf_of(await other.get("/notices"))
    assert (await browser.post("/logout", data={"csrf": other_csrf})).status_code == 403
    assert (await browser.get("/notices")).status_code == 200  # the refused logouts changed nothing
    answer = await browser.post("/logout", headers={"X-CSRF-Token": csrf_of(await browser.get("/notices"))})
    assert answer.status_code == 303 and answer.headers["location"] == "/login"
    assert (await browser.get("/notices")).status_code == 303  # no session any more


async def test_revoking_a_token_ends_the_sessions_made_with_it(newsroom: Newsroom) -> None:
    browser = await newsroom.login(Role.operator)
    token_id = next(t["id"] for t in newsroom.store.access.all() if t["name"] == "operator-李四")
    newsroom.store.access.revoke(token_id)
    answer = await browser.post("/logout", data={"csrf": "x"})
    assert answer.status_code == 303 and answer.headers["location"].startswith("/login")


async def test_a_forged_or_tampered_session_cookie_is_no_session(newsroom: Newsroom) -> None:
    browser = await newsroom.login(Role.admin)
    real = browser.cookies[SESSION_COOKIE]
    forged = newsroom.client()
    for cookie in (real[:-2] + ("AA" if not real.endswith("AA") else "BB"), "eyJ0b2tlbiI6MX0.x.y", "garbage"):
        forged.cookies.set(SESSION_COOKIE, cookie)
        assert (await forged.post("/logout", data={"csrf": "x"})).headers["location"].startswith("/login")


async def test_the_next_address_after_login_stays_on_this_site(newsroom: Newsroom) -> None:
    for evil in ("https://evil.example/", "//evil.example/x", "/\\evil.example", "javascript:alert(1)"):
        browser = newsroom.client()
        form = await browser.get("/login", params={"next": evil})
        answer = await browser.post("/login", data={"token": newsroom.tokens[Role.viewer], "csrf": csrf_of(form),
                                                    "next": evil})
        assert answer.headers["location"] == "/", evil


async def test_pages_speak_chinese_by_default_and_english_when_the_browser_or_the_person_asks(
        newsroom: Newsroom) -> None:
    chinese = await newsroom.client(**{"accept-language": ""}).get("/login")
    assert '<html lang="zh-Hans">' in chinese.text and "访问令牌" in chinese.text
    english = await newsroom.client(**{"accept-language": "en-GB,en;q=0.9,zh;q=0.5"}).get("/login")
    assert '<html lang="en">' in english.text and "Access token" in english.text
    browser = newsroom.client()
    switched = await browser.get("/language/en", params={"next": "/login"})
    assert switched.status_code == 303 and switched.headers["location"] == "/login"
    assert "Access token" in (await browser.get("/login")).text
    assert (await browser.get("/language/en", params={"next": "https://evil.example"})).headers["location"] == "/"


async def test_every_answer_carries_a_csp_without_inline_scripts_and_pages_use_only_script_files(
        newsroom: Newsroom) -> None:
    browser = newsroom.client()
    for path in ("/login", "/healthz", "/static/app.css"):
        answer = await browser.get(path)
        assert answer.headers["content-security-policy"] == CSP
        assert answer.headers["x-content-type-options"] == "nosniff"
    assert "script-src 'self';" in CSP and "unsafe-inline" not in CSP and "unsafe-eval" not in CSP
    page = (await browser.get("/login")).text
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", page) == []  # no inline script element
    assert not re.search(r"\son[a-z]+=", page)  # no inline event handler


async def test_the_vendored_scripts_are_served_as_the_versions_their_note_names(newsroom: Newsroom) -> None:
    note = (STATIC / "VENDORED.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `([^`]+)` \|.*\| ([0-9a-f]{64}) \|$", note, re.M)
    assert {name for name, _ in rows} == {"htmx-2.0.11.min.js", "htmx-ext-sse-2.2.4.min.js"}
    browser = newsroom.client()
    page = (await browser.get("/login")).text
    for name, digest in rows:
        assert f'src="/static/{name}"' in page
        served = await browser.get(f"/static/{name}")
        assert served.status_code == 200
        assert hashlib.sha256(served.content).hexdigest() == digest
