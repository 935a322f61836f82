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
import typing
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
import yaml
from aioresponses import aioresponses

import mix_client
from _ops import CALLS
from conftest import Reply, Scripted
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
from mix_fake import MixFake

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
    return decode_raw(op_id, status, json.dumps(doc).encode())


def decode_raw(op_id: str, status: int, raw: bytes) -> Any:
    """What the client's method for ``op_id``, called as the operations table calls it,
    returns when the server answers ``status`` with ``raw`` (mocked by aioresponses)."""

    async def call() -> Any:
        with aioresponses() as mocked:
            url = re.compile(r"^http://127\.0\.0\.1:9/.*$")
            method = mix_client.OPERATIONS[op_id].method
            mocked.add(url, method, status=status, body=raw, content_type="application/json")
            async with AsyncMix("http://127.0.0.1:9", max_retries=0) as mix:
                return await CALLS[op_id](0).invoke(mix)

    return asyncio.run(call())


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


def canned(status: int, body: bytes | str | Any, content_type: str = "application/json") -> Reply:
    """One HTTP answer a loopback server gives to every request."""
    if isinstance(body, str):
        body = body.encode()
    elif not isinstance(body, bytes):
        body = json.dumps(body).encode()
    return Reply(status, body=body, content_type=content_type, headers={"X-Probe": "1"})


@contextlib.asynccontextmanager
async def loopback(answer: Reply) -> AsyncIterator[str]:
    """A ``Scripted`` server on this loop whose every request gets ``answer``."""
    async with Scripted() as server:
        server.on("/*", answer)
        yield server.url


@contextlib.contextmanager
def threaded_loopback(answer: Reply) -> Iterator[str]:
    """The same, on its own thread and loop (for blocking code under test)."""
    server = Scripted(thread=True)
    server.on("/*", answer)
    try:
        yield server.url
    finally:
        server.stop()


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


async def test_request_bodies_still_omit_defaults(fake: MixFake) -> None:
    sid = fake.add_session()
    async with AsyncMix(fake.url) as mix:
        await mix.send_message(sid, text="hi")
        await mix.create_session(title="t", browser_mode="local-browser-service")
    bodies = [json.loads(r.body) for r in fake.requests]
    assert bodies == [{"text": "hi"}, {"title": "t", "browserMode": "local-browser-service"}]


RESPONSES = json_responses()


def test_every_operation_with_a_json_answer_is_covered() -> None:
    ops = {op_id for op_id, _, _ in RESPONSES}
    json_ops = {op_id for op_id, op in mix_client.OPERATIONS.items() if op.returns is not None}
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


# ----------------------------------------------------------- 2. timestamps


def date_time_fields() -> set[tuple[str, str]]:
    """(operationId, JSON path of a property) for every ``format: date-time`` in answers."""
    found: set[tuple[str, str]] = set()

    def walk(schema: Any, path: str, op_id: str, depth: int = 0) -> None:
        schema = deref(schema)
        if depth > 6:
            return
        if schema.get("format") == "date-time":
            found.add((op_id, path))
        for name, sub in (schema.get("properties") or {}).items():
            walk(sub, f"{path}.{name}", op_id, depth + 1)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            walk(extra, f"{path}[*]", op_id, depth + 1)
        if "items" in schema:
            walk(schema["items"], f"{path}[]", op_id, depth + 1)

    for op_id, _, schema in RESPONSES:
        walk(schema, "$", op_id)
    return found


def pick(obj: Any, path: str) -> list[Any]:
    """The decoded values at a JSON ``path`` (wire names) of ``date_time_fields``."""
    values = [obj]
    for token in re.findall(r"\.[A-Za-z_]+|\[\*\]|\[\]", path):
        nxt: list[Any] = []
        for value in values:
            if token == "[*]":
                nxt.extend(value.values())
            elif token == "[]":
                nxt.extend(value)
            else:
                names = {f.encode_name: f.name for f in msgspec.structs.fields(value)}
                nxt.append(getattr(value, names[token[1:]]))
        values = nxt
    return values


DATE_TIME_FIELDS = sorted(date_time_fields())


def test_the_spec_date_time_fields_are_known() -> None:
    paths = {p for _, p in DATE_TIME_FIELDS}
    assert {"$.createdAt", "$.updatedAt", "$.messages[].createdAt", "$.timestamp"} <= paths
    assert "$.providers[*].expires_at" in paths and "$.providers[*].last_refresh" in paths
    assert {op for op, _ in DATE_TIME_FIELDS} >= {
        "createSession",
        "getSession",
        "listSessions",
        "exportSession",
        "getOAuthHealth",
    }


