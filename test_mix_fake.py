"""Tests of mix_fake.MixFake against the Mix OpenAPI specs (current and 0.2)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import math
import os
import re
import signal
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import jsonschema
import pytest
import yaml
from aiohttp import web

from mix_fake import PLAN_MODE_PROMPT, FakeThread, MixFake

HERE = Path(__file__).resolve().parent
SPEC_CURRENT = yaml.safe_load((HERE / "spec" / "mix-openapi.yaml").read_text())
SPEC_OLD = yaml.safe_load((HERE / "spec" / "mix-openapi-0.2.yaml").read_text())
# The spec's tool-name enum is capitalised (``Bash``, ``ReadText``); the real server's tools,
# and so the fake's, are lowercase (real-server note 28): accept their snake_case forms too.
_CORE_TOOLS: list[str] = SPEC_CURRENT["components"]["schemas"]["CoreToolName"]["enum"]
_CORE_TOOLS += [re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower() for name in _CORE_TOOLS]
METHODS = ("get", "post", "put", "patch", "delete")


# ---------------------------------------------------------------------------
# Spec helpers
# ---------------------------------------------------------------------------


def _operations(spec: dict[str, Any]) -> dict[str, tuple[str, str, dict[str, Any]]]:
    ops: dict[str, tuple[str, str, dict[str, Any]]] = {}
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method in METHODS:
                ops[op["operationId"]] = (method.upper(), path, op)
    return ops


OPS_CURRENT = _operations(SPEC_CURRENT)
OPS_OLD = _operations(SPEC_OLD)
ALL_OPS = set(OPS_CURRENT) | set(OPS_OLD)
OPS = {**OPS_OLD, **OPS_CURRENT}


def _resolve(root: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = root
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def to_jsonschema(node: Any, root: dict[str, Any]) -> Any:
    """Inline ``$ref``s and turn OpenAPI 3.0 ``nullable`` into JSON Schema."""
    if isinstance(node, list):
        return [to_jsonschema(item, root) for item in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    nullable = node.pop("nullable", False)
    node.pop("discriminator", None)
    if "$ref" in node:
        out = to_jsonschema(_resolve(root, node.pop("$ref")), root)
        rest = {k: v for k, v in node.items() if k not in ("description", "example")}
        if rest:
            out = {"allOf": [out, to_jsonschema(rest, root)]}
    else:
        out = {key: to_jsonschema(value, root) for key, value in node.items()}
    if nullable:
        out = {"anyOf": [out, {"type": "null"}]}
    return out


def check_schema(schema: Any, instance: Any, root: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator(to_jsonschema(schema, root)).validate(instance)


def component(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def check_response(op_id: str, status: int, body: Any) -> None:
    """Validate a JSON body against the operation's response schema for ``status``."""
    spec, ops = (SPEC_CURRENT, OPS_CURRENT) if op_id in OPS_CURRENT else (SPEC_OLD, OPS_OLD)
    responses = ops[op_id][2]["responses"]
    response = responses.get(str(status))
    if response is None:
        assert status >= 400, f"{op_id}: {status} is not a documented response"
        schema: Any = component("ErrorResponse")
    else:
        schema = response["content"]["application/json"]["schema"]
    check_schema(schema, body, spec)
    if status >= 400:
        assert body["error"]["code"] == status


SSE_SCHEMAS: dict[str, str] = SPEC_CURRENT["components"]["schemas"]["SSEEventStream"][
    "discriminator"
]["mapping"]


# ---------------------------------------------------------------------------
# HTTP and SSE helpers
# ---------------------------------------------------------------------------


class Api:
    def __init__(self, fake: MixFake, http: aiohttp.ClientSession) -> None:
        self.fake = fake
        self.http = http
        self.url = fake.url

    async def call(
        self,
        op_id: str,
        status: int,
        path_params: dict[str, str] | None = None,
        /,
        **kwargs: Any,
    ) -> Any:
        """Call an operation, check the status and validate the JSON body."""
        method, template, _ = OPS[op_id]
        path = template.format(**{k: quote(v, safe="") for k, v in (path_params or {}).items()})
        async with self.http.request(method, self.url + path, **kwargs) as resp:
            raw = await resp.read()
            assert resp.status == status, (op_id, resp.status, raw[:500])
            if status == 204:
                assert raw == b""
                return None
            if resp.content_type == "application/json":
                doc = json.loads(raw)
                check_response(op_id, status, doc)
                return doc
            return raw

    async def session(self, title: str = "test") -> str:
        doc = await self.call(
            "createSession", 201, json={"title": title, "browserMode": "local-browser-service"}
        )
        return str(doc["id"])

    async def send(self, sid: str, text: str, **extra: Any) -> None:
        doc = await self.call("sendMessage", 202, {"id": sid}, json={"text": text, **extra})
        assert doc == {"status": "processing", "sessionId": sid}


@dataclass
class Frame:
    id: int
    event: str
    data: Any
    retry: int | None
    raw: bytes


class SSE:
    """Reads raw SSE bytes, checking framing, ids and event schemas."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self.buf = b""
        self.chunk = b""
        self.frames: deque[Frame] = deque()
        self.last_id = 0

    async def next(self, timeout: float = 3.0) -> Frame:
        while not self.frames:
            data, end = await asyncio.wait_for(self.resp.content.readchunk(), timeout)
            if not data and not end:
                raise EOFError("stream ended")
            self.chunk += data
            if end:
                # one HTTP chunk holds exactly one complete event
                assert self.chunk.endswith(b"\n\n") and self.chunk.count(b"\n\n") == 1, self.chunk
                self.chunk = b""
            self.buf += data
            while b"\n\n" in self.buf:
                raw, self.buf = self.buf.split(b"\n\n", 1)
                self.frames.append(self._parse(raw + b"\n\n"))
        return self.frames.popleft()

    def _parse(self, raw: bytes) -> Frame:
        fields: dict[str, str] = {}
        for line in raw.decode()[:-2].split("\n"):
            name, sep, value = line.partition(": ")
            assert sep, f"bad SSE line {line!r}"
            assert name not in fields, f"duplicate field {name}"
            fields[name] = value
        assert set(fields) <= {"id", "event", "data", "retry"}, fields
        ident = int(fields["id"])
        assert ident == self.last_id + 1, (ident, self.last_id)
        self.last_id = ident
        retry = int(fields["retry"]) if "retry" in fields else None
        data = json.loads(fields["data"])
        event = fields["event"]
        # like the Go server: retry on every frame, by event (an error's or a rate limit's
        # own retryAfter, the same number)
        expected = {
            "heartbeat": 45000,
            "error": data.get("retryAfter") or 750,
            "rate_limit_error": data.get("retryAfter") or 30000,
        }.get(event, 30000)
        assert retry == expected, (event, retry)
        assert isinstance(data, dict)
        if event in SSE_SCHEMAS:
            instance: dict[str, Any] = {"id": fields["id"], "event": event, "data": data}
            if retry is not None:
                instance["retry"] = retry
            check_schema({"$ref": SSE_SCHEMAS[event]}, instance, SPEC_CURRENT)
        return Frame(ident, event, data, retry, raw)

    async def next_event(self, timeout: float = 3.0) -> Frame:
        """Next frame that is not a heartbeat."""
        while True:
            frame = await self.next(timeout)
            if frame.event != "heartbeat":
                return frame

    async def until(self, stop: Callable[[Frame], bool], timeout: float = 5.0) -> list[Frame]:
        frames: list[Frame] = []
        deadline = time.monotonic() + timeout
        while True:
            frame = await self.next_event(max(0.01, deadline - time.monotonic()))
            frames.append(frame)
            if stop(frame):
                return frames

    async def turn(self) -> list[Frame]:
        """Events up to the end of a turn (top-level complete, or error)."""
        return await self.until(
            lambda f: (
                f.event == "error" or (f.event == "complete" and "parentToolCallId" not in f.data)
            )
        )

    async def expect_marker(self, fake: MixFake, sid: str) -> None:
        """Publish a marker and check it is the next event: nothing else was queued."""
        fake.publish(sid, "rate_limit_error", {"type": "rate_limit_error", "error": "marker"})
        frame = await self.next_event()
        assert (frame.event, frame.data["error"]) == ("rate_limit_error", "marker")


@contextlib.asynccontextmanager
async def open_stream(
    api: Api, sid: str, headers: dict[str, str] | None = None
) -> AsyncIterator[SSE]:
    async with api.http.get(
        api.url + "/stream", params={"sessionId": sid}, headers=headers
    ) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        sse = SSE(resp)
        first = await sse.next()
        assert first.event == "connected" and first.id == 1 and first.retry == 30000
        assert first.data == {"sessionId": sid}
        assert first.raw.startswith(b"id: 1\nevent: connected\ndata: {")
        yield sse


def multipart(filename: str, data: bytes, field: str = "file") -> tuple[bytes, str]:
    boundary = "----mixfaketestboundary"
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    body = head + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


async def upload(api: Api, sid: str, filename: str, data: bytes, status: int) -> Any:
    body, ctype = multipart(filename, data)
    return await api.call(
        "uploadSessionFile",
        status,
        {"id": sid},
        data=io.BytesIO(body),
        headers={"Content-Type": ctype},
    )


# ---------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------


@pytest.fixture
async def fake() -> AsyncIterator[MixFake]:
    server = MixFake(heartbeat_interval=0.25)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        yield session


@pytest.fixture
def api(fake: MixFake, http: aiohttp.ClientSession) -> Api:
    return Api(fake, http)


@contextlib.asynccontextmanager
async def configured(
    http: aiohttp.ClientSession, **options: Any
) -> AsyncIterator[tuple[MixFake, Api, str]]:
    """A MixFake made with ``options``, an ``Api`` on it and a new session's id."""
    fake = MixFake(**options)
    async with fake:
        api = Api(fake, http)
        yield fake, api, await api.session()


