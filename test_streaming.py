"""End-to-end streaming tests for mix_client against scripted streams served by MixFake.

``ScriptedStreams`` (the shared ``conftest.Scripted`` server, on its own thread and event
loop) answers the stream and turn routes with per-connection scripts, so the blocking ``Mix``
facade can be tested from inside a running loop too, and ``asyncio.all_tasks()`` of the
test loop only holds client-side tasks. It behaves like the real Mix server (as
``mix_fake.py`` describes it): ``id``/``event``/``data`` frames, ``connected`` first,
ids restart per connection, no replay, events published while no stream is registered
are dropped, ``session_created``/``session_deleted`` go to every stream, an unknown
session gets one ``error`` event and the connection closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from aiohttp import web

from conftest import WAIT, Scripted, frame, next_event
from mix_client import (
    AgentError,
    APIConnectionError,
    APITimeoutError,
    AsyncMix,
    CompleteEvent,
    ConnectedEvent,
    ContentEvent,
    ErrorEvent,
    Mix,
    NotFoundError,
    NotificationEvent,
    PermissionEvent,
    Reconnected,
    SessionCreatedEvent,
    SessionDeletedEvent,
    ThinkingEvent,
    Turn,
    TurnToolCall,
    UnknownEvent,
)

CUT = "__cut__"  # buffer item: end the connection ("eof": clean end, "close": mid-body)


# ---------------------------------------------------------------------------
# Scripted SSE server
# ---------------------------------------------------------------------------


class Conn:
    """One open ``/stream`` connection on the server."""

    def __init__(self, sid: str, number: int, maxbuf: int) -> None:
        self.sid = sid
        self.number = number
        self.maxbuf = maxbuf
        self.buf: deque[tuple[str, Any]] = deque()
        self.wake = asyncio.Event()
        self.dropped = 0
        self.written: list[tuple[str, str, dict[str, Any]]] = []  # (id, event, data)

    def push(self, name: str, data: Any) -> None:
        if name != CUT and len(self.buf) >= self.maxbuf:
            self.dropped += 1  # the real server never blocks a broadcast
            return
        self.buf.append((name, data))
        self.wake.set()


class Agent:
    """What a scripted agent run can do; runs on the server loop."""

    def __init__(self, srv: ScriptedStreams, sid: str, text: str) -> None:
        self.srv = srv
        self.sid = sid
        self.text = text

    def emit(self, name: str, /, **data: Any) -> None:
        data.setdefault("type", name)
        self.srv._publish(self.sid, name, data)

    async def permission(self, pid: str, tool: str) -> bool:
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.srv.permission_waiters[pid] = fut
        self.emit(
            "permission",
            id=pid,
            sessionId=self.sid,
            toolName=tool,
            description=f"{tool} wants access",
            action="read",
            path="/tmp/a.txt",
        )
        return await fut

    def cut(self, mode: str = "close") -> None:
        for conn in self.srv.streams.get(self.sid, []):
            conn.push(CUT, mode)

    async def wait_streams(self, count: int) -> None:
        while len(self.srv.streams.get(self.sid, [])) != count:  # noqa: ASYNC110
            await asyncio.sleep(0.005)

    def store(self, **message: Any) -> None:
        """Store the turn like the real server: a user row, then the assistant's row."""
        self.srv.store_turn(self.sid, self.text, **message)


Script = Callable[[Agent], Awaitable[None]]