@pytest.mark.parametrize(("op_id", "path"), DATE_TIME_FIELDS, ids=lambda v: str(v))
def test_date_time_fields_decode_to_datetime(op_id: str, path: str) -> None:
    status, schema = next((s, sch) for o, s, sch in RESPONSES if o == op_id)
    values = pick(decode(op_id, status, synth(schema, "full")), path)
    assert values, path
    expected = datetime(2024, 5, 6, 5, 8, 9, 123457, tzinfo=timezone.utc)
    for value in values:
        assert isinstance(value, datetime), (op_id, path, value)
        assert value == expected
        assert value.utcoffset() == timedelta(hours=2)


@pytest.mark.parametrize(("op_id", "path"), DATE_TIME_FIELDS, ids=lambda v: str(v))
def test_a_timestamp_that_does_not_parse_keeps_the_raw_text(op_id: str, path: str) -> None:
    status, schema = next((s, sch) for o, s, sch in RESPONSES if o == op_id)
    doc = synth(schema, "full")
    raw = json.dumps(doc).replace("2024-05-06T07:08:09.123456789+02:00", "yesterday-ish")
    result = decode_raw(op_id, status, raw.encode())  # no error
    for value in pick(result, path):
        assert value == "yesterday-ish"
    assert_roundtrip(result, json.loads(raw))


async def test_timestamps_through_the_client() -> None:
    doc = {"id": "s1", "title": "T", "createdAt": "2024-01-02T03:04:05Z", "cost": 0}
    async with loopback(canned(200, doc)) as url, AsyncMix(url) as mix:
        session = await mix.get_session("s1")
    assert session.created_at == datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert json.loads(msgspec.json.encode(session))["createdAt"] == "2024-01-02T03:04:05Z"
    odd = {"id": "s1", "createdAt": "2024-01-02 noon"}
    async with loopback(canned(200, odd)) as url, AsyncMix(url) as mix:
        session = await mix.get_session("s1")
    assert session.created_at == "2024-01-02 noon"


# ------------------------------------------- 3. fields real (Go) servers send


async def test_set_api_key_on_a_go_shaped_server() -> None:
    answer = {"status": "success", "message": "API key set successfully."}
    async with loopback(canned(200, answer)) as url, AsyncMix(url) as mix:
        result = await mix.set_api_key(api_key="sk-ant-x")
    assert (result.status, result.message, result.success) == (
        "success",
        "API key set successfully.",
        None,
    )
    assert_roundtrip(result, answer)


# One answer per Go response struct of mix_agent/internal/http whose fields the models
# did not all carry: every field must decode and encode back.
GO_SHAPED: list[tuple[str, int, Any, dict[str, Any]]] = [
    ("setApiKey", 200, {"status": "success", "message": "ok"}, {"status": "success"}),
    (
        "validatePreferredProvider",
        200,
        {"valid": False, "error": "No preferred provider set", "message": "Set one"},
        {"error": "No preferred provider set", "valid": False},
    ),
    (
        "getCommand",
        200,
        {"name": "help", "description": "Show help", "type": "builtin"},
        {"type": "builtin"},
    ),
    (
        "healthCheck",
        200,
        {
            "status": "ok",
            "timestamp": "2026-01-02T03:04:05Z",
            "version": "1.2.3",
            "environment": "",
            "services": {"backend": "healthy", "database": "connected"},
        },
        {"environment": ""},
    ),
]


@pytest.mark.parametrize(("op_id", "status", "doc", "attrs"), GO_SHAPED, ids=lambda v: str(v)[:20])
def test_fields_go_servers_send_are_in_the_models(
    op_id: str, status: int, doc: Any, attrs: dict[str, Any]
) -> None:
    result = decode(op_id, status, doc)
    for name, value in attrs.items():
        assert getattr(result, name) == value, name
    assert_roundtrip(result, doc)


def test_health_services_are_typed() -> None:
    result = decode("healthCheck", 200, GO_SHAPED[3][2])
    assert isinstance(result.services, mix_client.HealthServices)
    assert (result.services.backend, result.services.database) == ("healthy", "connected")
    # The operation does not say date-time, the server's component schema does: a
    # timestamp like the others.
    assert result.timestamp == datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


# ------------------------------------ 4./5. the original SDK's error handler


NGINX_502 = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)
JSON_400 = {
    "error": {
        "code": 400,
        "message": "Provider not supported. Supported providers: anthropic, openai",
        "type": "INVALID_PROVIDER",
    }
}

