"""Fast loopback Mix server for benchmarks.

A raw ``asyncio.Protocol`` HTTP/1.1 server (keep-alive, Content-Length and
chunked request bodies) that answers with bodies pre-serialised once at start-up
from the shapes in ``spec/mix-openapi.yaml``.  It does as little work per request
as possible so that the client under test, not the server, is the bottleneck.

Routes::

    GET  /health
    GET  /api/sessions                      -> N SessionData (all fields)
    POST /api/sessions                      -> 201 SessionData
    GET  /api/sessions/{id}                 -> SessionData (404 for unknown ids)
    GET  /api/sessions/{id}/messages        -> M BackendMessage with tool calls
    POST /api/sessions/{id}/files/upload    -> body consumed and discarded, 201 FileInfo
    GET  /api/sessions/{id}/files/{name}    -> streamed bytes; size = ?size=N or the
                                               first run of digits in the name
    GET  /stream?sessionId=S&n=K&size=B     -> SSE: connected, K content events with
                                               B-byte content, complete, then close.
                                               sessionId=sse_K_B also sets K and B.
                                               te=close: unchunked, ends at close

Each SSE event is its own HTTP chunk, exactly as Go's ``Flush()`` frames it.  By
default whole events are grouped into socket writes of about 64 KiB: one write
(one syscall) per event caps this Python server near 180k events/s on a small
machine, below what the client is asked to reach.  The client cannot tell the
difference when it is the slower side (its reads see a full socket buffer either
way).  ``--sse-group 1`` or ``group=1`` restores one write per event.

JSON is written the way Go's encoder does it (``<``, ``>``, ``&`` escaped, trailing
newline).  Run ``python bench/server.py --port 0``; it prints ``READY <port>``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import signal
import sys
import time
from collections import OrderedDict
from typing import Any
from urllib.parse import parse_qs, unquote

import msgspec

_DATE = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime()).encode()
_REASONS = {
    200: b"OK",
    201: b"Created",
    204: b"No Content",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
}
_JSON_ENC = msgspec.json.Encoder()
_DIGITS = re.compile(r"(\d+)")
_SSE_SID = re.compile(r"sse_(\d+)_(\d+)$")
_FILENAME = re.compile(rb'filename="([^"]*)"')

# --------------------------------------------------------------------------- bodies


def go_json(obj: Any) -> bytes:
    """Serialise like Go's ``json.Encoder``: HTML-escaped, newline-terminated."""
    raw = _JSON_ENC.encode(obj)
    return raw.replace(b"<", b"\\u003c").replace(b">", b"\\u003e").replace(b"&", b"\\u0026") + b"\n"


def _ts(i: int) -> str:
    sec = 1_764_000_000 + i * 37
    frac = (i * 7_919_311) % 1_000_000_000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{frac:09d}Z"


_WORDS = [
    "the",
    "agent",
    "opened",
    "the",
    "page",
    "and",
    "read",
    "the",
    "table",
    "of",
    "contents",
    "before",
    "it",
    "summarised",
    "each",
    "section,",
    "compared",
    "prices,",
    "checked",
    "<div>",
    "markup",
    "&",
    "fixed",
    "a",
    "bug",
    "in",
    '"main.go"',
    "then",
    "wrote",
    "the",
    "report",
    "to",
    "disk",
]


def _text(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(n_words))


