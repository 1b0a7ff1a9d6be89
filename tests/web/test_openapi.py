"""A property-based run against /openapi.json (schemathesis): requests generated from the document, sent
through the ASGI app with an admin token, on both backends. No answer is a 500, and every answer matches what
the document says of it (status, content type, body schema, headers).

Bounded to finish in well under 2 minutes in CI (``EXAMPLES``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from bot.outlets import load_matrix
from bot.regions import RegionTable
from bot.settings import Settings
from bot.store import Actor, Role, Store
from bot.web import Site, create_app
from tests.conftest import notice_data
from tests.web.test_api import OUTLETS, SECRETS, canaries

# Per operation and mode: a handful of generated requests plus the document's examples; a failure is reported
# as found (no shrinking), and no per-request deadline (a loaded CI machine is slow, not wrong).
# Two of schemathesis' checks ask more than the issue does (no 5xx, every answer as documented), and the app
# cannot meet them by design: the document cannot say all that intake checks (no control characters, a region
# that exists on that day), so a request valid by the schema may be refused with a 422 naming the field; and
# query values are parsed as pydantic does (leniently: `?after=0.0` is the integer 0), so a request the schema
# calls invalid may be answered. Every other check stands: no 5xx; status, content type, headers and body as
# documented, for valid and invalid input alike.
NOT_ASKED = [schemathesis.checks.positive_data_acceptance, schemathesis.checks.negative_data_rejection]
EXAMPLES = settings(max_examples=25, deadline=None, phases=[Phase.explicit, Phase.generate], database=None,
                    suppress_health_check=list(HealthCheck))


@pytest.fixture
def admin(store: Store) -> dict[str, str]:
    token, _ = store.access.create("schemathesis", Role.admin, actor=Actor("root", "local", "cli@test"))
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def api_schema(tmp_path: Path, store: Store, regions: RegionTable) -> schemathesis.BaseSchema:
    """The app over a matrix with one outlet of each kind, and a store with a notice in it, so reads find
    something: the schema is read from the app's own /openapi.json."""
    path = tmp_path / "outlets.yaml"
    path.write_text(yaml.safe_dump({"outlets": [{"name": f"融媒体{o['id']}"} | o for o in OUTLETS]},
                                   allow_unicode=True), encoding="utf-8")
    matrix = load_matrix(path, regions, environ=SECRETS)
    from bot.model import Notice

    notice = Notice.model_validate(notice_data(), context={"regions": regions})
    store.queue.add_notices([(notice, matrix.outlets)], source="test")
    app = create_app(Site(Settings(database_url=str(store.engine.url), outlets=path), store, regions, matrix))
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def test_no_answer_is_a_500_and_every_answer_matches_its_schema(api_schema: schemathesis.BaseSchema,
                                                                 admin: dict[str, str]) -> None:
    # Each operation on its own, valid and invalid input both (schemathesis.pytest.from_fixture would do this,
    # but reads a pytest node attribute pytest 9 no longer has): every operation is exercised, and every
    # failure is reported, not only the first.
    failures: dict[str, BaseException] = {}
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {"POST /api/v1/notices", "GET /api/v1/deliveries", "GET /feeds/{outlet}.atom", "GET /readyz"} <= {
        operation.label for operation in operations}
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(mode, headers=admin))
            @EXAMPLES
            def exchange(case: schemathesis.Case) -> None:
                answer = case.call_and_validate(headers=admin, excluded_checks=NOT_ASKED)
                leaked = [secret for secret in canaries() if secret in answer.text]
                assert not leaked, f"{case.method} {case.formatted_path} answered an outlet URL or secret"

            try:
                exchange()
            except Unsatisfiable:  # an operation without parameters or body has no invalid input
                assert mode is GenerationMode.NEGATIVE, operation.label
            except Exception as exc:  # schemathesis' FailureGroup, or the assertion above
                failures[f"{operation.label} ({mode.value})"] = exc
    assert not failures, f"{len(failures)} operation(s) failed: {', '.join(failures)}\n\n" + "\n\n".join(
        f"{label}: {exc}" for label, exc in failures.items())
