"""The pages in a real browser: Debian's chromium, headless, driven by Playwright, against a real ``debunkbot run``
process whose outlets are loopback fakes of the platforms (bot/testing).

An editor logs in with a token made by ``debunkbot token create``, fills the form (a refused field shows its
message, the preview shows the WeCom form shortened), submits, and watches the matrix turn green with no reload;
an operator retries the cell of an outlet that refused the first post once it is fixed. No console error and
no Content-Security-Policy violation may be logged; axe-core (``tests/web/axe``, pinned, installed with
``npm ci``) finds nothing serious or critical on the form and the matrix page; the screenshots in
``docs/screenshots/`` are this test's own.

Playwright never downloads a browser here: it drives ``/usr/bin/chromium``. Without it (or without axe-core's
``node_modules``) these tests skip, saying why; under CI (``DEBUNKBOT_TEST_BROWSER=required``, set by .ci/run)
they fail instead.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
import yaml

from bot.settings import ROOT
from bot.testing import DingTalkRobots, FeishuBots, WebhookOutlets, WeComRobots
from tests.conftest import notice_data, until, whsec

CHROMIUM = Path("/usr/bin/chromium")
AXE = Path(__file__).resolve().parent / "axe" / "node_modules" / "axe-core" / "axe.min.js"
SCREENSHOTS = ROOT / "docs" / "screenshots"
REQUIRED = os.environ.get("DEBUNKBOT_TEST_BROWSER") == "required"
DEADLINE = 60.0  # a bound for polling a live daemon on a loaded two-core machine, not a timing assertion


def _missing() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing: apt-get install chromium fonts-noto-cjk (.ci/run does)"
    if not AXE.exists():
        return f"{AXE} is missing: npm ci --prefix tests/web/axe (make test does when npm is there)"
    return None


if (why := _missing()) is not None:
    if REQUIRED:
        pytest.fail(f"browser tests are required here (DEBUNKBOT_TEST_BROWSER=required) but {why}",
                    pytrace=False)
    pytest.skip(why, allow_module_level=True)

from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright, expect  # noqa: E402


@dataclass
class Newsroom:
    """A running ``debunkbot run`` with its loopback outlets, and tokens for an editor and an operator."""

    url: str
    env: dict[str, str]
    webhooks: WebhookOutlets
    tokens: dict[str, str]
    proc: subprocess.Popen[bytes]
    log: Path

    def delivered_to(self, ref: str) -> set[str]:
        return {p.outlet for p in self.webhooks.posts if p.payload.get("data", {}).get("ref") == ref}


def _cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "bot", *args], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


pytestmark = pytest.mark.asyncio(loop_scope="module")  # one daemon and one browser for the module's tests


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def newsroom(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Newsroom]:
    """Five outlets of four platforms; one (city-shangyou) answers HTTP 400 until the test fixes it."""
    tmp_path = tmp_path_factory.mktemp("newsroom")
    hooks = {"city-hualong": whsec(), "city-shangyou": whsec()}
    dingtalk = {"dt-yuzhong": "SEC" + "a1" * 16}
    wecom = {"wc-nanan"}
    feishu = {"fs-group": "fssign77aa"}
    async with (WebhookOutlets(hooks, script={"city-shangyou": [400] * 100}) as webhooks, DingTalkRobots(dingtalk) as dt,
                WeComRobots(wecom) as wc, FeishuBots(feishu) as fs):
        entries = [
            {"id": "city-hualong", "name": "华龙网", "tier": "city", "channel": "webhook",
             "url": webhooks.url("city-hualong"), "secret_env": "S_HUALONG"},
            {"id": "city-shangyou", "name": "上游新闻", "tier": "city", "channel": "webhook",
             "url": webhooks.url("city-shangyou"), "secret_env": "S_SHANGYOU"},
            {"id": "dist-yuzhong", "name": "渝中区融媒体中心", "tier": "district", "region": "渝中区",
             "channel": "dingtalk", "url": dt.url, "secret_env": "S_YUZHONG"},
            {"id": "dist-nanan", "name": "南岸区融媒体中心", "tier": "district", "region": "南岸区", "channel": "wecom",
             "url": wc.url, "secret_env": "S_NANAN"},
            {"id": "other-group", "name": "重庆辟谣工作群（飞书）", "tier": "other", "channel": "feishu",
             "url": fs.url, "secret_env": "S_GROUP"},
        ]
        (tmp_path / "outlets.yaml").write_text(yaml.safe_dump({"outlets": entries}, allow_unicode=True),
                                               encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if not k.startswith("DEBUNKBOT_")} | {
            "DEBUNKBOT_DATABASE_URL": f"sqlite:///{tmp_path / 'bot.sqlite3'}",
            "DEBUNKBOT_OUTLETS": str(tmp_path / "outlets.yaml"), "DEBUNKBOT_HTTP_BIND": "127.0.0.1:0",
            "DEBUNKBOT_SCAN_INTERVAL": "0.2", "DEBUNKBOT_RETRY_JITTER": "0",
            "S_HUALONG": hooks["city-hualong"], "S_SHANGYOU": hooks["city-shangyou"],
            "S_YUZHONG": f"dttoken01:{dingtalk['dt-yuzhong']}", "S_NANAN": "wckey-0c4e",
            "S_GROUP": "fstoken01:fssign77aa",
        }
        dt.robots = {"dttoken01": dingtalk["dt-yuzhong"]}
        wc.keys = {"wckey-0c4e"}
        fs.bots = {"fstoken01": "fssign77aa"}
        tokens = {role: _token(_cli(env, "token", "create", "--role", role, "--name", f"{role}-王五"))
                  for role in ("editor", "operator")}
        log = tmp_path / "daemon.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "bot", "run"], env=env, stdout=out, stderr=out,
                                    start_new_session=True)
        room = Newsroom("", env, webhooks, tokens, proc, log)
        try:
            await _until_up(room)
            yield room
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _token(output: str) -> str:
    found = re.search(r"dbk_[A-Za-z0-9_-]+", output)
    assert found, output
    return found.group(0)


async def _until_up(room: Newsroom) -> None:
    """Wait for the daemon's web server: its log says where it listens (it took a free port)."""
    async with httpx.AsyncClient() as client:
        async def answers() -> bool:
            assert room.proc.poll() is None, room.log.read_text(errors="replace")
            found = re.search(r"web server at (http://127\.0\.0\.1:\d+)", room.log.read_text(errors="replace"))
            if not found:
                return False
            room.url = found.group(1)
            try:
                return (await client.get(room.url + "/healthz")).status_code < 500
            except httpx.TransportError:
                return False

        await until(answers, DEADLINE, every=0.1,
                    what=lambda: "the daemon's web server to answer: " + room.log.read_text(errors="replace"))