class ScriptedStreams(Scripted):
    """Scripted ``/stream`` connections and agent turns (``conftest.Scripted`` on a thread)."""

    def __init__(self) -> None:
        super().__init__(thread=True)
        self.sessions: set[str] = {"s1", "s2"}
        self.not_found: set[str] = set()  # /stream answers 404
        self.fail_status: dict[int, int] = {}  # conn number -> HTTP status to answer
        self.streams: dict[str, list[Conn]] = defaultdict(list)
        self.conns: list[Conn] = []
        self.conn_count = 0
        self.open_conns = 0
        self.exits: list[tuple[int, str]] = []  # (connection number, how the handler ended)
        self.last_event_ids: list[str | None] = []
        self.retry_ms: int | None = None
        self.cut_after: dict[int, tuple[int, str]] = {}  # conn number -> (k events, mode)
        self.stall: set[int] = set()  # conn numbers that go silent after `connected`
        self.register_delay = 0.0
        self.maxbuf = 1_000_000
        self.dropped: list[tuple[str, str]] = []  # published while no stream was registered
        self.posts: list[dict[str, Any]] = []
        self.cancels: list[str] = []
        self.grants: list[str] = []
        self.denies: list[str] = []
        self.permission_waiters: dict[str, asyncio.Future[bool]] = {}
        self.stored: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.script: Script | None = None
        self.agent_tasks: dict[str, asyncio.Task[None]] = {}
        self._down = False
        for route, handler in (
            ("GET /stream", self._stream),
            ("POST /api/sessions/{id}/messages", self._post_message),
            ("GET /api/sessions/{id}/messages", self._get_messages),
            ("POST /api/sessions/{id}/cancel", self._cancel),
            ("POST /api/permissions/{id}/grant", self._grant),
            ("POST /api/permissions/{id}/deny", self._deny),
        ):
            self.on(route, handler)

    async def _shutdown(self) -> None:
        if self._down:
            return
        self._down = True
        for task in self.agent_tasks.values():
            task.cancel()
        for conn in list(self.conns):
            conn.push(CUT, "eof")
        await self.fake.stop()

    # control from the test thread --------------------------------------------

    def publish(self, sid: str, name: str, /, **data: Any) -> None:
        data.setdefault("type", name)
        self.call_soon(self._publish, sid, name, data)

    def publish_raw(self, sid: str, name: str, data: dict[str, Any]) -> None:
        self.call_soon(self._publish, sid, name, data)

    def broadcast(self, name: str, /, **data: Any) -> None:
        data.setdefault("type", name)
        self.call_soon(self._broadcast, name, data)

    def end(self, sid: str, mode: str = "eof") -> None:
        self.call_soon(self._cut, sid, mode)

    async def shutdown(self) -> None:
        """Take the server down (listening socket closed, streams ended)."""
        assert self.loop is not None
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop))

    def store_turn(self, sid: str, text: str, **message: Any) -> None:
        rows = self.stored[sid]
        rows.append(
            {"id": f"r{len(rows) + 1}", "sessionId": sid, "role": "user", "userInput": text}
        )
        message.setdefault("id", f"r{len(rows) + 1}")
        message.setdefault("sessionId", sid)
        message.setdefault("role", "assistant")
        # The real server fills userInput of every row with that row's content.
        message.setdefault("userInput", message.get("assistantResponse", ""))
        rows.append(message)

    # server side ---------------------------------------------------------------

    def _publish(self, sid: str, name: str, data: dict[str, Any]) -> None:
        conns = self.streams.get(sid)
        if not conns:
            self.dropped.append((sid, name))
            return
        for conn in conns:
            conn.push(name, data)

    def _broadcast(self, name: str, data: dict[str, Any]) -> None:
        for conns in self.streams.values():
            for conn in conns:
                conn.push(name, data)

    def _cut(self, sid: str, mode: str) -> None:
        for conn in self.streams.get(sid, []):
            conn.push(CUT, mode)

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        sid = request.query.get("sessionId", "")
        self.conn_count += 1
        number = self.conn_count
        self.last_event_ids.append(request.headers.get("Last-Event-ID"))
        if number in self.fail_status:
            return web.json_response(
                {"error": {"message": "unavailable", "type": "internal"}},
                status=self.fail_status[number],
            )
        if sid in self.not_found:
            return web.json_response(
                {"error": {"message": "session not found", "type": "not_found"}}, status=404
            )
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "Connection": "keep-alive",
            }
        )
        await resp.prepare(request)
        self.open_conns += 1
        conn = Conn(sid, number, self.maxbuf)
        self.conns.append(conn)
        n = 0
        how = "ended"

        async def send(name: str, data: dict[str, Any], retry: int | None = None) -> None:
            nonlocal n
            n += 1
            conn.written.append((str(n), name, data))  # before the client can see it
            await resp.write(frame(n, name, data, retry))

        try:
            if sid not in self.sessions:
                await send("error", {"error": f"session not found: {sid}"})
                return resp
            if self.register_delay:
                await asyncio.sleep(self.register_delay)
            self.streams[sid].append(conn)
            await send("connected", {"sessionId": sid}, self.retry_ms)
            if number in self.stall:
                await asyncio.Event().wait()  # silent: no heartbeats
            cut = self.cut_after.get(number)
            sent = 0
            while True:
                while conn.buf:
                    name, data = conn.buf.popleft()
                    if name == CUT:
                        return self._end(request, resp, data)
                    await send(name, data)
                    sent += 1
                    if cut is not None and sent >= cut[0]:
                        return self._end(request, resp, cut[1])
                conn.wake.clear()
                await conn.wake.wait()
        except asyncio.CancelledError:
            how = "cancelled"  # the client went away (handler_cancellation)
            raise
        except (ConnectionResetError, ConnectionError):
            how = "reset"
            return resp
        finally:
            with contextlib.suppress(ValueError):
                self.streams[sid].remove(conn)
            self.open_conns -= 1
            self.exits.append((number, how))

    @staticmethod
    def _end(request: web.Request, resp: web.StreamResponse, mode: str) -> web.StreamResponse:
        if mode == "close" and request.transport is not None:
            # Flushes what was written, then FIN in the middle of the chunked body.
            request.transport.close()
        return resp

    async def _post_message(self, request: web.Request) -> web.Response:
        sid = request.match_info["id"]
        body = await request.json()
        self.posts.append({"sid": sid, "body": body, "registered": bool(self.streams.get(sid))})
        if sid not in self.sessions:
            return web.json_response({"error": {"message": "no session"}}, status=404)
        if self.script is not None:
            agent = Agent(self, sid, body.get("text", ""))
            self.agent_tasks[sid] = asyncio.get_running_loop().create_task(self.script(agent))
        return web.json_response({"status": "processing", "sessionId": sid}, status=202)

    async def _get_messages(self, request: web.Request) -> web.Response:
        return web.json_response(self.stored.get(request.match_info["id"], []))

    async def _cancel(self, request: web.Request) -> web.Response:
        sid = request.match_info["id"]
        self.cancels.append(sid)
        task = self.agent_tasks.pop(sid, None)
        if task is not None and not task.done():
            task.cancel()
            self._publish(sid, "error", {"error": "cancelled by user"})
        return web.json_response({"status": "cancelled", "sessionId": sid})

    async def _grant(self, request: web.Request) -> web.Response:
        return self._answer(request.match_info["id"], True)

    async def _deny(self, request: web.Request) -> web.Response:
        return self._answer(request.match_info["id"], False)

    def _answer(self, pid: str, granted: bool) -> web.Response:
        (self.grants if granted else self.denies).append(pid)
        fut = self.permission_waiters.pop(pid, None)
        if fut is not None and not fut.done():
            fut.set_result(granted)
        status = "granted" if granted else "denied"
        return web.json_response({"status": status, "id": pid, "message": f"permission {status}"})


@pytest.fixture
def srv() -> Iterator[ScriptedStreams]:
    server = ScriptedStreams()
    try:
        yield server
    finally:
        server.stop()


async def _collect(events: Any, until: Callable[[Any], bool] | None = None) -> list[Any]:
    out: list[Any] = []

    async def run() -> None:
        async for event in events:
            out.append(event)
            if until is not None and until(event):
                return

    await asyncio.wait_for(run(), WAIT)
    return out


async def _no_tasks_left(before: set[asyncio.Task[Any]]) -> None:
    """Every task started since ``before`` ends soon (a bounded wait), none is left running."""
    leaked = _leaked(before)
    if leaked:
        await asyncio.wait(leaked, timeout=2)
    assert _leaked(before) == []


def _leaked(before: set[asyncio.Task[Any]]) -> list[asyncio.Task[Any]]:
    current = asyncio.current_task()
    return [t for t in asyncio.all_tasks() if t not in before and t is not current and not t.done()]


