"""The names of review stages (先审后发), from the message catalogue: 初审, 复审, 终审 with three stages.

    >>> from bot.web.pages.i18n import translations
    >>> [stage_name(3, s, translations("zh_Hans")) for s in (1, 2, 3)]
    ['初审', '复审', '终审']
    >>> stage_name(2, 2, translations("en"))
    'Final review'
"""

from __future__ import annotations

from bot.web.pages.i18n import N_, Translations

STAGE_NAMES = {
    1: (N_("Final review"),),
    2: (N_("First review"), N_("Final review")),
    3: (N_("First review"), N_("Second review"), N_("Final review")),
}
DECISION_WORDS = {"sign": N_("Signed"), "return": N_("Sent back"), "release": N_("Released"),
                  "urgent-release": N_("Urgent release")}
REVIEW_STATES = {"draft": N_("Waiting for review"), "returned": N_("Sent back to its author"),
                 "released": N_("Released"), "withdrawn": N_("Withdrawn")}
KIND_WORDS = {"notice": N_("Notice"), "correction": N_("Correction"), "retraction": N_("Retraction")}


def stage_name(stages: int, stage: int, t: Translations) -> str:
    """The name of ``stage`` (1-based) of a review with ``stages`` stages, in ``t``'s language."""
    names = STAGE_NAMES.get(stages)
    if names is None or not 1 <= stage <= len(names):
        return t.gettext("Stage {n}").format(n=stage)
    return t.gettext(names[stage - 1])
