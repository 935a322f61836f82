"""Lifecycle, timeouts and retries under faults (issue 9, items 1-9).

Everything runs against real HTTP on 127.0.0.1: an aiohttp.web server or ``mix_fake`` on
its own event loop in a background thread. The blocking facade is driven from real
threads; every wait is bounded. Scenarios about what reaches stderr at garbage
collection or exit run in a subprocess under ``-X dev -W error`` (asyncio debug mode,
which refuses loop calls from a foreign thread; warnings shown, and raised).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aioresponses import aioresponses

import mix_client
from conftest import Handler, Scripted
from mix_client import (
    APITimeoutError,
    AsyncMix,
    BackoffStrategy,
    InternalServerError,
    InvalidInputError,
    Mix,
    MixError,
    NotFoundError,
    RetryConfig,
)
from mix_fake import FakeThread, MixFake

HERE = Path(__file__).resolve().parent
FAST = RetryConfig("backoff", BackoffStrategy(10, 10, 1.0, 0), True)
"""Real (tiny) backoff: 10 ms between attempts, the default number of retries."""


# ---------------------------------------------------------------------------
# Servers on loopback, each on its own loop in a thread
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def serve(*answers: Handler) -> Iterator[Scripted]:
    """A ``Scripted`` server on its own thread: the n-th request gets the n-th answer, the
    last one answers the rest (each reads the body itself, if it wants it)."""
    srv = Scripted(thread=True)
    srv.on("/*", answers[-1], read_body=False)
    srv.reply(*answers[:-1])
    try:
        yield srv
    finally:
        srv.stop()


def status(code: int, headers: dict[str, str] | None = None, body: Any = None) -> Handler:
    async def answer(request: web.Request) -> web.StreamResponse:
        if code == 204:
            return web.Response(status=204, headers=headers)
        payload = body if body is not None else {"error": {"code": code, "message": "x"}}
        return web.json_response(payload, status=code, headers=headers)

    return answer


async def drop(request: web.Request) -> web.StreamResponse:
    await request.read()
    assert request.transport is not None
    request.transport.close()
    return web.Response()


SESSION = {"id": "s1", "title": "t", "createdAt": "2024-01-01T00:00:00Z"}


@pytest.fixture
def fake() -> Iterator[FakeThread]:
    ft = FakeThread()
    yield ft
    ft.stop()


def run_script(
    code: str, *args: str, timeout: float = 90, dev: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (``-X dev -W error``), this worktree importable."""
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    env.pop("MIX_DEBUG", None)
    env.pop("PYTHONASYNCIODEBUG", None)
    flags = ["-X", "dev", "-W", "error"] if dev else []
    if dev:
        env["PYTHONASYNCIODEBUG"] = "1"
    return subprocess.run(
        [sys.executable, *flags, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=str(HERE),
    )


NOISE = (
    "Non-thread-safe",
    "Unclosed",
    "unclosed",
    "Exception ignored",
    "Traceback",
    "ResourceWarning",
    "never awaited",
    "Task was destroyed",
    "Event loop is closed",
)


def assert_quiet(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "DONE" in proc.stdout, proc.stdout + proc.stderr
    found = [word for word in NOISE if word in proc.stderr]
    assert not found, proc.stderr


def loop_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "mix-client-loop" and t.is_alive()}


# ---------------------------------------------------------------------------
# 1. Mix.close() while other threads are inside calls
# ---------------------------------------------------------------------------


def test_close_ends_every_call_in_flight_from_other_threads() -> None:
    async def hold(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(60)  # held until the server stops
        return web.json_response(SESSION)

    with serve(hold) as srv:
        mix = Mix(srv.url, max_retries=0)
        outcomes: dict[int, BaseException | object] = {}

        def call(i: int) -> None:
            try:
                outcomes[i] = mix.get_session(f"s{i}")
            except BaseException as exc:
                outcomes[i] = exc

        threads = [threading.Thread(target=call, args=(i,), daemon=True) for i in range(6)]
        for t in threads:
            t.start()
        srv.call(srv.fake.wait_requests(6, timeout=15))  # every call is inside the server
        closer = threading.Thread(target=mix.close, daemon=True)
        closer.start()
        closer.join(20)
        assert not closer.is_alive(), "close() did not return"
        for t in threads:
            t.join(20)
        assert not any(t.is_alive() for t in threads), "a call never returned after close()"
        assert len(outcomes) == 6
        for outcome in outcomes.values():
            assert isinstance(outcome, MixError), outcome
            assert "closed" in str(outcome)
        # and the client stays closed
        with pytest.raises(MixError):
            mix.health_check()


def _race_close(mix: Mix) -> list[BaseException]:
    """Close ``mix`` while 8 threads call it in a loop; returns how each call loop ended."""
    ends: list[BaseException] = []
    go = threading.Barrier(9, timeout=20)

    def hammer() -> None:
        go.wait()
        try:
            while True:  # as many calls as possible, each a round trip to the loop thread
                mix.run_sync(asyncio.sleep(0))
        except BaseException as exc:
            ends.append(exc)

    threads = [threading.Thread(target=hammer, daemon=True) for _ in range(8)]
    for t in threads:
        t.start()
    go.wait()
    mix.close()
    deadline = time.monotonic() + 20
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "a call never returned after close()"
    return ends


def test_calls_racing_close_never_start_a_new_loop_thread() -> None:
    async def ok(request: web.Request) -> web.StreamResponse:
        return web.json_response({"status": "ok"})

    before = loop_threads()
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often: more interleavings to go wrong
    try:
        with serve(ok) as srv:
            for _ in range(10):
                _one_race(srv.url, before)
    finally:
        sys.setswitchinterval(interval)


def _one_race(url: str, before: set[threading.Thread]) -> None:
    mix = Mix(url, max_retries=0)
    mix.health_check()
    ends = _race_close(mix)
    assert len(ends) == 8  # every thread's calls ended
    assert all(isinstance(e, MixError) for e in ends), ends
    deadline = time.monotonic() + 20
    while loop_threads() - before and time.monotonic() < deadline:
        for t in loop_threads() - before:
            t.join(0.5)
    assert loop_threads() - before == set(), "a loop thread outlived close()"


def test_close_lets_a_finished_call_keep_its_result() -> None:
    async def ok(request: web.Request) -> web.StreamResponse:
        return web.json_response(SESSION)

    with serve(ok) as srv, Mix(srv.url) as mix:
        assert mix.get_session("s1").id == "s1"
    assert srv.fake.requests


# ---------------------------------------------------------------------------
# 2. Blocking iterators dropped without `with` close on the loop thread
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["stream_events", "query", "iter_session_file"])
def test_iterator_dropped_after_break_closes_on_the_loop_thread(kind: str) -> None:
    code = """
    import gc, sys
    import mix_client
    from mix_fake import FakeThread

    server = FakeThread(slow_delay=0.5)
    url, fake = server.url, server.fake
    sid = server.sync(fake.add_session)
    server.sync(lambda: fake.add_file(sid, "big.bin", b"x" * (8 << 20)))

    import aiohttp
    # One connection in the pool: later calls work only once the dropped one is closed.
    mix = mix_client.Mix(
        url, session_factory=lambda: aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
    )
    kind = sys.argv[1]
    if kind == "stream_events":
        for item in mix.stream_events(sid):
            break
    elif kind == "query":
        for item in mix.query(sid, "[slow] hello there"):
            break
    else:
        for item in mix.iter_session_file(sid, "big.bin", chunk_size=1024):
            break
    del item
    gc.collect()  # the iterator is garbage now, collected on this (the main) thread
    server.call(fake.wait_streams_closed(timeout=20))  # the stream was closed on the server
    assert mix.health_check(timeout=20).status  # the pool's one connection is free again
    mix.close()
    server.stop()
    print("DONE")
    """
    assert_quiet(run_script(code, kind))


def test_sync_stream_close_after_client_close_is_harmless(fake: FakeThread) -> None:
    sid = fake.sync(fake.fake.add_session)
    mix = Mix(fake.url)
    events = mix.stream_events(sid)
    with events:
        assert next(events).event == "connected"
        mix.close()  # closes the open stream too
    events.close()  # again: nothing to do, no error
    fake.call(fake.fake.wait_streams_closed(timeout=10))


# ---------------------------------------------------------------------------
# 3. session_factory / session
# ---------------------------------------------------------------------------


def test_session_factory_session_is_closed_by_close() -> None:
    async def ok(request: web.Request) -> web.StreamResponse:
        return web.json_response({"status": "ok"})

    made: list[aiohttp.ClientSession] = []

    def factory() -> aiohttp.ClientSession:
        session = aiohttp.ClientSession(headers={"X-Made": "yes"})
        made.append(session)
        return session

    with serve(ok) as srv:
        with Mix(srv.url, session_factory=factory) as mix:
            mix.health_check()
            assert len(made) == 1
            assert not made[0].closed
        assert made[0].closed
        assert srv.fake.requests[0].headers["X-Made"] == "yes"


def test_session_argument_points_at_session_factory() -> None:
    before = loop_threads()
    with pytest.raises(InvalidInputError, match="session_factory"):
        Mix("http://127.0.0.1:1", session=object())  # type: ignore[arg-type]
    assert loop_threads() <= before


async def test_session_made_in_a_running_loop_points_at_session_factory() -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(InvalidInputError, match="session_factory"):
            Mix("http://127.0.0.1:1", session=session)  # type: ignore[arg-type]


def test_session_factory_must_make_a_session() -> None:
    before = loop_threads()
    with pytest.raises(TypeError, match="ClientSession"):
        Mix("http://127.0.0.1:1", session_factory=lambda: "nope")  # type: ignore[arg-type, return-value]
    with pytest.raises(TypeError, match="callable"):
        Mix("http://127.0.0.1:1", session_factory="nope")  # type: ignore[arg-type]
    for thread in loop_threads() - before:  # a loop thread that started ends soon
        thread.join(10)
    assert loop_threads() <= before


# ---------------------------------------------------------------------------
# 4. Clients dropped without close, AsyncMix across asyncio.run() calls
# ---------------------------------------------------------------------------

SERVER_SNIPPET = """
import asyncio, gc, threading
from mix_fake import FakeThread

server = FakeThread()
url, fake = server.url, server.fake

def closed_on_server():
    # the server's view: every connection of the clients was closed (a bounded wait)
    return asyncio.run_coroutine_threadsafe(fake.wait_connections(0, timeout=10), server.loop)

def loop_threads():
    return {t for t in threading.enumerate() if t.name == "mix-client-loop" and t.is_alive()}
"""


def test_async_client_used_from_two_asyncio_runs_closes_each_session() -> None:
    code = (
        SERVER_SNIPPET
        + """
import mix_client
mix = mix_client.AsyncMix(url)
async def one():
    await mix.health_check()
asyncio.run(one())
closed_on_server().result(30)  # the first loop's session was not abandoned open
asyncio.run(one())  # a new session on the new loop, closed with it too
closed_on_server().result(30)
async def last():
    await mix.health_check()
    await mix.aclose()
asyncio.run(last())
del mix
gc.collect()
print("DONE")
"""
    )
    assert_quiet(run_script(code))


def test_dropped_clients_print_nothing() -> None:
    code = (
        SERVER_SNIPPET
        + """
import mix_client

async def dropped_in_a_running_loop():
    mix = mix_client.AsyncMix(url)
    await mix.health_check()
    del mix
    gc.collect()
    await asyncio.wrap_future(closed_on_server())  # the session closes on this loop, soon

asyncio.run(dropped_in_a_running_loop())

async def dropped_at_the_end():
    global kept
    kept = mix_client.AsyncMix(url)
    await kept.health_check()

asyncio.run(dropped_at_the_end())
closed_on_server().result(30)
del kept

before = loop_threads()
mix = mix_client.Mix(url)
mix.health_check()
(thread,) = loop_threads() - before
del mix
gc.collect()
closed_on_server().result(30)  # dropped Mix closed its session
thread.join(10)
assert not thread.is_alive(), "dropped Mix left its loop thread running"

still_open = mix_client.Mix(url)  # never closed: cleaned up at exit, quietly
still_open.health_check()
gc.collect()
print("DONE")
"""
    )
    assert_quiet(run_script(code))


async def test_async_client_dropped_on_a_running_loop_closes_its_session() -> None:
    server = MixFake()
    async with server as url:
        mix = AsyncMix(url)
        await mix.health_check()
        assert server.open_connections == 1  # the pool keeps its connection
        del mix
        gc.collect()
        await server.wait_connections(0)  # the server sees the session close, soon


# ---------------------------------------------------------------------------
# 5. Plain callbacks under Mix have their own threads
# ---------------------------------------------------------------------------


def test_blocking_callbacks_beyond_default_executor_size_all_finish(
    fake: FakeThread, tmp_path: Path
) -> None:
    workers = min(32, (os.cpu_count() or 1) + 4)  # ThreadPoolExecutor's default size
    n = workers + 3
    path = tmp_path / "note.txt"
    path.write_bytes(b"hello" * 1000)
    sids = [fake.sync(fake.fake.add_session) for _ in range(n)]
    together = threading.Barrier(n, timeout=30)
    uploaded: list[str] = []
    errors: list[BaseException] = []

    with Mix(fake.url) as mix:

        def turn(sid: str) -> None:
            first = True

            def on_content(text: str) -> None:
                nonlocal first
                if not first:
                    return
                first = False
                # Every turn's callback is running at the same time, each then makes a
                # blocking call that needs the default executor (a file upload).
                together.wait()
                info = mix.upload_session_file(sid, str(path))
                uploaded.append(info.name or "")

            try:
                mix.send_and_wait(sid, "hello world", timeout=60, on_content=on_content)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=turn, args=(sid,), daemon=True) for sid in sids]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        assert not any(t.is_alive() for t in threads), "a turn deadlocked"
    assert errors == []
    assert uploaded == ["note.txt"] * n


