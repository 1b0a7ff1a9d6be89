"""The region table: aliases, the 2026-01-25 change, citywide, and bad table files refused by entry and field."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.regions import CITYWIDE, Region, RegionTable, RegionTableError, UnknownRegion
from bot.settings import CONFIG

BEFORE = date(2025, 6, 1)
CHANGE = date(2026, 1, 25)
AFTER = date(2026, 11, 27)


@pytest.fixture(scope="module")
def table() -> RegionTable:
    return RegionTable.load(CONFIG / "regions.yaml")


@pytest.mark.parametrize(("name", "canonical"), [
    ("渝中区", "渝中区"),
    ("渝中", "渝中区"),
    (" 大足\u3000", "大足区"),
    ("石柱", "石柱土家族自治县"),
    ("石柱县", "石柱土家族自治县"),
    ("彭水县", "彭水苗族土家族自治县"),
    ("重庆高新区", "西部科学城重庆高新区"),
    ("高新区", "西部科学城重庆高新区"),
    ("万盛", "万盛经开区"),
    ("万盛经济技术开发区", "万盛经开区"),
    ("两江", "两江新区"),
    ("忠县", "忠县"),
])
def test_full_names_and_editors_short_names_resolve_to_the_full_official_name(
    table: RegionTable, name: str, canonical: str
) -> None:
    assert table.resolve(name, AFTER) == canonical


@pytest.mark.parametrize("name", ["全市", "重庆", "重庆市", " 重庆市 "])
def test_the_city_and_its_aliases_resolve_to_citywide(table: RegionTable, name: str) -> None:
    assert table.resolve(name, AFTER) == CITYWIDE


@pytest.mark.parametrize("name", ["江北区", "江北", "渝北区", "渝北"])
def test_jiangbei_and_yubei_resolve_to_liangjiang_from_the_day_of_the_change(table: RegionTable, name: str) -> None:
    assert table.resolve(name, CHANGE) == "两江新区"
    assert table.resolve(name, AFTER) == "两江新区"


@pytest.mark.parametrize(("name", "canonical"), [("江北", "江北区"), ("渝北区", "渝北区")])
def test_jiangbei_and_yubei_still_resolve_to_themselves_before_the_change(
    table: RegionTable, name: str, canonical: str
) -> None:
    assert table.resolve(name, BEFORE) == canonical
    assert table.resolve(name, date(2026, 1, 24)) == canonical


def test_liangjiang_exists_both_before_and_after_the_change(table: RegionTable) -> None:
    assert table.resolve("两江新区", BEFORE) == "两江新区"
    assert table.resolve("两江新区", AFTER) == "两江新区"


def test_an_unknown_region_is_named_and_a_close_match_suggested(table: RegionTable) -> None:
    with pytest.raises(UnknownRegion) as error:
        table.resolve("渝中县", AFTER)
    assert str(error.value) == "unknown region '渝中县'; did you mean '渝中区'?"


def test_a_suggestion_made_from_an_alias_names_the_full_name(table: RegionTable) -> None:
    with pytest.raises(UnknownRegion, match=r"did you mean '两江新区'\?"):
        table.resolve("两江区", AFTER)


def test_an_unknown_region_with_nothing_close_gets_no_suggestion(table: RegionTable) -> None:
    with pytest.raises(UnknownRegion) as error:
        table.resolve("火星区", AFTER)
    assert str(error.value) == "unknown region '火星区'"


def test_unknown_region_is_a_value_error_so_pydantic_reports_it_against_the_field() -> None:
    assert issubclass(UnknownRegion, ValueError) and issubclass(RegionTableError, ValueError)


def test_41_units_exist_before_the_change_and_39_from_it(table: RegionTable) -> None:
    before = {u.name for u in table.units_on(date(2026, 1, 24))}
    after = {u.name for u in table.units_on(CHANGE)}
    assert len(table.units_on(BEFORE)) == len(before) == 41
    assert len(table.units_on(AFTER)) == len(after) == 39
    assert before - after == {"江北区", "渝北区"}
    assert after <= before


def test_units_on_keeps_file_order(table: RegionTable) -> None:
    names = [u.name for u in table.units_on(AFTER)]
    assert names[:4] == ["万州区", "黔江区", "涪陵区", "渝中区"]
    assert names[-3:] == ["两江新区", "西部科学城重庆高新区", "万盛经开区"]


def test_the_shipped_table_holds_the_traditional_38_and_three_functional_areas(table: RegionTable) -> None:
    kinds = [u.kind for u in table.regions]
    # 两江新区 carries its kind from 2026-01-25 on: district (see the note in config/regions.yaml).
    assert (kinds.count("district"), kinds.count("county"), kinds.count("autonomous_county")) == (27, 8, 4)
    assert {u.name for u in table.regions if u.kind == "functional_area"} == {"西部科学城重庆高新区", "万盛经开区"}


def test_a_unit_exists_up_to_the_day_before_its_valid_until() -> None:
    unit = Region("甲区", "district", valid_from=date(2020, 1, 1), valid_until=date(2021, 1, 1))
    assert [unit.exists_on(d) for d in (date(2019, 12, 31), date(2020, 1, 1), date(2020, 12, 31), date(2021, 1, 1))] \
        == [False, True, True, False]


def write_table(tmp_path: Path, regions: list[dict[str, Any]], citywide: dict[str, Any] | None = None) -> Path:
    path = tmp_path / "regions.yaml"
    document = {"citywide": citywide or {"name": CITYWIDE, "aliases": ["重庆"]}, "regions": regions}
    path.write_text(yaml.safe_dump(document, allow_unicode=True), encoding="utf-8")
    return path


def test_a_chain_of_successors_is_followed_to_the_unit_of_the_day(tmp_path: Path) -> None:
    path = write_table(tmp_path, [
        {"name": "甲区", "kind": "district", "aliases": ["甲"], "valid_until": date(2020, 1, 1), "successor": "乙区"},
        {"name": "乙区", "kind": "district", "valid_until": date(2030, 1, 1), "successor": "丙区"},
        {"name": "丙区", "kind": "district", "valid_from": date(2025, 1, 1)},
    ])
    table = RegionTable.load(path)
    assert [table.resolve("甲", d) for d in (date(2019, 1, 1), date(2020, 1, 1), date(2030, 1, 1))] \
        == ["甲区", "乙区", "丙区"]


def test_a_unit_before_it_exists_or_abolished_without_successor_is_unknown_that_day(tmp_path: Path) -> None:
    table = RegionTable.load(write_table(tmp_path, [
        {"name": "甲区", "kind": "district", "valid_until": date(2020, 1, 1)},
        {"name": "乙区", "kind": "district", "valid_from": date(2020, 1, 1)},
    ]))
    with pytest.raises(UnknownRegion, match=r"unknown region '甲区' on 2020-01-01: 甲区 was abolished on 2020-01-01"):
        table.resolve("甲区", date(2020, 1, 1))
    with pytest.raises(UnknownRegion, match=r"unknown region '乙区' on 2019-12-31: 乙区 exists from 2020-01-01"):
        table.resolve("乙区", date(2019, 12, 31))
    assert [u.name for u in table.units_on(date(2019, 12, 31))] == ["甲区"]


GOOD = {"name": "甲区", "kind": "district", "aliases": ["甲"]}
OTHER = {"name": "乙区", "kind": "county", "aliases": ["乙"]}


@pytest.mark.parametrize(("entries", "expected"), [
    ([GOOD, GOOD | {"aliases": []}], "region '甲区' field 'name': '甲区' is already used by 甲区"),
    ([GOOD, OTHER | {"aliases": ["甲"]}], "region '乙区' field 'aliases': '甲' is already used by 甲区"),
    ([GOOD, OTHER | {"aliases": ["甲区"]}], "region '乙区' field 'aliases': '甲区' is already used by 甲区"),
    ([GOOD | {"aliases": ["甲", "甲"]}], "region '甲区' field 'aliases': '甲' is listed twice"),
    ([GOOD | {"aliases": ["重庆"]}], "region '甲区' field 'aliases': '重庆' is already used by 全市"),
    ([GOOD | {"valid_until": date(2026, 1, 25), "successor": "丙区"}],
     "region '甲区' field 'successor': unknown region '丙区'"),
    ([GOOD | {"successor": "乙区"}, OTHER], "region '甲区' field 'successor': a successor needs a valid_until"),
    ([GOOD | {"valid_until": date(2026, 1, 25), "successor": "乙区"}, OTHER | {"valid_from": date(2026, 2, 1)}],
     "region '甲区' field 'successor': 乙区 does not exist on 2026-01-25"),
    ([GOOD | {"valid_from": date(2026, 1, 25), "valid_until": date(2026, 1, 25)}],
     "region '甲区' field 'valid_until': 2026-01-25 is not after valid_from 2026-01-25"),
    ([GOOD | {"valid_until": "soon"}], "region '甲区' field 'valid_until': Input should be a valid date"),
    ([GOOD | {"kind": "province"}], "region '甲区' field 'kind': Input should be 'district'"),
    ([GOOD | {"valid_untill": date(2026, 1, 25)}], "region '甲区' field 'valid_untill': Extra inputs"),
    ([{"kind": "district"}], "region #1 field 'name': Field required"),
    ([GOOD | {"aliases": [" "]}], "region '甲区' field 'aliases.0': String should have at least 1 character"),
])
def test_a_bad_table_is_refused_naming_the_file_the_entry_and_the_field(
    tmp_path: Path, entries: list[dict[str, Any]], expected: str
) -> None:
    path = write_table(tmp_path, entries)
    with pytest.raises(RegionTableError) as error:
        RegionTable.load(path)
    assert str(error.value).startswith(f"{path}: ")
    assert expected in str(error.value)


def test_a_bad_table_lists_every_problem_at_once(tmp_path: Path) -> None:
    path = write_table(tmp_path, [GOOD | {"kind": "province"}, OTHER | {"valid_until": "soon"}])
    with pytest.raises(RegionTableError) as error:
        RegionTable.load(path)
    assert str(error.value).startswith(f"{path}: 2 problems:")
    assert "region '甲区' field 'kind'" in str(error.value) and "region '乙区' field 'valid_until'" in str(error.value)


def test_the_citywide_name_must_be_the_one_the_code_uses(tmp_path: Path) -> None:
    path = write_table(tmp_path, [GOOD], citywide={"name": "重庆全市", "aliases": []})
    with pytest.raises(RegionTableError, match=r"field 'citywide\.name': Input should be '全市'"):
        RegionTable.load(path)


@pytest.mark.parametrize(("text", "expected"), [
    ("regions: [\n", "not valid UTF-8 YAML"),
    ("citywide: {name: 全市}\nregions:\n  - {name: 甲区, kind: district, valid_until: 2026-02-30}\n",
     "not valid UTF-8 YAML: day is out of range for month"),
    ("- 甲区\n", "expected a mapping with top-level 'citywide:' and 'regions:'"),
    ("citywide: {name: 全市}\n", "field 'regions': Field required"),
])
def test_a_file_that_is_not_a_table_says_what_is_wrong_with_it(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "regions.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(RegionTableError) as error:
        RegionTable.load(path)
    assert str(error.value).startswith(f"{path}: ") and expected in str(error.value)


def test_a_missing_table_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(RegionTableError, match="region table not found"):
        RegionTable.load(tmp_path / "nowhere.yaml")


def test_every_unit_belongs_to_one_of_the_citys_three_groups_as_the_pages_lay_them_out() -> None:
    table = RegionTable.load(CONFIG / "regions.yaml")
    groups: dict[str | None, list[str]] = {}
    for unit in table.units_on(date(2026, 1, 24)):
        groups.setdefault(unit.group, []).append(unit.name)
    assert {g: len(names) for g, names in groups.items()} == {"主城都市区": 24, "渝东北": 11, "渝东南": 6}
    assert groups["渝东南"] == ["黔江区", "武隆区", "石柱土家族自治县", "秀山土家族苗族自治县", "酉阳土家族苗族自治县",
                               "彭水苗族土家族自治县"]
