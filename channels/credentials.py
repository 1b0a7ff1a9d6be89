"""Robot credentials as people copy them: the token alone, ``TOKEN:SIGNING_SECRET``, or the robot's whole
webhook URL as the platform shows it, optionally followed by a space and the signing secret.

    >>> robot_token("https://oapi.dingtalk.com/robot/send?access_token=abc123 SECxyz", query="access_token")
    ('abc123', 'SECxyz')
    >>> robot_token("abc123:SECxyz", query="access_token")
    ('abc123', 'SECxyz')

``bot.outlets.load_matrix`` calls each channel's ``read_secret`` once at start-up, which turns what the
environment holds into ``TOKEN`` or ``TOKEN:SIGNING_SECRET`` (what ``build`` and the redactor read) or
refuses it, saying what shape is expected. A message never contains the secret.
"""

from __future__ import annotations

import re

TOKEN = re.compile(r"^[A-Za-z0-9_\-]+$")


def robot_token(
    raw: str, *, query: str | None = None, path_after: str | None = None, shape: str = ""
) -> tuple[str, str | None]:
    """(token, signing secret or None) from ``raw``; the token of a URL is its ``query`` parameter or the path
    segment after ``path_after``. Raises ValueError (without the secret) when no token can be read."""
    raw = raw.strip()
    if raw.startswith(("https://", "http://")):
        url_text, *rest = raw.split(None, 1)
        import httpx  # not at the top: see channels/__init__.py

        url = httpx.URL(url_text)
        if query:
            token = url.params.get(query, "")
        else:
            assert path_after is not None
            token = url.path.partition(path_after)[2].strip("/") if path_after in url.path else ""
        if not token:
            where = f"?{query}=…" if query else f"…{path_after}TOKEN"
            expected = f"; expected {shape}" if shape else ""
            raise ValueError(f"holds a URL without the robot's token ({where}){expected}")
        token, _, key = token.partition(":")
        return token, (rest[0].strip() if rest else key) or None
    token, _, key = raw.partition(":")
    return token.strip(), key.strip() or None


def token_problem(token: str, shape: str) -> str | None:
    if not token:
        return f"holds no token; expected {shape}"
    if not TOKEN.match(token):
        return (f"holds a token with characters a robot token never has (letters, digits, - and _ only); "
                f"expected {shape}")
    return None
