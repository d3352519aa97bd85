"""Serve any Retriever over HTTP with Search-R1's API (so Search-R1 clients can use our indexes
and our HTTP client can use theirs).

Endpoints:

- ``POST /retrieve`` with ``{"queries": [str, ...], "topk": int, "return_scores": bool}`` →
  ``{"result": [[{"document": {...}, "score": s}, ...], ...]}`` (see ``wire.py``);
- ``GET /health`` → ``{"status": "ok", "kind": ..., "num_docs": ...}``.

Bad requests get a 4xx with ``{"error": "<what was wrong>"}``: 400 malformed JSON / wrong types /
topk out of range, 404 unknown path, 405 wrong method, 411 missing Content-Length, 413 body or
query list too large. A retriever failure is a 503 (clients retry it). Built on the standard
library's ``ThreadingHTTPServer``: one thread per connection, no extra dependency.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import sys
import threading
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
)

from at2po.agent.retrievers.base import Retriever, RetrieverError
from at2po.agent.retrievers.wire import encode_results

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerLimits:
    max_body_bytes: int = 1 << 20  # 1 MiB
    max_queries: int = 512  # queries per request
    max_query_chars: int = 4096
    max_topk: int = 100
    default_topk: int = 3  # used when a request omits topk (as Search-R1's server does)


class RetrieveRequest(BaseModel):
    """Body of POST /retrieve; strict types so ``"topk": "3"`` or ``"queries": "q"`` are rejected."""

    model_config = ConfigDict(extra="ignore")
    queries: list[StrictStr]
    topk: StrictInt | None = None
    return_scores: StrictBool = False


class _HTTPError(Exception):
    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _validation_message(e: ValidationError) -> str:
    parts = []
    for err in e.errors()[:5]:
        loc = ".".join(str(x) for x in err["loc"]) or "body"
        parts.append(f"{loc}: {err['msg']}")
    return "invalid request: " + "; ".join(parts)


def _make_handler(retriever: Retriever, limits: ServerLimits, info: dict[str, Any]):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, so a client session reuses its connection
        timeout = 60  # seconds a slow client may hold a socket
        # headers and body are written separately; without TCP_NODELAY, Nagle + the client's delayed
        # ACK add ~40 ms to every keep-alive reply
        disable_nagle_algorithm = True
        wbufsize = -1  # buffer the reply so headers+body leave in one segment (flushed after each request)
        server_version = "at2po-retriever"

        def log_message(self, format: str, *args: Any) -> None:  # route access logs to logging
            log.debug("%s - " + format, self.address_string(), *args)

        def _reply(self, status: HTTPStatus, payload: dict[str, Any]) -> None:
            body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            if self.close_connection:
                self.send_header("Connection", "close")
            try:
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                # the client gave up (e.g. its timeout fired) before we answered; nothing to report
                self.close_connection = True
                log.debug("client %s disconnected before the reply", self.address_string())

        def _error(self, status: HTTPStatus, message: str) -> None:
            self._reply(status, {"error": message, "status": int(status)})

        def do_GET(self) -> None:
            if self.path.split("?")[0] == "/health":
                self._reply(HTTPStatus.OK, {"status": "ok", **info})
            elif self.path.split("?")[0] == "/retrieve":
                self._error(HTTPStatus.METHOD_NOT_ALLOWED, "use POST /retrieve")
            else:
                self._error(HTTPStatus.NOT_FOUND, f"unknown path {self.path!r}; endpoints: POST /retrieve, GET /health")

        def do_POST(self) -> None:
            if self.path.split("?")[0] != "/retrieve":
                self.close_connection = True  # the body was not read
                self._error(HTTPStatus.NOT_FOUND, f"unknown path {self.path!r}; endpoints: POST /retrieve, GET /health")
                return
            try:
                req = self._read_request()
                k = limits.default_topk if req.topk is None else req.topk
                results = retriever.batch_search(list(req.queries), k) if req.queries else []
            except _HTTPError as e:
                self._error(e.status, e.message)
                return
            except RetrieverError as e:
                self._error(HTTPStatus.SERVICE_UNAVAILABLE, f"retriever failed: {e}")
                return
            except Exception as e:  # keep serving; report without a traceback to the client
                log.exception("retrieval failed")
                self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error: {type(e).__name__}: {e}")
                return
            self._reply(HTTPStatus.OK, encode_results(results, req.return_scores))

        def _read_request(self) -> RetrieveRequest:
            length_s = self.headers.get("Content-Length")
            if length_s is None:
                self.close_connection = True
                raise _HTTPError(HTTPStatus.LENGTH_REQUIRED, "Content-Length header required")
            try:
                length = int(length_s)
                if length < 0:
                    raise ValueError
            except ValueError:
                self.close_connection = True
                raise _HTTPError(HTTPStatus.BAD_REQUEST, f"bad Content-Length {length_s!r}") from None
            if length > limits.max_body_bytes:
                self.close_connection = True  # do not read (or keep) an oversized body
                raise _HTTPError(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    f"body of {length} bytes exceeds the limit of {limits.max_body_bytes}",
                )
            raw = self.rfile.read(length)
            try:
                obj = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise _HTTPError(HTTPStatus.BAD_REQUEST, f"malformed JSON: {e}") from None
            if not isinstance(obj, dict):
                raise _HTTPError(
                    HTTPStatus.BAD_REQUEST, f"request body must be a JSON object, got {type(obj).__name__}"
                )
            try:
                req = RetrieveRequest.model_validate(obj)
            except ValidationError as e:
                raise _HTTPError(HTTPStatus.BAD_REQUEST, _validation_message(e)) from None
            if len(req.queries) > limits.max_queries:
                raise _HTTPError(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    f"{len(req.queries)} queries exceed the limit of {limits.max_queries}",
                )
            if req.topk is not None and not 1 <= req.topk <= limits.max_topk:
                raise _HTTPError(HTTPStatus.BAD_REQUEST, f"topk must be in [1, {limits.max_topk}], got {req.topk}")
            long = [i for i, q in enumerate(req.queries) if len(q) > limits.max_query_chars]
            if long:
                raise _HTTPError(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    f"queries[{long[0]}] has {len(req.queries[long[0]])} characters, limit {limits.max_query_chars}",
                )
            return req

    return Handler


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True  # a stuck client never blocks shutdown
    # listen() backlog: socketserver's default of 5 overflows when a rollout's many clients connect at once (the
    # kernel then drops or resets connections: 59 of 5,000 requests failed at 100 concurrent clients)
    request_queue_size = 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._open: set[Any] = set()  # accepted connections (keep-alive ones outlive a request)
        self._open_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Drop every open connection: a stopped server must not keep answering on old keep-alive sockets."""
        with self._open_lock:
            conns, self._open = list(self._open), set()
        for sock in conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a client that disconnects early (its timeout fired) is routine, not worth a traceback
        if isinstance(sys.exc_info()[1], ConnectionError):
            log.debug("client %s disconnected", client_address)
        else:
            super().handle_error(request, client_address)


