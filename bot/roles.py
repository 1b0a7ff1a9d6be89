"""Who may do what: the API tokens' and the newsroom's roles, ordered (viewer < editor < reviewer < operator < admin).

Kept apart from the store, which checks them, so that the CLI names them without loading the store.

    >>> Role.named("editor") < Role.operator, RoleName.editor.value
    (True, 'editor')
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class Role(IntEnum):
    """Ordered: a role can do everything the roles below it can (room is left for more between them)."""

    viewer = 10
    editor = 20
    reviewer = 30
    operator = 40
    admin = 50

    @classmethod
    def named(cls, name: str) -> Role:
        try:
            return cls[name]
        except KeyError:
            raise ValueError(f"unknown role {name!r}; roles: {', '.join(r.name for r in cls)}") from None


# The roles by name, as a command-line choice and an API schema's enum take them.
RoleName = StrEnum("RoleName", {role.name: role.name for role in Role})