# ---------------------------------------------------------------------------
# Agent scripts
# ---------------------------------------------------------------------------

TOOL_INPUT_PIECES = ['{"pa', 'th": "/tmp/', 'a.txt", "n": [1,', " 2]}"]
FULL_TEXT = "Reading the file."
FULL_THINKING = "Let me think."


async def full_turn(a: Agent) -> None:
    """Thinking, content, a tool call needing permission, a sub-agent, a notification."""
    a.emit("user_message_created", messageId="u1", content=a.text)
    a.emit("error", error="overloaded, retrying", attempt=1, maxAttempts=3)
    a.emit("thinking", content="Let me ")
    a.emit("thinking", content="think.")
    a.emit("content", content="Reading ")
    a.emit("tool_use_start", id="tc1", name="read_file")
    for piece in TOOL_INPUT_PIECES:
        a.emit("tool_use_parameter_delta", toolCallId="tc1", input=piece)
    a.emit("tool_use_parameter_streaming_complete", id="tc1", name="read_file", input="")
    a.emit("tool_execution_start", toolName="read_file", toolCallId="tc1", progress="running")
    granted = await a.permission("perm1", "read_file")
    a.emit(
        "tool_execution_complete",
        toolName="",
        toolCallId="tc1",
        progress="read 1 line",
        success=granted,
    )
    # A sub-agent: its events carry parentToolCallId, including its own `complete`.
    a.emit("tool_use_start", id="tc2", name="task")
    a.emit("tool_use_parameter_delta", toolCallId="tc2", input='{"prompt": "sub"}')
    a.emit("tool_use_parameter_streaming_complete", id="tc2", name="task", input="")
    a.emit("thinking", content="SUB THINKING", parentToolCallId="tc2")
    a.emit("content", content="SUB TEXT", parentToolCallId="tc2")
    a.emit("error", error="sub-agent hiccup", parentToolCallId="tc2")
    a.emit("complete", done=True, content="SUB TEXT", parentToolCallId="tc2")
    a.emit(
        "tool_execution_complete",
        toolName="task",
        toolCallId="tc2",
        progress="sub-agent failed",
        success=False,
    )
    a.emit(
        "notification",
        id="n1",
        sessionId=a.sid,
        notificationType="info",
        title="FYI",
        message="hello",
        responseType="none",
    )
    a.emit("content", content="the file.")
    a.store(
        id="m1",
        assistantResponse=FULL_TEXT,
        reasoning=FULL_THINKING,
        toolCalls=[
            {
                "id": "tc1",
                "name": "read_file",
                "input": "".join(TOOL_INPUT_PIECES),
                "type": "tool_use",
                "finished": True,
                "isError": False,
                "result": "hello world",
            },
            {
                "id": "tc2",
                "name": "task",
                "input": '{"prompt": "sub"}',
                "type": "tool_use",
                "finished": True,
                "isError": True,
                "result": "sub-agent failed: boom",
            },
        ],
    )
    a.emit("complete", done=True, content=FULL_TEXT, messageId="m1", reasoning=FULL_THINKING)


async def simple_turn(a: Agent) -> None:
    """Starts emitting at once (events before the stream is registered would be lost)."""
    a.emit("content", content="Hi ")
    a.emit("content", content="SUB", parentToolCallId="tcX")
    a.emit("complete", done=True, parentToolCallId="tcX")
    a.emit("content", content="there")
    a.emit("complete", done=True)


async def failing_turn(a: Agent) -> None:
    a.emit("content", content="partial")
    a.emit("error", error="boom", type="provider_error")
    a.emit("error", error="boom", type="provider_error")  # sometimes sent twice


async def retry_notice_turn(a: Agent) -> None:
    a.emit("error", error="rate limited", attempt=1, maxAttempts=3, retryAfter=10)
    a.emit("rate_limit_error", error="rate limited", retryAfter=10)
    a.emit("content", content="ok")
    a.emit("complete", done=True)


async def endless_turn(a: Agent) -> None:
    a.emit("content", content="working")
    await asyncio.Event().wait()


async def disconnecting_turn(a: Agent) -> None:
    """Drops the stream mid-turn; two deltas are published while nobody listens."""
    a.emit("content", content="Hello ")
    a.emit("content", content="brave ")
    a.cut("close")
    await a.wait_streams(0)
    a.emit("content", content="new ")  # dropped: no stream registered
    a.emit("content", content="lost ")  # dropped
    await a.wait_streams(1)
    a.emit("content", content="world.")
    a.store(assistantResponse="Hello brave new lost world.")
    a.emit("complete", done=True)


# ---------------------------------------------------------------------------
# stream_events
# ---------------------------------------------------------------------------


async def test_events_typed_by_event_line_with_frame_ids(
    srv: ScriptedStreams, mix: AsyncMix
) -> None:
    async with mix.stream_events("s1") as events:
        first = await next_event(events)
        assert isinstance(first, ConnectedEvent)
        assert first.data.session_id == "s1"
        assert first.id == "1"
        # data.type disagrees with the event line: the event line wins.
        srv.publish("s1", "content", type="thinking", content="C")
        srv.publish("s1", "thinking", type="content", content="T")
        srv.publish("s1", "rate_limit_error", error="slow down", retryAfter=1500)
        srv.publish("s1", "tool", name="bash", id="t9")
        srv.publish("s1", "complete", done=True, content="<b>&</b>")
        got = await _collect(events, lambda e: isinstance(e, CompleteEvent))
    assert [type(e) for e in got] == [
        ContentEvent,
        ThinkingEvent,
        UnknownEvent,
        UnknownEvent,
        CompleteEvent,
    ]
    assert got[0].data.content == "C"
    assert got[1].data.content == "T"
    assert got[2].event == "rate_limit_error"
    assert got[2].data == {"type": "rate_limit_error", "error": "slow down", "retryAfter": 1500}
    assert got[3].event == "tool"
    assert got[3].data["name"] == "bash"
    assert got[4].data.content == "<b>&</b>"
    written = srv.conns[0].written
    assert [e.id for e in [first, *got]] == [w[0] for w in written]
    assert [e.id for e in got] == ["2", "3", "4", "5", "6"]