# (answer, error class, data.error (code, message, type), server's own error?)
STATUS_CASES: list[tuple[Reply, type[APIStatusError], tuple[int, str, str], bool]] = [
    (
        canned(400, JSON_400),
        BadRequestError,
        (400, JSON_400["error"]["message"], "INVALID_PROVIDER"),
        True,
    ),
    (
        canned(400, "image thumbnails are not supported for text files\n", "text/plain"),
        BadRequestError,
        (400, "image thumbnails are not supported for text files", ""),
        False,
    ),
    (canned(502, NGINX_502, "text/html"), InternalServerError, (502, "502 Bad Gateway", ""), False),
    (
        canned(408, "<html><body><p>Request\n   timed out</p></body></html>", "text/html"),
        RequestTimeoutError,
        (408, "Request timed out", ""),
        False,
    ),
    (canned(503, b"", "text/plain"), InternalServerError, (503, "Service Unavailable", ""), False),
    (canned(500, "<nil>", "text/plain"), InternalServerError, (500, "<nil>", ""), False),
    (
        canned(422, {"detail": "bad field"}),
        mix_client.UnprocessableEntityError,
        (422, "bad field", ""),
        False,
    ),
    (canned(404, {"error": None}), mix_client.NotFoundError, (404, '{"error": null}', ""), False),
    (
        canned(400, b"\xff\xfe broken \xc3", "text/plain"),
        BadRequestError,
        (400, "\ufffd\ufffd broken \ufffd", ""),
        False,
    ),
]


@pytest.mark.parametrize(
    ("answer", "cls", "rest", "from_server"), STATUS_CASES, ids=lambda v: getattr(v, "__name__", "")
)
async def test_a_status_error_always_has_data_error(
    answer: Reply, cls: type[APIStatusError], rest: tuple[int, str, str], from_server: bool
) -> None:
    async with loopback(answer) as url, AsyncMix(url, max_retries=0) as mix:
        with pytest.raises(cls) as info:
            await mix.store_api_key(api_key="k", provider="openrouter")
    err = info.value
    assert isinstance(err, ErrorResponse) and isinstance(err.data, ErrorBody)
    assert isinstance(err.data.error, RESTError)
    assert (err.data.error.code, err.data.error.message, err.data.error.type) == rest
    assert (err.error is err.data.error) if from_server else (err.error is None)
    assert err.status_code == answer.status
    assert err.headers["X-Probe"] == "1"
    assert err.raw_body == answer.body
    assert err.body == answer.body.decode("utf-8", "replace")
    assert err.raw_response is not None and err.raw_response.status == answer.status
    assert str(err) == err.message and "\n" not in err.message
    assert err.message.startswith(f"POST {url}/api/auth/api-key -> {answer.status}")
    if rest[1]:
        assert err.message.endswith(f": {rest[1]}")


def official_handler(e: MixError) -> list[str]:
    """The original README's handler, as it reads there (``print`` replaced by ``out``)."""
    out: list[str] = []
    out.append(str(e.message))
    out.append(str(e.status_code))
    out.append(str(e.body))
    out.append(str(e.headers))
    out.append(str(e.raw_response))
    if isinstance(e, ErrorResponse):
        out.append(str(e.data.error))
    return out


async def test_every_mix_error_answers_the_official_attributes() -> None:
    errors: list[MixError] = []
    async with loopback(canned(502, NGINX_502, "text/html")) as url, AsyncMix(url) as mix:
        with pytest.raises(MixError) as info:
            await mix.health_check(max_retries=0)
        errors.append(info.value)
    not_json = canned(200, b"<html>not json</html>", "text/html")
    async with loopback(not_json) as url, AsyncMix(url) as mix:
        with pytest.raises(ResponseValidationError) as rv:
            await mix.get_session("s")
        errors.append(rv.value)
    async with AsyncMix(unused_url(), max_retries=0) as mix:
        with pytest.raises(APIConnectionError) as conn:
            await mix.health_check()
        errors.append(conn.value)
        with pytest.raises(InvalidInputError) as bad:
            await mix.get_session("")
        errors.append(bad.value)
    errors.append(APITimeoutError("GET x: timed out", method="GET", url="x"))
    event = mix_client.decode_event(
        mix_client.ServerSentEvent(event="error", data='{"error": "boom", "type": "error"}')
    )
    assert isinstance(event, ErrorEvent)
    errors.append(AgentError("agent error: boom", event=event))
    errors.append(MixError("this client is closed"))
    for err in errors:
        for attr in OFFICIAL_ATTRS:
            assert hasattr(err, attr), (type(err).__name__, attr)
        lines = official_handler(err)
        assert lines[0] == err.message
    rv_err, conn_err = errors[1], errors[2]
    assert rv_err.status_code == 200 and rv_err.data is None
    assert rv_err.body == "<html>not json</html>" and rv_err.raw_body == b"<html>not json</html>"
    assert rv_err.headers is not None and rv_err.raw_response is not None
    for err in errors[2:]:
        assert (err.status_code, err.headers, err.body, err.raw_response, err.data) == (
            None,
            None,
            None,
            None,
            None,
        )
    assert isinstance(conn_err.__cause__, aiohttp.ClientConnectorError)


