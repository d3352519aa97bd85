"""HTTPRetriever against our server over real HTTP: results, cache, batching, retries, timeouts."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from at2po.agent.retrievers import Passage, Retriever, RetrieverError, load_retriever
from at2po.agent.retrievers.base import RetrieverTimeout
from at2po.agent.retrievers.http import HTTPRetriever, LRUCache, retrieve_url
from at2po.agent.retrievers.server import RetrievalServer
from at2po.agent.retrievers.wire import decode_results


class Recording(Retriever):
    """Wraps the real BM25 retriever; records each server-side call; can fail or stall the first calls."""

    def __init__(self, inner: Retriever, fail_first: int = 0, sleep_s: float = 0.0):
        self.inner, self.fail_first, self.sleep_s = inner, fail_first, sleep_s
        self.calls: list[tuple[list[str], int]] = []
        self.lock = threading.Lock()

    def batch_search(self, queries, k):
        with self.lock:
            self.calls.append((list(queries), k))
            n = len(self.calls)
        if self.sleep_s:
            time.sleep(self.sleep_s)
        if n <= self.fail_first:
            raise RetrieverError(f"transient failure {n}")
        return self.inner.batch_search(queries, k)


@pytest.fixture
def bm25(bm25_dir):
    return load_retriever(bm25_dir)


def serve(retriever):
    return RetrievalServer(retriever, port=0).start()


def test_same_results_as_local(bm25):
    with RetrievalServer(bm25, port=0) as s:
        client = load_retriever(s.url)
        assert isinstance(client, HTTPRetriever)
        qs = ["capital of Japan", "string instrument", "qwxzzy"]
        try:
            assert client.batch_search(qs, 3) == bm25.batch_search(qs, 3)
            assert client.search("penguin", 1)[0].id == "penguin"
        finally:
            client.close()


def test_cache_avoids_repeat_posts_and_is_keyed_by_k(bm25):
    rec = Recording(bm25)
    with RetrievalServer(rec, port=0) as s:
        client = HTTPRetriever(s.url, batch_window_s=0.0)
        try:
            first = client.batch_search(["capital", "capital", "violin"], 2)
            assert rec.calls == [(["capital", "violin"], 2)]  # de-duplicated inside the POST
            assert client.batch_search(["violin", "capital"], 2) == [first[2], first[0]]
            assert len(rec.calls) == 1  # served from the cache
            client.search("capital", 3)
            assert rec.calls[-1] == (["capital"], 3)
            assert client.stats.as_dict() == {
                "queries": 6, "cache_hits": 2, "posts": 2, "errors": 0, "timeouts": 0, "retries": 0
            }
        finally:
            client.close()


def test_concurrent_calls_are_batched_into_one_post(bm25):
    rec = Recording(bm25)
    n = 8
    with RetrievalServer(rec, port=0) as s:
        client = HTTPRetriever(s.url, batch_window_s=0.3, cache_size=0)
        barrier = threading.Barrier(n)
        out: list = [None] * n

        def worker(i):
            barrier.wait()
            out[i] = client.search(f"capital {['France', 'Germany', 'Japan', 'language'][i % 4]} {i}", 1)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
        finally:
            client.close()
    # all threads passed the barrier together, so (bar a badly stalled machine) one POST carries every query
    assert len(rec.calls) <= 2 and sum(len(q) for q, _ in rec.calls) == n
    assert [o[0].id for o in out[:4]] == ["paris", "berlin", "tokyo", "python"]


def test_retries_transient_5xx_then_succeeds(bm25):
    rec = Recording(bm25, fail_first=2)
    with RetrievalServer(rec, port=0) as s:
        client = HTTPRetriever(s.url, max_retries=3, backoff_s=0.01)
        try:
            assert client.search("penguin", 1)[0].id == "penguin"
            assert client.stats.retries == 2 and client.stats.errors == 0
        finally:
            client.close()
    assert len(rec.calls) == 3


def test_gives_up_after_bounded_retries(bm25):
    rec = Recording(bm25, fail_first=100)
    with RetrievalServer(rec, port=0) as s:
        client = HTTPRetriever(s.url, max_retries=2, backoff_s=0.01)
        try:
            with pytest.raises(RetrieverError, match="HTTP 503: retriever failed: transient failure 3"):
                client.search("penguin", 1)
            assert client.stats.errors == 1
        finally:
            client.close()
    assert len(rec.calls) == 3  # 1 try + 2 retries


def test_4xx_is_not_retried(bm25):
    rec = Recording(bm25)
    with RetrievalServer(rec, port=0) as s:
        client = HTTPRetriever(s.url, max_retries=3)
        try:
            with pytest.raises(RetrieverError, match="HTTP 400: topk must be in"):
                client.search("x", 1000)
        finally:
            client.close()
    assert rec.calls == []


@pytest.mark.parametrize("timeout_retries", [0, 1])
def test_timeout_is_retried_only_timeout_retries_times(bm25, timeout_retries):
    rec = Recording(bm25, sleep_s=1.0)
    with RetrievalServer(rec, port=0) as s:
        # max_retries (transient failures) does not apply to timeouts: they have their own count
        client = HTTPRetriever(s.url, timeout_s=0.2, max_retries=3, timeout_retries=timeout_retries, backoff_s=0.01)
        t0 = time.monotonic()
        try:
            with pytest.raises(RetrieverTimeout, match="timed out"):
                client.search("x", 1)
            assert client.stats.timeouts == client.stats.errors == 1
            assert client.stats.retries == timeout_retries
        finally:
            client.close()
        assert time.monotonic() - t0 < 0.2 * (timeout_retries + 1) + 0.8  # 0.2 s attempts, not the server's 1 s
    assert len(rec.calls) == timeout_retries + 1


def test_connection_refused():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = HTTPRetriever(f"http://127.0.0.1:{port}", max_retries=1, backoff_s=0.01, timeout_s=2)
    try:
        with pytest.raises(RetrieverError, match="request failed"):
            client.search("x", 1)
    finally:
        client.close()
    with pytest.raises(RetrieverError, match="closed"):
        client.search("x", 1)


def test_health_and_url_normalisation(bm25):
    with RetrievalServer(bm25, port=0, info={"kind": "bm25"}) as s:
        client = HTTPRetriever(s.url + "/retrieve/")
        try:
            assert client.url == s.url + "/retrieve"
            assert client.health() == {"status": "ok", "kind": "bm25"}
        finally:
            client.close()
    assert retrieve_url("https://h:1/") == "https://h:1/retrieve"
    with pytest.raises(RetrieverError, match="not an http"):
        retrieve_url("ftp://h/x")


def test_lru_cache_evicts_least_recently_used():
    c = LRUCache(2)
    p = [Passage("1", "", "x")]
    c.put(("a", 1), p)
    c.put(("b", 1), p)
    assert c.get(("a", 1)) is p  # touch a → b is now oldest
    c.put(("c", 1), p)
    assert c.get(("b", 1)) is None and c.get(("a", 1)) is p and len(c) == 2


def test_decodes_search_r1_server_shapes():
    dense_style = {
        "result": [[{"document": {"id": "12", "contents": '"Ada"\nAda was a mathematician.'}, "score": 0.83}]]
    }
    bm25_style = {
        "result": [[{"document": {"title": "Ada", "text": "Ada was...", "contents": '"Ada"\nAda was...'}, "score": 7}]]
    }
    no_scores = {"result": [[{"id": "1", "contents": "plain"}, {"id": "2", "contents": "more"}]]}
    assert decode_results(dense_style, 1, 3) == [[Passage("12", "Ada", "Ada was a mathematician.", 0.83)]]
    assert decode_results(bm25_style, 1, 3) == [[Passage("", "Ada", "Ada was...", 7.0)]]
    assert decode_results(no_scores, 1, 1) == [[Passage("1", "", "plain", 0.0)]]  # truncated to k
    for bad, msg in [
        ({}, "no 'result' list"),
        ({"result": []}, "0 result lists for 1 queries"),
        ({"result": [{"a": 1}]}, r"result\[0\] is dict"),
        ({"result": [[{"document": {"id": "x"}, "score": 1}]]}, "neither 'text' nor 'contents'"),
        ({"result": [[{"document": {"text": "t"}, "score": "high"}]]}, "score is 'high'"),
    ]:
        with pytest.raises(RetrieverError, match=msg):
            decode_results(bad, 1, 3)


@pytest.fixture(scope="module")
def live(bm25_dir):
    local = load_retriever(bm25_dir)
    with RetrievalServer(local, port=0) as s:
        client = HTTPRetriever(s.url, cache_size=0, batch_window_s=0.0)
        yield local, client
        client.close()


@settings(max_examples=30, deadline=None)
@given(
    queries=st.lists(
        st.text(st.characters(blacklist_categories=("Cs",)), max_size=40) | st.sampled_from(["capital", "Japan"]),
        max_size=5,
    ),
    k=st.integers(1, 10),
)
def test_http_round_trip_equals_local_for_any_text(live, queries, k):
    """Whatever the query text (unicode, quotes, empty), the wire format loses nothing."""
    local, client = live
    assert client.batch_search(queries, k) == local.batch_search(queries, k)


def test_a_connect_timeout_is_a_timeout_not_a_transient_error(monkeypatch):
    """A host that drops SYNs raises ConnectTimeout: counted as a timeout and not retried max_retries times (each
    retry would cost another timeout_s)."""
    import requests

    client = HTTPRetriever("http://127.0.0.1:9", timeout_s=0.1, max_retries=5, backoff_s=0.0)
    calls = []

    def post(*a, **k):
        calls.append(1)
        raise requests.ConnectTimeout("connect timed out")

    monkeypatch.setattr(client.session, "post", post)
    try:
        with pytest.raises(RetrieverTimeout, match=r"timed out after 0\.1s \(1 attempt"):
            client.search("x", 1)
    finally:
        client.close()
    assert len(calls) == 1 and client.stats.timeouts == 1


def test_retry_after_of_a_429_is_honoured():
    """A server that answers 429 with ``Retry-After: 0.4`` once: the client waits that long (not its 0.01 s
    backoff) and then succeeds."""
    import json as _json
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    hits = []

    class Busy(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            hits.append(time.monotonic())
            if len(hits) == 1:
                self.send_response(429)
                self.send_header("Retry-After", "0.4")
                body = b'{"error": "busy"}'
            else:
                self.send_response(200)
                body = _json.dumps({"result": [[]]}).encode()
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Busy)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    client = HTTPRetriever(f"http://127.0.0.1:{httpd.server_address[1]}", max_retries=2, backoff_s=0.01)
    try:
        assert client.search("x", 1) == []
    finally:
        client.close()
        httpd.shutdown()
        httpd.server_close()
    assert len(hits) == 2 and hits[1] - hits[0] >= 0.4 and client.stats.retries == 1
