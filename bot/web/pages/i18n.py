"""Every string a person reads on a page, in one message catalogue per language.

The msgids are English; ``bot/web/locale/zh_Hans/LC_MESSAGES/messages.po`` gives the Simplified Chinese, the
default. A translator edits that one file; ``make messages`` extracts the msgids again from the templates and
the Python code (``babel.cfg``), and a test fails when one is missing from the catalogue.

    >>> translations("zh_Hans").gettext("Notices")
    '辟谣通报'
    >>> translations("en").gettext("Notices")
    'Notices'

Strings that Python code names before a language is known are marked with ``N_`` and translated on the page.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

from babel.messages.pofile import read_po

LOCALES = Path(__file__).resolve().parent.parent / "locale"
LANGUAGES = {"zh_Hans": "简体中文", "en": "English"}  # the first is the default
DEFAULT = "zh_Hans"
HTML_LANG = {"zh_Hans": "zh-Hans", "en": "en"}


def N_(message: str) -> str:
    """Mark a string for the catalogue without translating it here: ``STATE_WORDS = {"ok": N_("Delivered")}``."""
    return message


@dataclass(frozen=True)
class Translations:
    language: str
    messages: dict[str, str]
    plurals: dict[str, tuple[str, ...]]

    def gettext(self, message: str) -> str:
        return self.messages.get(message) or message

    def ngettext(self, singular: str, plural: str, n: int) -> str:
        forms = self.plurals.get(singular)
        if forms:  # Chinese has one form; English falls through to its own msgids
            return forms[0] if len(forms) == 1 else forms[0 if n == 1 else 1]
        return singular if n == 1 else plural

    @property
    def html_lang(self) -> str:
        return HTML_LANG[self.language]


@cache
def translations(language: str) -> Translations:
    """The catalogue of ``language`` (``zh_Hans`` or ``en``); English is the msgids themselves."""
    path = LOCALES / language / "LC_MESSAGES" / "messages.po"
    if not path.exists():
        return Translations(language, {}, {})
    with path.open("rb") as file:
        catalog = read_po(file, locale=language.replace("_Hans", ""))
    messages: dict[str, str] = {}
    plurals: dict[str, tuple[str, ...]] = {}
    for message in catalog:
        if not message.id or message.fuzzy:
            continue
        if isinstance(message.id, tuple):
            if all(message.string):
                plurals[message.id[0]] = tuple(message.string)
        elif message.string:
            messages[message.id] = str(message.string)
    return Translations(language, messages, plurals)


def choose(cookie: str | None, accept_language: str | None, default: str = DEFAULT) -> str:
    """The page language: the person's own choice (a cookie), else the browser's ``Accept-Language`` when it puts
    English before Chinese, else ``default`` (the setting ``DEBUNKBOT_LANGUAGE``)."""
    if cookie in LANGUAGES:
        return cookie
    for part in (accept_language or "").split(","):
        tag = part.split(";")[0].strip().lower()
        if tag.startswith("zh"):
            return "zh_Hans"
        if tag.startswith("en"):
            return "en"
    return default
