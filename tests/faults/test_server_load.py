"""The retrieval server under load: 100 concurrent clients × 50 requests on loopback with 0 errors (p50/p99 printed),
then bad requests answered with 4xx while it keeps serving; it binds 127.0.0.1 unless told otherwise."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import requests

from at2po.agent.retrievers import load_retriever
from at2po.agent.retrievers.server import RetrievalServer, ServerLimits

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from retriever_load import load_test


def test_100_clients_x_50_requests_without_an_error(tiny_world) -> None:
    queries = [json.loads(x)["question"] for x in Path(tiny_world["train"]).read_text().splitlines()]
    with RetrievalServer(load_retriever(tiny_world["index"]), port=0) as server:
        assert server.host == "127.0.0.1"  # loopback unless --host says otherwise
        stats = load_test(server.url, queries, clients=100, requests_per_client=50)
        print(f"\n[fault] 100 clients × 50 requests: p50 {stats['p50_ms']:.0f} ms, p99 {stats['p99_ms']:.0f} ms, "
              f"{stats['rps']:.0f} requests/s")
        assert stats["requests"] == 5000 and stats["errors"] == 0, stats.get("first_error")

        url = server.url + "/retrieve"
        big = b'{"queries": ["' + b"x" * (ServerLimits().max_body_bytes + 1) + b'"]}'
        r = requests.post(url, data=big, headers={"Content-Type": "application/json"}, timeout=10)
        assert r.status_code == 413 and "exceeds the limit" in r.json()["error"]
        for topk in (0, 101, -3):
            r = requests.post(url, json={"queries": ["mayor"], "topk": topk}, timeout=10)
            assert r.status_code == 400 and "topk must be in [1, 100]" in r.json()["error"]
        r = requests.post(url, json={"queries": ["mayor of Alba"], "topk": 1, "return_scores": True}, timeout=10)
        assert r.status_code == 200 and r.json()["result"][0][0]["document"]["title"] == "Alba"  # still serving