def test_error_attribute_types_are_consistent() -> None:
    hints = {
        cls: typing.get_type_hints(cls)
        for cls in (MixError, APIStatusError, ResponseValidationError)
    }
    assert hints[MixError]["body"] == str | None
    assert hints[MixError]["raw_body"] == bytes | None
    for cls in (APIStatusError, ResponseValidationError):
        assert hints[cls]["body"] is str and hints[cls]["raw_body"] is bytes
        assert hints[cls]["status_code"] is int
    assert hints[APIStatusError]["data"] is ErrorBody
    assert typing.get_type_hints(AgentError)["event"] == (
        ErrorEvent | mix_client.TurnRecovered | None
    )


async def test_str_of_a_huge_json_error_is_bounded() -> None:
    huge = "x" * (5 * 1024 * 1024)
    body = {"error": {"code": 400, "message": huge, "type": "validation_error"}}
    async with loopback(canned(400, body)) as url, AsyncMix(url, max_retries=0) as mix:
        with pytest.raises(BadRequestError) as info:
            await mix.get_session("s")
    err = info.value
    assert len(str(err)) < 400 and len(err.message) < 400
    assert str(err).endswith("x\u2026")
    assert err.error is not None and err.error.message == huge  # the server's, whole
    assert len(err.body) > 5 * 1024 * 1024 and json.loads(err.body) == body


async def test_str_of_a_huge_text_error_is_bounded_the_same_way() -> None:
    huge = "y " * (3 * 1024 * 1024)
    async with loopback(canned(500, huge, "text/plain")) as url, AsyncMix(url) as mix:
        with pytest.raises(InternalServerError) as info:
            await mix.get_session("s", max_retries=0)
    err = info.value
    assert len(str(err)) < 400 and str(err).endswith("\u2026")
    assert len(err.data.error.message) <= 200
    assert err.body == huge


# ---------------------------------------------------- 6. run-time type hints


def public_methods(cls: type[Any]) -> list[str]:
    return sorted(
        name
        for name, value in vars(cls).items()
        if (not name.startswith("_") or name in ("__aenter__", "__enter__", "__init__"))
        and (
            callable(value) or hasattr(value, "_fn")  # Mix's method descriptors
        )
    )


def test_type_hints_resolve_on_every_public_method_of_asyncmix_and_mix() -> None:
    names = public_methods(AsyncMix)
    assert "get_session" in names and "__aenter__" in names and len(names) > 40
    for name in names:
        hints = typing.get_type_hints(getattr(AsyncMix, name))
        assert "return" in hints, name
    assert typing.get_type_hints(AsyncMix.__aenter__)["return"] is typing.Self
    opts = typing.get_type_hints(AsyncMix.get_session)["opts"]
    assert typing.get_origin(opts) is typing.Unpack
    assert typing.is_typeddict(typing.get_args(opts)[0])
    mix = Mix(unused_url())
    try:
        sync_names = [n for n in public_methods(Mix) if not n.startswith("_")]
        assert {"get_session", "stream_events", "query", "iter_session_file"} <= set(sync_names)
        for name in sync_names:
            hints = typing.get_type_hints(getattr(mix, name))
            assert "return" in hints, name
            assert typing.get_type_hints(getattr(Mix, name)) == hints, name  # on the class too
        assert typing.get_type_hints(mix.get_session)["return"] is mix_client.SessionData
        stream_hint = typing.get_type_hints(mix.stream_events)["return"]
        assert typing.get_origin(stream_hint) is mix_client.SyncStream
        download_hint = typing.get_type_hints(mix.iter_session_file)["return"]
        assert download_hint is not mix_client.FileDownload  # the blocking type, not the async
        assert typing.get_type_hints(Mix.__enter__)["return"] is Mix
    finally:
        mix.close()