# ---------------------------------------------------------------------------
# Every operation
# ---------------------------------------------------------------------------


async def test_context_manager_and_start_stop() -> None:
    async with MixFake() as url:
        assert url.startswith("http://127.0.0.1:")
        async with aiohttp.ClientSession() as http, http.get(url + "/health") as resp:
            assert resp.status == 200
    fake = MixFake()
    url = await fake.start()
    assert fake.url == url and isinstance(fake.app, aiohttp.web.Application)
    await fake.stop()
    with pytest.raises(aiohttp.ClientConnectionError):
        async with aiohttp.ClientSession() as http, http.get(url + "/health"):
            pass


def test_fake_serves_exactly_the_spec_operations() -> None:
    fake = MixFake()
    assert len(ALL_OPS) == 42
    assert set(fake.operations) == ALL_OPS
    for op_id, (method, path) in fake.operations.items():
        assert (method, path) == OPS[op_id][:2], op_id


async def test_every_operation_success(api: Api, fake: MixFake) -> None:
    health = await api.call("healthCheck", 200)
    assert health["status"] == "ok" and health["version"]
    assert (await api.call("getSystemInfo", 200))["storageBasePath"]
    tools = await api.call("listLLMTools", 200)
    assert {"bash", "write", "task"} <= {t["name"] for t in tools["tools"]}
    creds = await api.call("getToolCredentialsStatus", 200)
    assert creds["categories"]["web_search"]["tools"][0]["provider"] == "brave"
    assert "web_search" in (await api.call("getToolsStatus", 200))["categories"]

    # authentication
    status = await api.call("getAuthStatus", 200)
    assert status["providers"]["anthropic"] == {
        "auth_method": "api_key",
        "authenticated": True,
        "display_name": "Anthropic",
    }
    assert status["providers"]["openai"]["authenticated"] is False
    stored = await api.call("storeApiKey", 200, json={"provider": "openai", "api_key": "sk-test"})
    assert stored["provider"] == "openai" and stored["status"] == "success"
    assert (await api.call("getAuthStatus", 200))["providers"]["openai"]["authenticated"]
    valid = await api.call("validatePreferredProvider", 200)
    assert valid == {
        "auth_method": "api_key",
        "message": valid["message"],
        "provider": "anthropic",
        "valid": True,
    }
    flow = await api.call("startOAuthFlow", 200, {"provider": "anthropic"})
    assert flow["state"] in flow["auth_url"]
    done = await api.call(
        "handleOAuthCallback",
        200,
        json={"provider": "anthropic", "code": "abc", "state": flow["state"]},
    )
    assert done["expires_in"] == 3600 and done["provider"] == "anthropic"
    status = await api.call("getAuthStatus", 200)
    assert status["providers"]["anthropic"]["auth_method"] == "oauth"
    health_auth = await api.call("getOAuthHealth", 200)
    assert health_auth["providers"]["anthropic"]["status"] == "active"
    datetime.fromisoformat(health_auth["timestamp"].replace("Z", "+00:00"))
    assert (await api.call("refreshOAuthTokens", 200))["status"] == "success"
    deleted = await api.call("deleteCredentials", 200, {"provider": "openai"})
    assert deleted["provider"] == "openai"
    assert not (await api.call("getAuthStatus", 200))["providers"]["openai"]["authenticated"]
    assert await api.call("setApiKey", 200, json={"apiKey": "sk-ant-1"}) == {"success": True}
    assert (await api.call("initiateOAuthLogin", 200))["authUrl"].startswith("https://")

    # commands, MCP
    commands = await api.call("listCommands", 200)
    assert "help" in {c["name"] for c in commands}
    assert (await api.call("getCommand", 200, {"name": "help"}))["usage"].startswith("/help")
    mcp = await api.call("listMcpServers", 200)
    assert [m["connected"] for m in mcp] == [True, False] and mcp[1]["tools"] is None

    # preferences
    prefs = await api.call("getPreferences", 200)
    assert prefs["preferences"] is None and "anthropic" in prefs["available_providers"]
    updated = await api.call("updatePreferences", 200, json={"main_agent_model": "claude-opus-4"})
    assert updated["main_agent_model"] == "claude-opus-4"
    assert updated["sub_agent_max_tokens"] == 4096
    assert (await api.call("getPreferences", 200))["preferences"] == updated
    providers = await api.call("getAvailableProviders", 200)
    assert providers["anthropic"]["display_name"] == "Anthropic"
    reset = await api.call("resetPreferences", 200)
    assert reset["main_agent_model"] == "claude-sonnet-4"

    # sessions
    sid = await api.session("tour")
    session = await api.call("getSession", 200, {"id": sid})
    assert session["title"] == "tour" and session["userMessageCount"] == 0
    datetime.fromisoformat(session["createdAt"].replace("Z", "+00:00"))
    assert sid in {s["id"] for s in await api.call("listSessions", 200)}
    callbacks = [{"toolName": "*", "type": "bash_script", "bashCommand": "echo hi"}]
    patched = await api.call(
        "updateSessionCallbacks", 200, {"id": sid}, json={"callbacks": callbacks}
    )
    assert patched["callbacks"] == callbacks

    # messages over a stream
    async with open_stream(api, sid) as sse:
        await api.send(sid, "hello [notification]")
        frames = await sse.turn()
        note = next(f for f in frames if f.event == "notification")
        await api.call(
            "respondToNotification",
            204,
            {"id": note.data["id"]},
            json={"type": "choice", "value": "yes"},
        )
    assert frames[-1].data["content"] == "Echo: hello [notification]"
    messages = await api.call("getSessionMessages", 200, {"id": sid})
    assert [m["role"] for m in messages] == ["user", "assistant"]
    history = await api.call("getMessageHistory", 200, params={"limit": "10", "offset": "0"})
    assert history[0]["userInput"] == "hello [notification]"
    async with api.http.get(f"{api.url}/api/sessions/{sid}/export") as resp:
        assert resp.headers["Content-Disposition"].endswith(f"session_{sid}_transcript.json")
    export = await api.call("exportSession", 200, {"id": sid})
    assert [m["role"] for m in export["messages"]] == ["user", "assistant"]
    fork = await api.call("forkSession", 201, {"id": sid}, json={"messageIndex": 1})
    assert fork["title"] == "Forked Session" and fork["userMessageCount"] == 1
    rewound = await api.call(
        "rewindSession", 200, {"id": sid}, json={"messageId": messages[0]["id"]}
    )
    assert rewound["userMessageCount"] == 1 and rewound["assistantMessageCount"] == 0

    # files
    info = await upload(api, sid, "notes.txt", b"hi there", 201)
    assert info["name"] == "notes.txt" and info["size"] == 8 and "originalName" not in info
    assert [f["name"] for f in await api.call("listSessionFiles", 200, {"id": sid})] == [
        "notes.txt"
    ]
    data = await api.call("getSessionFile", 200, {"id": sid, "filename": "notes.txt"})
    assert data == b"hi there"
    await api.call("deleteSessionFile", 204, {"id": sid, "filename": "notes.txt"})

    # permissions (the real server answers 200 even for unknown ids)
    granted = await api.call("grantPermission", 200, {"id": "perm-1"})
    assert granted == {
        "status": "granted",
        "id": "perm-1",
        "message": "Permission granted",
        "granted": True,
    }
    denied = await api.call("denyPermission", 200, {"id": "perm-2"})
    assert denied["denied"] is True and denied["status"] == "denied"

    cancelled = await api.call("cancelSessionProcessing", 200, {"id": sid})
    assert cancelled == {"cancelled": True, "status": "cancelled", "sessionId": sid}
    await api.call("deleteSession", 204, {"id": sid})
    await api.call("getSession", 404, {"id": sid})

    assert set(fake.hits) == ALL_OPS, ALL_OPS - set(fake.hits)


