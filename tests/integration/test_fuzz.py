"""Schemathesis against the live OpenAPI document of a real stack with access control on.

Every documented operation gets generated requests, valid by the document and
not (schemathesis's positive and negative modes), with a valid key and with
none. Two checks: no answer is a 5xx, and every answer (status, content type,
body) is one the document states. Bounded: a few examples per operation, no
shrinking, a short per-example deadline; the whole run takes well under a
minute on two cores.
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.integration.conftest import KeyedStack

pytestmark = [pytest.mark.integration, pytest.mark.served_model]
#: Routes that answer without a key: the probes, the metrics and the job and model pages (they hold no data).
OPEN = ("/gateway/health", "/v2/health/live", "/v2/health/ready", "/metrics", "/jobs/ui", "/models/ui")
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
BOUNDED = settings(
    max_examples=25, deadline=timedelta(seconds=10), phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck), derandomize=True,
)


def fuzz(url: str, headers: dict[str, str]) -> list[str]:
    """Run bounded examples of every operation of the live document; the failures, one line each.

    The keys schemathesis makes up for the document's security schemes are dropped: ``headers`` says which
    key, if any, a request carries. Schemathesis's pytest plugin does not load under this pytest
    (``'Function' object has no attribute '_nodeid'``), so its strategies run under hypothesis here.
    """
    failures: list[str] = []
    statuses: Counter[int] = Counter()
    for result in schemathesis.openapi.from_url(f"{url}/openapi.json").get_all_operations():
        operation = result.ok()

        @BOUNDED
        @given(case=operation.as_strategy() | operation.as_strategy(GenerationMode.NEGATIVE))
        def run(case: schemathesis.Case) -> None:
            for name in [*(case.headers or {})]:
                if name.lower() in ("authorization", "x-api-key"):
                    del case.headers[name]
            response = case.call_and_validate(base_url=url, headers=headers, checks=CHECKS, timeout=10)
            statuses[response.status_code] += 1
            assert headers or response.status_code == 401 or case.path in OPEN, "answered without a key"

        try:
            run()
        except Exception as exc:  # one line per operation that failed, to see all of them at once
            failures.append(f"{operation.label}: {type(exc).__name__}: {str(exc)[:2000]}")
    print(f"fuzzed {url} {'with' if headers else 'without'} a key: {dict(sorted(statuses.items()))}")
    assert sum(statuses.values()) >= 50, statuses  # the document had its operations and they were called
    return failures


def test_with_a_key_every_answer_is_documented_and_none_is_5xx(keyed_stack: KeyedStack) -> None:
    failures = fuzz(keyed_stack.url, keyed_stack.auth(keyed_stack.keys[1]))
    assert not failures, "\n\n".join(failures)


def test_without_a_key_every_answer_is_documented_and_none_is_5xx(keyed_stack: KeyedStack) -> None:
    failures = fuzz(keyed_stack.url, {})
    assert not failures, "\n\n".join(failures)