def test_type_hints_resolve_on_every_public_name() -> None:
    for name in mix_client.__all__:
        obj = getattr(mix_client, name)
        if inspect.isclass(obj):
            typing.get_type_hints(obj)
            for attr, value in vars(obj).items():
                if inspect.isfunction(value) and (not attr.startswith("_") or attr == "__init__"):
                    typing.get_type_hints(value)
        elif inspect.isfunction(obj):
            typing.get_type_hints(obj)


def test_python_310_stand_ins_resolve() -> None:
    """On 3.10 (no typing.Self/Unpack) the module binds stand-ins; they must resolve too."""
    namespace = {
        **vars(mix_client),
        "Self": mix_client._SelfStandIn,
        "Unpack": mix_client._UnpackStandIn,
    }
    hints = typing.get_type_hints(AsyncMix.get_session, globalns=namespace)
    assert typing.get_origin(hints["opts"]) is mix_client._UnpackStandIn
    assert typing.is_typeddict(typing.get_args(hints["opts"])[0])
    assert typing.get_type_hints(AsyncMix.__aenter__, globalns=namespace)["return"] is (
        mix_client._SelfStandIn
    )
    for name in public_methods(AsyncMix):
        typing.get_type_hints(getattr(AsyncMix, name), globalns=namespace)


# --------------------------------------------- 7. the README's ported sample


def readme_error_sample() -> str:
    """The python block of the README's ported error-handling sample (in the migration guide)."""
    text = README.read_text(encoding="utf-8")
    migrating = text.split("\n## Migrating from mix-python-sdk\n", 1)[1]
    section = migrating.split("\n### Error handling\n", 1)[1]
    end = min(i for i in (section.find("\n## "), section.find("\n### ")) if i >= 0)
    match = re.search(r"```python\n(.*?)```", section[:end], re.DOTALL)
    assert match, "no python block in the error-handling section"
    return match.group(1)


def run_sample(monkeypatch: pytest.MonkeyPatch, url: str) -> str:
    monkeypatch.setenv("MIX_SERVER_URL", url)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(readme_error_sample(), "README.md", "exec"), {"__name__": "sample"})
    return out.getvalue()


def test_readme_sample_is_the_official_handler() -> None:
    code = readme_error_sample()
    for line in (
        "except MixError as e:",
        "print(e.message)",
        "print(e.status_code)",
        "print(e.body)",
        "print(e.headers)",
        "print(e.raw_response)",
        "if isinstance(e, ErrorResponse):",
        "print(e.data.error)",
    ):
        assert line in code, line


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (canned(400, JSON_400), ["400", "INVALID_PROVIDER", "Provider not supported"]),
        (
            canned(400, "image thumbnails are not supported for text files\n", "text/plain"),
            ["400", "message='image thumbnails are not supported for text files'"],
        ),
        (canned(502, NGINX_502, "text/html"), ["502", "message='502 Bad Gateway'", "nginx"]),
        (
            canned(200, {"status": "success", "provider": "openrouter", "message": "ok"}),
            ["StoreApiKeyResponse(", "status='success'"],
        ),
    ],
    ids=["json-400", "text-400", "html-502", "success"],
)
def test_readme_error_sample_runs_against_a_server(
    monkeypatch: pytest.MonkeyPatch, answer: Reply, expected: list[str]
) -> None:
    with threaded_loopback(answer) as url:
        printed = run_sample(monkeypatch, url)
    for piece in expected:
        assert piece in printed, (piece, printed)
    if answer.status >= 400:
        lines = printed.splitlines()
        assert lines[1] == str(answer.status)
        assert "RESTError(" in lines[-1]


def test_readme_error_sample_on_a_connection_error(monkeypatch: pytest.MonkeyPatch) -> None:
    printed = run_sample(monkeypatch, unused_url()).splitlines()
    assert "cannot connect" in printed[0]
    assert printed[1:5] == ["None", "None", "None", "None"]
    assert len(printed) == 5  # not an ErrorResponse: no data.error line


async def test_a_redirect_error_answers_the_official_handler_too() -> None:
    answer = canned(302, "<a href='/elsewhere'>Found</a>.", "text/html")
    async with loopback(answer) as url, AsyncMix(url, max_retries=0) as mix:
        with pytest.raises(mix_client.RedirectError) as info:
            await mix.get_session("s")
    err = info.value
    assert official_handler(err)[1] == "302"
    assert err.data.error == RESTError(code=302, message="Found .", type="")
    assert "not followed" in str(err)