def session_data(i: int, rng: random.Random) -> dict[str, Any]:
    sid = f"sess_{i:04d}_{rng.getrandbits(48):012x}"
    return {
        "id": sid,
        "title": f"Research task #{i}: {_text(rng, 5)}",
        "sessionType": "main" if i % 10 else "subagent",
        "browserMode": (
            "local-browser-service",
            "electron-embedded-browser",
            "remote-cdp-websocket",
        )[i % 3],
        "userMessageCount": rng.randint(1, 40),
        "assistantMessageCount": rng.randint(1, 40),
        "toolCallCount": rng.randint(0, 300),
        "promptTokens": rng.randint(1_000, 2_000_000),
        "completionTokens": rng.randint(100, 200_000),
        "cost": round(rng.random() * 12, 6),
        "createdAt": _ts(i),
        "firstUserMessage": _text(rng, 20),
        "cdpUrl": f"wss://connect.browserbase.com/v1/sessions/{rng.getrandbits(64):016x}",
        "parentSessionId": f"sess_{max(i - 1, 0):04d}_parent",
        "parentToolCallId": f"toolu_{rng.getrandbits(80):020x}",
        "subagentType": "general-purpose",
        "callbacks": [
            {
                "toolName": "Bash",
                "type": "bash_script",
                "name": "lint-after-bash",
                "bashCommand": "make lint && echo $CALLBACK_TOOL_NAME",
                "bashTimeout": 120000,
                "excludeFromContext": False,
                "includeFullHistory": False,
                "messageContent": "",
                "subAgentPrompt": "",
                "subAgentType": "general-purpose",
            }
        ],
    }


_TOOLS = ("Bash", "ReadText", "Glob", "Grep", "Write", "Edit", "Search", "brave_search")


def tool_call(j: int, rng: random.Random) -> dict[str, Any]:
    name = _TOOLS[j % len(_TOOLS)]
    inp = _JSON_ENC.encode({"command": _text(rng, 8), "path": f"/work/src/file_{j}.go"}).decode()
    return {
        "id": f"toolu_{rng.getrandbits(80):020x}",
        "name": name,
        "input": inp,
        "type": "tool_use",
        "finished": True,
        "isError": j % 17 == 0,
        "result": _text(rng, 60),
        "screenshotUrls": [f"/api/sessions/s/files/shot_{j}.png"] if j % 5 == 0 else [],
    }


def backend_message(i: int, sid: str, rng: random.Random) -> dict[str, Any]:
    if i % 2 == 0:
        return {
            "id": f"msg_{i:04d}",
            "sessionId": sid,
            "role": "user",
            "userInput": _text(rng, 25),
        }
    return {
        "id": f"msg_{i:04d}",
        "sessionId": sid,
        "role": "assistant",
        "userInput": "",
        "assistantResponse": _text(rng, 80),
        "reasoning": _text(rng, 40),
        "reasoningDuration": rng.randint(100, 20_000),
        "model": "large-model-2025-09",
        "inputTokens": rng.randint(1_000, 100_000),
        "outputTokens": rng.randint(10, 8_000),
        "cacheReadTokens": rng.randint(0, 50_000),
        "cacheCreationTokens": rng.randint(0, 5_000),
        "cost": round(rng.random() / 10, 6),
        "toolCalls": [tool_call(i * 3 + k, rng) for k in range(3)],
        "callbackResults": [
            {
                "tool_call_id": f"toolu_{i:020d}",
                "tool_name": "Bash",
                "callback_type": "bash_script",
                "callback_name": "lint-after-bash",
                "success": True,
                "exit_code": 0,
                "stdout": _text(rng, 10),
                "stderr": "",
                "exclude_from_context": False,
            }
        ],
    }


def response(status: int, body: bytes, ctype: bytes = b"application/json") -> bytes:
    return b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nDate: %s\r\nContent-Length: %d\r\n\r\n%s" % (
        status,
        _REASONS[status],
        ctype,
        _DATE,
        len(body),
        body,
    )


def error_response(status: int, message: str, kind: str) -> bytes:
    return response(status, go_json({"error": {"code": status, "message": message, "type": kind}}))