# ---------------------------------------------------------------------------
# Error statuses
# ---------------------------------------------------------------------------

OK = {"title": "t", "browserMode": "local-browser-service"}
ERROR_CASES: list[tuple[str, dict[str, str], dict[str, Any], int]] = [
    ("getSession", {"id": "nope"}, {}, 404),
    ("deleteSession", {"id": "nope"}, {}, 404),
    ("updateSessionCallbacks", {"id": "nope"}, {"json": {"callbacks": []}}, 404),
    ("cancelSessionProcessing", {"id": "nope"}, {}, 404),
    ("exportSession", {"id": "nope"}, {}, 404),
    ("listSessionFiles", {"id": "nope"}, {}, 404),
    ("getSessionMessages", {"id": "nope"}, {}, 404),
    ("sendMessage", {"id": "nope"}, {"json": {"text": "hi"}}, 404),
    ("rewindSession", {"id": "nope"}, {"json": {"messageId": "m"}}, 404),
    ("forkSession", {"id": "nope"}, {"json": {"messageIndex": 1}}, 404),
    ("getSessionFile", {"id": "nope", "filename": "a.txt"}, {}, 404),
    ("deleteSessionFile", {"id": "nope", "filename": "a.txt"}, {}, 404),
    ("getSessionFile", {"id": "SID", "filename": "missing.txt"}, {}, 404),
    ("deleteSessionFile", {"id": "SID", "filename": "missing.txt"}, {}, 404),
    ("getCommand", {"name": "nope"}, {}, 404),
    ("respondToNotification", {"id": "nope"}, {"json": {"type": "acknowledge"}}, 404),
    ("respondToNotification", {"id": "nope"}, {"json": {"type": "bogus"}}, 400),
    ("createSession", {}, {"json": {"title": "t"}}, 400),
    ("createSession", {}, {"json": {"browserMode": "local-browser-service"}}, 400),
    ("createSession", {}, {"json": {"title": "t", "browserMode": "bogus"}}, 400),
    ("createSession", {}, {"json": {"title": "t", "browserMode": "remote-cdp-websocket"}}, 400),
    (
        "createSession",
        {},
        {"json": {"title": "t", "browserMode": "remote-cdp-websocket", "cdpUrl": "http://x"}},
        400,
    ),
    ("createSession", {}, {"json": {**OK, "sessionType": "subagent"}}, 400),
    ("createSession", {}, {"json": {**OK, "subagentType": "general-purpose"}}, 400),
    ("createSession", {}, {"json": {**OK, "promptMode": "bogus"}}, 400),
    (
        "createSession",
        {},
        {"json": {**OK, "promptMode": "append", "customSystemPrompt": "x" * 60_000}},
        400,
    ),
    ("createSession", {}, {"json": {**OK, "callbacks": [{"toolName": "*"}]}}, 400),
    (
        "createSession",
        {},
        {"json": {**OK, "callbacks": [{"toolName": "*", "type": "bash_script"}]}},
        400,
    ),
    ("createSession", {}, {"json": {**OK, "content": "x"}}, 400),
    (
        "createSession",
        {},
        {"data": b"{not json", "headers": {"Content-Type": "application/json"}},
        400,
    ),
    ("createSession", {}, {"json": ["a list"]}, 400),
    ("storeApiKey", {}, {"json": {"provider": "nope", "api_key": "k"}}, 400),
    ("storeApiKey", {}, {"json": {"provider": "openai"}}, 400),
    ("setApiKey", {}, {"json": {"apiKey": ""}}, 400),
    ("startOAuthFlow", {"provider": "openai"}, {}, 400),
    (
        "handleOAuthCallback",
        {},
        {"json": {"provider": "anthropic", "code": "c", "state": "unknown"}},
        400,
    ),
    ("handleOAuthCallback", {}, {"json": {"provider": "anthropic"}}, 400),
    ("deleteCredentials", {"provider": "nope"}, {}, 400),
    ("updatePreferences", {}, {"json": {"bogus": 1}}, 400),
    ("updatePreferences", {}, {"json": {"main_agent_max_tokens": "many"}}, 400),
    ("updatePreferences", {}, {"json": {"preferred_provider": "nope"}}, 400),
    ("getMessageHistory", {}, {"params": {"limit": "0"}}, 400),
    ("getMessageHistory", {}, {"params": {"limit": "1001"}}, 400),
    ("getMessageHistory", {}, {"params": {"offset": "-1"}}, 400),
    ("getMessageHistory", {}, {"params": {"limit": "ten"}}, 400),
    ("listSessions", {}, {"params": {"includeSubagents": "maybe"}}, 400),
    ("sendMessage", {"id": "SID"}, {"json": {"content": "hi"}}, 400),
    ("sendMessage", {"id": "SID"}, {"json": {"text": ""}}, 400),
    ("sendMessage", {"id": "SID"}, {"json": {"text": "hi", "thinking_level": "huge"}}, 400),
    ("sendMessage", {"id": "SID"}, {"json": {"text": "hi", "max_steps": 0}}, 400),
    ("sendMessage", {"id": "SID"}, {"json": {"text": "/nope"}}, 404),
    ("rewindSession", {"id": "SID"}, {"json": {}}, 400),
    ("rewindSession", {"id": "SID"}, {"json": {"cleanupMedia": True}}, 400),
    ("rewindSession", {"id": "SID"}, {"json": {"messageId": "unknown"}}, 404),
    ("forkSession", {"id": "SID"}, {"json": {"messageIndex": 0}}, 400),
    ("forkSession", {"id": "SID"}, {"json": {"messageIndex": 5}}, 400),
    ("updateSessionCallbacks", {"id": "SID"}, {"json": {}}, 400),
    ("updateSessionCallbacks", {"id": "SID"}, {"json": {"callbacks": "x"}}, 400),
    (
        "updateSessionCallbacks",
        {"id": "SID"},
        {"json": {"callbacks": [{"toolName": "*", "type": "send_message"}]}},
        400,
    ),
    (
        "uploadSessionFile",
        {"id": "SID"},
        {"data": b"plain", "headers": {"Content-Type": "text/plain"}},
        400,
    ),
    ("getSessionFile", {"id": "SID", "filename": "a.png"}, {"params": {"thumb": "x1"}}, 400),
    ("getSessionFile", {"id": "SID", "filename": "a.png"}, {"params": {"time": "-1"}}, 400),
    ("getSessionFile", {"id": "SID", "filename": "a.png"}, {"params": {"time": "86401"}}, 400),
    ("getSessionFile", {"id": "SID", "filename": "a.png"}, {"params": {"time": "soon"}}, 400),
    ("getSessionFile", {"id": "SID", "filename": "a/b.txt"}, {}, 400),
    ("getSessionFile", {"id": "SID", "filename": "a..b"}, {}, 400),
    ("deleteSessionFile", {"id": "SID", "filename": "x\\y"}, {}, 400),
]