async def test_other_sessions_broadcasts_filtered(srv: ScriptedStreams, mix: AsyncMix) -> None:
    async with mix.stream_events("s1") as events:
        assert isinstance(await next_event(events), ConnectedEvent)
        srv.broadcast("session_created", sessionId="s2", title="other", createdAt=1)
        srv.broadcast("session_created", sessionId="s1", title="mine", createdAt=2)
        srv.broadcast("session_deleted", sessionId="s2")
        srv.broadcast("session_deleted", sessionId="s1")
        srv.publish("s1", "complete", done=True)
        got = await _collect(events, lambda e: isinstance(e, CompleteEvent))
    assert [(type(e), e.data.session_id) for e in got[:-1]] == [
        (SessionCreatedEvent, "s1"),
        (SessionDeletedEvent, "s1"),
    ]
    assert [e.id for e in got] == ["3", "5", "6"]  # ids 2 and 4 were s2's, filtered


async def test_other_sessions_broadcasts_included_on_request(
    srv: ScriptedStreams, mix: AsyncMix
) -> None:
    async with mix.stream_events("s1", include_other_sessions=True) as events:
        assert isinstance(await next_event(events), ConnectedEvent)
        srv.broadcast("session_created", sessionId="s2", title="other")
        srv.broadcast("session_deleted", sessionId="s2")
        srv.publish("s1", "complete", done=True)
        got = await _collect(events, lambda e: isinstance(e, CompleteEvent))
    assert [(type(e), e.session_id) for e in got] == [
        (SessionCreatedEvent, "s2"),
        (SessionDeletedEvent, "s2"),
        (CompleteEvent, None),
    ]


