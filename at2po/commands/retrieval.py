"""``at2po index`` (build a retrieval index) and ``at2po serve-retriever`` (serve it with Search-R1's API)."""

from __future__ import annotations

import ipaddress
import time
from enum import Enum
from pathlib import Path

import typer


class Kind(str, Enum):
    bm25 = "bm25"
    dense = "dense"


def index(
    corpus: Path = typer.Option(
        ..., "--corpus", help="JSONL corpus: {id,title,text} or Search-R1 {id,contents} per line"
    ),
    out: Path = typer.Option(..., "--out", help="index directory to write"),
    retriever: Kind = typer.Option(Kind.bm25, "--retriever", help="index kind"),
    model: str | None = typer.Option(
        None, "--model", help="embedding model (path or name) for --retriever dense; default: bundled all-MiniLM-L6-v2"
    ),
    device: str = typer.Option("cpu", "--device", help="torch device for embedding with --retriever dense (cpu, cuda)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing index in --out"),
) -> None:
    """Build a retrieval index from a JSONL corpus."""
    from at2po.agent.retrievers import CorpusError, RetrieverError, build_index
    from at2po.agent.retrievers.meta import read_meta

    t0 = time.perf_counter()
    try:
        extra = {"device": device} if retriever is Kind.dense else {}
        path = build_index(corpus, out, kind=retriever.value, model=model, overwrite=overwrite, **extra)
    except (CorpusError, RetrieverError, FileExistsError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    meta = read_meta(path)
    took = time.perf_counter() - t0
    typer.echo(f"built {meta['kind']} index of {meta['num_docs']} documents in {took:.1f}s → {path}")


def serve_retriever(
    index_spec: str = typer.Option(..., "--index", help="index directory (or an http(s) URL to proxy)"),
    host: str = typer.Option("127.0.0.1", "--host", help="bind address (loopback by default; there is no auth)"),
    port: int = typer.Option(8000, "--port", help="TCP port (0 = any free port)"),
    default_topk: int = typer.Option(3, "--default-topk", help="topk when a request omits it"),
    max_topk: int = typer.Option(100, "--max-topk", help="larger topk is rejected with 400"),
    max_queries: int = typer.Option(512, "--max-queries", help="more queries per request are rejected with 413"),
    max_body_bytes: int = typer.Option(1 << 20, "--max-body-bytes", help="larger request bodies are rejected with 413"),
) -> None:
    """Serve a retriever over HTTP: POST /retrieve (Search-R1 API), GET /health."""
    from at2po.agent.retrievers import RetrieverError, load_retriever
    from at2po.agent.retrievers.meta import read_meta
    from at2po.agent.retrievers.server import RetrievalServer, ServerLimits

    if not 1 <= default_topk <= max_topk:
        typer.echo(f"error: --default-topk must be in [1, --max-topk={max_topk}]", err=True)
        raise typer.Exit(2)
    try:
        retriever = load_retriever(index_spec)
    except (RetrieverError, OSError, ValueError) as e:  # a missing, corrupt or foreign index
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    kind = "http" if index_spec.startswith(("http://", "https://")) else read_meta(index_spec)["kind"]
    info: dict = {"index": index_spec, "kind": kind}
    if hasattr(retriever, "__len__"):
        info["num_docs"] = len(retriever)  # type: ignore[arg-type]
    limits = ServerLimits(max_body_bytes, max_queries, 4096, max_topk, default_topk)
    try:
        server = RetrievalServer(retriever, host, port, limits, info)
    except OSError as e:
        typer.echo(f"error: cannot bind {host}:{port}: {e}", err=True)
        raise typer.Exit(2) from None
    try:
        if not ipaddress.ip_address(server.host).is_loopback:
            typer.echo(
                f"warning: listening on {server.host}, reachable from other machines; the API has no auth", err=True
            )
    except ValueError:
        pass
    typer.echo(f"serving {index_spec} at {server.url}/retrieve (Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        retriever.close()


def register(app: typer.Typer) -> None:
    app.command("index")(index)
    app.command("serve-retriever")(serve_retriever)