@pytest.mark.parametrize(("op_id", "params", "kwargs", "status"), ERROR_CASES)
async def test_error_responses(
    api: Api, op_id: str, params: dict[str, str], kwargs: dict[str, Any], status: int
) -> None:
    sid = await api.session()
    params = {k: sid if v == "SID" else v for k, v in params.items()}
    doc = await api.call(op_id, status, params, **kwargs)
    expected = {404: {"not_found"}, 400: {"validation_error", "bad_request"}}[status]
    assert doc["error"]["type"] in expected
    assert doc["error"]["message"]


async def test_unknown_fields_are_named(api: Api) -> None:
    sid = await api.session()
    doc = await api.call("sendMessage", 400, {"id": sid}, json={"content": "hi"})
    assert doc["error"]["type"] == "validation_error"
    assert '"content"' in doc["error"]["message"]
    doc = await api.call("createSession", 400, json={**OK, "bogus": 1})
    assert '"bogus"' in doc["error"]["message"]


async def test_unknown_route_is_a_json_404(api: Api) -> None:
    async with api.http.get(api.url + "/api/nothing-here") as resp:
        assert resp.status == 404
        doc = await resp.json()
        check_schema(component("ErrorResponse"), doc, SPEC_CURRENT)
    api.fake.disable("exportSession")
    sid = await api.session()
    doc = await api.call("exportSession", 404, {"id": sid})
    assert doc["error"]["type"] == "not_found"
    api.fake.enable("exportSession")
    await api.call("exportSession", 200, {"id": sid})


async def test_send_message_unauthenticated(api: Api) -> None:
    sid = await api.session()
    await api.call("deleteCredentials", 200, {"provider": "anthropic"})
    doc = await api.call("sendMessage", 401, {"id": sid}, json={"text": "hi"})
    assert doc["error"]["type"] == "unauthorized"


async def test_json_escapes_html_characters(api: Api) -> None:
    async with api.http.post(api.url + "/api/sessions", json={**OK, "title": "<b>&</b>"}) as resp:
        raw = await resp.read()
    assert b"\\u003cb\\u003e\\u0026\\u003c/b\\u003e" in raw
    assert json.loads(raw)["title"] == "<b>&</b>"


# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------


async def test_file_upload_download_delete(api: Api) -> None:
    sid = await api.session()
    info = await upload(api, sid, "my report  v2.txt", b"hello file", 201)
    assert info["name"] == "my_report__v2.txt"
    assert info["originalName"] == "my report  v2.txt"
    assert info["size"] == 10 and info["isDir"] is False
    assert info["url"] == f"/api/sessions/{sid}/files/my_report__v2.txt"
    assert abs(info["modified"] - time.time()) < 60
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
    await upload(api, sid, "pic.png", png, 201)
    listed = await api.call("listSessionFiles", 200, {"id": sid})
    assert [(f["name"], f["size"]) for f in listed] == [
        ("my_report__v2.txt", 10),
        ("pic.png", len(png)),
    ]
    async with api.http.get(f"{api.url}/api/sessions/{sid}/files/pic.png") as resp:
        assert resp.status == 200 and resp.content_type == "image/png"
        assert await resp.read() == png
    for params in ({"thumb": "100"}, {"thumb": "w64"}, {"thumb": "h8", "time": "1.5"}):
        body = await api.call(
            "getSessionFile", 200, {"id": sid, "filename": "pic.png"}, params=params
        )
        assert body == png
    body = await api.call("getSessionFile", 200, {"id": sid, "filename": "my_report__v2.txt"})
    assert body == b"hello file"
    await api.call("deleteSessionFile", 204, {"id": sid, "filename": "pic.png"})
    await api.call("deleteSessionFile", 404, {"id": sid, "filename": "pic.png"})
    await api.call("getSessionFile", 404, {"id": sid, "filename": "pic.png"})
    assert len(await api.call("listSessionFiles", 200, {"id": sid})) == 1


@pytest.mark.parametrize("name", ["../evil.txt", "a/b.txt", "a\\\\b.txt", "..", ""])
async def test_unsafe_upload_names_rejected(api: Api, name: str) -> None:
    sid = await api.session()
    doc = await upload(api, sid, name, b"x", 400)
    assert doc["error"]["type"] == "validation_error"
    assert await api.call("listSessionFiles", 200, {"id": sid}) == []


async def test_upload_without_file_field(api: Api) -> None:
    sid = await api.session()
    body, ctype = multipart("a.txt", b"x", field="other")
    await api.call(
        "uploadSessionFile", 400, {"id": sid}, data=body, headers={"Content-Type": ctype}
    )


async def test_upload_size_limit(http: aiohttp.ClientSession) -> None:
    async with configured(http, max_upload_bytes=1000) as (_, api, sid):
        await upload(api, sid, "exact.bin", b"a" * 1000, 201)
        doc = await upload(api, sid, "big.bin", b"a" * 1001, 413)
        assert "too large" in doc["error"]["message"].lower()
        doc = await upload(api, sid, "huge.bin", b"a" * 3_000_000, 413)
        names = [f["name"] for f in await api.call("listSessionFiles", 200, {"id": sid})]
        assert names == ["exact.bin"]


# ---------------------------------------------------------------------------
# Streaming
# ---------------------------------------------------------------------------


async def test_stream_framing_and_plain_turn(api: Api, fake: MixFake) -> None:
    sid = await api.session()
    async with open_stream(api, sid, headers={"Last-Event-ID": "42"}) as sse:
        beat = await sse.next(timeout=2)
        assert beat.event == "heartbeat" and beat.data == {"type": "ping"} and beat.id == 2
        assert beat.raw == b'id: 2\nevent: heartbeat\ndata: {"type":"ping"}\nretry: 45000\n\n'
        await api.send(sid, "hello world")
        frames = await sse.turn()
    events = [f.event for f in frames]
    assert events[0] == "user_message_created"
    assert frames[0].data["content"] == "hello world"
    assert events[-1] == "complete"
    assert "thinking" in events
    deltas = [f.data["content"] for f in frames if f.event == "content"]
    assert len(deltas) >= 2 and "".join(deltas) == "Echo: hello world"
    complete = frames[-1].data
    assert complete["done"] is True and complete["content"] == "Echo: hello world"
    for frame in frames:
        assert frame.data["type"] == frame.event
    messages = await api.call("getSessionMessages", 200, {"id": sid})
    assert messages[0]["userInput"] == "hello world"
    assert messages[1]["id"] == complete["messageId"]
    assert messages[1]["assistantResponse"] == "Echo: hello world"
    assert messages[1]["reasoning"] == complete["reasoning"]
    session = await api.call("getSession", 200, {"id": sid})
    assert session["userMessageCount"] == 1 and session["assistantMessageCount"] == 1
    assert session["firstUserMessage"] == "hello world"
    await fake.wait_streams_closed(sid)  # the closed stream was unregistered


async def test_ids_restart_on_each_connection(api: Api) -> None:
    sid = await api.session()
    for _ in range(2):
        async with open_stream(api, sid) as sse:
            api.fake.publish(sid, "content", {"type": "content", "content": "x"})
            frame = await sse.next_event()
            assert (frame.id, frame.event) == (2, "content")


async def test_events_before_connect_are_dropped(api: Api, fake: MixFake) -> None:
    sid = await api.session()
    await api.send(sid, "early")
    await fake.wait_idle(sid)
    async with open_stream(api, sid) as sse:
        frame = await sse.next(timeout=2)
        assert frame.event == "heartbeat"
        await sse.expect_marker(fake, sid)
    messages = await api.call("getSessionMessages", 200, {"id": sid})
    assert [m["role"] for m in messages] == ["user", "assistant"]