async def test_big_content_event_decodes_intact(srv: ScriptedStreams, mix: AsyncMix) -> None:
    unit = 'héllo <&> "quoted" \\ \n\t ✓ '
    big = (unit * (4 * 1024 * 1024 // len(unit) + 1))[: 4 * 1024 * 1024]
    async with mix.stream_events("s1") as events:
        assert isinstance(await next_event(events), ConnectedEvent)
        srv.publish("s1", "content", content=big)
        srv.publish("s1", "content", content="after")
        got = await _collect(events, lambda e: e.data.content == "after")
    assert len(got) == 2
    assert isinstance(got[0], ContentEvent)
    assert len(got[0].data.content) == len(big)
    assert got[0].data.content == big
    assert got[0].id == "2"


async def test_slow_consumer_gets_every_written_event(srv: ScriptedStreams, mix: AsyncMix) -> None:
    srv.maxbuf = 50  # like the real server: a lagging reader loses events server-side
    count = 3000
    async with mix.stream_events("s1", reconnect=False) as events:
        assert isinstance(await next_event(events), ConnectedEvent)
        for i in range(count):
            srv.publish("s1", "content", content=f"piece {i} " + "x" * (i % 300))
        srv.end("s1")  # clean end of the stream after the burst
        conn = srv.conns[0]
        # the consumer lags (reads nothing) until the server has taken the whole burst
        await srv.wait_for(
            lambda: (
                len(conn.written) - 1 + conn.dropped + sum(n != CUT for n, _ in conn.buf) >= count
            ),
            "the server took every published event",
        )
        got = await _collect(events)
    written = srv.conns[0].written[1:]
    assert len(written) + srv.conns[0].dropped == count
    assert len(got) == len(written) > 0
    assert [(e.id, e.data.content) for e in got] == [(w[0], w[2]["content"]) for w in written]


# ---------------------------------------------------------------------------
# Reconnect
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["close", "eof"])
async def test_reconnect_sends_last_event_id_and_marks_gap(
    srv: ScriptedStreams, mix: AsyncMix, mode: str
) -> None:
    srv.retry_ms = 20
    srv.cut_after[1] = (3, mode)
    async with mix.stream_events("s1") as events:
        assert isinstance(await next_event(events), ConnectedEvent)
        for i in range(3):
            srv.publish("s1", "content", content=f"a{i}")
        got = await _collect(events, lambda e: isinstance(e, ConnectedEvent))
        srv.publish("s1", "content", content="b0")
        srv.publish("s1", "complete", done=True)
        got += await _collect(events, lambda e: isinstance(e, CompleteEvent))
        reconnects = events.reconnects
    assert [type(e) for e in got] == [
        ContentEvent,
        ContentEvent,
        ContentEvent,
        Reconnected,
        ConnectedEvent,
        ContentEvent,
        CompleteEvent,
    ]
    assert [e.data.content for e in got[:3]] == ["a0", "a1", "a2"]
    marker = got[3]
    assert marker.data.last_event_id == "4"
    assert marker.data.attempts >= 1
    assert srv.last_event_ids == [None, "4"]
    assert got[4].id == "1"  # ids restart per connection
    assert got[5].data.content == "b0"
    assert got[5].id == "2"
    assert reconnects == 1
    assert srv.conn_count == 2


async def _content_then_reopen(srv: ScriptedStreams, mix: AsyncMix) -> list[Any]:
    """A stream's events after ``connected``: one ``content``, then up to the ``connected`` of
    the connection that replaced the first (cut by the test's ``cut_after``)."""
    async with mix.stream_events("s1") as events:
        assert isinstance(await next_event(events), ConnectedEvent)
        srv.publish("s1", "content", content="x")
        return await _collect(events, lambda e: isinstance(e, ConnectedEvent))


@pytest.mark.parametrize(
    ("retry_ms", "delay"), [(300, 0.3), (None, 0.5)], ids=["honours_retry_field", "default"]
)
async def test_reconnect_delay(
    srv: ScriptedStreams, mix: AsyncMix, sleeps: list[float], retry_ms: int | None, delay: float
) -> None:
    # After a drop the first reopen is immediate; a failed attempt waits: `retry:` caps the
    # wait, without it the delay is the default (0.5 s), jittered (x0.5-1) either way.
    srv.retry_ms = retry_ms
    srv.cut_after[1] = (1, "eof")
    srv.fail_status[2] = 503
    got = await _content_then_reopen(srv, mix)
    assert [type(e) for e in got] == [ContentEvent, Reconnected, ConnectedEvent]
    assert len(sleeps) == 1
    assert delay * 0.5 <= sleeps[0] <= delay


async def test_server_down_raises_after_max_reconnects(srv: ScriptedStreams, mix: AsyncMix) -> None:
    srv.retry_ms = 5
    async with mix.stream_events("s1", max_reconnects=3) as events:
        assert isinstance(await next_event(events), ConnectedEvent)
        await srv.shutdown()
        with pytest.raises(APIConnectionError) as info:
            await _collect(events)
        # Iteration is over after the error.
        with pytest.raises(StopAsyncIteration):
            await events.__anext__()
    assert "3 reconnect attempts failed" in str(info.value)
    assert srv.conn_count == 1


async def test_reconnect_retries_5xx_then_succeeds(srv: ScriptedStreams, mix: AsyncMix) -> None:
    srv.retry_ms = 5
    srv.cut_after[1] = (1, "eof")
    srv.fail_status[2] = 503
    srv.fail_status[3] = 500
    got = await _content_then_reopen(srv, mix)
    assert [type(e) for e in got] == [ContentEvent, Reconnected, ConnectedEvent]
    assert got[1].data.attempts == 3
    assert srv.last_event_ids == [None, "2", "2", "2"]


async def test_reconnect_404_raises_not_found(srv: ScriptedStreams, mix: AsyncMix) -> None:
    srv.retry_ms = 5
    srv.cut_after[1] = (1, "eof")
    async with mix.stream_events("s1") as events:
        assert isinstance(await next_event(events), ConnectedEvent)
        srv.not_found.add("s1")  # deleted while the stream was down
        srv.publish("s1", "content", content="x")
        assert isinstance(await next_event(events), ContentEvent)
        with pytest.raises(NotFoundError):
            await next_event(events)
        with pytest.raises(StopAsyncIteration):
            await events.__anext__()
    assert srv.conn_count == 2


@pytest.mark.parametrize(
    ("mode", "end"),
    [("eof", StopAsyncIteration), ("close", APIConnectionError)],
    ids=["clean_end_stops_iteration", "broken_connection_raises"],
)
async def test_reconnect_false(
    srv: ScriptedStreams, mix: AsyncMix, mode: str, end: type[BaseException]
) -> None:
    srv.cut_after[1] = (1, mode)
    async with mix.stream_events("s1", reconnect=False) as events:
        assert isinstance(await next_event(events), ConnectedEvent)
        srv.publish("s1", "content", content="x")
        assert isinstance(await next_event(events), ContentEvent)
        with pytest.raises(end):
            await next_event(events)
    assert srv.conn_count == 1


async def test_idle_timeout_reconnects(srv: ScriptedStreams, mix: AsyncMix) -> None:
    srv.retry_ms = 10
    srv.stall.add(1)
    async with mix.stream_events("s1", idle_timeout=0.3) as events:
        assert isinstance(await next_event(events), ConnectedEvent)
        got = await _collect(events, lambda e: isinstance(e, ConnectedEvent))
        srv.publish("s1", "content", content="alive")
        got += await _collect(events, lambda e: isinstance(e, ContentEvent))
    assert [type(e) for e in got] == [Reconnected, ConnectedEvent, ContentEvent]
    assert srv.last_event_ids == [None, "1"]
    await srv.wait_for(lambda: (1, "cancelled") in srv.exits, "stalled connection closed")


async def test_idle_timeout_without_reconnect_raises(srv: ScriptedStreams, mix: AsyncMix) -> None:
    srv.stall.add(1)
    async with mix.stream_events("s1", idle_timeout=0.3, reconnect=False) as events:
        assert isinstance(await next_event(events), ConnectedEvent)
        with pytest.raises(APITimeoutError):
            await next_event(events)
    assert srv.conn_count == 1


async def test_unknown_session_yields_error_and_ends(srv: ScriptedStreams, mix: AsyncMix) -> None:
    async with mix.stream_events("ghost") as events:
        got = await _collect(events)
    assert len(got) == 1
    assert isinstance(got[0], ErrorEvent)
    assert "ghost" in got[0].data.error
    assert srv.conn_count == 1


async def test_404_on_open_raises_not_found(srv: ScriptedStreams, mix: AsyncMix) -> None:
    srv.not_found.add("gone")
    with pytest.raises(NotFoundError):
        async with mix.stream_events("gone"):
            pass
    assert srv.conn_count == 1


# ---------------------------------------------------------------------------
# Early exit, cancellation, leaks
# ---------------------------------------------------------------------------


async def test_break_closes_connection_and_leaks_no_task(
    srv: ScriptedStreams, mix: AsyncMix
) -> None:
    await mix.get_session_messages("s1")  # warm up the HTTP session
    before = set(asyncio.all_tasks())

    async def run() -> None:
        async with mix.stream_events("s1") as events:
            async for event in events:
                if isinstance(event, ConnectedEvent):
                    srv.publish("s1", "content", content="one")
                    srv.publish("s1", "content", content="two")
                elif isinstance(event, ContentEvent):
                    break

    await asyncio.wait_for(run(), WAIT)
    await srv.wait_for(lambda: srv.open_conns == 0, "server saw the disconnect")
    assert srv.exits == [(1, "cancelled")] or srv.exits == [(1, "reset")]
    await _no_tasks_left(before)


async def test_break_without_async_with_closes_connection(
    srv: ScriptedStreams, mix: AsyncMix
) -> None:
    await mix.get_session_messages("s1")

    async def run() -> None:
        async for event in mix.stream_events("s1"):
            if isinstance(event, ConnectedEvent):
                srv.publish("s1", "content", content="one")
            elif isinstance(event, ContentEvent):
                break  # the stream object is dropped here

    await asyncio.wait_for(run(), WAIT)
    await srv.wait_for(lambda: srv.open_conns == 0, "server saw the disconnect")
    assert srv.exits in ([(1, "cancelled")], [(1, "reset")])


async def test_cancelled_consumer_task_leaves_nothing_pending(
    srv: ScriptedStreams, mix: AsyncMix
) -> None:
    await mix.get_session_messages("s1")
    before = set(asyncio.all_tasks())
    seen = asyncio.Event()

    async def consume() -> None:
        async with mix.stream_events("s1") as events:
            async for event in events:
                if isinstance(event, ContentEvent):
                    seen.set()

    task = asyncio.create_task(consume())
    await srv.wait_for(lambda: bool(srv.streams.get("s1")), "stream registered")
    srv.publish("s1", "content", content="x")
    await asyncio.wait_for(seen.wait(), WAIT)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await srv.wait_for(lambda: srv.open_conns == 0, "server saw the disconnect")
    await _no_tasks_left(before)


@pytest.mark.parametrize("cancel_on_exit", [False, True])
async def test_query_break_closes_stream_and_cancels_only_when_asked(
    srv: ScriptedStreams, mix: AsyncMix, cancel_on_exit: bool
) -> None:
    srv.script = endless_turn
    await mix.get_session_messages("s1")
    before = set(asyncio.all_tasks())

    async def run() -> None:
        async with mix.query("s1", "go", cancel_on_exit=cancel_on_exit) as events:
            async for event in events:
                if isinstance(event, ContentEvent):
                    break

    await asyncio.wait_for(run(), WAIT)
    await srv.wait_for(lambda: srv.open_conns == 0, "server saw the disconnect")
    await _no_tasks_left(before)
    assert srv.cancels == (["s1"] if cancel_on_exit else [])


async def test_cancelled_query_task_cancels_run_and_leaves_nothing(
    srv: ScriptedStreams, mix: AsyncMix
) -> None:
    srv.script = endless_turn
    await mix.get_session_messages("s1")
    before = set(asyncio.all_tasks())
    seen = asyncio.Event()

    async def consume() -> None:
        async with mix.query("s1", "go", cancel_on_exit=True) as events:
            async for event in events:
                if isinstance(event, ContentEvent):
                    seen.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(seen.wait(), WAIT)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert srv.cancels == ["s1"]
    await srv.wait_for(lambda: srv.open_conns == 0, "server saw the disconnect")
    await _no_tasks_left(before)


# ---------------------------------------------------------------------------
# query()
# ---------------------------------------------------------------------------


async def test_query_waits_for_connected_before_posting(
    srv: ScriptedStreams, mix: AsyncMix
) -> None:
    # The server registers the stream only a while after answering the GET, and the
    # agent starts emitting the moment the POST arrives: posting early loses events.
    srv.register_delay = 0.3
    srv.script = simple_turn
    async with mix.query("s1", "hello") as events:
        got = await _collect(events)
    assert srv.posts == [
        {"sid": "s1", "body": {"text": "hello"}, "registered": True},
    ]
    assert srv.dropped == []
    assert isinstance(got[0], ConnectedEvent)
    main = [
        e.data.content for e in got if isinstance(e, ContentEvent) and not e.parent_tool_call_id
    ]
    assert main == ["Hi ", "there"]
    # The sub-agent complete did not end the turn; the main one did.
    completes = [e for e in got if isinstance(e, CompleteEvent)]
    assert [c.parent_tool_call_id for c in completes] == ["tcX", None]
    assert got[-1] is completes[-1]


async def test_query_agent_error_raises(srv: ScriptedStreams, mix: AsyncMix) -> None:
    srv.script = failing_turn
    got: list[Any] = []

    async def run() -> None:
        async with mix.query("s1", "fail please") as events:
            async for event in events:
                got.append(event)

    with pytest.raises(AgentError) as info:
        await asyncio.wait_for(run(), WAIT)
    assert isinstance(info.value.event, ErrorEvent)
    assert info.value.event.data.error == "boom"
    assert info.value.event.data.type == "provider_error"
    assert [type(e) for e in got] == [ConnectedEvent, ContentEvent, ErrorEvent]
    await srv.wait_for(lambda: srv.open_conns == 0, "stream closed")


async def test_query_retry_notice_does_not_end_turn(srv: ScriptedStreams, mix: AsyncMix) -> None:
    srv.script = retry_notice_turn
    async with mix.query("s1", "go") as events:
        got = await _collect(events)
    assert [type(e) for e in got] == [
        ConnectedEvent,
        ErrorEvent,
        UnknownEvent,
        ContentEvent,
        CompleteEvent,
    ]
    assert got[1].data.attempt == 1
    assert got[2].event == "rate_limit_error"


async def test_query_timeout(srv: ScriptedStreams, mix: AsyncMix) -> None:
    srv.script = endless_turn
    got: list[Any] = []

    async def run() -> None:
        async with mix.query("s1", "go", timeout=0.5) as events:
            async for event in events:
                got.append(event)

    with pytest.raises(APITimeoutError):
        await asyncio.wait_for(run(), WAIT)
    assert isinstance(got[0], ConnectedEvent)
    assert all(isinstance(e, ContentEvent) for e in got[1:])
    await srv.wait_for(lambda: srv.open_conns == 0, "stream closed")


async def test_query_unknown_session_raises_not_found(srv: ScriptedStreams, mix: AsyncMix) -> None:
    # The stream answers an unknown session with one `error` event; the turn raises the
    # typed error of the session's own route, as send_message would.
    with pytest.raises(NotFoundError):
        async with mix.query("ghost", "hi") as events:
            await _collect(events)
    assert srv.posts == []
    assert srv.conn_count == 1


# ---------------------------------------------------------------------------
# send_and_wait()
# ---------------------------------------------------------------------------


def _check_full_turn(turn: Turn, srv: ScriptedStreams) -> None:
    assert turn.session_id == "s1"
    assert turn.text == FULL_TEXT
    assert turn.thinking == FULL_THINKING
    assert [(c.id, c.name) for c in turn.tool_calls] == [("tc1", "read_file"), ("tc2", "task")]
    tc1, tc2 = turn.tool_calls
    assert tc1.input == {"path": "/tmp/a.txt", "n": [1, 2]}
    assert tc1.raw_input == "".join(TOOL_INPUT_PIECES)
    assert tc1.result == "hello world"
    assert tc1.is_error is False
    assert tc1.finished is True
    assert tc2.input == {"prompt": "sub"}
    assert tc2.result == "sub-agent failed: boom"
    assert tc2.is_error is True
    assert [p.data.id for p in turn.permissions] == ["perm1"]
    assert turn.permissions[0].data.tool_name == "read_file"
    assert [n.data.id for n in turn.notifications] == ["n1"]
    assert [e.data.error for e in turn.errors] == ["overloaded, retrying", "sub-agent hiccup"]
    assert isinstance(turn.final, CompleteEvent)
    assert turn.final.parent_tool_call_id is None
    assert turn.final.data.message_id == "m1"
    assert turn.reconnects == 0
    assert srv.grants == ["perm1"]


async def test_send_and_wait_full_turn_with_callbacks(srv: ScriptedStreams, mix: AsyncMix) -> None:
    srv.script = full_turn
    calls: list[tuple[Any, ...]] = []
    events_seen: list[str] = []

    def on_thinking(text: str) -> None:
        calls.append(("thinking", text))

    async def on_content(text: str) -> None:
        await asyncio.sleep(0)
        calls.append(("content", text))

    def on_tool(call: TurnToolCall) -> None:
        calls.append(("tool", call.id, call.name, call.input))

    async def on_tool_result(call: TurnToolCall) -> None:
        calls.append(("tool_result", call.id, call.is_error, call.result))

    async def on_permission(event: PermissionEvent) -> None:
        calls.append(("permission", event.data.id))
        result = await mix.grant_permission(event.data.id)
        assert result.status == "granted"

    def on_notification(event: NotificationEvent) -> None:
        calls.append(("notification", event.data.id))

    async def on_error(event: ErrorEvent) -> None:
        calls.append(("error", event.data.error))

    async def on_complete(turn: Turn) -> None:
        calls.append(("complete", turn.text, turn.final is not None))

    def on_event(event: Any) -> None:
        events_seen.append(type(event).__name__)

    turn = await asyncio.wait_for(
        mix.send_and_wait(
            "s1",
            "read /tmp/a.txt",
            timeout=WAIT,
            on_thinking=on_thinking,
            on_content=on_content,
            on_tool=on_tool,
            on_tool_result=on_tool_result,
            on_permission=on_permission,
            on_notification=on_notification,
            on_error=on_error,
            on_complete=on_complete,
            on_event=on_event,
        ),
        WAIT,
    )
    _check_full_turn(turn, srv)
    assert calls == [
        ("error", "overloaded, retrying"),
        ("thinking", "Let me "),
        ("thinking", "think."),
        ("content", "Reading "),
        ("tool", "tc1", "read_file", {"path": "/tmp/a.txt", "n": [1, 2]}),
        ("permission", "perm1"),
        ("tool_result", "tc1", False, "read 1 line"),
        ("tool", "tc2", "task", {"prompt": "sub"}),
        ("error", "sub-agent hiccup"),
        ("tool_result", "tc2", True, "sub-agent failed"),
        ("notification", "n1"),
        ("content", "the file."),
        ("complete", FULL_TEXT, True),
    ]
    assert events_seen[0] == "ConnectedEvent"
    assert events_seen[-1] == "CompleteEvent"
    assert events_seen.count("CompleteEvent") == 2  # the sub-agent's and the final one
    assert turn.event_count == len(events_seen)
    assert srv.posts[0]["registered"] is True


async def test_send_and_wait_denied_permission(srv: ScriptedStreams, mix: AsyncMix) -> None:
    srv.script = full_turn

    async def deny(event: PermissionEvent) -> None:
        await mix.deny_permission(event.data.id)

    turn = await mix.send_and_wait("s1", "read it", timeout=WAIT, on_permission=deny)
    assert srv.denies == ["perm1"]
    assert turn.tool_calls[0].is_error is True  # streamed success=False is kept
    assert turn.final is not None


async def test_send_and_wait_text_is_main_agent_deltas(srv: ScriptedStreams, mix: AsyncMix) -> None:
    # No tool calls and no reconnect: the text comes from the stream alone.
    async def script(a: Agent) -> None:
        a.emit("thinking", content="hmm")
        a.emit("content", content="Hi ")
        a.emit("content", content="SUB", parentToolCallId="tcX")
        a.emit("thinking", content="SUBTHINK", parentToolCallId="tcX")
        a.emit("complete", done=True, parentToolCallId="tcX")
        a.emit("content", content="there")
        a.emit("complete", done=True)

    srv.script = script
    pieces: list[str] = []
    turn = await mix.send_and_wait("s1", "hi", timeout=WAIT, on_content=pieces.append)
    assert turn.text == "Hi there"
    assert turn.thinking == "hmm"
    assert pieces == ["Hi ", "there"]
    assert turn.final is not None and turn.final.parent_tool_call_id is None
    assert turn.tool_calls == []


async def test_send_and_wait_agent_error_raises(srv: ScriptedStreams, mix: AsyncMix) -> None:
    srv.script = failing_turn
    errors: list[str] = []
    with pytest.raises(AgentError) as info:
        await mix.send_and_wait(
            "s1", "x", timeout=WAIT, on_error=lambda e: errors.append(e.data.error)
        )
    assert info.value.event.data.error == "boom"
    assert errors == ["boom"]


async def test_send_and_wait_reconciles_after_reconnect(
    srv: ScriptedStreams, mix: AsyncMix
) -> None:
    srv.retry_ms = 10
    srv.register_delay = 0.2  # the reopen is at once: leave a window with no stream registered
    srv.script = disconnecting_turn
    srv.store_turn("s1", "greet", assistantResponse="an older answer to the same text")
    pieces: list[str] = []
    turn = await mix.send_and_wait("s1", "greet", timeout=WAIT, on_content=pieces.append)
    assert "".join(pieces) == "Hello brave world."  # what the stream delivered
    assert srv.dropped == [("s1", "content"), ("s1", "content")]
    assert turn.reconnects >= 1
    assert turn.text == "Hello brave new lost world."  # recovered from GET messages
    assert turn.text == srv.stored["s1"][-1]["assistantResponse"]
    assert srv.last_event_ids == [None, "3"]


# ---------------------------------------------------------------------------
# Blocking facade
# ---------------------------------------------------------------------------


def _sync_stream_roundtrip(srv: ScriptedStreams) -> None:
    with Mix(srv.url, max_retries=0) as mix:
        got: list[Any] = []
        with mix.stream_events("s1", idle_timeout=WAIT, reconnect=False) as events:
            for event in events:
                got.append(event)
                if isinstance(event, ConnectedEvent):
                    srv.publish("s1", "content", content="one")
                    srv.publish("s1", "content", content="two")
                elif isinstance(event, ContentEvent) and event.data.content == "two":
                    break
        assert [type(e) for e in got] == [ConnectedEvent, ContentEvent, ContentEvent]
        srv.wait_for_sync(lambda: srv.open_conns == 0, "sync stream closed")

        srv.script = simple_turn
        with mix.query("s1", "hi", timeout=WAIT) as turn_events:
            events_list = list(turn_events)
        assert isinstance(events_list[0], ConnectedEvent)
        assert isinstance(events_list[-1], CompleteEvent)
        assert events_list[-1].parent_tool_call_id is None
        assert srv.posts[-1]["registered"] is True

        # Leaving a blocking query early closes the stream and cancels the run.
        srv.script = endless_turn
        with mix.query("s1", "go", timeout=WAIT, cancel_on_exit=True) as turn_events:
            for event in turn_events:
                if isinstance(event, ContentEvent):
                    break
        assert srv.cancels == ["s1"]
        srv.wait_for_sync(lambda: srv.open_conns == 0, "sync query closed")


def _sync_send_and_wait(srv: ScriptedStreams) -> None:
    srv.script = full_turn
    with Mix(srv.url, max_retries=0) as mix:
        seen: list[str] = []

        def on_permission(event: PermissionEvent) -> None:
            # A blocking call from inside a callback of a blocking call.
            result = mix.grant_permission(event.data.id)
            seen.append(result.status or "")

        turn = mix.send_and_wait(
            "s1",
            "read it",
            timeout=WAIT,
            on_permission=on_permission,
            on_content=lambda text: seen.append(text),
        )
    _check_full_turn(turn, srv)
    assert seen == ["Reading ", "granted", "the file."]


def _in_thread(fn: Callable[[], None]) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), "blocking call deadlocked"
    if errors:
        raise errors[0]


