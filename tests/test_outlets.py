"""The outlet matrix: validated whole at start, errors by outlet id and field, secrets from the environment."""

from __future__ import annotations

from datetime import date, datetime, time
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from bot.model import Notice
from bot.outlets import MatrixError, Outlet, OutletMatrix, load_matrix
from bot.regions import CHONGQING, RegionTable
from bot.settings import CONFIG
from tests.conftest import notice_data

WHSEC = "whsec_" + "A" * 32  # a Standard Webhooks secret of the right shape (24 bytes)


def example_environ() -> dict[str, str]:
    entries = yaml.safe_load((CONFIG / "outlets.yaml").read_text(encoding="utf-8"))["outlets"]
    return {e["secret_env"]: "whsec_" + "A" * 32 for e in entries if e.get("secret_env")}  # 24 bytes: right shape


def test_the_example_matrix_is_laid_out_like_chongqings(regions: RegionTable) -> None:
    from datetime import date

    matrix = load_matrix(CONFIG / "outlets.yaml", regions, environ=example_environ())
    tiers = [o.tier.value for o in matrix.outlets]
    assert tiers.count("city") == 5
    districts = {o.region for o in matrix.outlets if o.tier.value == "district"}
    assert districts == {u.name for u in regions.units_on(date(2026, 11, 27))}
    assert tiers.count("other") >= 3


def write_matrix(tmp_path: Path, entries: list[dict[str, Any]]) -> Path:
    path = tmp_path / "outlets.yaml"
    path.write_text(yaml.safe_dump({"outlets": entries}, allow_unicode=True), encoding="utf-8")
    return path


GOOD = {"id": "dist-yuzhong", "name": "渝中区融媒体中心", "tier": "district", "region": "渝中区",
        "channel": "webhook", "url": "https://yz.example/hook", "secret_env": "S_YZ"}


@pytest.mark.parametrize(("change", "expected"), [
    ({"channel": "pigeon"}, "outlet 'dist-yuzhong' field 'channel': Value error, unknown channel 'pigeon'"),
    ({"region": "火星区"}, "outlet 'dist-yuzhong' field 'region': unknown region '火星区'"),
    ({"tier": "province"}, "outlet 'dist-yuzhong' field 'tier'"),
    ({"url": None}, "outlet 'dist-yuzhong' field 'url': a webhook outlet needs a url"),
    ({"secret_env": "S_MISSING"}, "1 outlet secret(s) not set in the environment: S_MISSING"),
    ({"url": "http://169.254.169.254/latest/meta-data/"}, "outlet 'dist-yuzhong' field 'url': Value error, "
     "'http://169.254.169.254/latest/meta-data/' is a link-local, cloud-metadata or private address"),
    ({"url": "http://[fd00:ec2::254]/"}, "is a link-local, cloud-metadata or private address"),
    ({"url": "http://2852039166/"}, "is a link-local, cloud-metadata or private address"),
    ({"url": "http://10.1.2.3/hook"}, "is a link-local, cloud-metadata or private address"),
    ({"url": "http://metadata.google.internal/computeMetadata/v1/"}, "is a cloud metadata service"),
    ({"secret": "whsec_in_the_file"}, "outlet 'dist-yuzhong' field 'secret'"),
    ({"id": "Bad Id"}, "outlet 'Bad Id' field 'id'"),
])
def test_a_bad_entry_refuses_the_whole_matrix_naming_outlet_and_field(
    tmp_path: Path, regions: RegionTable, change: dict[str, Any], expected: str
) -> None:
    other = GOOD | {"id": "dist-wanzhou", "region": "万州区"}
    path = write_matrix(tmp_path, [other, {k: v for k, v in (GOOD | change).items() if v is not None}])
    with pytest.raises(MatrixError) as error:
        load_matrix(path, regions, environ={"S_YZ": WHSEC})
    assert expected in str(error.value) and str(path) in str(error.value)


