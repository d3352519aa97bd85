"""The retrieval server over real HTTP (ephemeral port, started in a thread, shut down after)."""

from __future__ import annotations

import http.client
import json

import pytest
import requests

from at2po.agent.retrievers import Retriever, RetrieverError, load_retriever
from at2po.agent.retrievers.server import RetrievalServer, ServerLimits

LIMITS = ServerLimits(max_body_bytes=2048, max_queries=4, max_query_chars=200, max_topk=10, default_topk=2)


class Broken(Retriever):
    def batch_search(self, queries, k):
        raise RetrieverError("index on fire")


@pytest.fixture(scope="module")
def server(bm25_dir):
    with RetrievalServer(load_retriever(bm25_dir), port=0, limits=LIMITS, info={"kind": "bm25", "num_docs": 8}) as s:
        yield s


def post(server, body, **kw):
    return requests.post(server.url + "/retrieve", json=body, timeout=10, **kw)


def test_binds_loopback_by_default(server):
    assert server.host == "127.0.0.1" and server.port > 0


def test_search_r1_response_shape(server):
    r = post(server, {"queries": ["capital of Japan", "violin bow"], "topk": 2, "return_scores": True})
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json")
    result = r.json()["result"]
    assert len(result) == 2 and len(result[0]) == 2
    top = result[0][0]
    assert set(top) == {"document", "score"} and top["score"] > 0
    assert top["document"] == {
        "id": "tokyo",
        "title": "Tokyo",
        "text": "Tokyo is the capital of Japan. The city hosted the Summer Olympics.",
        "contents": '"Tokyo"\nTokyo is the capital of Japan. The city hosted the Summer Olympics.',
    }
    assert result[1][0]["document"]["id"] == "violin"


def test_without_scores_and_default_topk(server):
    result = post(server, {"queries": ["capital city"]}).json()["result"]
    assert len(result[0]) == LIMITS.default_topk and "contents" in result[0][0] and "score" not in result[0][0]
    assert post(server, {"queries": []}).json() == {"result": []}


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({"topk": 3}, 400, "queries: Field required"),
        ({"queries": "capital"}, 400, "queries: Input should be a valid list"),
        ({"queries": ["ok", 3]}, 400, "queries.1: Input should be a valid string"),
        ({"queries": ["q"], "topk": "3"}, 400, "topk: Input should be a valid integer"),
        ({"queries": ["q"], "return_scores": "yes"}, 400, "return_scores"),
        ({"queries": ["q"], "topk": 0}, 400, "topk must be in [1, 10], got 0"),
        ({"queries": ["q"], "topk": -5}, 400, "topk must be in [1, 10]"),
        ({"queries": ["q"], "topk": 10**12}, 400, "topk must be in [1, 10]"),
        ({"queries": ["q"] * 5}, 413, "5 queries exceed the limit of 4"),
        ({"queries": ["q" * 201]}, 413, "queries[0] has 201 characters"),
        (["q"], 400, "must be a JSON object"),
    ],
)
def test_bad_requests_get_4xx_json(server, body, status, message):
    r = post(server, body)
    assert r.status_code == status
    assert message in r.json()["error"]


def test_malformed_json(server):
    r = requests.post(server.url + "/retrieve", data=b'{"queries": [', timeout=10)
    assert r.status_code == 400 and r.json()["error"].startswith("malformed JSON")
    r = requests.post(server.url + "/retrieve", data=b"\xff\xfe", timeout=10)
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"]


def test_oversized_body_is_413_without_reading_it(server):
    r = requests.post(server.url + "/retrieve", data=b"x" * 4096, timeout=10)
    assert r.status_code == 413 and "4096 bytes exceeds the limit of 2048" in r.json()["error"]


def test_missing_content_length_is_411(server):
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    conn.putrequest("POST", "/retrieve")
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 411 and "Content-Length" in json.loads(resp.read())["error"]
    conn.close()


def test_paths_methods_and_health(server):
    assert requests.get(server.url + "/nope", timeout=10).status_code == 404
    assert requests.post(server.url + "/search", json={}, timeout=10).status_code == 404
    assert requests.get(server.url + "/retrieve", timeout=10).status_code == 405
    assert requests.get(server.url + "/health", timeout=10).json() == {"status": "ok", "kind": "bm25", "num_docs": 8}


def test_keeps_serving_after_errors_on_one_connection(server):
    with requests.Session() as s:
        assert s.post(server.url + "/retrieve", data=b"{", timeout=10).status_code == 400
        r = s.post(server.url + "/retrieve", json={"queries": ["penguin"], "topk": 1}, timeout=10)
        assert r.status_code == 200 and r.json()["result"][0][0]["id"] == "penguin"


def test_retriever_failure_is_503():
    with RetrievalServer(Broken(), port=0) as s:
        r = requests.post(s.url + "/retrieve", json={"queries": ["x"], "topk": 1}, timeout=10)
    assert r.status_code == 503 and "index on fire" in r.json()["error"]
