"""Fixtures shared by the test files (a test file's own fixture of the same name wins), and
``Scripted``: the one scripted test server, a MixFake whose routes a test answers."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from multidict import CIMultiDict

import mix_client
from _ops import UPLOAD_DIR
from mix_fake import FakeThread, MixFake

WAIT = 10.0  # bound for a server condition to become true (liveness, not speed)


@pytest.fixture
async def fake() -> AsyncIterator[MixFake]:
    """A MixFake on the test's loop."""
    server = MixFake()
    async with server:
        yield server


@pytest.fixture
def upload_dir(tmp_path: Path) -> Iterator[Path]:
    """Where the operations table (_ops.CALLS) puts its upload and download files."""
    UPLOAD_DIR[:] = [tmp_path]
    yield tmp_path
    UPLOAD_DIR.clear()


class _SleepSpy:
    """Stands in for the ``asyncio`` module inside mix_client; records sleeps."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    async def sleep(self, delay: float, result: Any = None) -> Any:
        self.delays.append(delay)
        await asyncio.sleep(0)
        return result


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The delays mix_client sleeps, recorded; each sleep only yields to the loop once."""
    spy = _SleepSpy()
    monkeypatch.setattr(mix_client, "asyncio", spy)
    return spy.delays


# ---------------------------------------------------------------------------
# Scripted: a MixFake whose routes the test answers
# ---------------------------------------------------------------------------


@dataclass
class Rec:
    """One scripted request as the server saw it."""

    method: str
    raw_path: str
    """Path and query exactly as sent (still percent-encoded)."""
    path: str
    query_string: str
    headers: CIMultiDict[str]
    body: bytes | None
    """``None`` when the route leaves the body to its answer (``read_body=False``)."""
    route: str
    """The spec template the request matched (``/{tail}`` when none)."""
    match: dict[str, str]
    at: float
    """Loop time of arrival."""

    def json(self) -> Any:
        assert self.body is not None
        return json.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    json: Any = None
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"

    def response(self) -> web.Response:
        if self.status == 204:
            return web.Response(status=204, headers=self.headers)
        data = self.body
        if data is None:
            data = b"" if self.json is None else json.dumps(self.json).encode()
        return web.Response(
            status=self.status, body=data, headers=self.headers, content_type=self.content_type
        )


DROP = "DROP"  # close the connection after reading the request, without answering
HANG = "HANG"  # never answer (until the server stops, or hang_for seconds)