class Bodies:
    """Every response the server can give, serialised once."""

    def __init__(self, n_sessions: int, n_messages: int) -> None:
        rng = random.Random(1234)
        sessions = [session_data(i, rng) for i in range(n_sessions)]
        self.session_ids = [s["id"] for s in sessions]
        self.list_sessions = response(200, go_json(sessions))
        self.session_by_id = {s["id"]: response(200, go_json(s)) for s in sessions}
        created = dict(sessions[1], id="sess_created", sessionType="main", parentSessionId="")
        self.created = response(201, go_json(created))
        sid = self.session_ids[0]
        msgs = [backend_message(i, sid, rng) for i in range(n_messages)]
        self.messages = response(200, go_json(msgs))
        self.health = response(
            200, go_json({"status": "ok", "timestamp": _ts(0), "version": "1.0.0"})
        )
        self.not_found = error_response(404, "Not found", "not_found")
        self.bad_request = error_response(400, "title is required", "validation_error")
        self.block = random.Random(99).randbytes(1 << 20)
        self.list_len = len(sessions)
        self.list_bytes = len(self.list_sessions)
        self.messages_bytes = len(self.messages)


# --------------------------------------------------------------------------- SSE

_SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Connection: close\r\nDate: %s\r\nTransfer-Encoding: chunked\r\n\r\n" % _DATE
)


# te=close: no Transfer-Encoding, the body ends when the connection closes (diagnostics)
_SSE_HEAD_CLOSE = _SSE_HEAD.replace(b"Transfer-Encoding: chunked\r\n", b"")


def _chunk(frame: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(frame), frame)


