"""Client for Search-R1-compatible retrieval servers (POST ``/retrieve``).

- timeouts on connect and read (``timeout_s``);
- bounded retries with exponential backoff (sleep backoff_s · 2^(n−1) before retry n, capped at
  ``backoff_max_s``; a 429/503's ``Retry-After: <seconds>`` lengthens the wait up to that cap), kept apart by
  cause: transient failures — connection refused or reset, 429/5xx — are retried up to ``max_retries`` times; a
  request that timed out (connecting or reading) only ``timeout_retries`` times (default 0: its time is already
  spent, and the env's per-call timeout would abandon it anyway). 4xx is never retried. Retries, errors and
  timeouts are counted in ``stats``;
- an LRU cache of (query, k) → passages (rollouts repeat queries a lot: siblings in a tree share
  prefixes and often issue the same search);
- batching: ``batch_search`` calls from several threads that arrive within ``batch_window_s`` of
  each other are merged (and de-duplicated) into one POST per ``k``.
"""

from __future__ import annotations

import queue
import re
import threading
import time
from collections import OrderedDict, defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from at2po.agent.retrievers.base import (
    Passage,
    Retriever,
    RetrieverError,
    RetrieverTimeout,
)
from at2po.agent.retrievers.wire import decode_results

_RETRY_STATUS = (429, 500, 502, 503, 504)


class LRUCache:
    """A thread-safe least-recently-used map with a fixed capacity (0 disables it)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._d: OrderedDict[tuple[str, int], list[Passage]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, int]) -> list[Passage] | None:
        with self._lock:
            v = self._d.get(key)
            if v is not None:
                self._d.move_to_end(key)
            return v

    def put(self, key: tuple[str, int], value: list[Passage]) -> None:
        if self.capacity <= 0:
            return
        with self._lock:
            self._d[key] = value
            self._d.move_to_end(key)
            while len(self._d) > self.capacity:
                self._d.popitem(last=False)

    def __len__(self) -> int:
        return len(self._d)


@dataclass
class _Pending:
    query: str
    k: int
    future: Future = field(default_factory=Future)


@dataclass
class HTTPStats:
    queries: int = 0  # queries asked for (cache hits included)
    cache_hits: int = 0
    posts: int = 0  # POSTs that returned a response (retries inside one are not counted)
    errors: int = 0  # POSTs that failed after all retries (timeouts included)
    timeouts: int = 0  # of which: the last attempt timed out
    retries: int = 0  # attempts repeated after a transient failure or a timeout

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def _reason(exc: Exception) -> str:
    """The root cause of a requests error ("[Errno 111] Connection refused"), not urllib3's wrapper chain."""
    m = re.search(r"\[Errno -?\d+\][^'\")]*", str(exc))
    return m.group(0).strip() if m else str(exc)


def _retry_after(value: str | None) -> float:
    """Seconds of a ``Retry-After: <seconds>`` header (0 when absent or an HTTP date, which we do not parse)."""
    try:
        return max(0.0, float(value)) if value is not None else 0.0
    except ValueError:
        return 0.0


