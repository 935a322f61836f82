"""Stream and transport faults (issue 8: pool, reconnect, close, timeouts, SSE limits).

Each test runs a ``conftest.Scripted`` MixFake on 127.0.0.1 (port 0) whose ``/stream`` answers
are scripted per connection, like the real Go server (``id``/``event``/``data`` frames,
``retry:`` on every frame, no replay) or like the faults met in front of it (a 200 that
closes at once, an HTML page, a server that never answers). Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from conftest import HANG, WAIT, Reply, Scripted, next_event
from conftest import frame as go_frame
from mix_client import (
    DEFAULT_MAX_EVENT_SIZE,
    APIConnectionError,
    APITimeoutError,
    AsyncMix,
    ClientClosedError,
    ConnectedEvent,
    ContentEvent,
    EventTooLargeError,
    HeartbeatEvent,
    InvalidInputError,
    MixError,
    Reconnected,
    ResponseValidationError,
    SSEDecoder,
)
from mix_fake import MixFake


def frame(n: int | None, name: str, data: dict[str, Any], retry: int | None = 30000) -> bytes:
    """One frame as the Go server writes it (``retry:`` on every frame)."""
    return go_frame(n, name, data, retry)


async def plain_health(request: web.Request) -> web.Response:
    resp = web.json_response({"status": "ok"})
    resp.set_cookie("route", "backend-7")  # e.g. a load balancer's sticky cookie
    return resp


def plain_session(delay: float = 0.0) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def answer(request: web.Request) -> web.Response:
        await asyncio.sleep(delay)
        return web.json_response({"id": request.match_info["id"], "title": "t"})

    return answer


@pytest.fixture
async def srv() -> AsyncIterator[Scripted]:
    """``/stream`` answered by ``hold`` (or the queued ``srv.reply(...)`` answers first),
    ``/health`` and ``/api/sessions/{id}`` by plain answers."""
    server = Scripted()
    server.on("GET /stream", server.hold)
    server.on("GET /health", plain_health)
    server.on("GET /api/sessions/{id}", plain_session())
    async with server:
        yield server


def conns(srv: Scripted) -> list[float]:
    """Loop time of each ``/stream`` request."""
    return [r.at for r in srv.seen("/stream")]


def last_event_ids(srv: Scripted) -> list[str | None]:
    return [r.headers.get("Last-Event-ID") for r in srv.seen("/stream")]


CONNECTED = frame(1, "connected", {"sessionId": "s1"})


async def drop_after_events(request: web.Request, retry: int = 30000) -> web.StreamResponse:
    """``connected`` and one ``content`` (``retry: 30000`` like Go), then the connection drops."""
    resp = await Scripted.sse(request)
    await resp.write(frame(1, "connected", {"sessionId": "s1"}, retry))
    await resp.write(frame(2, "content", {"content": "x"}, retry))
    assert request.transport is not None
    request.transport.close()
    return resp


async def status_503(request: web.Request) -> web.Response:
    return web.json_response({"error": {"message": "busy", "type": "internal"}}, status=503)


# ---------------------------------------------------------------------------
# 1. Pool: open streams never starve plain calls
# ---------------------------------------------------------------------------


async def test_200_open_streams_do_not_starve_plain_calls(srv: Scripted) -> None:
    # One default client (no session of ours): 200 open streams, then a plain call.
    async with AsyncMix(srv.url) as mix:
        streams = [mix.stream_events(f"s{i}") for i in range(200)]

        async def open_one(stream: Any) -> None:
            await stream.__aenter__()
            assert isinstance(await stream.__anext__(), ConnectedEvent)

        try:
            await asyncio.wait_for(asyncio.gather(*(open_one(s) for s in streams)), 60)
            assert srv.open == 200
            health = await asyncio.wait_for(mix.health_check(), WAIT)
            assert health.status == "ok"
            session = await asyncio.wait_for(mix.get_session("a"), WAIT)
            assert session.id == "a"
        finally:
            await asyncio.gather(*(s.aclose() for s in streams))
    await srv.wait_for(lambda: srv.open == 0, "server saw every stream closed")


async def test_streams_do_not_count_against_max_connections(srv: Scripted) -> None:
    srv.on("GET /api/sessions/{id}", plain_session(0.2))
    async with AsyncMix(srv.url, max_connections=1, max_retries=0) as mix:
        streams = [mix.stream_events(f"s{i}") for i in range(3)]
        for stream in streams:
            await asyncio.wait_for(stream.__aenter__(), WAIT)
        # Two plain calls share the one plain connection (one after the other), while the
        # three streams hold three connections of their own.
        got = await asyncio.wait_for(
            asyncio.gather(mix.get_session("a"), mix.get_session("b")), WAIT
        )
        assert [s.id for s in got] == ["a", "b"]
        for stream in streams:
            await stream.aclose()


async def test_max_stream_connections_bounds_open_streams(srv: Scripted) -> None:
    mix = AsyncMix(srv.url, max_stream_connections=1, max_retries=0)
    async with mix, mix.stream_events("s1") as first:
        assert isinstance(await next_event(first), ConnectedEvent)
        # The second stream waits for the first one's connection (connect timeout).
        with pytest.raises(APITimeoutError):
            async with mix.stream_events("s2", timeout=0.3):
                pass
        assert len(conns(srv)) == 1
        assert (await mix.health_check()).status == "ok"  # plain calls unaffected


async def test_streams_send_the_cookies_of_plain_calls(srv: Scripted) -> None:
    # A host name: aiohttp's cookie jar keeps no cookies of a bare IP address.
    async with AsyncMix(srv.url.replace("127.0.0.1", "localhost")) as mix:
        assert (await mix.health_check()).status == "ok"
        async with mix.stream_events("s1") as events:
            assert isinstance(await next_event(events), ConnectedEvent)
    assert [r.headers.get("Cookie") for r in srv.seen("/stream")] == ["route=backend-7"]


@pytest.mark.parametrize("name", ["max_connections", "max_stream_connections"])
async def test_pool_options_validated(name: str) -> None:
    with pytest.raises(InvalidInputError):
        AsyncMix("http://127.0.0.1:1", **{name: "10"})
    with pytest.raises(InvalidInputError):
        AsyncMix("http://127.0.0.1:1", **{name: True})
    with pytest.raises(InvalidInputError):
        AsyncMix("http://127.0.0.1:1", **{name: 0})
    async with aiohttp.ClientSession() as session:
        with pytest.raises(InvalidInputError, match="session"):
            AsyncMix("http://127.0.0.1:1", session=session, **{name: 10})


async def test_user_session_streams_share_its_connector_limit(srv: Scripted) -> None:
    # With session=, streams and calls share that session's connector: what the README says.
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        mix = AsyncMix(srv.url, session=session, max_retries=0)
        async with mix.stream_events("s1") as events:
            assert isinstance(await next_event(events), ConnectedEvent)
            with pytest.raises(APITimeoutError):
                await mix.health_check(timeout=0.3)
        assert (await mix.health_check()).status == "ok"
        await mix.aclose()


# ---------------------------------------------------------------------------
# 2. Prompt reconnect; backoff only on failures; retry: is a cap
# ---------------------------------------------------------------------------


async def test_reopen_after_drop_is_immediate_despite_retry_30000(
    srv: Scripted, mix: AsyncMix
) -> None:
    srv.reply(drop_after_events)
    async with mix.stream_events("s1") as events:
        got = [await next_event(events) for _ in range(4)]
        await srv.wait_seen("/stream", 2)
    # The server's retry: 30000 is not a pause (the old client waited 22-30 s here).
    assert conns(srv)[1] - conns(srv)[0] < 3.0
    assert [type(e) for e in got] == [ConnectedEvent, ContentEvent, Reconnected, ConnectedEvent]
    assert got[2].data.attempts == 1
    assert got[2].data.last_event_id == "2"
    assert last_event_ids(srv) == [None, "2"]
    assert events.reconnects == 1


async def test_backoff_applies_to_failed_attempts_capped_by_retry(
    srv: Scripted, mix: AsyncMix, sleeps: list[float]
) -> None:
    srv.reply(drop_after_events, *[status_503] * 4)
    async with mix.stream_events("s1", max_reconnects=10) as events:
        got = [await next_event(events) for _ in range(4)]
    assert isinstance(got[2], Reconnected)
    assert got[2].data.attempts == 5
    # No wait before the first reopen; then 0.5 s doubling, with jitter (x0.5-1).
    assert len(sleeps) == 4
    for delay, base in zip(sleeps, [0.5, 1.0, 2.0, 4.0], strict=True):
        assert base * 0.5 <= delay <= base


async def test_retry_value_caps_the_backoff(
    srv: Scripted, mix: AsyncMix, sleeps: list[float]
) -> None:
    overloaded = frame(2, "error", {"error": "overloaded"}, 750)  # Go: 750
    srv.reply(srv.writes(CONNECTED, overloaded, then="close"), *[status_503] * 3)
    async with mix.stream_events("s1", max_reconnects=10) as events:
        got = [await next_event(events) for _ in range(4)]
    assert isinstance(got[2], Reconnected)
    assert len(sleeps) == 3
    assert all(0.1 <= delay <= 0.75 for delay in sleeps), sleeps


# ---------------------------------------------------------------------------
# 6. Bounded reconnects
# ---------------------------------------------------------------------------


async def test_200_that_closes_at_once_counts_as_failed_attempt(
    srv: Scripted, mix: AsyncMix
) -> None:
    srv.on("GET /stream", srv.sse)  # 200 text/event-stream, then the body ends
    srv.reply(lambda request: drop_after_events(request, retry=0))
    async with mix.stream_events("s1", max_reconnects=3) as events:
        assert isinstance(await next_event(events), ConnectedEvent)
        assert isinstance(await next_event(events), ContentEvent)
        with pytest.raises(APIConnectionError, match="3 reconnect attempts failed"):
            await next_event(events)
        with pytest.raises(StopAsyncIteration):
            await events.__anext__()
    assert len(conns(srv)) == 4  # the first connection and 3 attempts, then no more
    # retry: 0 is no hot loop: every failed attempt waits at least the 0.1 s floor.
    gaps = [b - a for a, b in zip(conns(srv)[1:-1], conns(srv)[2:], strict=True)]
    assert all(gap >= 0.09 for gap in gaps), gaps


async def test_connected_then_close_is_rate_limited(srv: Scripted, mix: AsyncMix) -> None:
    # A server that sends `connected` and closes at once, forever: the stream delivers
    # events, so it keeps reopening, but at most one reopen a second is immediate.
    srv.on("GET /stream", srv.writes(frame(1, "connected", {"sessionId": "s1"}, 0), then="end"))
    async with mix.stream_events("s1") as events:
        for _ in range(9):  # connected, (Reconnected, connected) x 4
            await next_event(events)
    assert len(conns(srv)) == 5
    gaps = [b - a for a, b in zip(conns(srv)[1:-1], conns(srv)[2:], strict=True)]
    assert sum(gap >= 0.09 for gap in gaps) >= 2, gaps


async def test_html_200_on_open_is_an_error_not_a_stream(srv: Scripted, mix: AsyncMix) -> None:
    srv.on(
        "GET /stream", Reply(body=b"<!doctype html><title>app</title>", content_type="text/html")
    )
    with pytest.raises(ResponseValidationError, match="text/html") as info:
        async with mix.stream_events("s1"):
            pass
    assert info.value.status_code == 200
    assert info.value.raw_body.startswith(b"<!doctype html>")
    assert info.value.body.startswith("<!doctype html>")
    assert len(conns(srv)) == 1


async def test_html_200_on_reconnect_is_an_error_not_a_retry(srv: Scripted, mix: AsyncMix) -> None:
    srv.on("GET /stream", Reply(body=b"<html>proxy says hi</html>", content_type="text/html"))
    srv.reply(drop_after_events)
    async with mix.stream_events("s1", max_reconnects=50) as events:
        assert isinstance(await next_event(events), ConnectedEvent)
        assert isinstance(await next_event(events), ContentEvent)
        with pytest.raises(ResponseValidationError):
            await next_event(events)
        with pytest.raises(StopAsyncIteration):
            await events.__anext__()
    assert len(conns(srv)) == 2


# ---------------------------------------------------------------------------
# 7. Close means close
# ---------------------------------------------------------------------------


async def _consume(events: Any, seen: list[Any]) -> None:
    async for event in events:
        seen.append(event)


async def _consuming(events: Any, connected: bool = True) -> tuple[asyncio.Task[None], list[Any]]:
    """Open the stream and read it into a list in a task; with ``connected``, once the
    first event (``connected``) is in."""
    seen: list[Any] = []
    await events.__aenter__()
    task = asyncio.create_task(_consume(events, seen))
    if connected:
        await Scripted.wait_for(lambda: len(seen) == 1, "connected received")
    return task, seen


async def _closing_ends_streams_and_calls(closing: AsyncMix, client: AsyncMix) -> None:
    """``closing.aclose()`` ends a consumer of ``client``'s stream, and ``client``'s calls,
    with ClientClosedError."""
    task, _ = await _consuming(client.stream_events("s1"))
    await closing.aclose()
    with pytest.raises(ClientClosedError):
        await asyncio.wait_for(task, 5)
    with pytest.raises(ClientClosedError):
        await client.health_check()


async def test_client_aclose_ends_a_blocked_consumer(srv: Scripted) -> None:
    mix = AsyncMix(srv.url)
    events = mix.stream_events("s1")
    task, seen = await _consuming(events)
    await asyncio.wait_for(mix.aclose(), WAIT)
    with pytest.raises(ClientClosedError):
        await asyncio.wait_for(task, 5)
    assert [type(e) for e in seen] == [ConnectedEvent]
    with pytest.raises(StopAsyncIteration):  # the error is raised once; then it is over
        await events.__anext__()
    await srv.wait_for(lambda: srv.open == 0, "server saw the stream closed")


async def test_client_aclose_ends_a_consumer_in_reconnect_wait(srv: Scripted) -> None:
    srv.on("GET /stream", status_503)
    srv.reply(drop_after_events)
    mix = AsyncMix(srv.url)
    events = mix.stream_events("s1", max_reconnects=100)
    task, seen = await _consuming(events, connected=False)
    await srv.wait_seen("/stream", 2)
    await mix.aclose()
    with pytest.raises(ClientClosedError):
        await asyncio.wait_for(task, 5)
    count = len(conns(srv))
    assert [type(e) for e in seen] == [ConnectedEvent, ContentEvent]
    assert count <= 3  # at most an attempt already under way


async def test_client_aclose_ends_a_turn_in_flight() -> None:
    async with MixFake(event_delay=30) as url:  # the run pauses 30 s after each event
        mix = AsyncMix(url)
        session = await mix.create_session(title="t", browser_mode="local-browser-service")
        started = asyncio.Event()

        def on_event(event: Any) -> None:
            if not isinstance(event, ConnectedEvent):
                started.set()  # the message was sent and its run is streaming

        task = asyncio.create_task(mix.send_and_wait(session.id, "hello", on_event=on_event))
        await asyncio.wait_for(started.wait(), WAIT)
        await mix.aclose()
        with pytest.raises(ClientClosedError):
            await asyncio.wait_for(task, 5)


async def test_plain_call_in_flight_during_aclose_raises_mix_error(srv: Scripted) -> None:
    srv.on("GET /api/sessions/{id}", HANG)
    mix = AsyncMix(srv.url)
    task = asyncio.create_task(mix.get_session("a"))
    await srv.wait_seen("/api/sessions/a", 1)
    await mix.aclose()
    with pytest.raises(ClientClosedError):
        await asyncio.wait_for(task, 5)


async def test_call_waiting_for_a_pool_connection_during_aclose_raises_mix_error(
    srv: Scripted,
) -> None:
    srv.on("GET /api/sessions/{id}", HANG)
    mix = AsyncMix(srv.url, max_connections=1)
    first = asyncio.create_task(mix.get_session("a"))
    await srv.wait_seen("/api/sessions/a", 1)
    second = asyncio.create_task(mix.get_session("b"))  # waits for the one connection
    done, _ = await asyncio.wait({second}, timeout=0.2)  # time to reach the pool's queue
    assert not done  # it waits: the one connection is busy
    await mix.aclose()
    for task in (first, second):
        with pytest.raises(ClientClosedError):
            await asyncio.wait_for(task, 5)
    assert [r.path for r in srv.requests] == ["/api/sessions/a"]


async def test_stream_opening_during_aclose_raises_client_closed(srv: Scripted) -> None:
    srv.on("GET /stream", HANG)  # headers never come
    mix = AsyncMix(srv.url)
    opening = asyncio.create_task(mix.stream_events("s1").__aenter__())
    await srv.wait_seen("/stream", 1)
    await mix.aclose()
    with pytest.raises(ClientClosedError):
        await asyncio.wait_for(opening, 5)


async def test_calls_and_streams_after_aclose_raise_client_closed(srv: Scripted) -> None:
    mix = AsyncMix(srv.url)
    assert (await mix.health_check()).status == "ok"
    await mix.aclose()
    with pytest.raises(ClientClosedError):
        await mix.health_check()
    with pytest.raises(ClientClosedError):
        async with mix.stream_events("s1"):
            pass
    assert issubclass(ClientClosedError, MixError)
    assert len(conns(srv)) == 0


async def test_aclose_with_user_session_still_closes_streams_and_calls(srv: Scripted) -> None:
    async with aiohttp.ClientSession() as session:
        mix = AsyncMix(srv.url, session=session)
        await _closing_ends_streams_and_calls(mix, mix)
        assert not session.closed  # yours: never closed by the client


async def test_stream_aclose_from_another_task_stops_consumer(srv: Scripted, mix: AsyncMix) -> None:
    events = mix.stream_events("s1")
    task, seen = await _consuming(events)
    await events.aclose()
    await asyncio.wait_for(task, 5)  # iteration ends: no error
    assert [type(e) for e in seen] == [ConnectedEvent]
    await srv.wait_for(lambda: srv.open == 0, "server saw the stream closed")


async def test_stream_aclose_during_reconnect_wait_yields_nothing_more(
    srv: Scripted, mix: AsyncMix
) -> None:
    srv.reply(drop_after_events, status_503)
    events = mix.stream_events("s1", max_reconnects=100)
    task, seen = await _consuming(events, connected=False)
    # the server answered the second attempt: the stream now waits before the third
    await srv.wait_for(lambda: len(conns(srv)) == 2 and srv.open == 0, "the 503 was answered")
    await events.aclose()
    await asyncio.wait_for(task, 5)
    assert [type(e) for e in seen] == [ConnectedEvent, ContentEvent]
    assert len(conns(srv)) == 2
    assert srv.open == 0
    with pytest.raises(StopAsyncIteration):
        await events.__anext__()


async def test_stream_aclose_during_reopen_leaks_nothing(srv: Scripted, mix: AsyncMix) -> None:
    release = asyncio.Event()

    async def reopen(request: web.Request) -> web.StreamResponse:
        await release.wait()  # the reopen is in flight while the stream is closed
        return await srv.writes(CONNECTED)(request)

    srv.on("GET /stream", reopen)
    srv.reply(drop_after_events)
    events = mix.stream_events("s1")
    task, seen = await _consuming(events, connected=False)
    await srv.wait_seen("/stream", 2)
    await events.aclose()
    release.set()
    await asyncio.wait_for(task, 5)
    assert [type(e) for e in seen] == [ConnectedEvent, ContentEvent]
    # The connection answered after the close is closed by the client, not kept.
    await srv.wait_for(
        lambda: srv.closed_by_client == 1, "reopened connection closed by the client"
    )
    assert len(conns(srv)) == 2


async def test_with_options_copy_streams_end_when_parent_closes(srv: Scripted) -> None:
    mix = AsyncMix(srv.url)
    await _closing_ends_streams_and_calls(mix, mix.with_options(max_retries=1))


async def test_closing_a_copy_closes_its_streams_not_the_parent(srv: Scripted) -> None:
    async with AsyncMix(srv.url) as mix:
        copy = mix.with_options(max_retries=1)
        theirs = copy.stream_events("s1")
        ours = mix.stream_events("s2")
        await theirs.__aenter__()
        await ours.__aenter__()
        assert isinstance(await next_event(theirs), ConnectedEvent)
        assert isinstance(await next_event(ours), ConnectedEvent)
        await copy.aclose()
        with pytest.raises(ClientClosedError):
            await next_event(theirs)
        assert (await mix.health_check()).status == "ok"
        await ours.aclose()


# ---------------------------------------------------------------------------
# 8. timeout= on a stream bounds connecting and idleness, not its lifetime
# ---------------------------------------------------------------------------


async def test_stream_timeout_is_not_a_lifetime_limit(srv: Scripted, mix: AsyncMix) -> None:
    async def script(request: web.Request) -> web.StreamResponse:
        resp = await srv.sse(request)
        await resp.write(CONNECTED)
        for i in range(16):  # 1.6 s of heartbeats every 0.1 s
            await asyncio.sleep(0.1)
            await resp.write(frame(2 + i, "heartbeat", {"type": "ping"}, 45000))
        await resp.write(frame(20, "content", {"content": "still here"}))
        return await srv.write_until_closed(resp, every=0.1)

    srv.on("GET /stream", script)
    started = time.monotonic()
    async with mix.stream_events("s1", timeout=1.0) as events:
        got = [await next_event(events) for _ in range(18)]
    assert time.monotonic() - started > 1.0  # the stream outlived its timeout
    assert isinstance(got[0], ConnectedEvent)
    assert all(isinstance(e, HeartbeatEvent) for e in got[1:17])
    assert isinstance(got[17], ContentEvent)
    assert len(conns(srv)) == 1


async def test_stream_timeout_bounds_idleness(srv: Scripted, mix: AsyncMix) -> None:
    srv.on("GET /stream", srv.writes(CONNECTED, every=3600))
    async with mix.stream_events("s1", timeout=0.3, reconnect=False) as events:
        assert isinstance(await next_event(events), ConnectedEvent)
        with pytest.raises(APITimeoutError):
            await next_event(events)


async def test_stream_timeout_bounds_connecting(srv: Scripted, mix: AsyncMix) -> None:
    srv.on("GET /stream", HANG)  # headers never come
    with pytest.raises(APITimeoutError):
        await asyncio.wait_for(mix.stream_events("s1", timeout=0.3).__aenter__(), 5)


async def test_stream_timeout_with_total_is_refused(mix: AsyncMix) -> None:
    with pytest.raises(InvalidInputError, match="total"):
        mix.stream_events("s1", timeout=aiohttp.ClientTimeout(total=3))
    with pytest.raises(InvalidInputError):
        mix.stream_events("s1", timeout=-1)
    with pytest.raises(InvalidInputError):
        mix.stream_events("s1", idle_timeout=0)
    with pytest.raises(InvalidInputError):
        mix.stream_events("s1", max_reconnects="3")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# 9. SSE: id at dispatch, empty id resets, size limit
# ---------------------------------------------------------------------------


def test_decoder_id_advances_at_dispatch() -> None:
    d = SSEDecoder()
    assert d.feed(b"id: 1\nevent: content\ndata: {}\n\n")[0].id == "1"
    assert d.last_event_id == "1"
    assert d.feed(b'id: 2\nevent: content\ndata: {"a"') == []
    assert d.last_event_id == "1"  # frame 2 is not dispatched yet
    assert d.feed(b":1}\n") == []
    assert d.last_event_id == "1"
    frames = d.feed(b"\n")
    assert [(f.id, f.data) for f in frames] == [("2", b'{"a":1}')]
    assert d.last_event_id == "2"


def test_decoder_empty_id_resets() -> None:
    d = SSEDecoder()
    d.feed(b"id: 5\ndata: a\n\n")
    assert d.last_event_id == "5"
    frames = d.feed(b"id:\ndata: b\n\n")
    assert frames[0].id is None
    assert d.last_event_id is None
    d2 = SSEDecoder(last_event_id="9")
    assert d2.feed(b"id\ndata: c\n\n")[0].id is None
    assert d2.last_event_id is None


async def test_drop_mid_frame_sends_last_dispatched_id(srv: Scripted, mix: AsyncMix) -> None:
    content = frame(2, "content", {"content": "a"})
    unfinished = b'id: 3\nevent: content\ndata: {"content": "never fini'
    srv.reply(srv.writes(CONNECTED, content, unfinished, then="close"))
    async with mix.stream_events("s1") as events:
        got = [await next_event(events) for _ in range(4)]
    assert [type(e) for e in got] == [ConnectedEvent, ContentEvent, Reconnected, ConnectedEvent]
    assert last_event_ids(srv) == [None, "2"]
    assert got[2].data.last_event_id == "2"


async def test_empty_id_resets_last_event_id_of_the_stream(srv: Scripted, mix: AsyncMix) -> None:
    connected = frame(5, "connected", {"sessionId": "s1"})
    empty_id = b'id:\nevent: content\ndata: {"content": "a"}\n\n'
    srv.reply(srv.writes(connected, empty_id, then="close"))
    async with mix.stream_events("s1") as events:
        first = await next_event(events)
        assert first.id == "5"
        second = await next_event(events)
        assert isinstance(second, ContentEvent)
        assert second.id is None
        assert events.last_event_id is None
        assert isinstance(await next_event(events), Reconnected)
    assert last_event_ids(srv) == [None, None]  # no Last-Event-ID header after the reset


def test_decoder_line_without_newline_is_bounded() -> None:
    d = SSEDecoder(max_event_size=1 << 20)
    d.feed(b"data: ")
    with pytest.raises(EventTooLargeError) as info:
        for _ in range(100):
            d.feed(b"x" * 65536)  # one line, never ended
    assert info.value.limit == 1 << 20
    assert isinstance(info.value, MixError)
    # Many data lines in one event count too, also in a single chunk.
    with pytest.raises(EventTooLargeError):
        SSEDecoder(max_event_size=1000).feed(b"data: " + b"y" * 600 + b"\ndata: " + b"y" * 600)
    with pytest.raises(EventTooLargeError):
        SSEDecoder(max_event_size=1000).feed(
            b"id: 1\nevent: content\ndata: " + b"z" * 2000 + b"\n\n"
        )
    assert DEFAULT_MAX_EVENT_SIZE == 64 << 20


def test_decoder_4mib_event_passes_default_limit() -> None:
    payload = b"q" * (4 << 20)
    d = SSEDecoder()
    frames = []
    data = b"id: 1\nevent: content\ndata: " + payload + b"\n\n"
    for i in range(0, len(data), 65536):
        frames += d.feed(data[i : i + 65536])
    assert len(frames) == 1
    assert frames[0].data == payload


def test_max_event_size_validated() -> None:
    with pytest.raises(InvalidInputError):
        SSEDecoder(max_event_size="1")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        SSEDecoder(max_event_size=0)
    with pytest.raises(InvalidInputError):
        AsyncMix("http://127.0.0.1:1", max_event_size=1.5)
    with pytest.raises(InvalidInputError):
        AsyncMix("http://127.0.0.1:1").stream_events("s1", max_event_size=-1)  # type: ignore[arg-type]


async def test_oversized_line_on_a_stream_raises_and_closes(srv: Scripted) -> None:
    async def script(request: web.Request) -> web.StreamResponse:
        resp = await srv.sse(request)
        await resp.write(CONNECTED + b"data: ")
        srv.open += 1
        try:
            for _ in range(10_000):  # up to 640 MiB, one line without a newline
                await resp.write(b"x" * 65536)
        except (ConnectionError, RuntimeError):
            srv.closed_by_client += 1
        finally:
            srv.open -= 1
        return resp

    srv.on("GET /stream", script)
    async with AsyncMix(srv.url, max_event_size=1 << 20) as mix:
        async with mix.stream_events("s1") as events:
            assert isinstance(await next_event(events), ConnectedEvent)
            with pytest.raises(EventTooLargeError):
                await next_event(events)
            with pytest.raises(StopAsyncIteration):
                await events.__anext__()
        # A per-stream override of the client's limit.
        async with mix.stream_events("s1", max_event_size=4 << 20) as events:
            assert isinstance(await next_event(events), ConnectedEvent)
            with pytest.raises(EventTooLargeError) as info:
                await next_event(events)
            assert info.value.limit == 4 << 20
    await srv.wait_for(lambda: srv.closed_by_client == 2, "server saw both streams closed")
    assert len(conns(srv)) == 2  # an oversized event is not a reason to reconnect


async def test_4mib_event_on_a_stream(srv: Scripted, mix: AsyncMix) -> None:
    text = "abcdefgh" * (1 << 19)  # 4 MiB

    srv.on("GET /stream", srv.writes(CONNECTED, frame(2, "content", {"content": text})))
    async with mix.stream_events("s1") as events:
        assert isinstance(await next_event(events), ConnectedEvent)
        event = await next_event(events)
    assert isinstance(event, ContentEvent)
    assert event.data.content == text