async def test_unknown_session_stream_and_missing_id(api: Api) -> None:
    async with api.http.get(api.url + "/stream", params={"sessionId": "ghost"}) as resp:
        assert resp.status == 200
        raw = await resp.read()
    sse_frames = raw.split(b"\n\n")
    assert sse_frames[1:] == [b""]
    assert raw.startswith(b"id: 1\nevent: error\ndata: ")
    data = json.loads(raw.split(b"data: ")[1].split(b"\n")[0])
    assert "ghost" in data["error"]
    async with api.http.get(api.url + "/stream") as resp:
        assert resp.status == 400
        check_schema(component("ErrorResponse"), await resp.json(), SPEC_CURRENT)


async def test_session_events_broadcast_to_every_stream(api: Api, fake: MixFake) -> None:
    a = await api.session("a")
    b = await api.session("b")
    async with open_stream(api, a) as sse_a, open_stream(api, b) as sse_b:
        c = await api.session("c")
        for sse in (sse_a, sse_b):
            frame = await sse.next_event()
            assert frame.event == "session_created"
            assert frame.data["sessionId"] == c and frame.data["title"] == "c"
        await api.call("deleteSession", 204, {"id": c})
        for sse in (sse_a, sse_b):
            frame = await sse.next_event()
            assert (frame.event, frame.data["sessionId"]) == ("session_deleted", c)
        # turn events stay on their own session's streams
        await api.send(b, "only for b")
        frames = await sse_b.turn()
        assert frames[-1].data["content"] == "Echo: only for b"
        await sse_a.expect_marker(fake, a)


async def test_tool_and_subagent_events(api: Api, fake: MixFake) -> None:
    sid = await api.session()
    async with open_stream(api, sid) as sse:
        await api.send(sid, "go [tool] [subagent]")
        frames = await sse.turn()
    events = [f.event for f in frames]
    bash_start = next(f for f in frames if f.event == "tool_use_start" and f.data["name"] == "bash")
    call_id = bash_start.data["id"]
    pieces = [
        f.data["input"]
        for f in frames
        if f.event == "tool_use_parameter_delta" and f.data["toolCallId"] == call_id
    ]
    full = next(
        f
        for f in frames
        if f.event == "tool_use_parameter_streaming_complete" and f.data["id"] == call_id
    )
    assert len(pieces) >= 2 and "".join(pieces) == full.data["input"]
    assert json.loads(full.data["input"])["command"] == "echo hello"
    done = next(
        f
        for f in frames
        if f.event == "tool_execution_complete" and f.data["toolCallId"] == call_id
    )
    assert done.data["success"] is True and done.data["toolName"] == "bash"
    assert events.index("tool_execution_start") < events.index("tool_execution_complete")

    task = next(f for f in frames if f.event == "tool_use_start" and f.data["name"] == "task")
    task_id = task.data["id"]
    nested = [f for f in frames if f.data.get("parentToolCallId") == task_id]
    assert nested[0].event == "user_message_created"
    sub_complete = [f for f in nested if f.event == "complete"]
    assert len(sub_complete) == 1
    completes = [f for f in frames if f.event == "complete"]
    assert completes == [sub_complete[0], frames[-1]]
    assert frames.index(sub_complete[0]) < len(frames) - 1
    assert "parentToolCallId" not in frames[-1].data
    task_done = next(
        f
        for f in frames
        if f.event == "tool_execution_complete" and f.data["toolCallId"] == task_id
    )
    assert frames.index(sub_complete[0]) < frames.index(task_done)
    top_content = "".join(
        f.data["content"]
        for f in frames
        if f.event == "content" and "parentToolCallId" not in f.data
    )
    assert top_content == "Echo: go [tool] [subagent]"

    # each tool call is a step of its own: assistant (tool_use) -> tool, then the answer
    messages = await api.call("getSessionMessages", 200, {"id": sid})
    assert [m["role"] for m in messages] == [
        "user",
        "assistant",
        "tool",
        "assistant",
        "tool",
        "assistant",
    ]
    assert [c["name"] for m in messages for c in m.get("toolCalls", [])] == ["bash", "task"]
    calls = messages[1]["toolCalls"]
    assert calls[0]["input"] == full.data["input"] and calls[0]["result"] == "hello\n"
    assert messages[1]["id"] == bash_start.data["assistantMessageId"]
    assert messages[3]["id"] == task.data["assistantMessageId"]
    assert messages[5]["id"] == frames[-1].data["messageId"]
    assert messages[2]["userInput"] == "hello\n"
    session = await api.call("getSession", 200, {"id": sid})
    assert session["toolCallCount"] == 2 and session["assistantMessageCount"] == 3
    export = await api.call("exportSession", 200, {"id": sid})
    assert export["messages"][1]["toolCalls"][0]["inputJson"]["command"] == "echo hello"
    assert [m.get("finishReason") for m in export["messages"]] == [
        None,
        "tool_use",
        None,
        "tool_use",
        None,
        "end_turn",
    ]
    visible = await api.call("listSessions", 200)
    everything = await api.call("listSessions", 200, params={"includeSubagents": "true"})
    subs = [s for s in everything if s["sessionType"] == "subagent"]
    assert len(subs) == 1 and subs[0]["parentSessionId"] == sid
    assert subs[0]["parentToolCallId"] == task_id
    assert subs[0]["id"] not in {s["id"] for s in visible}


@pytest.mark.parametrize("grant", [True, False])
async def test_permission_waits_for_answer(api: Api, fake: MixFake, grant: bool) -> None:
    sid = await api.session()
    async with open_stream(api, sid) as sse:
        await api.send(sid, "write it [permission]")
        frames = await sse.until(lambda f: f.event == "permission")
        perm = frames[-1].data
        assert perm["sessionId"] == sid and perm["toolName"] == "write"
        assert fake.pending_permissions == [perm["id"]]
        with pytest.raises(asyncio.TimeoutError):  # nothing more comes while it waits
            await asyncio.wait_for(sse.next(), 0.2)
        assert fake.pending_permissions == [perm["id"]]  # still waiting
        op = "grantPermission" if grant else "denyPermission"
        doc = await api.call(op, 200, {"id": perm["id"]})
        assert doc["id"] == perm["id"]
        rest = await sse.turn()
        done = next(f for f in rest if f.event == "tool_execution_complete")
        assert done.data["success"] is grant
        if grant:
            assert rest[-1].event == "complete"
        else:  # a denial stops the run: an error, no complete, no final answer
            assert rest[-1].event == "error"
            assert rest[-1].data == {"type": "error", "error": "Permission denied"}
            assert "complete" not in [f.event for f in rest]
            await fake.wait_idle(sid)
            await sse.expect_marker(fake, sid)
    messages = await api.call("getSessionMessages", 200, {"id": sid})
    call = messages[1]["toolCalls"][0]
    assert call.get("isError", False) is (not grant)
    assert messages[2]["role"] == "tool"
    assert messages[2]["userInput"] == call["result"]
    export = await api.call("exportSession", 200, {"id": sid})
    reasons = [m.get("finishReason") for m in export["messages"]]
    if grant:
        assert reasons == [None, "tool_use", None, "end_turn"]
    else:
        assert reasons == [None, "permission_denied", None]
        assert call["result"] == "Permission denied by user"
    assert fake.pending_permissions == []