def test_sync_stream_and_query_plain_thread(srv: ScriptedStreams) -> None:
    _in_thread(lambda: _sync_stream_roundtrip(srv))


async def test_sync_stream_and_query_inside_running_loop(srv: ScriptedStreams) -> None:
    _sync_stream_roundtrip(srv)


def test_sync_send_and_wait_callback_calls_client_plain_thread(srv: ScriptedStreams) -> None:
    _in_thread(lambda: _sync_send_and_wait(srv))


async def test_sync_send_and_wait_callback_calls_client_inside_loop(srv: ScriptedStreams) -> None:
    _sync_send_and_wait(srv)


# ---------------------------------------------------------------------------
# A slow reader keeps what already arrived when the connection then fails
# ---------------------------------------------------------------------------


async def _until_cut(srv: ScriptedStreams) -> None:
    """Wait (without reading) until the server has written and broken the connection."""
    await srv.wait_for(lambda: bool(srv.exits), "the server ended the stream")


async def _outwait_idle_timeout(idle: float) -> None:
    """Stay busy (without reading) well past the client's idle timeout, counted from the last
    frame the server wrote. aiohttp's read timer fires in that time but shows nothing until the
    next read (the connection stays open), so this is a bounded wait, not a condition: the
    assertions after it hold either way, and the ``Reconnected`` reason shows the timer fired."""
    await asyncio.sleep(idle * 4)


