"""Fuzzing the REST API from its own OpenAPI document (schemathesis): requests generated for every operation the
document lists — valid ones and ones that break the schema — never get a 5xx or crash the server, and every JSON
error body is ``{"error": ...}``. Case count: ``CASES`` per operation and generation mode; the test prints the
total."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable

from tests.server.client import call

schemathesis = pytest.importorskip("schemathesis")
CASES = 30


def test_no_generated_request_gets_a_5xx(served) -> None:
    _fuzz(served, "")


def test_no_generated_shared_memory_request_gets_a_5xx_with_the_extension_on(shared) -> None:
    """The shared-memory routes again, where they do something (off, they all answer 403)."""
    _fuzz(shared, "/v2/systemsharedmemory")


def _fuzz(served, prefix: str) -> None:
    schema = schemathesis.openapi.from_url(f"{served.url}/openapi.json")
    total = 0
    operations = [op for op in (result.ok() for result in schema.get_all_operations()) if op.path.startswith(prefix)]
    assert len(operations) >= (10 if not prefix else 3)
    for operation in operations:
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            seen: list[str] = []

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=CASES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def run(case) -> None:
                response = case.call()
                seen.append(case.method)  # noqa: B023 (run() is called in this iteration)
                status = response.status_code
                readiness = status == 503 and case.formatted_path.endswith("/ready")
                assert status < 500 or readiness, (case.method, case.formatted_path, status, response.text[:300])
                if status >= 400 and "json" in response.headers.get("content-type", [""])[0]:
                    assert set(response.json()) == {"error"}, response.text[:300]

            try:
                run()
            except Unsatisfiable:  # nothing in this operation's schema to break (no parameters, no body)
                assert mode == schemathesis.GenerationMode.NEGATIVE
            total += len(seen)
    assert call(served.host_port, "GET", "/v2/health/live").status == 200
    print(f"\nschemathesis: {total} generated requests over {len(operations)} operations, no 5xx")
