"""Load on the retrieval server: N concurrent clients × M requests each on loopback; errors and latency percentiles.

    python benchmarks/retriever_load.py                       # 100 clients × 50 requests on the quickstart world
    python benchmarks/retriever_load.py --index DIR --clients 200 --requests 50 --topk 3

Each client has its own keep-alive connection (a ``requests.Session``) and sends one-query POST /retrieve calls
(the world's training questions, or a few fixed words with --index) as fast as the server answers. Prints one
JSON line: requests, errors, p50/p90/p99/max latency in ms, wall time and requests per second. The fault suite runs
the same function
(``tests/faults/test_server_load.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def load_test(url: str, queries: list[str], clients: int = 100, requests_per_client: int = 50,
              topk: int = 3, timeout_s: float = 30.0) -> dict[str, float]:
    """``clients`` threads × ``requests_per_client`` POSTs to ``url``/retrieve; every answer must be a 200 with
    ``topk``-bounded results for its one query, anything else counts as an error."""
    lat: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    first_error: list[str] = []
    start = threading.Barrier(clients + 1)

    def client(c: int) -> None:
        s = requests.Session()
        start.wait()
        for i in range(requests_per_client):
            q = queries[(c * requests_per_client + i) % len(queries)]
            t0 = time.perf_counter()
            try:
                r = s.post(url.rstrip("/") + "/retrieve", json={"queries": [q], "topk": topk}, timeout=timeout_s)
                ok = r.status_code == 200 and len(r.json()["result"]) == 1 and len(r.json()["result"][0]) <= topk
                if not ok and not first_error:
                    first_error.append(f"HTTP {r.status_code}: {r.text[:200]}")
            except requests.RequestException as e:
                ok = False
                if not first_error:
                    first_error.append(str(e)[:200])
            lat[c].append(time.perf_counter() - t0)
            errors[c] += not ok
        s.close()

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ms = np.array([x for xs in lat for x in xs]) * 1000
    return {
        "clients": clients, "requests": int(ms.size), "errors": int(sum(errors)),
        "p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(ms.max()), "wall_s": wall,
        "rps": ms.size / wall, **({"first_error": first_error[0]} if first_error else {}),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--index", default=None,
                    help="index directory (default: build the quickstart world's in a temp dir)")
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--requests", type=int, default=50, help="requests per client")
    ap.add_argument("--topk", type=int, default=3)
    args = ap.parse_args()

    import tempfile

    from at2po.agent.retrievers import load_retriever
    from at2po.agent.retrievers.server import RetrievalServer

    with tempfile.TemporaryDirectory() as tmp:
        index, queries = args.index, ["capital", "mayor", "born", "founded"]
        if index is None:
            from at2po.agent.world import make_world

            files = make_world(Path(tmp) / "world", with_sft=False)
            index = str(files.index)
            queries = [json.loads(x)["question"] for x in files.train.read_text().splitlines()]
        with RetrievalServer(load_retriever(index), port=0) as server:
            out = load_test(server.url, queries, args.clients, args.requests, args.topk)
    print(json.dumps({"index": index if args.index else "quickstart world (temp)", **out}))


if __name__ == "__main__":
    main()