async def test_slow_reader_gets_buffered_events_before_reconnect(
    srv: ScriptedStreams, mix: AsyncMix
) -> None:
    srv.retry_ms = 10
    async with mix.stream_events("s1") as events:
        assert isinstance(await next_event(events), ConnectedEvent)
        for i in range(5):
            srv.publish("s1", "content", content=f"e{i}")
        srv.end("s1", "close")  # written, then the connection breaks mid-body
        await _until_cut(srv)  # the consumer was busy meanwhile
        got = await _collect(events, lambda e: isinstance(e, ConnectedEvent))
    assert [e.data.content for e in got[:5]] == [f"e{i}" for i in range(5)]
    assert [type(e) for e in got[5:]] == [Reconnected, ConnectedEvent]
    assert got[5].data.last_event_id == "6"
    assert srv.last_event_ids == [None, "6"]


async def test_slow_reader_gets_buffered_events_before_error(
    srv: ScriptedStreams, mix: AsyncMix
) -> None:
    async with mix.stream_events("s1", reconnect=False) as events:
        assert isinstance(await next_event(events), ConnectedEvent)
        for i in range(3):
            srv.publish("s1", "content", content=f"e{i}")
        srv.end("s1", "close")
        await _until_cut(srv)
        got: list[Any] = []

        async def run() -> None:
            async for event in events:
                got.append(event)

        with pytest.raises(APIConnectionError):
            await asyncio.wait_for(run(), WAIT)
    assert [e.data.content for e in got] == ["e0", "e1", "e2"]


async def test_slow_reader_gets_buffered_events_before_idle_timeout(
    srv: ScriptedStreams, mix: AsyncMix
) -> None:
    srv.retry_ms = 10
    async with mix.stream_events("s1", idle_timeout=0.3) as events:
        assert isinstance(await next_event(events), ConnectedEvent)
        for i in range(3):
            srv.publish("s1", "content", content=f"e{i}")
        await srv.wait_for(lambda: len(srv.conns[0].written) == 4, "events written")
        await _outwait_idle_timeout(0.3)  # the server went silent; sock_read fires meanwhile
        got = await _collect(events, lambda e: isinstance(e, ConnectedEvent))
    assert [type(e) for e in got] == [ContentEvent] * 3 + [Reconnected, ConnectedEvent]
    assert "Timeout" in got[3].data.reason  # reconnected because the idle timer fired
    assert [e.data.content for e in got[:3]] == ["e0", "e1", "e2"]