Answer = Any  # Reply, DROP, HANG, or an async callable taking the request
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def frame(n: int | None, name: str, data: Any, retry: int | None = None) -> bytes:
    """One SSE frame as the Go server writes it: one-line JSON escaping ``<``, ``>`` and ``&``
    (Go's encoding/json), ``retry:`` when given (Go sends it on every frame)."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    out = b"" if n is None else b"id: %d\n" % n
    out += b"event: %s\ndata: %s\n" % (name.encode(), text.encode())
    return out + (b"" if retry is None else b"retry: %d\n" % retry) + b"\n"


class Scripted:
    """A MixFake (mix_fake.py) whose scripted routes the test answers, on the test's loop
    (``await start()``) or, with ``thread=True``, on its own thread and loop
    (``mix_fake.FakeThread``: for the blocking ``Mix``, and so that the test loop's tasks are
    the client's only).

    ``on(route, answer)`` answers every request of ``route`` (a MixFake route key:
    ``"GET /stream"``, a template, ``"/*"`` for every path) with ``answer``;
    ``reply(*answers)`` queues answers taken first, in order, by the next requests of a route
    (by default the first one scripted). An answer is a ``Reply``, ``DROP``, ``HANG`` or an
    async callable taking the request. ``requests`` records every scripted request (``seen``:
    those of one path); the body is read first unless ``read_body=False``.
    """

    def __init__(self, *, thread: bool = False) -> None:
        self.requests: list[Rec] = []
        self.hang_for = 10.0
        self.open = 0  # SSE responses being written by write_until_closed
        self.closed_by_client = 0  # answers that ended because the client went away
        self._answers: dict[str, tuple[Answer, bool]] = {}  # route -> (answer, read_body)
        self._queues: dict[str, deque[Answer]] = {}
        self.thread = FakeThread() if thread else None
        self.fake = MixFake() if self.thread is None else self.thread.fake
        self.url = "" if self.thread is None else self.thread.url
        self.loop = None if self.thread is None else self.thread.loop

    async def start(self) -> str:
        self.url = await self.fake.start()
        self.loop = asyncio.get_running_loop()
        return self.url

    def stop(self) -> None:
        if self.thread is not None:
            self.thread.stop()

    async def __aenter__(self) -> Scripted:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.fake.stop()

    def on(self, route: str, answer: Answer = None, *, read_body: bool = True) -> None:
        """Answer every request of ``route`` with ``answer`` (default: 200 ``{}``)."""
        if route not in self._answers:
            self._queues[route] = deque()

            async def handle(request: web.Request) -> web.StreamResponse:
                return await self._handle(route, request)

            self.fake.handle_next(route, handle, times=math.inf)
        self._answers[route] = (Reply(200, {}) if answer is None else answer, read_body)

    def reply(self, *answers: Answer, route: str | None = None) -> None:
        self._queues[route or next(iter(self._queues))].extend(answers)

    def seen(self, path: str) -> list[Rec]:
        return [r for r in self.requests if r.path == path]

    async def _handle(self, route: str, request: web.Request) -> web.StreamResponse:
        answer, read_body = self._answers[route]
        body = await request.read() if read_body else None
        resource = request.match_info.route.resource
        self.requests.append(
            Rec(
                method=request.method,
                raw_path=request.raw_path,
                path=request.path,
                query_string=request.query_string,
                headers=CIMultiDict(request.headers),
                body=body,
                route=resource.canonical if resource is not None else "",
                match=dict(request.match_info),
                at=asyncio.get_running_loop().time(),
            )
        )
        queue = self._queues[route]
        if queue:
            answer = queue.popleft()
        try:
            return await self._respond(answer, request)
        except asyncio.CancelledError:  # the client went away: the server cancels the handler
            self.closed_by_client += 1
            raise

    async def _respond(self, answer: Answer, request: web.Request) -> web.StreamResponse:
        if answer == DROP:
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        if answer == HANG:
            await asyncio.sleep(self.hang_for)  # cancelled when the server stops
            return web.json_response({"id": "late"})
        if isinstance(answer, Reply):
            return answer.response()
        response: web.StreamResponse = await answer(request)
        return response

    # -- control from the test ------------------------------------------------

    def call(self, coro: Any) -> Any:
        """Run a coroutine on the server's thread (``thread=True``) and return its result."""
        assert self.thread is not None
        return self.thread.call(coro)

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Call ``fn(*args)`` on the server's loop (from the test's thread)."""
        assert self.loop is not None
        self.loop.call_soon_threadsafe(fn, *args)

    @staticmethod
    async def wait_for(predicate: Callable[[], bool], what: str = "") -> None:
        """Wait (bounded) until ``predicate()`` holds: state the server sets, maybe on its
        own thread, so this polls."""

        async def poll() -> None:
            while not predicate():  # noqa: ASYNC110
                await asyncio.sleep(0.005)

        try:
            await asyncio.wait_for(poll(), WAIT)
        except asyncio.TimeoutError:
            pytest.fail(f"server condition never became true: {what}")

    async def wait_seen(self, path: str, count: int) -> None:
        await self.wait_for(lambda: len(self.seen(path)) >= count, f"{count} requests of {path}")

    def wait_for_sync(self, predicate: Callable[[], bool], what: str = "") -> None:
        """``wait_for`` from a thread without a loop (bounded polling)."""
        deadline = time.monotonic() + WAIT
        while not predicate():
            if time.monotonic() > deadline:
                pytest.fail(f"server condition never became true: {what}")
            time.sleep(0.005)

    def wait_connections_closed(self, timeout: float = 10.0) -> None:
        """Wait (bounded) until the server holds no open connection: the clients closed their
        pools. Blocks: from a coroutine, call it through ``asyncio.to_thread``."""
        self.call(self.fake.wait_connections(0, timeout))

    # -- SSE building blocks ---------------------------------------------------

    @staticmethod
    async def sse(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        return resp

    async def write_until_closed(
        self, resp: web.StreamResponse, every: float = 0.05, retry: int = 45000
    ) -> web.StreamResponse:
        """Heartbeats until the client goes away (how a server notices a close)."""
        self.open += 1
        n = 100
        try:
            while True:
                await asyncio.sleep(every)
                n += 1
                await resp.write(frame(n, "heartbeat", {"type": "ping"}, retry))
        except (ConnectionError, RuntimeError):
            self.closed_by_client += 1
        finally:
            self.open -= 1
        return resp

    def writes(self, *chunks: bytes, then: str = "hold", every: float = 0.05) -> Handler:
        """An answer: an SSE response that writes ``chunks``, then ``hold``s (heartbeats every
        ``every`` s until the client goes away), ``close``s the connection mid-body, or
        ``end``s the body."""

        async def answer(request: web.Request) -> web.StreamResponse:
            resp = await self.sse(request)
            for chunk in chunks:
                await resp.write(chunk)
            if then == "hold":
                return await self.write_until_closed(resp, every=every)
            if then == "close":
                assert request.transport is not None
                request.transport.close()
            return resp

        return answer

    async def hold(self, request: web.Request) -> web.StreamResponse:
        """``connected``, then silence (heartbeats every 0.2 s) until the client goes away."""
        resp = await self.sse(request)
        await resp.write(frame(1, "connected", {"sessionId": "s1"}, 30000))
        return await self.write_until_closed(resp, every=0.2)


@pytest.fixture
def server() -> Iterator[Scripted]:
    """A ``Scripted`` server on its own thread, every request answered by the script:
    ``server.reply(...)`` queues answers, then ``server.on("/*", answer)`` (200 ``{}``
    unless set)."""
    srv = Scripted(thread=True)
    srv.on("/*")
    yield srv
    srv.stop()


@pytest.fixture
async def client(server: Scripted) -> AsyncIterator[mix_client.AsyncMix]:
    async with mix_client.AsyncMix(server.url) as c:
        yield c


@pytest.fixture
async def mix(srv: Scripted) -> AsyncIterator[mix_client.AsyncMix]:
    """An AsyncMix without retries on the test file's ``srv`` server."""
    async with mix_client.AsyncMix(srv.url, max_retries=0) as client:
        yield client


async def next_event(events: Any) -> Any:
    """The stream's next event, within ``WAIT`` seconds."""
    return await asyncio.wait_for(events.__anext__(), WAIT)


def status_kib(field_name: str) -> int:
    """A ``kB`` field of /proc/self/status (``VmRSS``, ``VmHWM``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise AssertionError(field_name)


def reset_peak_rss() -> None:
    """Reset VmHWM to the current RSS."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