async def test_plan_mode_suffix_in_stored_row_and_event(api: Api, fake: MixFake) -> None:
    sid = await api.session()
    planned = "plan it [tool]\n\n<system-reminder>\n" + PLAN_MODE_PROMPT + "\n</system-reminder>"
    assert PLAN_MODE_PROMPT.strip() and "\n" in PLAN_MODE_PROMPT
    async with open_stream(api, sid) as sse:
        await api.send(sid, "plan it [tool]", plan_mode=True)
        frames = await sse.turn()
        await api.send(sid, "no plan", plan_mode=False)
        plain = await sse.turn()
    created = frames[0]
    assert created.event == "user_message_created" and created.data["content"] == planned
    assert plain[0].data["content"] == "no plan"
    # special texts are read from the text as sent: the [tool] step ran
    assert [f.data["name"] for f in frames if f.event == "tool_use_start"] == ["bash"]
    assert frames[-1].data["content"] == "Echo: plan it [tool]"
    messages = await api.call("getSessionMessages", 200, {"id": sid})
    users = [m for m in messages if m["role"] == "user"]
    assert [(m["id"], m["userInput"]) for m in users] == [
        (created.data["messageId"], planned),
        (plain[0].data["messageId"], "no plan"),
    ]
    export = await api.call("exportSession", 200, {"id": sid})
    assert export["messages"][0]["content"] == planned
    session = await api.call("getSession", 200, {"id": sid})
    assert session["firstUserMessage"] == planned


async def test_steps_are_stored_rows_with_injected_callback_messages(
    api: Api, fake: MixFake
) -> None:
    callbacks = [
        {"toolName": "Bash", "type": "send_message", "messageContent": "look at the output"},
        {"toolName": "write", "type": "send_message", "messageContent": "not for bash"},
        {"toolName": "bash", "type": "bash_script", "bashCommand": "echo cb"},
        {"toolName": "bash", "type": "send_message", "messageContent": "and go on"},
    ]
    sid = await api.session()
    await api.call("updateSessionCallbacks", 200, {"id": sid}, json={"callbacks": callbacks})
    async with open_stream(api, sid) as sse:
        await api.send(sid, "twice [tool][tool]")
        frames = await sse.turn()
        await fake.wait_idle(sid)
        await sse.expect_marker(fake, sid)  # nothing announced the injected rows
    assert [f.event for f in frames].count("user_message_created") == 1
    starts = [f for f in frames if f.event == "tool_use_start"]
    assert [f.data["name"] for f in starts] == ["bash", "bash"]
    steps = [f.data["assistantMessageId"] for f in starts]
    thinking = {f.data["assistantMessageId"] for f in frames if f.event == "thinking"}
    content = {f.data["assistantMessageId"] for f in frames if f.event == "content"}
    complete = frames[-1].data
    assert complete["content"] == "Echo: twice [tool][tool]"
    assert thinking == {steps[0]} and content == {complete["messageId"]}
    assert len({*steps, complete["messageId"]}) == 3  # a new assistant id per step
    for frame in frames:  # every tool event of a step carries that step's id
        if frame.event.startswith("tool_use_"):
            call_id = frame.data.get("id") or frame.data["toolCallId"]
            owner = next(s for s in starts if s.data["id"] == call_id)
            assert frame.data["assistantMessageId"] == owner.data["assistantMessageId"]

    messages = await api.call("getSessionMessages", 200, {"id": sid})
    export = await api.call("exportSession", 200, {"id": sid})
    rows = [(m["role"], m.get("finishReason"), m["content"]) for m in export["messages"]]
    assert rows == [
        ("user", None, "twice [tool][tool]"),
        ("assistant", "tool_use", ""),
        ("tool", None, "hello\n"),
        ("user", None, "look at the output"),
        ("user", None, "and go on"),
        ("assistant", "tool_use", ""),
        ("tool", None, "hello\n"),
        ("user", None, "look at the output"),
        ("user", None, "and go on"),
        ("assistant", "end_turn", "Echo: twice [tool][tool]"),
    ]
    assert [m["id"] for m in messages] == [m["id"] for m in export["messages"]]
    assert [messages[1]["id"], messages[5]["id"], messages[9]["id"]] == [
        *steps,
        complete["messageId"],
    ]
    for step in (messages[1], messages[5]):
        [call] = step["toolCalls"]
        assert (call["name"], call["result"], call["finished"]) == ("bash", "hello\n", True)
        assert "isError" not in call
    # the first step thought: its row keeps the reasoning; complete carries the last row's own
    assert messages[1]["reasoning"] == "".join(
        f.data["content"] for f in frames if f.event == "thinking"
    )
    assert "reasoning" not in messages[9] and "reasoning" not in complete
    assert messages[9]["assistantResponse"] == complete["content"]
    assert messages[9]["outputTokens"] > 0 and "toolCalls" not in messages[9]
    assert messages[2]["role"] == "tool" and "assistantResponse" not in messages[2]
    session = await api.call("getSession", 200, {"id": sid})
    assert session["userMessageCount"] == 5 and session["assistantMessageCount"] == 3
    assert session["toolCallCount"] == 2


async def test_rows_are_stored_as_the_steps_go(api: Api, fake: MixFake) -> None:
    sid = await api.session()
    async with open_stream(api, sid) as sse:
        await api.send(sid, "[tool] then [permission]")
        frames = await sse.until(lambda f: f.event == "permission")
        export = await api.call("exportSession", 200, {"id": sid})
        # the bash step is final; the write step's row is being written
        assert [(m["role"], m.get("finishReason")) for m in export["messages"]] == [
            ("user", None),
            ("assistant", "tool_use"),
            ("tool", None),
            ("assistant", None),
        ]
        write = next(f for f in frames if f.event == "tool_use_start" and f.data["name"] == "write")
        assert export["messages"][3]["id"] == write.data["assistantMessageId"]
        await api.call("grantPermission", 200, {"id": frames[-1].data["id"]})
        rest = await sse.turn()
    assert rest[-1].event == "complete"
    export = await api.call("exportSession", 200, {"id": sid})
    assert [m.get("finishReason") for m in export["messages"]] == [
        None,
        "tool_use",
        None,
        "tool_use",
        None,
        "end_turn",
    ]


async def test_permission_denied_stops_the_run(api: Api, fake: MixFake) -> None:
    sid = await api.session()
    callbacks = [{"toolName": "write", "type": "send_message", "messageContent": "never"}]
    await api.call("updateSessionCallbacks", 200, {"id": sid}, json={"callbacks": callbacks})
    async with open_stream(api, sid) as sse:
        await api.send(sid, "[tool] [permission] [subagent]")
        frames = await sse.until(lambda f: f.event == "permission")
        assert frames[-1].data["toolName"] == "write"
        await api.call("denyPermission", 200, {"id": frames[-1].data["id"]})
        frames += await sse.turn()
        await fake.wait_idle(sid)
        await sse.expect_marker(fake, sid)  # no complete, no sub-agent afterwards
    assert frames[-1].event == "error"
    assert frames[-1].data == {"type": "error", "error": "Permission denied"}
    events = [f.event for f in frames]
    assert "complete" not in events and "content" not in events
    assert [f.data["name"] for f in frames if f.event == "tool_use_start"] == ["bash", "write"]
    export = await api.call("exportSession", 200, {"id": sid})
    assert [(m["role"], m.get("finishReason")) for m in export["messages"]] == [
        ("user", None),
        ("assistant", "tool_use"),
        ("tool", None),
        ("assistant", "permission_denied"),
        ("tool", None),
    ]
    messages = await api.call("getSessionMessages", 200, {"id": sid})
    [call] = messages[3]["toolCalls"]
    assert call["name"] == "write" and call["isError"] is True
    assert messages[4]["userInput"] == call["result"]
    assert fake.active_runs == [] and fake.pending_permissions == []


async def test_tool_names_are_lowercase(api: Api) -> None:
    tools = await api.call("listLLMTools", 200)
    names = [t["name"] for t in tools["tools"]]
    assert names == ["bash", "read_text", "write", "glob", "grep", "task"]
    sid = await api.session()
    async with open_stream(api, sid) as sse:
        await api.send(sid, "[tool] [permission] [subagent]")
        frames = await sse.until(lambda f: f.event == "permission")
        assert frames[-1].data["toolName"] == "write"
        await api.call("grantPermission", 200, {"id": frames[-1].data["id"]})
        frames += await sse.turn()
    main = [f for f in frames if "parentToolCallId" not in f.data]
    assert [f.data["name"] for f in main if f.event == "tool_use_start"] == [
        "bash",
        "write",
        "task",
    ]
    assert [f.data["toolName"] for f in main if f.event == "tool_execution_complete"] == [
        "bash",
        "write",
        "task",
    ]