def _content_text(size: int) -> str:
    # Chat-like text with quotes and newlines (escaped in the JSON), exact byte length.
    unit = 'The quick "brown" fox\njumps over the lazy dog. '
    text = (unit * (size // len(unit) + 1))[:size]
    return text


def _group(chunks: list[bytes], limit: int) -> list[bytes]:
    """Join consecutive chunks into writes of about ``limit`` bytes."""
    out: list[bytes] = []
    cur: list[bytes] = []
    size = 0
    for c in chunks:
        cur.append(c)
        size += len(c)
        if size >= limit:
            out.append(b"".join(cur))
            cur, size = [], 0
    if cur:
        out.append(b"".join(cur))
    return out


class SSECache:
    """Pre-built chunk lists per (session, n, size), least recently used first."""

    def __init__(self, max_bytes: int = 400 << 20) -> None:
        self.max_bytes = max_bytes
        self.items: OrderedDict[tuple[str, int, int, int, bool], tuple[list[bytes], int]] = (
            OrderedDict()
        )
        self.total = 0

    def get(self, sid: str, n: int, size: int, group: int, chunked: bool) -> list[bytes]:
        key = (sid, n, size, group, chunked)
        frame = _chunk if chunked else bytes
        hit = self.items.get(key)
        if hit is not None:
            self.items.move_to_end(key)
            return hit[0]
        data = go_json(
            {"type": "content", "content": _content_text(size), "assistantMessageId": "m1"}
        ).rstrip(b"\n")
        chunks = [
            frame(
                b"id: 1\nevent: connected\nretry: 3000\ndata: %s\n\n"
                % go_json({"type": "connected", "sessionId": sid}).rstrip(b"\n")
            )
        ]
        chunks += [
            frame(b"id: %d\nevent: content\ndata: %s\n\n" % (i, data)) for i in range(2, n + 2)
        ]
        done = go_json(
            {
                "type": "complete",
                "done": True,
                "messageId": "m1",
                "content": "",
                "reasoning": "",
                "reasoningDuration": 0,
            }
        ).rstrip(b"\n")
        chunks.append(frame(b"id: %d\nevent: complete\ndata: %s\n\n" % (n + 2, done)))
        if chunked:
            chunks.append(b"0\r\n\r\n")
        if group > 1:
            chunks = _group(chunks, group)
        nbytes = sum(len(c) for c in chunks)
        self.items[key] = (chunks, nbytes)
        self.total += nbytes
        while self.total > self.max_bytes and len(self.items) > 1:
            _, (_, old) = self.items.popitem(last=False)
            self.total -= old
        return chunks


# --------------------------------------------------------------------------- HTTP


class BodyReader:
    """Incremental request-body reader for Content-Length or chunked bodies.

    ``keep`` bodies are accumulated; others are discarded while their first
    4 KiB and last 256 bytes are kept (enough to size a multipart upload).
    """

    __slots__ = (
        "chunk_left",
        "chunked",
        "done",
        "head",
        "keep",
        "left",
        "line",
        "parts",
        "tail",
        "total",
    )

    def __init__(self, length: int, chunked: bool, keep: bool) -> None:
        self.left = length
        self.chunked = chunked
        self.keep = keep
        self.parts: list[bytes] = []
        self.head = b""
        self.tail = b""
        self.total = 0
        self.done = False
        self.chunk_left = -1  # -1: expecting a size line; -2: expecting CRLF after data
        self.line = b""

    def _take(self, piece: bytes) -> None:
        self.total += len(piece)
        if self.keep:
            self.parts.append(piece)
            return
        if len(self.head) < 4096:
            self.head += piece[: 4096 - len(self.head)]
        self.tail = (self.tail + piece[-256:])[-256:]

    def body(self) -> bytes:
        return b"".join(self.parts)

    def feed(self, data: bytes) -> bytes:
        """Consume data; return what is left over after the body (b"" if none)."""
        if not self.chunked:
            if len(data) <= self.left:
                self._take(data)
                self.left -= len(data)
                self.done = self.left == 0
                return b""
            self._take(data[: self.left])
            rest = data[self.left :]
            self.left = 0
            self.done = True
            return rest
        mv = memoryview(data)
        pos = 0
        n = len(data)
        while pos < n and not self.done:
            if self.chunk_left > 0:
                k = min(self.chunk_left, n - pos)
                self._take(bytes(mv[pos : pos + k]))
                pos += k
                self.chunk_left -= k
                if self.chunk_left == 0:
                    self.chunk_left = -2
                continue
            i = data.find(b"\n", pos)
            if i < 0:
                self.line += data[pos:]
                return b""
            line = (self.line + data[pos:i]).strip()
            self.line = b""
            pos = i + 1
            if self.chunk_left == -2:  # CRLF after chunk data
                self.chunk_left = -1
                continue
            if self.chunk_left == -3:  # trailers until an empty line
                if not line:
                    self.done = True
                continue
            size = int(line.split(b";", 1)[0], 16)
            if size == 0:
                self.chunk_left = -3
            else:
                self.chunk_left = size
        return data[pos:]


class HTTPProtocol(asyncio.Protocol):
    def __init__(self, app: App) -> None:
        self.app = app
        self.tr: asyncio.Transport | None = None
        self.buf = bytearray()
        self.reader: BodyReader | None = None
        self.pending: tuple[bytes, str, str, bool] | None = None
        self.busy = False
        self.close_after = False
        self.paused = False
        self.waiter: asyncio.Future[None] | None = None

    # -- flow control
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.tr = transport
        transport.set_write_buffer_limits(high=256 * 1024)

    def connection_lost(self, exc: Exception | None) -> None:
        self.tr = None
        self._wake()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._wake()

    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)
        self.waiter = None

    async def drain(self) -> None:
        if self.paused and self.tr is not None:
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter

    # -- parsing
    def data_received(self, data: bytes) -> None:
        if self.reader is not None:
            rest = self.reader.feed(data)
            if not self.reader.done:
                return
            self._finish_body()
            data = rest
        if data:
            self.buf += data
        self._process()

    def _finish_body(self) -> None:
        reader, pending = self.reader, self.pending
        self.reader = self.pending = None
        assert reader is not None and pending is not None
        method, path, query, _ = pending
        self._dispatch(method, path, query, reader)

    def _process(self) -> None:
        while not self.busy and self.tr is not None and self.reader is None:
            i = self.buf.find(b"\r\n\r\n")
            if i < 0:
                if len(self.buf) > 65536:
                    self.tr.close()
                return
            head = bytes(self.buf[:i])
            del self.buf[: i + 4]
            lines = head.split(b"\r\n")
            try:
                method, target, _ = lines[0].split(b" ", 2)
            except ValueError:
                self.tr.write(error_response(400, "bad request line", "bad_request"))
                self.tr.close()
                return
            length = 0
            chunked = False
            expect = False
            self.close_after = False
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"transfer-encoding":
                    chunked = b"chunked" in value.lower()
                elif name == b"connection":
                    self.close_after = b"close" in value.lower()
                elif name == b"expect":
                    expect = b"100-continue" in value.lower()
            path, _, query = target.decode("latin-1").partition("?")
            if length or chunked:
                if expect:
                    self.tr.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                keep = not path.endswith("/files/upload")
                reader = BodyReader(length, chunked, keep)
                rest = reader.feed(bytes(self.buf))
                self.buf.clear()
                if not reader.done:
                    self.reader = reader
                    self.pending = (method, path, query, keep)
                    return
                self.buf += rest
                self._dispatch(method, path, query, reader)
            else:
                self._dispatch(method, path, query, None)

    # -- routing
    def _dispatch(self, method: bytes, path: str, query: str, body: BodyReader | None) -> None:
        tr = self.tr
        if tr is None:
            return
        b = self.app.bodies
        if method == b"GET":
            if path == "/health":
                tr.write(b.health)
            elif path == "/api/sessions":
                tr.write(b.list_sessions)
            elif path == "/stream":
                self._spawn(self._sse(parse_qs(query)))
                return
            elif path.startswith("/api/sessions/"):
                parts = path.split("/")
                sid = unquote(parts[3])
                if len(parts) == 4:
                    tr.write(b.session_by_id.get(sid, b.not_found))
                elif len(parts) == 5 and parts[4] == "messages":
                    tr.write(
                        b.messages
                        if sid in b.session_by_id
                        else b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 3\r\n\r\n[]\n"
                    )
                elif len(parts) == 6 and parts[4] == "files":
                    self._spawn(self._download(unquote(parts[5]), parse_qs(query)))
                    return
                else:
                    tr.write(b.not_found)
            else:
                tr.write(b.not_found)
        elif method == b"POST":
            if path == "/api/sessions":
                data = body.body() if body is not None else b""
                tr.write(b.created if b'"title"' in data else b.bad_request)
            elif path.startswith("/api/sessions/") and path.endswith("/files/upload"):
                tr.write(self._upload_answer(path, body))
            else:
                tr.write(b.not_found)
        else:
            tr.write(error_response(405, "method not allowed", "bad_request"))
        if self.close_after:
            tr.close()

    def _upload_answer(self, path: str, body: BodyReader | None) -> bytes:
        if body is None or not body.head.startswith(b"--"):
            return error_response(400, "expected a multipart body", "bad_request")
        boundary = body.head.split(b"\r\n", 1)[0]
        hdr_end = body.head.find(b"\r\n\r\n")
        part_head = body.head[:hdr_end]
        if hdr_end < 0 or b'name="file"' not in part_head:
            return error_response(400, "multipart field 'file' is required", "bad_request")
        m = _FILENAME.search(part_head)
        name = m.group(1).decode("utf-8", "replace") if m else "upload.bin"
        closing = body.tail.rfind(b"\r\n" + boundary + b"--")
        tail_start = body.total - len(body.tail)
        size = (tail_start + closing if closing >= 0 else body.total) - (hdr_end + 4)
        sid = unquote(path.split("/")[3])
        info = {
            "name": name.replace(" ", "_"),
            "size": size,
            "modified": int(time.time()),
            "isDir": False,
            "url": f"/api/sessions/{sid}/files/{name}",
        }
        return response(201, go_json(info))

    def _spawn(self, coro: Any) -> None:
        self.busy = True
        task = asyncio.get_running_loop().create_task(coro)
        self.app.tasks.add(task)
        task.add_done_callback(self._stream_done)

    def _stream_done(self, task: asyncio.Task[None]) -> None:
        self.app.tasks.discard(task)
        self.busy = False
        if not task.cancelled() and task.exception() is not None:
            print(f"server: stream failed: {task.exception()!r}", file=sys.stderr)
            if self.tr is not None:
                self.tr.close()
            return
        if self.close_after and self.tr is not None:
            self.tr.close()
            return
        if self.tr is not None and self.buf:
            self._process()

    async def _sse(self, q: dict[str, list[str]]) -> None:
        sid = q.get("sessionId", ["s"])[0]
        # Clients only send sessionId, so "sse_<n>_<size>" also selects the shape.
        m = _SSE_SID.match(sid)
        n = int(q.get("n", [m.group(1) if m else "1000"])[0])
        size = int(q.get("size", [m.group(2) if m else "64"])[0])
        group = int(q.get("group", [str(self.app.sse_group)])[0])
        chunked = q.get("te", [self.app.sse_te])[0] != "close"
        chunks = self.app.sse.get(sid, n, size, group, chunked)
        tr = self.tr
        assert tr is not None
        tr.write(_SSE_HEAD if chunked else _SSE_HEAD_CLOSE)
        for c in chunks:  # one write per event (or per group of events)
            if self.tr is None:
                return
            tr.write(c)
            if self.paused:
                await self.drain()
        self.close_after = True

    async def _download(self, name: str, q: dict[str, list[str]]) -> None:
        if "size" in q:
            size = int(q["size"][0])
        else:
            m = _DIGITS.search(name)
            size = int(m.group(1)) if m else 1024
        tr = self.tr
        assert tr is not None
        tr.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nDate: %s\r\n"
            b"Content-Length: %d\r\n\r\n" % (_DATE, size)
        )
        block = memoryview(self.app.bodies.block)
        step = len(block)
        sent = 0
        while sent < size:
            if self.tr is None:
                return
            k = min(step, size - sent)
            tr.write(block[:k])
            sent += k
            if self.paused:
                await self.drain()


