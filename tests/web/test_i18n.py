"""The pages' message catalogue: every string the templates and the code mark is translated into Chinese."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from babel.messages.pofile import read_po

from bot.settings import ROOT
from bot.web.pages.i18n import LOCALES, choose, translations


def test_every_marked_string_in_the_templates_and_code_has_a_chinese_translation(tmp_path: Path) -> None:
    pot = tmp_path / "messages.pot"
    subprocess.run([sys.executable, "-m", "babel.messages.frontend", "extract", "-F", "babel.cfg", "-k", "N_",
                    "--no-location", "-o", str(pot), "."], cwd=ROOT, check=True)
    with pot.open("rb") as file:
        wanted = {m.id if isinstance(m.id, str) else m.id[0] for m in read_po(file) if m.id}
    assert len(wanted) > 10
    zh = translations("zh_Hans")
    missing = sorted(m for m in wanted if m not in zh.messages and m not in zh.plurals)
    assert missing == [], f"add these to {LOCALES}/zh_Hans/LC_MESSAGES/messages.po (make messages): {missing}"


def test_the_catalogue_has_no_fuzzy_or_stale_entries() -> None:
    with (LOCALES / "zh_Hans" / "LC_MESSAGES" / "messages.po").open("rb") as file:
        catalog = read_po(file)
    assert [m.id for m in catalog if m.id and m.fuzzy] == []
    assert list(catalog.obsolete) == []


def test_the_language_is_the_persons_choice_then_the_browsers_then_the_setting() -> None:
    assert choose("en", "zh-CN") == "en"
    assert choose(None, "zh-TW,en;q=0.5") == "zh_Hans"
    assert choose(None, "en-US,en;q=0.9") == "en"
    assert choose(None, "fr-FR") == "zh_Hans"
    assert choose(None, None, default="en") == "en"
    assert choose("xx", "") == "zh_Hans"