@dataclass
class Watched:
    """A page, and everything its console and the browser's CSP reported."""

    page: Page
    problems: list[str] = field(default_factory=list)


async def watched(browser: Browser, width: int = 1280, height: int = 900) -> Watched:
    context = await browser.new_context(viewport={"width": width, "height": height}, locale="zh-CN",
                                        timezone_id="Europe/London")  # not Chongqing's: the form must not care
    page = await context.new_page()
    found = Watched(page)

    def console(message: ConsoleMessage) -> None:
        if message.type in ("error", "warning") and not message.text.startswith("[DOM]"):
            found.problems.append(f"console {message.type}: {message.text}")

    page.on("console", console)
    page.on("pageerror", lambda error: found.problems.append(f"page error: {error}"))
    await context.add_init_script(script=(  # CSP violations, also those the console might word differently
        "document.addEventListener('securitypolicyviolation', e => console.error("
        "'CSP violation: ' + e.violatedDirective + ' ' + e.blockedURI));"))
    return found


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                                    args=["--no-sandbox"] if os.geteuid() == 0 else [])
        yield launched
        await launched.close()


async def log_in(page: Page, room: Newsroom, role: str, next_path: str = "/") -> None:
    await page.goto(f"{room.url}/login?next={next_path}")
    await page.fill("#token", room.tokens[role])
    await page.click("form[action='/login'] button[type=submit]")
    await page.wait_for_url(re.compile(re.escape(room.url) + re.escape(next_path) + r"$"))


