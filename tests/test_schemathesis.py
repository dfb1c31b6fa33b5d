"""Schema-driven fuzzing (schemathesis) over real HTTP: the kitchen-sink app (tests/kitchen_sink.py) and the
example shop, each under ``tachyon run``, are fuzzed from the OpenAPI schema they serve at ``/openapi.json``.

For every operation, schemathesis generates requests that fit the schema (positive) and requests that break
it (negative), sends them and checks each response: never a 5xx, its status code documented, its content
type and its body as the schema says. The server log must show no unhandled error. Where test_fuzz.py
throws hand-written hostile input at the endpoints, this checks that the schema the generator writes tells
the truth about what the server answers.

The run is derandomized (the same examples every time, so CI is reproducible) and bounded to
``TACHYON_SCHEMA_EXAMPLES`` examples per operation and mode (10 by default: the module runs in about half a
minute on 2 cores). For a longer hunt:
``TACHYON_SCHEMA_EXAMPLES=1000 python -m pytest tests/test_schemathesis.py --timeout 0``.

schemathesis's pytest plugin (``schemathesis.pytest.from_fixture``) does not run under pytest 9, so each test
loads the served schema with ``schemathesis.openapi.from_url`` and drives every operation's hypothesis
strategy itself; every failure is reported with the operation, the check and a curl command to replay it.
"""

from __future__ import annotations

import os
import tempfile
import traceback
from pathlib import Path
from typing import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from .conftest import ServerProcess, kitchen_sink
from .test_example_shop import Shop

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
SETTINGS = settings(
    max_examples=int(os.environ.get("TACHYON_SCHEMA_EXAMPLES", "10")),
    derandomize=True,  # the same examples on every run: a CI failure replays locally
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),  # slow data generation and real HTTP round trips are expected
)


def fuzz(schema: schemathesis.BaseSchema, base_url: str) -> list[str]:
    """Run every operation of ``schema`` in both generation modes; return one report per failing one."""
    failures = []
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in GenerationMode:

            @SETTINGS
            @given(case=operation.as_strategy(mode))
            def run(case: schemathesis.Case) -> None:
                case.call_and_validate(base_url=base_url, checks=CHECKS)

            try:
                run()
            except Unsatisfiable:
                # No request can break the schema of an operation without parameters, or whose parameters
                # take any value (a str path segment, an ``Any`` body): nothing to test in negative mode.
                if mode is GenerationMode.POSITIVE:
                    raise
            except (AssertionError, FailureGroup) as exc:  # a FailureGroup (an exception group) of failed checks
                report = "".join(traceback.format_exception_only(exc))
                failures.append(f"{operation.label} ({mode.value} data):\n{report}")
    return failures


@pytest.fixture(scope="module")
def sink() -> Iterator[ServerProcess]:
    """The kitchen sink under ``tachyon run``; after the tests, its log must show no unhandled error."""
    with tempfile.TemporaryDirectory(prefix="sink-schema-") as name, kitchen_sink(Path(name)) as server:
        yield server


def test_kitchen_sink_answers_as_its_schema_says(sink: ServerProcess) -> None:
    schema = schemathesis.openapi.from_url(f"{sink.url}/openapi.json")
    assert len(list(schema.get_all_operations())) == 18  # every endpoint is fuzzed (none failed to load)
    failures = fuzz(schema, sink.url)
    assert not failures, "\n\n".join(failures)


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    running = Shop(tmp_path_factory.mktemp("shop-schema"))
    running.unusable_imports_expected = True
    try:
        yield running
        running.stop()  # drains the tasks; fails on an unhandled error or a failed task in the log
    finally:
        running.server.stop()


def test_shop_answers_as_its_schema_says(shop: Shop) -> None:
    schema = schemathesis.openapi.from_url(f"{shop.url}/openapi.json")
    # Completing an order sends its webhook to the order's URL: an order made valid by chance would send it to
    # an address on the internet, so that one operation is left to test_example_shop.py.
    schema = schema.exclude(method="POST", path="/orders/{order_id}/complete")
    assert len(list(schema.get_all_operations())) == 16  # 13 of the shop's own, 3 of its task status routes
    failures = fuzz(schema, shop.url)
    assert not failures, "\n\n".join(failures)