class RetrievalServer:
    """An HTTP server for one Retriever. ``port=0`` picks a free port (see ``.port`` / ``.url``)."""

    def __init__(
        self,
        retriever: Retriever,
        host: str = "127.0.0.1",
        port: int = 8000,
        limits: ServerLimits = ServerLimits(),
        info: dict[str, Any] | None = None,
    ):
        self.retriever = retriever
        self.limits = limits
        handler = _make_handler(retriever, limits, dict(info or {}))
        self.httpd = _QuietServer((host, port), handler)
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return self.httpd.server_address[0]

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def serve_forever(self) -> None:
        """Block serving requests until ``shutdown()`` (or KeyboardInterrupt)."""
        self.httpd.serve_forever(poll_interval=0.2)

    def start(self) -> RetrievalServer:
        """Serve in a background thread (tests, notebooks)."""
        self._thread = threading.Thread(target=self.serve_forever, name="at2po-retrieval-server", daemon=True)
        self._thread.start()
        return self

    def shutdown(self) -> None:
        """Stop a server started with ``start()``, close its open connections and release its socket."""
        if self._thread is not None:
            self.httpd.shutdown()  # waits for serve_forever to return; would block if it never ran
            self._thread.join(timeout=5)
            self._thread = None
        self.httpd.server_close()
        self.httpd.close_connections()

    def __enter__(self) -> RetrievalServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()