def retrieve_url(url: str) -> str:
    """Normalise ``http://host:port`` (or ``.../retrieve``) to the ``/retrieve`` endpoint."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise RetrieverError(f"not an http(s) URL: {url!r}")
    base = url.rstrip("/")
    return base if base.endswith("/retrieve") else base + "/retrieve"


class HTTPRetriever(Retriever):
    """Retriever backed by a remote ``/retrieve`` endpoint (ours or Search-R1's)."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 30.0,
        max_retries: int = 3,
        timeout_retries: int = 0,
        backoff_s: float = 0.25,
        backoff_max_s: float = 8.0,
        cache_size: int = 10_000,
        batch_window_s: float = 0.005,
        max_batch: int = 256,
        max_inflight: int = 4,
    ):
        if (timeout_s <= 0 or max_retries < 0 or timeout_retries < 0 or backoff_s < 0 or batch_window_s < 0
                or max_batch < 1 or max_inflight < 1):
            raise ValueError("HTTPRetriever: need timeout_s > 0, max_retries >= 0, timeout_retries >= 0, "
                             "backoff_s >= 0, batch_window_s >= 0, max_batch >= 1, max_inflight >= 1")
        self.url = retrieve_url(url)
        self.timeout_s = timeout_s
        self.max_retries, self.timeout_retries = max_retries, timeout_retries
        self.backoff_s, self.backoff_max_s = backoff_s, backoff_max_s
        self.batch_window_s = batch_window_s
        self.max_batch = max_batch
        self.cache = LRUCache(cache_size)
        # an upper bound on one POST with all its retries; a caller never waits longer than this
        attempts = max_retries + timeout_retries + 1
        self._wait_s = timeout_s * attempts + backoff_max_s * (attempts - 1) + batch_window_s + 10.0
        self.stats = HTTPStats()
        self._stats_lock = threading.Lock()

        self.session = requests.Session()
        adapter = HTTPAdapter(max_retries=0, pool_maxsize=max_inflight)  # retries are ours (see _post)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._pool = ThreadPoolExecutor(max_workers=max_inflight, thread_name_prefix="at2po-http-retriever")
        self._closed = False
        self._worker = threading.Thread(target=self._batch_loop, name="at2po-http-batcher", daemon=True)
        self._worker.start()

    # ---- public API -------------------------------------------------------------------------
    def batch_search(self, queries: list[str], k: int) -> list[list[Passage]]:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if self._closed:
            raise RetrieverError("HTTPRetriever is closed")
        out: list[list[Passage] | None] = [None] * len(queries)
        missing: dict[str, list[int]] = defaultdict(list)
        hits = 0
        for i, q in enumerate(queries):
            cached = self.cache.get((q, k))
            if cached is not None:
                out[i] = list(cached)
                hits += 1
            else:
                missing[q].append(i)
        with self._stats_lock:
            self.stats.queries += len(queries)
            self.stats.cache_hits += hits
        pending = {q: _Pending(q, k) for q in missing}
        for p in pending.values():
            self._queue.put(p)
        for q, p in pending.items():
            try:
                res = p.future.result(timeout=self._wait_s)  # raises the RetrieverError set by the sender
            except FutureTimeout:
                raise RetrieverError(
                    f"{self.url}: no answer within {self._wait_s:.0f}s (client closed or stuck)"
                ) from None
            for i in missing[q]:
                out[i] = list(res)
        return out  # type: ignore[return-value]

    def health(self) -> dict:
        """GET ``/health`` on the server (ours answers with kind and corpus size)."""
        url = self.url[: -len("/retrieve")] + "/health"
        try:
            r = self.session.get(url, timeout=self.timeout_s)
            r.raise_for_status()
            return r.json()
        except (requests.RequestException, ValueError) as e:
            raise RetrieverError(f"{url}: health check failed: {e}") from e

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._worker.join(timeout=5)
        self._pool.shutdown(wait=True)
        self.session.close()

    # ---- batching ---------------------------------------------------------------------------
    def _batch_loop(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            deadline = time.monotonic() + self.batch_window_s
            while len(batch) < self.max_batch:
                remaining = deadline - time.monotonic()
                try:
                    item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            by_k: dict[int, list[_Pending]] = defaultdict(list)
            for p in batch:
                by_k[p.k].append(p)
            for k, items in by_k.items():
                self._pool.submit(self._send, k, items)
        # fail whatever is still queued so no caller waits forever
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item.future.set_exception(RetrieverError("HTTPRetriever was closed"))

    def _send(self, k: int, items: list[_Pending]) -> None:
        uniq = list(dict.fromkeys(p.query for p in items))  # de-duplicate, keep order
        try:
            results = self._post(uniq, k)
        except Exception as e:  # everything becomes a RetrieverError for the callers
            with self._stats_lock:
                self.stats.errors += 1
                self.stats.timeouts += isinstance(e, RetrieverTimeout)
            err = e if isinstance(e, RetrieverError) else RetrieverError(f"{self.url}: {e}")
            for p in items:
                p.future.set_exception(err)
            return
        with self._stats_lock:
            self.stats.posts += 1
        by_query = dict(zip(uniq, results, strict=True))
        for q, res in by_query.items():
            self.cache.put((q, k), res)
        for p in items:
            p.future.set_result(by_query[p.query])

    def _post(self, queries: list[str], k: int) -> list[list[Passage]]:
        body = {"queries": queries, "topk": k, "return_scores": True}
        transient = timeouts = 0  # retries spent on each cause
        while True:
            wait_s = 0.0  # a server's Retry-After (429/503), honoured up to backoff_max_s
            try:
                r = self.session.post(self.url, json=body, timeout=self.timeout_s)
            except requests.Timeout as e:  # no answer in time (ReadTimeout), or a host that drops SYNs (ConnectTimeout)
                if timeouts >= self.timeout_retries:
                    raise RetrieverTimeout(
                        f"{self.url}: timed out after {self.timeout_s}s ({transient + timeouts + 1} attempt(s)): {e}"
                    ) from e
                timeouts += 1
            except requests.RequestException as e:  # refused, reset, unreachable: the server may come back
                if transient >= self.max_retries:
                    raise RetrieverError(
                        f"{self.url}: request failed after {transient + timeouts + 1} attempt(s): {_reason(e)}"
                    ) from e
                transient += 1
            else:
                if r.status_code not in _RETRY_STATUS or transient >= self.max_retries:
                    break
                transient += 1
                wait_s = _retry_after(r.headers.get("Retry-After"))
            with self._stats_lock:
                self.stats.retries += 1
            time.sleep(min(self.backoff_max_s, max(wait_s, self.backoff_s * 2 ** (transient + timeouts - 1))))
        if r.status_code != 200:
            try:
                msg = r.json().get("error", r.text)
            except ValueError:
                msg = r.text
            raise RetrieverError(f"{self.url}: HTTP {r.status_code}: {str(msg)[:300]}")
        try:
            payload = r.json()
        except ValueError:
            raise RetrieverError(f"{self.url}: response is not JSON: {r.text[:200]!r}") from None
        return decode_results(payload, len(queries), k)