async def test_rate_limit_event_mid_run(api: Api, fake: MixFake) -> None:
    sid = await api.session()
    async with open_stream(api, sid) as sse:
        await api.send(sid, "busy provider [ratelimit]")
        frames = await sse.turn()
    events = [f.event for f in frames]
    assert events.count("rate_limit_error") == 1
    limit = frames[events.index("rate_limit_error")]
    assert limit.data == {
        "type": "rate_limit_error",
        "error": "Rate limit exceeded; will automatically retry.",
        "retryAfter": 1,
        "attempt": 1,
        "maxAttempts": 3,
    }
    # the frame's retry line carries retryAfter as it is (real-server notes 12 and 26)
    assert limit.retry == 1 and limit.raw.endswith(b"\nretry: 1\n\n")
    assert events.index("rate_limit_error") < events.index("content")
    assert events[-1] == "complete"  # the run went on
    assert frames[-1].data["content"] == "Echo: busy provider [ratelimit]"
    export = await api.call("exportSession", 200, {"id": sid})
    assert [m.get("finishReason") for m in export["messages"]] == [None, "end_turn"]


async def test_notification_response(api: Api) -> None:
    sid = await api.session()
    async with open_stream(api, sid) as sse:
        await api.send(sid, "[notification]")
        frames = await sse.turn()
    note = next(f for f in frames if f.event == "notification").data
    assert note["responseType"] == "choice" and note["choices"]
    await api.call("respondToNotification", 400, {"id": note["id"]}, json={"type": "choice"})
    await api.call(
        "respondToNotification", 204, {"id": note["id"]}, json={"type": "choice", "value": "no"}
    )
    await api.call("respondToNotification", 404, {"id": note["id"]}, json={"type": "acknowledge"})


async def test_error_turn_has_no_complete(api: Api, fake: MixFake) -> None:
    sid = await api.session()
    async with open_stream(api, sid) as sse:
        await api.send(sid, "break [error]")
        frames = await sse.turn()
        assert frames[-1].event == "error" and frames[-1].data["error"]
        assert "complete" not in [f.event for f in frames]
        await fake.wait_idle(sid)
        await sse.expect_marker(fake, sid)
    messages = await api.call("getSessionMessages", 200, {"id": sid})
    assert [m["role"] for m in messages] == ["user", "assistant"]  # the failed, partial answer
    export = await api.call("exportSession", 200, {"id": sid})
    assert [m.get("finishReason") for m in export["messages"]] == [None, "error"]


async def test_cancel_ends_turn_with_error(api: Api, fake: MixFake) -> None:
    sid = await api.session()
    async with open_stream(api, sid) as sse:
        await api.send(sid, "take your time [slow]")
        await api.send(sid, "queued behind the first")
        first = await sse.next_event()
        assert first.event == "user_message_created"
        doc = await api.call("cancelSessionProcessing", 200, {"id": sid})
        assert doc == {"cancelled": True, "status": "cancelled", "sessionId": sid}
        frames = await sse.turn()
        assert frames[-1].event == "error"
        assert "complete" not in [f.event for f in frames]
        await fake.wait_idle(sid)
        await sse.expect_marker(fake, sid)  # the queued turn was cancelled too
    messages = await api.call("getSessionMessages", 200, {"id": sid})
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[0]["userInput"] == "take your time [slow]"
    export = await api.call("exportSession", 200, {"id": sid})
    assert export["messages"][-1]["finishReason"] == "canceled"


async def test_slash_command_answers_without_agent(api: Api, fake: MixFake) -> None:
    sid = await api.session()
    async with open_stream(api, sid) as sse:
        async with api.http.post(
            f"{api.url}/api/sessions/{sid}/messages", json={"text": "/help"}
        ) as resp:
            assert resp.status == 200
            doc = await resp.json()
        # the Go server's shape: a BackendMessage without the spec's required sessionId
        check_schema(component("BackendMessage"), {**doc, "sessionId": sid}, SPEC_CURRENT)
        assert set(doc) == {"id", "role", "userInput", "assistantResponse"}
        assert doc["id"] == "cmd-help" and doc["role"] == "assistant"
        assert doc["userInput"] == "/help" and "/clear" in doc["assistantResponse"]
        await sse.expect_marker(fake, sid)
    assert await api.call("getSessionMessages", 200, {"id": sid}) == []


async def test_scripted_replies(api: Api, fake: MixFake) -> None:
    sid = await api.session()
    fake.script_reply(sid, "A scripted answer with several words in it.")
    fake.reply_hook = lambda session_id, text: f"hook:{session_id == sid}:{text.upper()}"
    async with open_stream(api, sid) as sse:
        await api.send(sid, "first")
        frames = await sse.turn()
        assert frames[-1].data["content"] == "A scripted answer with several words in it."
        assert "".join(f.data["content"] for f in frames if f.event == "content") == (
            "A scripted answer with several words in it."
        )
        await api.send(sid, "second", thinking_level="off")
        frames = await sse.turn()
        assert frames[-1].data["content"] == "hook:True:SECOND"
        assert "thinking" not in [f.event for f in frames]


async def test_buffer_overflow_drops_events(http: aiohttp.ClientSession) -> None:
    async with configured(http, buffer_size=5, heartbeat_interval=0.2) as (fake, api, sid):
        async with open_stream(api, sid) as sse:
            delivered = [
                fake.publish(sid, "content", {"type": "content", "content": str(i)})
                for i in range(20)
            ]
            assert delivered == [1] * 5 + [0] * 15
            assert fake.dropped_events == 15
            got = [(await sse.next()).data for _ in range(6)]
        assert [d.get("content") for d in got[:5]] == ["0", "1", "2", "3", "4"]
        assert got[5] == {"type": "ping"}


async def test_event_delay_spaces_events(http: aiohttp.ClientSession) -> None:
    async with (
        configured(http, event_delay=0.05) as (_, api, sid),
        open_stream(api, sid) as sse,
    ):
        start = time.monotonic()
        await api.send(sid, "hi")
        frames = await sse.turn()
        assert time.monotonic() - start >= 0.05 * (len(frames) - 2)


# ---------------------------------------------------------------------------
# Fault injection and recording
# ---------------------------------------------------------------------------


async def test_fail_next_with_retry_after(api: Api, fake: MixFake) -> None:
    sid = await api.session()
    fake.fail_next("getSession", times=2, status=503, retry_after="2")
    for _ in range(2):
        async with api.http.get(f"{api.url}/api/sessions/{sid}") as resp:
            assert resp.status == 503 and resp.headers["Retry-After"] == "2"
            check_response("getSession", 503, await resp.json())
    await api.call("getSession", 200, {"id": sid})
    assert fake.hits["getSession"] == 3

    date = "Wed, 21 Oct 2026 07:28:00 GMT"
    fake.fail_next("GET /api/sessions/{id}", status=429, retry_after=date)
    async with api.http.get(f"{api.url}/api/sessions/{sid}") as resp:
        assert resp.status == 429 and resp.headers["Retry-After"] == date
        assert (await resp.json())["error"]["code"] == 429
    await api.call("getSession", 200, {"id": sid})
    await api.call("listSessions", 200)  # the template rule did not match this route

    body = {"error": {"code": 500, "message": "boom", "type": "INTERNAL"}}
    fake.fail_next("POST /api/sessions*", status=500, body=body)
    async with api.http.post(f"{api.url}/api/sessions", json=OK) as resp:
        assert resp.status == 500 and await resp.json() == body
    fake.fail_next("healthCheck", body="not json at all", status=502)
    async with api.http.get(f"{api.url}/health") as resp:
        assert resp.status == 502 and await resp.read() == b"not json at all"
    with pytest.raises(ValueError):
        fake.fail_next("noSuchOperation")