def test_private_addresses_and_loopback_load_when_the_outlet_allows_them(tmp_path: Path, regions: RegionTable) -> None:
    entries = [GOOD | {"id": f"o{i}", "url": url, "allow_private": i < 2}
               for i, url in enumerate(["http://169.254.169.254/", "http://192.168.1.2/", "http://127.0.0.1:9/"])]
    matrix = load_matrix(write_matrix(tmp_path, entries), regions, environ={"S_YZ": WHSEC})
    assert [o.url for o in matrix.outlets] == [e["url"] for e in entries]


def test_an_empty_matrix_is_refused(tmp_path: Path, regions: RegionTable) -> None:
    with pytest.raises(MatrixError, match="'outlets:' is empty; a notice would go nowhere"):
        load_matrix(write_matrix(tmp_path, []), regions, environ={})


def test_secrets_missing_from_the_environment_are_incomplete_configuration_not_a_bad_matrix(
    tmp_path: Path, regions: RegionTable
) -> None:
    from bot.outlets import IncompleteMatrix

    entries = [GOOD | {"id": f"o{i}", "secret_env": f"S_{i}"} for i in range(5)]
    path = write_matrix(tmp_path, entries)
    with pytest.raises(IncompleteMatrix) as error:
        load_matrix(path, regions, environ={"S_0": WHSEC})
    assert str(error.value) == f"{path}: 4 outlet secret(s) not set in the environment: S_1, S_2, S_3 and 1 more"
    assert len(load_matrix(path, regions, environ={}, require_secrets=False)) == 5  # enough to list them
    path = write_matrix(tmp_path, [*entries, GOOD | {"id": "o9", "tier": "province"}])
    with pytest.raises(MatrixError) as error:  # a real mistake beside them: the whole list, as a bad matrix
        load_matrix(path, regions, environ={})
    assert not isinstance(error.value, IncompleteMatrix) and "field 'tier'" in str(error.value)


def test_duplicate_ids_are_refused(tmp_path: Path, regions: RegionTable) -> None:
    path = write_matrix(tmp_path, [GOOD, GOOD])
    with pytest.raises(MatrixError, match="outlet 'dist-yuzhong' field 'id': duplicate id"):
        load_matrix(path, regions, environ={"S_YZ": WHSEC})


def test_a_file_that_is_not_a_matrix_says_so(tmp_path: Path, regions: RegionTable) -> None:
    path = tmp_path / "outlets.yaml"
    path.write_text("- just a list\n", encoding="utf-8")
    with pytest.raises(MatrixError, match="top-level 'outlets:' list"):
        load_matrix(path, regions, environ={})


def test_secrets_come_from_the_environment_and_never_show_in_the_model(tmp_path: Path, regions: RegionTable) -> None:
    secret = "whsec_" + "TOPSECRET" * 4 + "AAAA"  # base64 of 30 bytes
    matrix = load_matrix(write_matrix(tmp_path, [GOOD]), regions, environ={"S_YZ": secret})
    assert matrix.secret_for("dist-yuzhong") == secret
    assert "TOPSECRET" not in repr(matrix) and "TOPSECRET" not in matrix.outlets[0].model_dump_json()


BEFORE, AFTER = date(2025, 6, 1), date(2026, 11, 27)


@pytest.mark.parametrize(("outlet_region", "notice_region", "on", "expected"), [
    ("渝中区", "全市", AFTER, True),
    ("全市", "渝中区", AFTER, True),
    ("渝中区", "渝中", AFTER, True),
    ("渝中区", "大足区", AFTER, False),
    ("两江新区", "江北区", AFTER, True),
    ("两江新区", "江北区", BEFORE, False),
    ("江北区", "江北", BEFORE, True),
    ("重庆", "大足区", AFTER, True),
])
def test_an_outlet_gets_citywide_notices_and_those_naming_its_unit(
    regions: RegionTable, outlet_region: str, notice_region: str, on: date, expected: bool
) -> None:
    outlet = Outlet.model_validate(GOOD | {"region": regions.resolve(outlet_region, on)})
    notice = Notice.model_validate(notice_data(regions=[notice_region]),
                                   context={"regions": regions, "now": datetime.combine(on, time(12), CHONGQING)})
    assert (OutletMatrix((outlet,)).concerned_by(notice) == [outlet]) is expected