async def axe_findings(page: Page) -> list[str]:
    """axe-core's serious and critical violations on the page as it is now (WCAG 2.x A and AA rules)."""
    await page.evaluate(AXE.read_text(encoding="utf-8") + "\n;0")  # DevTools evaluation: not subject to the CSP
    result = await page.evaluate(
        "async () => { const r = await axe.run(document, {runOnly: {type: 'tag', values: "
        "['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice']}}); "
        "return r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help, "
        "nodes: v.nodes.map(n => n.target.join(' ')).slice(0, 5)})); }")
    return [json.dumps(v, ensure_ascii=False) for v in result if v["impact"] in ("serious", "critical")]


async def fill_form(page: Page, **fields: str) -> None:
    for name, value in fields.items():
        await page.fill(f"[name={name}]", value)


async def test_an_editor_submits_through_the_form_and_sees_the_matrix_turn_green_live(
        newsroom: Newsroom, browser: Browser) -> None:
    desk = await watched(browser)
    page = desk.page
    await log_in(page, newsroom, "editor", "/notices/new")
    data = notice_data(ref="cq-browser-001")
    long_truth = "经核实，长江重庆段水位平稳，未出现暴涨，请勿轻信、转发。" * 100  # 2,700 characters, 8,100 bytes
    await fill_form(page, ref="bad ref!", title=data["title"], rumour=data["rumour"], truth=long_truth,
                    authority=data["authority"], source_title_0="重庆市水利局通报",
                    source_url_0="https://slj.cq.gov.cn/notice/1")
    shortened = page.locator('#preview [data-channel="wecom"].shortened')
    await shortened.wait_for(timeout=DEADLINE * 1000)  # the preview followed the typing, with no submit
    assert "4,096" in await shortened.locator(".cut-note").inner_text()
    assert await page.locator('#preview [data-channel="webhook"]:not(.shortened)').count() == 1
    await page.evaluate("() => { document.activeElement.blur(); window.scrollTo(0, 0); }")
    await page.screenshot(path=str(SCREENSHOTS / "editor-desktop.png"))

    await page.click("#submit-notice")  # the ref is refused: the form comes back with its message
    message = page.locator("#ref-error")
    await message.wait_for()
    assert "notice.ref" in await message.inner_text()
    assert await page.get_attribute("#ref", "aria-invalid") == "true"
    assert await page.input_value("#truth") == long_truth  # nothing typed is lost
    assert await axe_findings(page) == []

    await page.fill("#ref", data["ref"])
    await page.click("#submit-notice")
    await page.wait_for_url(f"{newsroom.url}/notices/{data['ref']}")
    await page.evaluate("window.sameDocument = true")  # gone if the page reloads

    cells = page.locator("#matrix .cell")
    assert await cells.count() == 5
    delivered = page.locator("#matrix .cell.state-delivered")
    refused = page.locator("#matrix .cell.state-failed", has_text="上游新闻")
    await refused.wait_for(timeout=DEADLINE * 1000)  # its outlet answered HTTP 400: failed, not retried
    await expect(page.locator("#matrix .cell.state-delivered")).to_have_count(4, timeout=DEADLINE * 1000)
    assert await page.evaluate("window.sameDocument") is True
    assert newsroom.delivered_to(data["ref"]) == {"city-hualong"}  # the webhook outlets; the others are fakes
    assert "✓" in await delivered.first.inner_text()  # a state is a symbol and a word, not a colour alone

    newsroom.webhooks.script["city-shangyou"].clear()  # the outlet is fixed; an operator retries its cell
    desk_operator = await watched(browser)
    operator = desk_operator.page
    await log_in(operator, newsroom, "operator", f"/notices/{data['ref']}")
    await operator.locator("#matrix .cell", has_text="上游新闻").locator("a").click()
    await operator.locator("#cell-detail table").wait_for()
    assert "HTTP 400" in await operator.inner_text("#cell-detail")
    await operator.click("#cell-detail button:has-text('重试')")
    await expect(page.locator("#matrix .cell.state-delivered")).to_have_count(5, timeout=DEADLINE * 1000)  # the editor's page saw it too, live
    assert await page.evaluate("window.sameDocument") is True
    assert newsroom.delivered_to(data["ref"]) == {"city-hualong", "city-shangyou"}
    assert await axe_findings(page) == []
    await page.screenshot(path=str(SCREENSHOTS / "matrix-desktop.png"), full_page=True)
    assert desk.problems == [] and desk_operator.problems == []


