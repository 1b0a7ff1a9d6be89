"""Targeting end to end: an outlet matrix with every kind of targeting (tiers, regions, categories and
``receive: all``), notices submitted through intake, sent by the real dispatcher to real loopback outlets;
and ``debunkbot submit --dry-run``, which says the same thing before anything is stored."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from bot.dispatch import Dispatcher
from bot.http import make_sender
from bot.intake import submit_files
from bot.regions import RegionTable
from bot.settings import Settings
from bot.store import Store
from tests.conftest import notice_data
from tests.test_cli import debunkbot

# Each outlet's targeting, as an operator writes it in config/outlets.yaml.
TARGETING: dict[str, dict[str, Any]] = {
    "outlet-0000": {"tier": "city", "region": "全市"},  # the default: a citywide outlet takes everything
    "outlet-0001": {"tier": "city", "region": "全市", "categories": ["食品安全"]},
    "outlet-0002": {"tier": "district", "region": "渝中区"},  # the default: citywide notices and its own
    "outlet-0003": {"tier": "district", "region": "万州区", "regions": ["万州", "渝中区"]},  # a short name resolves
    "outlet-0004": {"tier": "district", "region": "万州区", "categories": ["公共安全"]},
    "outlet-0005": {"tier": "district", "region": "南岸区", "regions": ["南岸区"], "categories": ["公共安全"]},
    "outlet-0006": {"tier": "other", "region": "南岸区", "receive": "all"},
    "outlet-0007": {"tier": "other", "region": "南岸区"},
}

# (ref, regions, category) -> the outlets that must get it, worked out by hand from the table above
EXPECTED: dict[str, tuple[list[str], str | None, set[int]]] = {
    "citywide-safety": (["全市"], "公共安全", {0, 1, 2, 3, 4, 5, 6, 7}),
    "yuzhong-safety": (["渝中"], "公共安全", {0, 2, 3, 4, 6}),
    "nanan-safety": (["南岸区"], "公共安全", {0, 4, 5, 6, 7}),
    "nanan-food": (["南岸区"], "食品安全", {0, 1, 6, 7}),
    "wanzhou-none": (["万州区"], None, {0, 3, 6}),
    "jiangbei-food": (["渝北"], "食品安全", {0, 1, 6}),  # 渝北 is 两江新区 now: no district outlet of it here
    "two-districts": (["大足区", "渝中区"], "交通", {0, 2, 3, 6}),
}


def write_notices(path: Path) -> Path:
    notices = [notice_data(ref=ref, regions=regions, **({"category": category} if category else {}))
               for ref, (regions, category, _) in EXPECTED.items()]
    path.write_text(yaml.safe_dump(notices, allow_unicode=True), encoding="utf-8")
    return path


async def test_each_outlet_receives_exactly_the_notices_its_targeting_selects(
    tmp_path: Path, store: Store, settings: Settings, regions: RegionTable, loopback: Callable[..., Any]
) -> None:
    outlets, matrix = await loopback(8, entry_changes=TARGETING)
    (result,) = submit_files([write_notices(tmp_path / "notices.yaml")], store, matrix, regions)
    assert result.ok, result.error

    async with make_sender(settings) as client:
        dispatcher = Dispatcher(store, matrix, settings, client)
        await dispatcher.run(until_idle=True)
        await dispatcher.close()

    received = {(post.payload["data"]["ref"], post.outlet) for post in outlets.posts}
    expected = {(ref, f"outlet-{i:04d}") for ref, (_, _, reached) in EXPECTED.items() for i in reached}
    assert received == expected
    assert outlets.refused == []
    assert {(r["notice"], r["outlet"]) for r in store.log.deliveries(status="delivered")} == expected


async def test_submit_dry_run_lists_who_gets_each_notice_and_why_not_the_others_and_stores_nothing(
    tmp_path: Path, loopback: Callable[..., Any], database_url: str
) -> None:
    await loopback(8, entry_changes=TARGETING)
    env = {"DEBUNKBOT_DATABASE_URL": database_url, "DEBUNKBOT_OUTLETS": str(tmp_path / "outlets.yaml"),
           "COLUMNS": "200"}  # no outlet secret set: a dry run sends nothing, so it needs none
    notices = write_notices(tmp_path / "notices.yaml")

    code, out, err = await debunkbot(env, "submit", "--dry-run", str(notices))
    assert code == 0, err

    lines = out.splitlines()
    for ref, (_, _, reached) in EXPECTED.items():
        summary = rf"^{ref} would reach {len(reached)} outlets of 8 \(city \d.*\); {8 - len(reached)} would not$"
        assert re.search(summary, out, re.MULTILINE), ref
    table = lines[lines.index(next(line for line in lines if line.startswith("nanan-food ("))):]
    rows = {line.split()[0]: line for line in table[3:11]}  # after the title, the header and its rule
    assert [outlet for outlet, line in rows.items() if " yes " in line] == [
        "outlet-0000", "outlet-0001", "outlet-0006", "outlet-0007"]  # those it reaches first, in matrix order
    assert "citywide outlet" in rows["outlet-0000"]
    assert "category 食品安全 (its categories filter)" in rows["outlet-0001"]
    assert "receive: all" in rows["outlet-0006"]
    assert "names its region 南岸区" in rows["outlet-0007"]
    assert "for 南岸区 only, not its region 渝中区" in rows["outlet-0002"]
    assert "for 南岸区 only, none in its regions filter (万州区、渝中区)" in rows["outlet-0003"]
    assert "category 食品安全, not in its categories filter (公共安全)" in rows["outlet-0004"]
    assert "category 食品安全, not in its categories filter (公共安全)" in rows["outlet-0005"]
    assert "dry run: nothing stored, nothing sent" in out

    store = Store.open(database_url)
    try:
        assert store.log.deliveries() == [] and store.log.notice("nanan-food") is None
    finally:
        store.close()


async def test_submit_dry_run_names_a_bad_file_and_exits_2(tmp_path: Path, loopback: Callable[..., Any],
                                                            database_url: str) -> None:
    await loopback(2)
    env = {"DEBUNKBOT_DATABASE_URL": database_url, "DEBUNKBOT_OUTLETS": str(tmp_path / "outlets.yaml")}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(notice_data(regions=["火星区"]), allow_unicode=True), encoding="utf-8")

    code, out, err = await debunkbot(env, "submit", "--dry-run", str(bad))

    assert code == 2
    assert f"{bad}: notice (ref 'cq-test-001') field 'regions.0': unknown region '火星区'" in err
    assert "dry run: nothing stored" in out


async def test_submit_dry_run_prints_what_editors_wrote_as_text_never_as_markup(
    tmp_path: Path, loopback: Callable[..., Any], database_url: str
) -> None:
    await loopback(2, entry_changes={"outlet-0001": {"categories": ["[red]食品[/red]"]}})
    env = {"DEBUNKBOT_DATABASE_URL": database_url, "DEBUNKBOT_OUTLETS": str(tmp_path / "outlets.yaml"),
           "COLUMNS": "200"}
    notice = tmp_path / "n.yaml"
    notice.write_text(yaml.safe_dump(notice_data(regions=["渝中区"], category="[bold]交通[/bold]"),
                                     allow_unicode=True), encoding="utf-8")

    code, out, err = await debunkbot(env, "submit", "--dry-run", str(notice))

    assert code == 0, err
    assert "category [bold]交通[/bold]" in out  # in the table's title and in the reason
    assert "category [bold]交通[/bold], not in its categories filter ([red]食品[/red])" in out