async def test_drop_and_delay(api: Api, fake: MixFake) -> None:
    # aiohttp's client itself retries an idempotent request once after a disconnect
    fake.drop_next("healthCheck", times=2)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        async with api.http.get(f"{api.url}/health") as resp:
            await resp.read()
    assert fake.hits["healthCheck"] == 2
    await api.call("healthCheck", 200)
    assert fake.hits["healthCheck"] == 3
    fake.drop_next("POST /api/sessions")
    with pytest.raises(aiohttp.ServerDisconnectedError):
        async with api.http.post(f"{api.url}/api/sessions", json=OK) as resp:
            await resp.read()
    await api.call("createSession", 201, json=OK)
    assert fake.hits["createSession"] == 2

    fake.delay_next("healthCheck", 30)
    seen = fake.hits["healthCheck"]
    held = asyncio.ensure_future(api.call("healthCheck", 200))

    async def arrived() -> None:
        while fake.hits["healthCheck"] == seen:  # noqa: ASYNC110 (no event to wait on)
            await asyncio.sleep(0.01)

    await asyncio.wait_for(arrived(), 10)  # the held request took the delay
    await api.call("healthCheck", 200)  # the delay applied once: the next one answers
    assert not held.done()  # the delayed one is still held
    held.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await held


async def test_handle_next_answers_with_a_handler(api: Api, fake: MixFake) -> None:
    async def teapot(request: web.Request) -> web.StreamResponse:
        return web.Response(status=418, text=request.path)

    fake.handle_next("/*", teapot, times=2)
    for path in ("/health", "/not/in/the/api"):
        async with api.http.get(api.url + path) as resp:
            assert (resp.status, await resp.text()) == (418, path)
    await api.call("healthCheck", 200)  # two times only
    assert [r.path for r in fake.requests] == ["/health", "/not/in/the/api", "/health"]
    fake.handle_next("getSession", teapot, times=math.inf)
    with pytest.raises(ValueError):
        fake.handle_next("noSuchOperation", teapot)


async def test_wait_requests_streams_and_connections(api: Api, fake: MixFake) -> None:
    with pytest.raises(TimeoutError):
        await fake.wait_requests(1, timeout=0.1)
    call = asyncio.ensure_future(api.call("healthCheck", 200))
    await fake.wait_requests(1)
    await call
    assert fake.open_connections == 1  # the client's pool keeps its connection
    sid = await api.session()
    async with open_stream(api, sid):
        await fake.wait_for_streams(sid)
        with pytest.raises(TimeoutError):
            await fake.wait_streams_closed(sid, timeout=0.1)
    await fake.wait_streams_closed(sid)
    await api.http.close()
    await fake.wait_connections(0)


async def test_active_runs(api: Api, fake: MixFake) -> None:
    sid = await api.session()
    assert fake.active_runs == []
    await api.send(sid, "take a while [slow]")
    assert fake.active_runs == [sid]
    await fake.wait_idle(sid)
    assert fake.active_runs == []


def test_fake_thread_serves_from_its_own_loop() -> None:
    import urllib.request

    with FakeThread() as server:
        sid = server.sync(server.fake.add_session)
        with urllib.request.urlopen(f"{server.url}/api/sessions/{sid}", timeout=10) as resp:
            assert json.loads(resp.read())["id"] == sid
        server.call(server.fake.wait_requests(1))
    assert not server.thread.is_alive() and server.loop.is_closed()
    server.stop()  # again: harmless


async def test_cut_stream_after(api: Api, fake: MixFake) -> None:
    sid = await api.session()
    fake.cut_stream_after(3)
    async with api.http.get(api.url + "/stream", params={"sessionId": sid}) as resp:
        sse = SSE(resp)
        assert (await sse.next()).event == "connected"
        await fake.wait_for_streams(sid)
        for i in range(5):
            fake.publish(sid, "content", {"type": "content", "content": str(i)})
        assert [(await sse.next()).data["content"] for _ in range(2)] == ["0", "1"]
        with pytest.raises((aiohttp.ClientPayloadError, EOFError)):
            await sse.next()
    await fake.wait_streams_closed(sid)
    async with open_stream(api, sid) as sse:  # the cut applied once
        await sse.expect_marker(fake, sid)


async def test_requests_are_recorded(api: Api, fake: MixFake) -> None:
    sid = await api.session("recorded")
    method, path, query, headers, body = fake.requests[-1]
    assert (method, path, query) == ("POST", "/api/sessions", {})
    assert json.loads(body) == {**OK, "title": "recorded"}
    assert headers["Content-Type"].startswith("application/json")
    await api.call("getMessageHistory", 200, params={"limit": "5"})
    assert fake.requests[-1].query == {"limit": "5"}
    await upload(api, sid, "f.txt", b"abc", 201)
    assert fake.requests[-1].path == f"/api/sessions/{sid}/files/upload"
    assert fake.hits["createSession"] == 1 and fake.hits["uploadSessionFile"] == 1


# ---------------------------------------------------------------------------
# State details
# ---------------------------------------------------------------------------


async def test_preferences_partial_update(api: Api) -> None:
    first = await api.call(
        "updatePreferences",
        200,
        json={"sub_agent_max_tokens": 1234, "preferred_provider": "openai"},
    )
    second = await api.call("updatePreferences", 200, json={"main_agent_reasoning_effort": "high"})
    assert second["sub_agent_max_tokens"] == 1234 and second["preferred_provider"] == "openai"
    assert second["main_agent_reasoning_effort"] == "high"
    assert second["created_at"] == first["created_at"]
    valid = await api.call("validatePreferredProvider", 200)
    assert valid["provider"] == "openai" and valid["valid"] is False
    third = await api.call("updatePreferences", 200, json={"sub_agent_max_tokens": None})
    assert third["sub_agent_max_tokens"] == 4096


async def test_history_pagination_and_rewind(api: Api, fake: MixFake) -> None:
    sid = await api.session()
    for text in ("first", "second", "third"):
        await api.send(sid, text)
    await fake.wait_idle(sid)
    messages = await api.call("getSessionMessages", 200, {"id": sid})
    assert [m["userInput"] for m in messages if m["role"] == "user"] == ["first", "second", "third"]
    page = await api.call("getMessageHistory", 200, params={"limit": "2", "offset": "1"})
    assert [m["userInput"] for m in page] == ["second", "first"]
    upload_before = await upload(api, sid, "keep.txt", b"k", 201)
    assert upload_before["name"] == "keep.txt"
    rewound = await api.call(
        "rewindSession", 200, {"id": sid}, json={"messageId": messages[1]["id"]}
    )
    assert rewound["userMessageCount"] == 1 and rewound["assistantMessageCount"] == 1
    after = await api.call("getSessionMessages", 200, {"id": sid})
    assert [m["id"] for m in after] == [m["id"] for m in messages[:2]]
    fork = await api.call(
        "forkSession", 201, {"id": sid}, json={"messageIndex": 2, "title": "copy"}
    )
    forked = await api.call("getSessionMessages", 200, {"id": fork["id"]})
    assert [m["userInput"] for m in forked] == [m["userInput"] for m in after]


async def test_remote_browser_session(api: Api) -> None:
    doc = await api.call(
        "createSession",
        201,
        json={
            "title": "remote",
            "browserMode": "remote-cdp-websocket",
            "cdpUrl": "wss://example.test/cdp",
            "promptMode": "append",
            "customSystemPrompt": "Be brief.",
        },
    )
    assert (
        doc["cdpUrl"] == "wss://example.test/cdp" and doc["browserMode"] == "remote-cdp-websocket"
    )


async def test_command_line_server() -> None:
    """``python mix_fake.py --port 0`` serves, says where, and stops cleanly on Ctrl-C."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(HERE / "mix_fake.py"),
        "--port",
        "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(HERE)},
    )
    try:
        assert proc.stdout is not None
        # The server says where it listens once it does: no polling, no port race.
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        url = re.search(r"http://127\.0\.0\.1:\d+", line)
        assert url is not None, line
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{url.group()}/health") as resp,
        ):
            assert resp.status == 200
            assert (await resp.json())["status"] == "ok"
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