async def test_the_pages_read_well_on_a_360_pixel_phone(newsroom: Newsroom, browser: Browser) -> None:
    """Phone-width screenshots of the form (with its preview below) and of a notice's matrix."""
    data = notice_data(ref="cq-phone-001", truth="经核实，长江重庆段水位平稳，未出现暴涨，请勿轻信、转发。" * 80)
    phone = await watched(browser, width=360, height=780)
    await log_in(phone.page, newsroom, "editor", "/notices/new")
    await fill_form(phone.page, **{k: data[k] for k in ("ref", "title", "rumour", "truth", "authority")})
    await phone.page.locator('#preview [data-channel="wecom"].shortened').wait_for(timeout=DEADLINE * 1000)
    assert await phone.page.evaluate("document.documentElement.scrollWidth") <= 360  # no sideways scrolling
    await phone.page.evaluate("() => { document.activeElement.blur(); window.scrollTo(0, 0); }")
    await phone.page.screenshot(path=str(SCREENSHOTS / "editor-phone.png"))
    await phone.page.click("#submit-notice")
    await phone.page.wait_for_url(f"{newsroom.url}/notices/{data['ref']}")
    await expect(phone.page.locator("#matrix .cell.state-pending")).to_have_count(0, timeout=DEADLINE * 1000)
    assert await phone.page.locator("#matrix .cell.state-delivered").count() >= 4  # city-shangyou: if fixed by now
    assert await phone.page.evaluate("document.documentElement.scrollWidth") <= 360
    await phone.page.screenshot(path=str(SCREENSHOTS / "matrix-phone.png"), full_page=True)
    assert phone.problems == []


async def test_an_editor_adds_a_source_row_and_enter_in_a_field_still_submits_the_notice(
        newsroom: Newsroom, browser: Browser) -> None:
    desk = await watched(browser)
    page = desk.page
    await log_in(page, newsroom, "editor", "/notices/new")
    data = notice_data(ref="cq-sources-001")
    await fill_form(page, **{k: data[k] for k in ("ref", "title", "rumour", "truth", "authority")},
                    source_title_2="重庆市水利局通报", source_url_2="https://slj.cq.gov.cn/notice/3")
    assert await page.locator("#source_title_3").count() == 0
    await page.click("button[name=more_sources]")  # a plain submit: it works without JavaScript too
    await page.locator("#source_title_3").wait_for()
    assert await page.evaluate("document.activeElement.id") == "source_title_3"  # the new row, ready to type in
    assert await page.input_value("#title") == data["title"]  # nothing typed is lost
    assert await page.input_value("#source_url_2") == "https://slj.cq.gov.cn/notice/3"
    await fill_form(page, source_title_3="长江水文网", source_url_3="https://cjh.example.cn/4")
    assert await axe_findings(page) == []
    await page.press("#source_url_3", "Enter")  # the form's default button: the notice, not yet another row
    await page.wait_for_url(f"{newsroom.url}/notices/{data['ref']}")
    await until(lambda: bool(newsroom.delivered_to(data["ref"])), DEADLINE, what="the notice at a webhook outlet")
    post = next(p for p in newsroom.webhooks.posts if p.payload.get("data", {}).get("ref") == data["ref"])
    said = json.dumps(post.payload, ensure_ascii=False)
    assert "重庆市水利局通报" in said and "长江水文网" in said  # both rows became the notice's sources
    assert desk.problems == []