class App:
    def __init__(self, bodies: Bodies, sse_group: int, sse_te: str = "chunked") -> None:
        self.bodies = bodies
        self.sse_group = sse_group
        self.sse_te = sse_te
        self.sse = SSECache()
        self.tasks: set[asyncio.Task[None]] = set()


async def serve(host: str, port: int, bodies: Bodies, sse_group: int, sse_te: str) -> None:
    app = App(bodies, sse_group, sse_te)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: HTTPProtocol(app), host, port, backlog=1024)
    real_port = server.sockets[0].getsockname()[1]
    print(f"READY {real_port}", flush=True)
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set_result, None)
    async with server:
        await stop


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--sessions", type=int, default=1000, help="sessions in GET /api/sessions")
    ap.add_argument("--messages", type=int, default=200, help="messages per session")
    ap.add_argument(
        "--sse-group",
        type=int,
        default=65536,
        help="bytes of whole events per socket write on /stream (1: one write per event; "
        "a query parameter group=N overrides it per stream)",
    )
    ap.add_argument(
        "--sse-te",
        choices=["chunked", "close"],
        default="chunked",
        help="default /stream framing: chunked (as Go sends it) or close (no chunks, "
        "body ends at close; for diagnostics); query te=... overrides it",
    )
    ap.add_argument("--cpu", type=int, default=None, help="pin this process to one CPU")
    args = ap.parse_args(argv)
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    bodies = Bodies(args.sessions, args.messages)
    print(
        f"server: {bodies.list_len} sessions ({bodies.list_bytes} B), "
        f"{args.messages} messages ({bodies.messages_bytes} B), pid {os.getpid()}",
        file=sys.stderr,
        flush=True,
    )
    asyncio.run(serve(args.host, args.port, bodies, args.sse_group, args.sse_te))


if __name__ == "__main__":
    main()
