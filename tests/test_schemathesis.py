"""The gateway's OpenAPI schema, checked by schemathesis (property-based): for every operation, generated
requests (valid and invalid) never get a 5xx, and every answer has a documented status, content type and
shape. Against the `auth` gateway with an admin's token, so authorisation is on and every route is reached
past it; a bounded number of examples per operation keeps it to a few seconds."""

import time

import httpx
import jwt
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

# Loaded while pytest collects this module, at a shallow stack: loaded lazily inside the test (by
# schemathesis.openapi.from_dict), pytest's assertion rewriting of its large schema module once failed
# with CPython 3.11's "SystemError: AST constructor recursion depth mismatch".
from schemathesis.specs.openapi import schemas as _openapi_schemas  # noqa: F401

from tests.conftest import AUTH_JWT_SECRET

MAX_EXAMPLES = 8
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def test_the_gateway_keeps_to_its_openapi_schema(gateways: dict[str, str]) -> None:
    url = gateways["auth"]
    admin = jwt.encode(
        {"sub": "schemathesis", "role": "admin", "exp": int(time.time()) + 3600}, AUTH_JWT_SECRET, "HS256"
    )
    headers = {"authorization": f"Bearer {admin}"}
    schema = schemathesis.openapi.from_dict(httpx.get(f"{url}/openapi.json", timeout=10).json())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    failures: list[str] = []
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(mode))
            @settings(
                max_examples=MAX_EXAMPLES,
                deadline=None,
                database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def check(case: schemathesis.Case) -> None:
                # The generated credentials are random (they get 401, as the security tests check): use
                # the admin's, so every request reaches the route itself.
                for name in [h for h in case.headers or {} if h.lower() in ("authorization", "x-api-key")]:
                    del case.headers[name]
                case.call_and_validate(base_url=url, headers=headers, checks=CHECKS, timeout=30)

            try:
                check()
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE  # an operation with no input can't be sent wrong
            except Exception as err:  # collect every operation's failures, then report them together
                failures.append(f"{operation.label} ({mode.value}): {err}")
    if failures:
        pytest.fail("\n\n".join(failures))
