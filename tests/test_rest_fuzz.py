"""A regression net for the REST API (issue 21): schemathesis generates requests from the API's
own OpenAPI document, valid and invalid, against a real 3-node cluster, and every answer must be
other than a 5xx, declared in the document (its status code) and of the declared schema.
Bounded and deterministic (hypothesis derandomized, a fixed number of examples per operation);
bench/rest_fuzz.py runs the same with many more examples.

Requests that would take the test machine with them are tamed, never skipped: a node is not
removed (that operation is left out), a real (not dry-run) change gets at most 2 shards, a
folder to write backups in is put under the test's temporary folder, and a change of a user goes
to one that does not exist (so the admin it logs in as keeps its name and password)."""

from __future__ import annotations

import os

import httpx
import pytest
import requests
from clusters import rest_cluster

pytestmark = pytest.mark.timeout(300)

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from schemathesis.checks import (  # noqa: E402
    not_a_server_error, response_schema_conformance, status_code_conformance)

FIRST_ADDRESS = "127.0.0.245"      # other modules' clusters use other addresses
EXAMPLES = int(os.environ.get("DMC_FUZZ_EXAMPLES", "6"))    # per operation
LEFT_OUT = {"/v1/nodes/{uid}/actions/remove"}                  # would shrink the cluster
WRITTEN_FOLDERS = ("location", "backup_location")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with rest_cluster(tmp_path_factory.mktemp("fuzz") / "cluster", FIRST_ADDRESS) as c:
        yield c


def tame(case, folder: str) -> None:
    """Keep a real request within what the test machine holds (see the module docstring)."""
    query = case.query or {}
    dry = str(query.get("dry_run", "")).lower() in ("1", "true", "yes", "on")
    if case.operation.path == "/v1/users/{uid}" and case.method.upper() != "GET":
        case.path_parameters["uid"] = 424242        # the admin the fuzzer logs in as stays
    if isinstance(case.body, dict):
        for key in WRITTEN_FOLDERS:
            if isinstance(case.body.get(key), str) and case.body[key].startswith("/"):
                case.body[key] = os.path.join(folder, "backups")
        count = case.body.get("shards_count")
        if not dry and isinstance(count, int) and not isinstance(count, bool) and count > 2:
            case.body["shards_count"] = 2


def run_fuzz(cluster, tmp_path, examples: int) -> dict:
    """Every operation, `examples` cases each; the failures found, by operation."""
    config = cluster.nodes[1]
    base = f"http://{config.address}:{config.rest_port}"
    auth = cluster.admin_login()
    document = httpx.get(f"{base}/openapi.json", auth=auth, timeout=10).json()
    for path in LEFT_OUT:
        document["paths"].pop(path, None)
    api = schemathesis.openapi.from_dict(document)
    session = requests.Session()
    session.auth = auth
    failures: dict[str, list[str]] = {}
    calls = {"n": 0}

    def checker(operation):
        @settings(max_examples=examples, derandomize=True, deadline=None, database=None,
                  phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def check(case):
            tame(case, str(tmp_path))
            response = case.call(base_url=base, session=session, timeout=30)
            calls["n"] += 1
            try:
                case.validate_response(response, checks=[
                    not_a_server_error, status_code_conformance, response_schema_conformance])
            except Exception as exc:         # schemathesis' FailureGroup and others
                failures.setdefault(operation.label, []).append(
                    f"{case.method} {case.formatted_path} {case.query} {case.body!r:.200}: "
                    f"{response.status_code} {response.text[:200]} ({str(exc)[:300]})")
        return check

    for result in api.get_all_operations():
        checker(result.ok())()
    failures["_calls"] = [str(calls["n"])]
    return failures


def test_generated_requests_get_no_5xx_and_answers_of_the_declared_schema(cluster, tmp_path):
    found = run_fuzz(cluster, tmp_path, EXAMPLES)
    calls = int(found.pop("_calls")[0])
    print(f"{calls} requests")
    assert calls >= EXAMPLES * 10
    assert found == {}, "\n".join(f"{op}:\n  " + "\n  ".join(v[:3]) for op, v in found.items())