def test_a_notice_naming_an_unknown_region_is_refused(regions: RegionTable) -> None:
    with pytest.raises(ValidationError, match="unknown region '火星区'"):
        Notice.model_validate(notice_data(regions=["火星区"]), context={"regions": regions, "now": datetime.combine(AFTER, time(12), CHONGQING)})


@pytest.mark.parametrize(("change", "expected"), [
    ({"receive": "all", "regions": ["渝中区"]},
     "outlet 'dist-yuzhong' field 'receive': Value error, receive: all takes every notice; remove it, or remove "
     "regions and categories"),
    ({"receive": "everything"}, "outlet 'dist-yuzhong' field 'receive': Input should be 'all'"),
    ({"regions": []}, "outlet 'dist-yuzhong' field 'regions': an empty list; omit the field"),
    ({"categories": "公共安全"}, "outlet 'dist-yuzhong' field 'categories': expected a list, such as [公共安全]"),
    ({"regions": ["渝中区", "火星区"]}, "outlet 'dist-yuzhong' field 'regions.1': unknown region '火星区'"),
    ({"regions": ["全市"]}, "outlet 'dist-yuzhong' field 'regions': names 全市; citywide notices reach every outlet"),
    ({"categories": ["公共\u200b安全"]}, "outlet 'dist-yuzhong' field 'categories.0': Value error, contains the "
                                         "invisible or control character U+200B"),
])
def test_bad_targeting_is_refused_naming_the_outlet_and_the_field(
    tmp_path: Path, regions: RegionTable, change: dict[str, Any], expected: str
) -> None:
    path = write_matrix(tmp_path, [GOOD | change])
    with pytest.raises(MatrixError) as error:
        load_matrix(path, regions, environ={"S_YZ": WHSEC})
    assert expected in str(error.value) and str(path) in str(error.value)


def test_a_regions_filter_is_resolved_like_a_notices_regions_and_follows_a_merger(
    tmp_path: Path, regions: RegionTable
) -> None:
    path = write_matrix(tmp_path, [GOOD | {"regions": ["渝中", "江北区", "渝北"]}])
    before = load_matrix(path, regions, environ={"S_YZ": WHSEC}, on=BEFORE).outlets[0]
    after = load_matrix(path, regions, environ={"S_YZ": WHSEC}, on=AFTER).outlets[0]
    assert before.regions == ("渝中区", "江北区", "渝北区")
    assert after.regions == ("渝中区", "两江新区")  # both merged into 两江新区: listed once


def test_reach_says_why_a_notice_goes_or_does_not_go_to_each_outlet(regions: RegionTable) -> None:
    outlets = (
        Outlet.model_validate(GOOD | {"id": "default"}),
        Outlet.model_validate(GOOD | {"id": "everything", "receive": "all"}),
        Outlet.model_validate(GOOD | {"id": "food", "categories": ["食品安全"]}),
        Outlet.model_validate(GOOD | {"id": "nanan-food", "regions": ["南岸区"], "categories": ["食品安全"]}),
    )
    matrix = OutletMatrix(outlets)
    now = datetime.combine(AFTER, time(12), CHONGQING)
    dadukou_food = Notice.model_validate(notice_data(regions=["大渡口"], category="食品安全"),
                                         context={"regions": regions, "now": now})
    assert [(r.outlet.id, r.reached, r.why) for r in matrix.reach(dadukou_food)] == [
        ("default", False, "for 大渡口区 only, not its region 渝中区"),
        ("everything", True, "receive: all"),
        ("food", True, "category 食品安全 (its categories filter)"),
        ("nanan-food", False, "for 大渡口区 only, none in its regions filter (南岸区)"),
    ]
    assert [o.id for o in matrix.concerned_by(dadukou_food)] == ["everything", "food"]
    citywide = Notice.model_validate(notice_data(), context={"regions": regions, "now": now})
    assert {r.why for r in matrix.reach(citywide)} == {"citywide notice", "receive: all"}
    assert len(matrix.concerned_by(citywide)) == 4
