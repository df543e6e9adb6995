"""Schemathesis against the coordinator's own OpenAPI spec: generated requests never cause a 5xx,
and every documented response matches its schema.

Driven by hand rather than through ``schemathesis.pytest`` (whose fixture loader does not run
under this pytest): every operation of the live spec, 25 generated cases each.
"""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.specs.openapi.checks import response_schema_conformance  # noqa: E402

from tests.common import Api  # noqa: E402

CASES_PER_OPERATION = 25


def test_generated_requests_never_break_the_api(api: Api) -> None:
    schema = schemathesis.openapi.from_url(api.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/jobs", "/jobs/{job_id}", "/jobs/{job_id}/report"}
    for operation in operations:

        @settings(max_examples=CASES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck),
                  database=None)
        @given(case=operation.as_strategy())
        def check(case: object) -> None:
            response = case.call(base_url=api.url, timeout=30)  # type: ignore[attr-defined]
            where = f"{case.method} {case.formatted_path}"  # type: ignore[attr-defined]
            assert response.status_code < 500, (where, response.text[:500])
            if response.status_code in (200, 202, 422):
                case.validate_response(response, checks=[response_schema_conformance])  # type: ignore[attr-defined]

        check()