def test_callback_blocking_calls_still_work(fake: FakeThread) -> None:
    sid = fake.sync(fake.fake.add_session)
    seen: list[str] = []
    with Mix(fake.url) as mix:

        def on_permission(event: Any) -> None:
            seen.append(mix.grant_permission(event.data.id).status or "granted")

        turn = mix.send_and_wait(sid, "write [permission]", timeout=30, on_permission=on_permission)
    assert seen and turn.text


# ---------------------------------------------------------------------------
# 6. Timeouts keep their meaning per kind of call
# ---------------------------------------------------------------------------


def trickle(chunks: int, every: float, size: int = 1000) -> Handler:
    """A 200 body sent in ``chunks`` pieces, one every ``every`` seconds."""

    async def answer(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.content_length = chunks * size
        await resp.prepare(request)
        for i in range(chunks):
            await asyncio.sleep(every)
            await resp.write(bytes([65 + i % 26]) * size)
        await resp.write_eof()
        return resp

    return answer


async def test_client_timeout_is_not_a_total_limit_for_downloads(tmp_path: Path) -> None:
    # 2.4 s of steady progress, never 1 s without a byte.
    with serve(trickle(8, 0.3)) as srv:
        async with AsyncMix(srv.url, timeout=1) as mix:
            data = await asyncio.wait_for(mix.get_session_file("s1", "f.bin"), 30)
            assert len(data) == 8000
            n = await asyncio.wait_for(
                mix.download_session_file("s1", "f.bin", tmp_path / "f.bin"), 30
            )
            assert n == 8000
            async with mix.iter_session_file("s1", "f.bin") as chunks:
                got = b"".join([c async for c in chunks])
            assert len(got) == 8000
        async with AsyncMix(srv.url) as mix:
            data = await asyncio.wait_for(mix.get_session_file("s1", "f.bin", timeout=1), 30)
            assert len(data) == 8000


async def test_transfer_timeout_is_the_longest_wait_without_progress() -> None:
    with serve(trickle(3, 2.0)) as srv:
        async with AsyncMix(srv.url, timeout=0.5, max_retries=0) as mix:
            with pytest.raises(APITimeoutError):
                await asyncio.wait_for(mix.get_session_file("s1", "f.bin"), 30)


async def test_client_timeout_is_not_a_total_limit_for_uploads(tmp_path: Path) -> None:
    received: list[int] = []

    async def upload(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        received.append(len(body))
        return web.json_response({"name": "slow.bin", "size": len(body)}, status=201)

    async def slow_chunks() -> Any:
        for _ in range(6):
            await asyncio.sleep(0.3)
            yield b"z" * 1000

    with serve(upload) as srv:
        async with AsyncMix(srv.url, timeout=1) as mix:
            info = await asyncio.wait_for(
                mix.upload_session_file("s1", slow_chunks(), filename="slow.bin"), 30
            )
    assert info.name == "slow.bin"
    assert received and received[0] > 6000


async def test_retry_after_that_cannot_fit_fails_fast_with_the_status_error() -> None:
    with serve(
        status(503, {"Retry-After": "20"}),
        status(503, {"Retry-After": "20"}),
        status(200, body=SESSION),
    ) as srv:
        async with AsyncMix(srv.url, timeout=1) as mix:
            with pytest.raises(InternalServerError) as info:
                await asyncio.wait_for(mix.get_session("s1"), 10)
    assert info.value.status_code == 503
    assert len(srv.fake.requests) == 1  # no 20 s wait, no second attempt


async def test_retry_after_that_fits_is_honoured() -> None:
    with serve(status(503, {"Retry-After": "0.2"}), status(200, body=SESSION)) as srv:
        async with AsyncMix(srv.url, timeout=10) as mix:
            session = await asyncio.wait_for(mix.get_session("s1"), 20)
    assert session.id == "s1"
    assert len(srv.fake.requests) == 2


async def test_total_timeout_covers_every_attempt_and_wait() -> None:
    async def never(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(30)
        return web.json_response(SESSION)

    with serve(never) as srv:
        timeout = aiohttp.ClientTimeout(total=1.5, sock_read=0.4)
        async with AsyncMix(srv.url, max_retries=20, timeout=timeout, retry_config=FAST) as mix:
            started = time.monotonic()
            with pytest.raises(APITimeoutError):
                await asyncio.wait_for(mix.get_session("s1"), 20)
            elapsed = time.monotonic() - started
    # generous bound: the 1.5 s total, not 20 attempts of 0.4 s
    assert elapsed < 6
    assert 2 <= len(srv.fake.requests) < 20


async def test_per_call_timeout_overrides_per_kind(tmp_path: Path) -> None:
    seen: list[aiohttp.ClientTimeout] = []
    original = aiohttp.ClientSession._request

    async def spy(self: aiohttp.ClientSession, method: str, url: Any, **kw: Any) -> Any:
        seen.append(kw["timeout"])
        return await original(self, method, url, **kw)

    async def ok(request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"{}", content_type="application/json")

    with serve(ok) as srv, pytest.MonkeyPatch.context() as mp:
        mp.setattr(aiohttp.ClientSession, "_request", spy)
        async with AsyncMix(srv.url, timeout=7) as mix:
            await mix.health_check()
            await mix.get_session_file("s", "f")
            await mix.health_check(timeout=3)
            await mix.get_session_file("s", "f", timeout=3)
            clone = mix.with_options(timeout=2)
            await clone.health_check()
            await clone.get_session_file("s", "f")
    assert seen == [
        aiohttp.ClientTimeout(total=7, connect=5),
        aiohttp.ClientTimeout(total=None, connect=5, sock_read=7),
        aiohttp.ClientTimeout(total=3, connect=3),
        aiohttp.ClientTimeout(total=None, connect=3, sock_read=3),
        aiohttp.ClientTimeout(total=2, connect=2),
        aiohttp.ClientTimeout(total=None, connect=2, sock_read=2),
    ]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -1.0])
def test_non_finite_timeout_is_rejected(bad: float) -> None:
    with pytest.raises(InvalidInputError):
        AsyncMix("http://127.0.0.1:1", timeout=bad)


def test_readme_has_one_timeout_table() -> None:
    readme = (HERE / "README.md").read_text()
    section = readme.split("## Timeouts", 1)[1].split("\n## ", 1)[0]
    table = [line for line in section.splitlines() if line.startswith("|")]
    assert len(table) >= 5
    for kind in ("upload_session_file", "get_session_file", "stream_events", "Retry-After"):
        assert kind in section, kind
    assert "whole call" in section


# ---------------------------------------------------------------------------
# 7. Retry-After that is not a finite, non-negative number is ignored
# ---------------------------------------------------------------------------


USABLE_RETRY_AFTER = [
    ({"Retry-After": "2.5"}, 2.5),
    ({"Retry-After": "0"}, 0.0),
    ({"retry-after-ms": "250"}, 0.25),
    ({"retry-after-ms": "nan", "Retry-After": "3"}, 3.0),  # an unusable ms value falls back
    ({"Retry-After": "99999"}, 60.0),  # capped
]
UNUSABLE_RETRY_AFTER = [
    {"Retry-After": "nan"},
    {"Retry-After": "NaN"},
    {"Retry-After": "inf"},
    {"Retry-After": "-inf"},
    {"Retry-After": "-5"},
    {"Retry-After": "1e400"},
    {"retry-after-ms": "NaN"},
    {"retry-after-ms": "inf"},
    {"retry-after-ms": "-100"},
]


@pytest.mark.parametrize(
    ("headers", "expected"),
    [*USABLE_RETRY_AFTER, *((h, None) for h in UNUSABLE_RETRY_AFTER)],
)
async def test_retry_after_sets_the_wait_before_the_next_attempt(
    headers: dict[str, str], expected: float | None, sleeps: list[float]
) -> None:
    """A 503's Retry-After is how long the client waits (mocked responses); an unusable
    value is ignored: the client's own first backoff (0.5 s less up to 25 % jitter)."""
    url = re.compile(r"^http://127\.0\.0\.1:9/health")
    with aioresponses() as mocked:
        mocked.get(url, status=503, headers=headers, payload={"error": {"message": "busy"}})
        mocked.get(url, payload={"status": "ok"})
        async with AsyncMix("http://127.0.0.1:9", timeout=300) as mix:
            assert (await mix.health_check()).status == "ok"
    assert len(sleeps) == 1
    if expected is None:
        assert 0.5 * 0.75 <= sleeps[0] <= 0.5
    else:
        assert sleeps[0] == expected


@pytest.mark.parametrize(
    "headers",
    [{"Retry-After": "nan"}, {"retry-after-ms": "NaN"}, {"Retry-After": "inf"}],
)
async def test_nan_retry_after_does_not_hang(headers: dict[str, str]) -> None:
    with serve(status(503, headers), status(200, body=SESSION)) as srv:
        async with AsyncMix(srv.url, retry_config=FAST) as mix:
            session = await asyncio.wait_for(mix.get_session("s1"), 10)
    assert session.id == "s1"
    assert len(srv.fake.requests) == 2


# ---------------------------------------------------------------------------
# 8. A retried DELETE that gets 404 is done
# ---------------------------------------------------------------------------


async def test_retried_delete_answered_404_is_done() -> None:
    with serve(drop, status(404)) as srv:
        async with AsyncMix(srv.url, retry_config=FAST) as mix:
            assert await asyncio.wait_for(mix.delete_session("s1"), 10) is None
    assert [r[0] for r in srv.fake.requests] == ["DELETE", "DELETE"]


async def test_delete_retried_after_503_then_404_is_done() -> None:
    with serve(status(503), status(404)) as srv:
        async with AsyncMix(srv.url, retry_config=FAST) as mix:
            assert await asyncio.wait_for(mix.delete_session_file("s1", "a.txt"), 10) is None
    assert len(srv.fake.requests) == 2


async def test_retried_delete_credentials_answered_404_is_done() -> None:
    with serve(status(502), status(404)) as srv:
        async with AsyncMix(srv.url, retry_config=FAST) as mix:
            result = await asyncio.wait_for(mix.delete_credentials("openai"), 10)
    assert result == mix_client.DeleteCredentialsResponse()
    assert len(srv.fake.requests) == 2


async def test_dropped_connection_resent_once_at_once_outside_max_retries() -> None:
    with serve(drop, status(200, body=SESSION)) as srv:
        async with AsyncMix(srv.url, max_retries=0) as mix:
            assert (await asyncio.wait_for(mix.get_session("s1"), 10)).id == "s1"
    assert len(srv.fake.requests) == 2
    with serve(drop, drop, status(200, body=SESSION)) as srv:
        async with AsyncMix(srv.url, max_retries=0) as mix:
            with pytest.raises(mix_client.APIConnectionError):
                await asyncio.wait_for(mix.get_session("s1"), 10)
    assert len(srv.fake.requests) == 2  # one resend, then max_retries=0 holds
    with serve(drop, status(201, body=SESSION)) as srv:
        async with AsyncMix(srv.url) as mix:
            with pytest.raises(mix_client.APIConnectionError):
                await mix.create_session(title="t", browser_mode="local-browser-service")
    assert len(srv.fake.requests) == 1  # a POST that may have arrived is never resent


async def test_first_attempt_delete_404_still_raises() -> None:
    with serve(status(404)) as srv:
        async with AsyncMix(srv.url, retry_config=FAST) as mix:
            with pytest.raises(NotFoundError):
                await mix.delete_session("s1")
            with pytest.raises(NotFoundError):
                await mix.get_session("s1")
    assert len(srv.fake.requests) == 2


async def test_404_on_a_retried_get_still_raises() -> None:
    with serve(status(503), status(404)) as srv:
        async with AsyncMix(srv.url, retry_config=FAST) as mix:
            with pytest.raises(NotFoundError):
                await mix.get_session("s1")


# ---------------------------------------------------------------------------
# 9. Redirects are not followed
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def redirected(code: int, path: str) -> Iterator[tuple[Scripted, Scripted]]:
    """A server answering ``code`` to ``path`` on another server (which answers a session)."""
    with serve(status(200, body=SESSION)) as elsewhere:
        moved = status(code, {"Location": f"{elsewhere.url}{path}"}, body={})
        with serve(moved) as srv:
            yield srv, elsewhere


async def test_302_on_post_raises_and_goes_nowhere() -> None:
    with redirected(302, "/api/sessions") as (srv, elsewhere):
        async with AsyncMix(srv.url, headers={"X-Api-Key": "secret-key"}) as mix:
            with pytest.raises(mix_client.RedirectError) as info:
                await mix.create_session(title="t", browser_mode="local-browser-service")
            with pytest.raises(mix_client.RedirectError):
                await mix.send_message("s1", text="hello")
    err = info.value
    assert isinstance(err, mix_client.APIStatusError)
    assert err.status_code == 302
    assert err.location == f"{elsewhere.url}/api/sessions"
    assert f"{elsewhere.url}/api/sessions" in str(err)
    assert [r[0] for r in srv.fake.requests] == ["POST", "POST"]
    assert elsewhere.fake.requests == []


async def test_307_to_another_origin_forwards_nothing() -> None:
    with redirected(307, "/api/sessions/s1") as (srv, elsewhere):
        async with AsyncMix(srv.url, headers={"X-Api-Key": "secret-key"}) as mix:
            with pytest.raises(mix_client.RedirectError) as info:
                await mix.get_session("s1")
    assert info.value.status_code == 307
    assert elsewhere.url in str(info.value)
    assert len(srv.fake.requests) == 1  # a 3xx is not retried either
    assert srv.fake.requests[0].headers["X-Api-Key"] == "secret-key"
    assert elsewhere.fake.requests == []


def test_redirect_error_is_exported() -> None:
    assert "RedirectError" in mix_client.__all__
    assert issubclass(mix_client.RedirectError, mix_client.APIStatusError)


def test_blocking_redirect_is_not_followed() -> None:
    with (
        redirected(301, "/health") as (srv, elsewhere),
        Mix(srv.url) as mix,
        pytest.raises(mix_client.RedirectError),
    ):
        mix.health_check()
    assert elsewhere.fake.requests == []


# ---------------------------------------------------------------------------
# Further cases: close() with streams and callbacks (1), stream timeouts (6),
# long Location (9), a loop closed by hand (4)
# ---------------------------------------------------------------------------


def test_close_ends_a_blocking_stream_read_in_another_thread(fake: FakeThread) -> None:
    sid = fake.sync(fake.fake.add_session)
    mix = Mix(fake.url)
    events = mix.stream_events(sid)
    first = threading.Event()
    outcome: list[BaseException | object] = []

    def read() -> None:
        try:
            for event in events:
                first.set()
                outcome.append(event)
        except BaseException as exc:
            outcome.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert first.wait(15)  # connected arrived; the next read waits for the 45 s heartbeat
    mix.close()
    reader.join(20)
    assert not reader.is_alive(), "the stream read never returned after close()"
    assert isinstance(outcome[-1], MixError), outcome
    fake.call(fake.fake.wait_streams_closed(timeout=10))


async def test_stream_timeout_is_the_longest_wait_without_progress() -> None:
    ft = FakeThread(heartbeat_interval=0.25)
    try:
        sid = ft.sync(ft.fake.add_session)
        async with AsyncMix(ft.url, timeout=1) as mix:
            beats = 0
            async with mix.stream_events(sid, reconnect=False) as events:
                started = time.monotonic()
                async for event in events:
                    beats += event.event == "heartbeat"
                    if time.monotonic() - started > 2.5:
                        break
            assert beats >= 5  # 2.5 s of one stream: no total limit at 1 s
        beats = 0
        async with (
            AsyncMix(ft.url) as mix,
            mix.stream_events(sid, reconnect=False, timeout=1) as events,
        ):
            started = time.monotonic()
            async for event in events:
                beats += event.event == "heartbeat"
                if time.monotonic() - started > 2.5:
                    break
        assert beats >= 5  # per call too
    finally:
        ft.stop()


async def test_redirect_message_is_bounded_and_location_kept_whole() -> None:
    far = "http://127.0.0.1:1/" + "a" * 5000
    with serve(status(308, {"Location": far}, body={})) as srv:
        async with AsyncMix(srv.url) as mix:
            with pytest.raises(mix_client.RedirectError) as info:
                await mix.list_sessions()
    assert info.value.location == far
    assert len(str(info.value)) < 600
    assert "http://127.0.0.1:1/aaa" in str(info.value)


def test_client_whose_loop_closed_without_finalizing_is_dropped_quietly() -> None:
    # A loop closed by hand, without shutdown_asyncgens(): the session cannot be closed on
    # it any more; dropping the client still prints no "Unclosed client session".
    code = (
        SERVER_SNIPPET
        + """
import mix_client
mix = mix_client.AsyncMix(url)
own = asyncio.new_event_loop()
own.run_until_complete(mix.health_check())
own.close()
del mix
gc.collect()
closed_on_server().result(30)
print("DONE")
"""
    )
    assert_quiet(run_script(code, dev=False))


def test_close_ends_a_turn_whose_callback_is_blocked(fake: FakeThread) -> None:
    sid = fake.sync(fake.fake.add_session)
    mix = Mix(fake.url)
    inside = threading.Event()
    release = threading.Event()
    outcome: list[BaseException | object] = []

    def on_permission(event: Any) -> None:
        inside.set()
        release.wait(30)

    def turn() -> None:
        try:
            outcome.append(
                mix.send_and_wait(sid, "[permission] go", timeout=60, on_permission=on_permission)
            )
        except BaseException as exc:
            outcome.append(exc)

    caller = threading.Thread(target=turn, daemon=True)
    caller.start()
    try:
        assert inside.wait(20)
        mix.close()
        caller.join(20)
        assert not caller.is_alive(), "send_and_wait never returned after close()"
        assert isinstance(outcome[0], MixError), outcome
    finally:
        release.set()


def test_close_from_inside_a_callback(fake: FakeThread) -> None:
    sid = fake.sync(fake.fake.add_session)
    mix = Mix(fake.url)
    outcome: list[BaseException | object] = []

    def on_content(text: str) -> None:
        mix.close()

    def turn() -> None:
        try:
            outcome.append(mix.send_and_wait(sid, "hello", timeout=60, on_content=on_content))
        except BaseException as exc:
            outcome.append(exc)

    caller = threading.Thread(target=turn, daemon=True)
    caller.start()
    caller.join(30)
    assert not caller.is_alive()
    assert isinstance(outcome[0], MixError), outcome
    with pytest.raises(MixError):
        mix.health_check()


def test_stream_sessions_are_closed_too_across_asyncio_runs() -> None:
    code = """
    import asyncio, gc
    import mix_client
    from mix_fake import FakeThread

    server = FakeThread()
    url, fake = server.url, server.fake
    sid = server.sync(fake.add_session)

    mix = mix_client.AsyncMix(url)
    async def one():
        await mix.health_check()
        async with mix.stream_events(sid) as events:
            async for event in events:
                break
    def closed_on_server():  # every connection of the ended loop's sessions was closed
        server.call(fake.wait_connections(0, timeout=10))
        server.call(fake.wait_streams_closed(timeout=10))
    asyncio.run(one())
    closed_on_server()
    asyncio.run(one())
    closed_on_server()
    del mix
    gc.collect()  # an unclosed session would warn here
    server.stop()
    print("DONE")
    """
    assert_quiet(run_script(code))
