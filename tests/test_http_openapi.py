"""The OpenAPI description of `raftcore kv --http` (issue 13), fuzzed with
schemathesis against a live 3-node cluster of real processes: every
operation it describes, called with generated requests, gets no 500, a
status code, content type, headers and body that the description allows;
any request line at all (other methods, odd paths and query strings,
headers: hypothesis below) gets a 4xx or an answer; and the node keeps
running. (The operations take no parameters, so schemathesis has no
negative cases to make for them.)
"""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.generation import GenerationMode
from hypothesis import strategies as st

from async_runner import run_guarded
from http_harness import HttpKvCluster, get_json, http_request, wait_http
from kv_harness import GUARD, wait_leader


@pytest.fixture(scope="module")
def live_node(tmp_path_factory):
    """A 3-node cluster's leader's HTTP address, for the whole module."""
    with HttpKvCluster(tmp_path_factory.mktemp("openapi")) as c:
        c.start_all()

        async def ready():
            leader = await wait_leader(c)
            await wait_http(c)
            return leader
        leader = run_guarded(ready(), GUARD)
        yield c, leader
        for i in c.ids:
            assert c.procs[i].poll() is None, f"node {i} exited during the fuzzing\n{c.logs()}"


@pytest.fixture(scope="module")
def api_schema(live_node):
    c, leader = live_node
    return schemathesis.openapi.from_url(c.url(leader, "/openapi.json"))


# The operations are walked here with hypothesis directly rather than through
# schemathesis' pytest plugin, which breaks with each pytest release that
# changes pytest's internals.
def test_every_endpoint_answers_as_its_openapi_description_says(api_schema):
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) == 5, operations      # /openapi.json does not describe itself
    for operation in operations:
        @settings(max_examples=25, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=GenerationMode.POSITIVE))
        def answers_as_described(case):
            case.call_and_validate(timeout=GUARD)
        answers_as_described()


def test_the_description_names_every_endpoint_and_the_node_still_serves(live_node):
    c, leader = live_node

    async def check():
        code, doc = await get_json(c.http[leader], "/openapi.json")
        assert code == 200 and doc["openapi"].startswith("3.")
        assert sorted(doc["paths"]) == ["/", "/cluster", "/health", "/metrics", "/openapi.json",
                                        "/status"]
        code, health = await get_json(c.http[leader], "/health")
        assert code == 200 and health["healthy"] is True
    run_guarded(check(), GUARD)


#: What the server may answer to anything at all.
ALLOWED = {200, 400, 404, 405, 503}

methods = st.one_of(st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS",
                                     "TRACE", "get", ""]),
                    st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126),
                            max_size=10))
paths = st.one_of(st.sampled_from(["/", "/metrics", "/health", "/status", "/cluster",
                                   "/openapi.json"]).flatmap(
                      lambda p: st.text(max_size=30).map(lambda q: p + "?" + q)),
                  st.text(max_size=60))
headers = st.lists(st.text(max_size=40).filter(lambda h: "\n" not in h), max_size=4)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=methods, path=paths, header_lines=headers)
def test_any_request_line_gets_a_4xx_or_an_answer_never_a_500(live_node, method, path,
                                                             header_lines):
    c, leader = live_node
    raw = (f"{method} {path} HTTP/1.1\r\n" + "".join(h + "\r\n" for h in header_lines)
           + "\r\n").encode("utf-8", "surrogatepass")
    status, _, _ = run_guarded(http_request(c.http[leader], raw), GUARD)
    assert status in ALLOWED, (raw, status)
