"""Models and errors: responses encode back to what the server sent, timestamps, fields
real servers send, the original SDK's error attributes, bounded messages, runtime types.

Responses are decoded from synthesized wire documents (every response schema of the
merged spec, in several shapes) and from loopback servers; the README's error-handling
sample is extracted and run as written against a loopback server.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import io
import json
import re
import socket
import threading
import typing
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
import yaml
from aiohttp import web

import mix_client
from mix_client import (
    AgentError,
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AsyncMix,
    BadRequestError,
    ErrorBody,
    ErrorEvent,
    ErrorResponse,
    InternalServerError,
    InvalidInputError,
    Mix,
    MixError,
    RequestTimeoutError,
    ResponseValidationError,
    RESTError,
)

ROOT = Path(__file__).resolve().parent
SPEC_PATH = ROOT / "contract" / "mix-openapi-merged.yaml"
README = ROOT / "README.md"
SPEC: dict[str, Any] = yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))
HTTP_METHODS = ("get", "put", "post", "delete", "patch")
OFFICIAL_ATTRS = ("message", "status_code", "headers", "body", "raw_response", "data")


# ------------------------------------------------------------------ helpers


def deref(schema: Any) -> dict[str, Any]:
    if not isinstance(schema, dict):
        return {}
    while "$ref" in schema:
        node: Any = SPEC
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        schema = {**node, **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema


def json_responses() -> list[tuple[str, int, dict[str, Any]]]:
    """(operationId, status, schema) of every 2xx JSON response in the merged spec."""
    out = []
    for item in SPEC["paths"].values():
        for method, op in item.items():
            if method not in HTTP_METHODS:
                continue
            for code, resp in op.get("responses", {}).items():
                media = (resp or {}).get("content", {}).get("application/json")
                if 200 <= int(code) < 300 and media and "schema" in media:
                    out.append((op["operationId"], int(code), deref(media["schema"])))
    return sorted(out, key=lambda r: (r[0], r[1]))


VARIANTS = ("full", "zero", "required", "null")


def synth(schema: Any, variant: str, depth: int = 0) -> Any:
    """A wire document for ``schema``.

    ``full``: every property with a truthy value; ``zero``: every property with its
    falsy value (``false``, ``0``, ``""``, ``[]``, ``{}``), unknown enum values and
    timestamps that do not parse; ``required``: only required properties (full values);
    ``null``: like ``full`` with nullable properties ``null``.
    """
    schema = deref(schema)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return synth(schema[key][0], variant, depth)
    zero = variant == "zero"
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties")
        if isinstance(props, dict):
            required = set(schema.get("required", []))
            doc = {}
            for name, sub in props.items():
                if variant == "required" and name not in required:
                    continue
                sub = deref(sub)
                if variant == "null" and sub.get("nullable") and name not in required:
                    doc[name] = None
                else:
                    doc[name] = synth(sub, variant, depth + 1)
            return doc
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict) and extra:
            return {} if zero or depth > 4 else {"k\u00e9y": synth(extra, variant, depth + 1)}
        return {} if zero else {"free": [1, "two", None, {"n": True}], "x": None}
    if kind == "array":
        return [] if zero or depth > 4 else [synth(schema.get("items", {}), variant, depth + 1)]
    if kind == "string":
        if schema.get("format") == "date-time":
            return "not a time" if zero else "2024-05-06T07:08:09.123456789+02:00"
        if "enum" in schema:
            return "some_new_value" if zero else schema["enum"][0]
        return "" if zero else "t\u00e9xt <&> \u2603"
    if kind == "integer":
        return 0 if zero else 7
    if kind == "number":
        return 0 if zero else 1.5
    if kind == "boolean":
        return not zero
    return None if zero else "anything"


def decode(op_id: str, status: int, doc: Any) -> Any:
    return mix_client.OPERATIONS[op_id].decode(status, json.dumps(doc).encode())


def wire_of(result: Any, op_id: str, status: int) -> Any:
    """The decoded object that stands for the body (send_message 200 wraps the message)."""
    if op_id == "sendMessage" and status == 200:
        return result.message
    return result


def assert_roundtrip(obj: Any, raw: Any) -> None:
    """Encoding ``obj`` gives back ``raw``: every field the model knows that the server
    sent with a value, with its wire name and value (``null`` and unknown fields aside;
    timestamps compared as instants)."""
    encoded = json.loads(msgspec.json.encode(obj))
    assert encoded == msgspec.to_builtins(obj)
    _same(obj, encoded, raw, "$")


def _same(value: Any, enc: Any, raw: Any, where: str) -> None:
    if isinstance(value, msgspec.Struct):
        assert isinstance(raw, dict) and isinstance(enc, dict), where
        fields = {f.encode_name: f for f in msgspec.structs.fields(value)}
        expected = {k for k, v in raw.items() if k in fields and v is not None}
        assert expected <= set(enc), f"{where}: sent {sorted(expected - set(enc))} dropped"
        for key in set(enc) - expected:
            # Not sent: only a field the model documents a default for may appear, with it.
            field = fields[key]
            default = (
                field.default_factory()
                if field.default_factory is not msgspec.NODEFAULT
                else field.default
            )
            assert default is not None and enc[key] == msgspec.to_builtins(default), (
                f"{where}.{key}: not sent, encoded as {enc[key]!r}"
            )
        for key in expected:
            _same(getattr(value, fields[key].name), enc[key], raw[key], f"{where}.{key}")
    elif isinstance(value, datetime):
        assert isinstance(raw, str) and isinstance(enc, str), where
        sent = msgspec.convert(raw, datetime)
        assert msgspec.convert(enc, datetime) == sent == value, f"{where}: {enc!r} != {raw!r}"
    elif isinstance(value, dict):
        assert isinstance(raw, dict) and set(enc) == set(raw), f"{where}: {enc!r} != {raw!r}"
        for key in raw:
            _same(value[key], enc[key], raw[key], f"{where}[{key!r}]")
    elif isinstance(value, list):
        assert isinstance(raw, list) and len(enc) == len(raw), f"{where}: {enc!r} != {raw!r}"
        for i, item in enumerate(value):
            _same(item, enc[i], raw[i], f"{where}[{i}]")
    elif isinstance(raw, bool):
        assert enc is raw, f"{where}: {enc!r} != {raw!r}"
    else:
        assert enc == raw, f"{where}: {enc!r} != {raw!r}"


def unused_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


class Canned:
    """One HTTP answer a loopback server gives to every request."""

    def __init__(
        self, status: int, body: bytes | str | Any, content_type: str = "application/json"
    ) -> None:
        if isinstance(body, str):
            body = body.encode()
        elif not isinstance(body, bytes):
            body = json.dumps(body).encode()
        self.status, self.body, self.content_type = status, body, content_type


@contextlib.asynccontextmanager
async def loopback(answer: Canned) -> AsyncIterator[str]:
    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(
            status=answer.status,
            body=answer.body,
            headers={"Content-Type": answer.content_type, "X-Probe": "1"},
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


@contextlib.contextmanager
def threaded_loopback(answer: Canned) -> Iterator[str]:
    """A loopback server on its own thread and loop (for blocking code under test)."""
    loop = asyncio.new_event_loop()
    ready: asyncio.Future[str] = loop.create_future()
    stop = asyncio.Event()

    async def main() -> None:
        try:
            async with loopback(answer) as url:
                ready.set_result(url)
                await stop.wait()
        except BaseException as exc:  # pragma: no cover - reported to the test
            if not ready.done():
                ready.set_exception(exc)
            raise

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    try:
        url = asyncio.run_coroutine_threadsafe(asyncio.wait_for(_wait(ready), 10), loop).result(15)
        yield url
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        assert not thread.is_alive()
        loop.close()


async def _wait(fut: asyncio.Future[str]) -> str:
    return await fut


# ------------------------------------------------- 1. responses keep every field


FALSY_DOCS: list[tuple[type[Any], dict[str, Any]]] = [
    (mix_client.FileInfo, {"name": "a", "size": 0, "modified": 0, "isDir": False, "url": ""}),
    (mix_client.McpServer, {"name": "m", "connected": False, "status": "", "tools": []}),
    (
        mix_client.ToolCall,
        {"id": "t", "name": "", "input": "", "type": "", "finished": False, "isError": False},
    ),
    (
        mix_client.CallbackResult,
        {
            "tool_call_id": "",
            "tool_name": "",
            "callback_type": "",
            "success": False,
            "exit_code": 0,
        },
    ),
    (mix_client.LLMToolsResponse, {"tools": []}),
    (mix_client.ExportSession, {"id": "e", "title": "", "messages": [], "cost": 0.0}),
    (mix_client.AuthStatusResponse, {"providers": {}}),
    (mix_client.RESTError, {"code": 0, "message": "", "type": ""}),
    (
        mix_client.SessionData,
        {
            "id": "s",
            "title": "",
            "sessionType": "",
            "browserMode": "",
            "userMessageCount": 0,
            "assistantMessageCount": 0,
            "toolCallCount": 0,
            "promptTokens": 0,
            "completionTokens": 0,
            "cost": 0,
            "createdAt": "",
        },
    ),
]


@pytest.mark.parametrize(("model", "doc"), FALSY_DOCS, ids=lambda v: getattr(v, "__name__", ""))
def test_false_zero_and_empty_values_survive_encoding(
    model: type[Any], doc: dict[str, Any]
) -> None:
    obj = msgspec.json.decode(json.dumps(doc).encode(), type=model)
    assert json.loads(msgspec.json.encode(obj)) == doc
    assert msgspec.to_builtins(obj) == json.loads(msgspec.json.encode(obj))


def test_fields_the_server_left_out_stay_out() -> None:
    doc = {"id": "s1", "title": "T", "createdAt": "2024-01-02T03:04:05Z"}
    session = msgspec.json.decode(json.dumps(doc).encode(), type=mix_client.SessionData)
    assert session.cdp_url is None and session.callbacks is None
    encoded = json.loads(msgspec.json.encode(session))
    # Only what was sent, plus the spec-required counters the server omitted.
    assert {k: encoded[k] for k in doc} == doc
    assert "cdpUrl" not in encoded and "callbacks" not in encoded
    assert "parentSessionId" not in encoded


def test_a_model_built_in_python_encodes_its_defaults() -> None:
    """The _kept defaults are never "the default" for omit_defaults (msgspec behaviour)."""
    assert json.loads(msgspec.json.encode(mix_client.FileInfo(name="x"))) == {
        "name": "x",
        "size": 0,
        "modified": 0,
        "isDir": False,
        "url": "",
    }


def test_request_bodies_still_omit_defaults() -> None:
    body = mix_client._SendMessageBody(text="hi")
    assert json.loads(msgspec.json.encode(body)) == {"text": "hi"}
    for cls in (mix_client._Body, mix_client._CamelBody):
        assert cls.__struct_config__.omit_defaults


RESPONSES = json_responses()


def test_every_operation_with_a_json_answer_is_covered() -> None:
    ops = {op_id for op_id, _, _ in RESPONSES}
    json_ops = {
        op_id
        for op_id, op in mix_client.OPERATIONS.items()
        if op.decode is not mix_client._no_content and op_id != "getSessionFile"
    }
    assert json_ops <= ops, sorted(json_ops - ops)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(
    ("op_id", "status", "schema"), RESPONSES, ids=[f"{o}-{s}" for o, s, _ in RESPONSES]
)
def test_decode_then_encode_gives_back_the_wire_document(
    op_id: str, status: int, schema: dict[str, Any], variant: str
) -> None:
    doc = synth(schema, variant)
    result = decode(op_id, status, doc)
    assert_roundtrip(wire_of(result, op_id, status), doc)


async def test_mix_fake_answers_encode_back_unchanged() -> None:
    """What the fake server sent in real exchanges encodes back the same."""
    from mix_fake import MixFake

    chunks: list[bytes] = []

    async def on_chunk(_s: Any, _c: Any, params: aiohttp.TraceResponseChunkReceivedParams) -> None:
        chunks.append(params.chunk)

    trace = aiohttp.TraceConfig()
    trace.on_response_chunk_received.append(on_chunk)
    async with (
        MixFake() as url,
        aiohttp.ClientSession(trace_configs=[trace]) as http,
        AsyncMix(url, session=http, max_retries=0) as mix,
    ):
        session = await mix.create_session(title="t", browser_mode="local-browser-service")
        await mix.upload_session_file(session.id, b"x y", filename="a b.txt")
        calls = [
            lambda: mix.create_session(title="u", browser_mode="local-browser-service"),
            lambda: mix.get_session(session.id),
            lambda: mix.list_sessions(),
            lambda: mix.list_session_files(session.id),
            lambda: mix.upload_session_file(session.id, b"z", filename="c d.txt"),
            lambda: mix.export_session(session.id),
            lambda: mix.get_oauth_health(),
            lambda: mix.health_check(),
            lambda: mix.get_preferences(),
            lambda: mix.list_mcp_servers(),
            lambda: mix.list_llm_tools(),
            lambda: mix.get_auth_status(),
            lambda: mix.get_system_info(),
            lambda: mix.list_commands(),
            lambda: mix.get_tool_credentials_status(),
            lambda: mix.set_api_key(api_key="sk-x"),
            lambda: mix.cancel_session_processing(session.id),
        ]
        for call in calls:
            chunks.clear()
            result = await call()
            raw = b"".join(chunks)
            assert raw, call
            assert_roundtrip(result, json.loads(raw))
