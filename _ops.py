"""The one table of operations, shared by the tests: how to call each of the 42 operations
with awkward inputs (``CALLS``), what must then go on the wire (``check_request``) and how
the answer must decode (``check_result``), read against ``contract/mix-openapi-merged.yaml``.

``test_contract.py`` drives the table against a Prism mock of the spec, ``test_mix_client.py``
against mocked responses (request building) and a loopback server (decoding).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import io
import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import msgspec
import yaml

import mix_client

ROOT = Path(__file__).resolve().parent
MERGED_SPEC = ROOT / "contract" / "mix-openapi-merged.yaml"
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

# Path-parameter values: every reserved character a server could misroute.
# '%' is followed by hex digits in one value and by junk in others: the client
# must send '%25' either way (a raw malformed '%' would crash Prism; the proxy
# turns it into a failure instead).
PATH_VALUES = [
    "a/b",
    "q?x=1&y=2",
    "frag#ment",
    "sp ace",
    "caf\u00e9",
    "\u65e5\u672c\u8a9e",
    "emoji \U0001f389",
    "pct%25literal",
    "50% off",
    "100%",
    "plus+sign",
    "semi;colon,comma",
    "dots.and..dots",
    "tilde~under_dash-",
    "quote'\"dq",
    "colon:at@amp&eq=",
    "brackets[x]{y}|<z>",
    "back\\slash^`",
    "plain-id",
]

# File names (the filename path parameter): the server decides what it accepts, so
# '/', '\\' and '..' inside a name go out as one percent-encoded segment like everything
# else; only the dot segments '.' and '..' themselves are refused by the client.
FILE_VALUES = [*PATH_VALUES, "dot.", ".hidden", "name.tar.gz", "v1..2.txt", "../up", "..."]

# JSON string values: escapes, unicode, characters HTML-escaping servers touch.
TEXT_VALUES = [
    "quote \" and ' apostrophe",
    "new\nline\r\ncr\ttab",
    "back\\slash \\n not a newline",
    "unicode caf\u00e9 \u65e5\u672c \U0001f389 \u00df\u2603",
    "<script>alert('x')</script> & &amp;",
    "nul\x00byte and \x1f unit separator",
    "\u2028line\u2029paragraph separators",
    '{"looks": ["like", "json"]}',
    "",
    "  leading and trailing spaces  ",
    "percent %s %d %25 %zz",
    "x" * 4096,
    "right-to-left \u202e\u05e9\u05dc\u05d5\u05dd",
    "zero\u200bwidth",
    "plain",
]

# Upload payloads: none of them (but the empty one) is valid UTF-8.
BINARY_VALUES = [
    bytes(range(0x80, 0x100)),
    bytes(range(256)) * 3,
    b"\xff\xfe\x00\x00binary\x80",
    b"",
    b"\xc3\x28 invalid utf-8 sequence \xa0\xa1",
    bytes((i * 37 + 11) % 256 for i in range(70_000)),
]

UPLOAD_NAMES = [
    "caf\u00e9 \u65e5\u672c \U0001f389.bin",
    "with space.txt",
    "semi;colon=1,comma.bin",
    "plain.bin",
    "v1..2.bin",
    "percent%41.bin",
    "+plus & amp.dat",
    'quote"d name.bin',
]

# --------------------------------------------------------------------------- spec


def load_spec() -> dict[str, Any]:
    with MERGED_SPEC.open(encoding="utf-8") as fh:
        spec: dict[str, Any] = yaml.safe_load(fh)
    return spec


SPEC = load_spec()


def deref(schema: Any) -> dict[str, Any]:
    """Follow ``$ref`` (keeping sibling keys such as ``nullable``)."""
    if not isinstance(schema, dict):
        return {}
    seen = 0
    while "$ref" in schema:
        seen += 1
        if seen > 20:
            raise ValueError(f"reference loop at {schema['$ref']}")
        ref = schema["$ref"]
        node: Any = SPEC
        for part in ref.lstrip("#/").split("/"):
            node = node[part]
        siblings = {k: v for k, v in schema.items() if k != "$ref"}
        schema = {**node, **siblings}
    return schema


@dataclasses.dataclass(frozen=True)
class Operation:
    op_id: str
    method: str
    template: str
    regex: re.Pattern[str]
    spec: dict[str, Any]

    def response_schema(self, status: int) -> dict[str, Any] | None:
        resp = self.spec.get("responses", {}).get(str(status))
        if not resp:
            return None
        content = resp.get("content", {})
        media = content.get("application/json")
        return deref(media["schema"]) if media and "schema" in media else None

    def statuses(self) -> list[int]:
        return sorted(int(code) for code in self.spec.get("responses", {}))

    def has_body(self) -> bool:
        return "requestBody" in self.spec


def _path_regex(template: str) -> re.Pattern[str]:
    out = "^"
    for piece in re.split(r"(\{[^}]+\})", template):
        if piece.startswith("{"):
            out += f"(?P<{piece[1:-1]}>[^/]+)"
        else:
            out += re.escape(piece)
    return re.compile(out + "$")


def spec_operations() -> dict[str, Operation]:
    ops: dict[str, Operation] = {}
    for template, item in SPEC["paths"].items():
        for method, op in item.items():
            if method in HTTP_METHODS:
                ops[op["operationId"]] = Operation(
                    op["operationId"], method.upper(), template, _path_regex(template), op
                )
    return ops


OPERATIONS = spec_operations()


def match_operation(method: str, raw_path: str) -> tuple[Operation, dict[str, str]] | None:
    """The operation a raw (still percent-encoded) path hits; literal routes win."""
    hits = []
    for op in OPERATIONS.values():
        if op.method != method:
            continue
        m = op.regex.match(raw_path)
        if m:
            hits.append((op.template.count("{"), op, m.groupdict()))
    if not hits:
        return None
    hits.sort(key=lambda h: h[0])
    return hits[0][1], hits[0][2]


@dataclasses.dataclass
class Exchange:
    method: str
    raw_path: str
    request_headers: dict[str, str]
    request_body: bytes
    status: int
    response_headers: dict[str, str]
    upstream_body: bytes
    body: bytes  # what the client received (after any rewrite)
    op_id: str | None
    path_params: dict[str, str]  # still percent-encoded

    @property
    def path(self) -> str:
        return self.raw_path.split("?", 1)[0]

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.raw_path).query, keep_blank_values=True)

    def violations(self) -> str | None:
        for key, value in self.response_headers.items():
            if key.lower() == "sl-violations":
                return value
        if self.status == 422:
            return self.body.decode("utf-8", "replace")
        return None

    def describe(self) -> str:
        def show(data: bytes) -> str:
            text = data[:600].decode("utf-8", "backslashreplace")
            return text + ("..." if len(data) > 600 else "")

        return (
            f"{self.method} {self.raw_path} (op {self.op_id})\n"
            f"  sent headers: {self.request_headers}\n"
            f"  sent body: {show(self.request_body)}\n"
            f"  got {self.status} {self.response_headers.get('Content-Type', '')}: {show(self.body)}"
        )


# ------------------------------------------------------------- decoded vs. raw


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    return value


def assert_decoded(value: Any, raw: Any, schema: Any, where: str) -> None:
    """Every field the spec declares and the raw JSON carries survives decoding."""
    schema = deref(schema)
    value = _plain(value)
    if raw is None:
        assert value is None, f"{where}: raw null decoded as {value!r}"
        return
    if "anyOf" in schema or "oneOf" in schema:
        assert value == raw, f"{where}: {value!r} != raw {raw!r}"
        return
    if isinstance(raw, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        if isinstance(props, dict):
            assert isinstance(value, msgspec.Struct), (
                f"{where}: object decoded as {type(value).__name__}, expected a Struct"
            )
            fields = {f.encode_name: f for f in msgspec.structs.fields(value)}
            required = set(schema.get("required", []))
            for key, sub in props.items():
                field = fields.get(key)
                assert field is not None, (
                    f"{where}: {type(value).__name__} has no field for wire name {key!r}"
                )
                got = getattr(value, field.name)
                if key in raw:
                    assert_decoded(got, raw[key], sub, f"{where}.{key}")
                elif key not in required:
                    # None, or an empty list/dict for an absent optional collection.
                    empty = {"array": [], "object": {}}.get(deref(sub).get("type", ""))
                    assert got is None or (empty is not None and got == empty), (
                        f"{where}.{key}: absent optional field decoded as {got!r}, expected None"
                    )
            return
        if isinstance(extra, dict):
            assert isinstance(value, dict), f"{where}: map decoded as {type(value).__name__}"
            assert set(value) == set(raw), f"{where}: keys {set(value)} != raw {set(raw)}"
            for key, item in raw.items():
                assert_decoded(value[key], item, extra, f"{where}[{key!r}]")
            return
        # Free-form object: the full contents must survive.
        assert isinstance(value, dict), f"{where}: free-form object became {type(value).__name__}"
        assert value == raw, f"{where}: free-form object {value!r} != raw {raw!r}"
        return
    if isinstance(raw, list):
        assert isinstance(value, list), f"{where}: array decoded as {type(value).__name__}"
        assert len(value) == len(raw), f"{where}: {len(value)} items != raw {len(raw)}"
        for i, (item_v, item_r) in enumerate(zip(value, raw, strict=True)):
            assert_decoded(item_v, item_r, schema.get("items", {}), f"{where}[{i}]")
        return
    if isinstance(raw, bool):
        assert value is raw, f"{where}: {value!r} != raw {raw!r}"
        return
    if isinstance(raw, (int, float)):
        assert isinstance(value, (int, float)) and not isinstance(value, bool), (
            f"{where}: number decoded as {type(value).__name__}"
        )
        if schema.get("type") == "integer":
            assert isinstance(value, int), f"{where}: integer decoded as {type(value).__name__}"
        assert value == raw, f"{where}: {value!r} != raw {raw!r}"
        return
    if isinstance(raw, str):
        if isinstance(value, (dt.datetime, dt.date)):
            expected = msgspec.json.decode(json.dumps(raw), type=type(value))
            assert value == expected, f"{where}: {value!r} != raw {raw!r}"
            return
        assert value == raw, f"{where}: {value!r} != raw {raw!r}"
        return
    raise AssertionError(f"{where}: unexpected raw value {raw!r}")


# ------------------------------------------------------------- the call table


@dataclasses.dataclass
class Call:
    """One client call and what must go on the wire for it."""

    invoke: Callable[..., Awaitable[Any]]  # (client, **per-call options) -> result
    path_params: dict[str, str] = dataclasses.field(default_factory=dict)
    json_body: dict[str, Any] | None = None
    defaults: dict[str, Any] = dataclasses.field(default_factory=dict)  # may be absent
    query: dict[str, str] | None = None  # exact query, or None: no query expected
    query_optional: dict[str, str] = dataclasses.field(default_factory=dict)
    upload: tuple[bytes, str | None, str | None] | None = None  # payload, name, type
    result: str = "decoded"  # decoded | none | bytes | file | iter


def pv(i: int, salt: int = 0) -> str:
    return PATH_VALUES[(i * 7 + salt) % len(PATH_VALUES)]


def fv(i: int, salt: int = 0) -> str:
    return FILE_VALUES[(i * 7 + salt) % len(FILE_VALUES)]


def tv(i: int, salt: int = 0) -> str:
    return TEXT_VALUES[(i * 5 + salt) % len(TEXT_VALUES)]


def pick(options: list[Any], i: int, salt: int = 0) -> Any:
    return options[(i + salt) % len(options)]


def _callback_wire(i: int, k: int) -> dict[str, Any]:
    kind = pick(["bash_script", "sub_agent", "send_message"], i, k)
    cb: dict[str, Any] = {
        "toolName": pick(["*", "Bash", "brave_search", tv(i, k)], i, k),
        "type": kind,
    }
    if kind == "bash_script":
        cb["bashCommand"] = "echo \"$CALLBACK_TOOL_NAME\" | tr 'a' '\u00e9'\n"
        if (i + k) % 2:
            cb["bashTimeout"] = 1000 * (i + 1)
            cb["excludeFromContext"] = True
    elif kind == "sub_agent":
        cb["subAgentPrompt"] = tv(i, k + 3)
        if i % 2:
            cb["subAgentType"] = "general-purpose"
            cb["includeFullHistory"] = False
    else:
        cb["messageContent"] = tv(i, k + 1)
    if i % 3:
        cb["name"] = tv(i, k + 2)
    return cb


def _callbacks(i: int) -> tuple[list[Any], list[dict[str, Any]]]:
    wire = [_callback_wire(i, k) for k in range(i % 3)]
    return [msgspec.convert(cb, mix_client.Callback) for cb in wire], wire


def _no_args(method: str) -> Callable[[int], Call]:
    """An operation whose method takes no arguments."""
    return lambda i: Call(lambda m, **o: getattr(m, method)(**o))


def _one_param(method: str, param: str, salt: int = 0) -> Callable[[int], Call]:
    """An operation whose method takes only its one path parameter."""

    def make(i: int) -> Call:
        value = pv(i, salt)
        return Call(lambda m, **o: getattr(m, method)(value, **o), path_params={param: value})

    return make


def c_store_api_key(i: int) -> Call:
    key, provider = tv(i), pick(["anthropic", "openai", "openrouter", "gemini", "brave"], i)
    return Call(
        lambda m, **o: m.store_api_key(api_key=key, provider=provider, **o),
        json_body={"api_key": key, "provider": provider},
    )


def c_set_api_key(i: int) -> Call:
    key = tv(i, 1)
    return Call(lambda m, **o: m.set_api_key(api_key=key, **o), json_body={"apiKey": key})


def c_handle_oauth_callback(i: int) -> Call:
    provider, code, state = tv(i), tv(i, 1), tv(i, 2)
    return Call(
        lambda m, **o: m.handle_oauth_callback(provider=provider, code=code, state=state, **o),
        json_body={"provider": provider, "code": code, "state": state},
    )


def c_get_message_history(i: int) -> Call:
    if i % 4 == 0:
        return Call(
            lambda m, **o: m.get_message_history(**o),
            query={},
            query_optional={"limit": "50", "offset": "0"},
        )
    limit, offset = pick([1, 1000, 37, 50], i), pick([0, 5, 10**6], i)
    return Call(
        lambda m, **o: m.get_message_history(limit=limit, offset=offset, **o),
        query={"limit": str(limit), "offset": str(offset)},
    )


def c_respond_to_notification(i: int) -> Call:
    nid, kind = pv(i, 1), pick(["acknowledge", "text", "choice"], i)
    if i % 3 == 0:
        return Call(
            lambda m, **o: m.respond_to_notification(nid, type=kind, **o),
            path_params={"id": nid},
            json_body={"type": kind},
            result="none",
        )
    value = tv(i, 4)
    return Call(
        lambda m, **o: m.respond_to_notification(nid, type=kind, value=value, **o),
        path_params={"id": nid},
        json_body={"type": kind, "value": value},
        result="none",
    )


_PREF_FIELDS = [
    ("main_agent_max_tokens", lambda i: 1000 + i),
    ("main_agent_model", lambda i: tv(i)),
    ("main_agent_reasoning_effort", lambda i: pick(["low", "medium", "high", tv(i, 2)], i)),
    ("preferred_provider", lambda i: pick(["anthropic", "openai", "openrouter"], i)),
    ("sub_agent_max_tokens", lambda i: 0 if i % 2 else 2**31),
    ("sub_agent_model", lambda i: tv(i, 3)),
    ("sub_agent_reasoning_effort", lambda i: tv(i, 6)),
]


def c_update_preferences(i: int) -> Call:
    # None would be sent as null, which the spec does not allow: not used here.
    chosen = {name: make(i) for k, (name, make) in enumerate(_PREF_FIELDS) if (i >> (k % 4)) & 1}
    if i == 0:
        chosen = {}
    return Call(lambda m, **o: m.update_preferences(**chosen, **o), json_body=dict(chosen))


def c_list_sessions(i: int) -> Call:
    if i % 3 == 0:
        return Call(
            lambda m, **o: m.list_sessions(**o),
            query={},
            query_optional={"includeSubagents": "false"},
        )
    flag = bool(i % 2)
    return Call(
        lambda m, **o: m.list_sessions(include_subagents=flag, **o),
        query={"includeSubagents": "true" if flag else "false"},
    )


def c_create_session(i: int) -> Call:
    title = tv(i)
    mode = pick(["electron-embedded-browser", "local-browser-service", "remote-cdp-websocket"], i)
    kwargs: dict[str, Any] = {"title": title, "browser_mode": mode}
    wire: dict[str, Any] = {"title": title, "browserMode": mode}
    if i % 2:
        cbs, cb_wire = _callbacks(i)
        kwargs["callbacks"], wire["callbacks"] = cbs, cb_wire
    if mode == "remote-cdp-websocket":
        kwargs["cdp_url"] = wire["cdpUrl"] = "wss://cdp.example.invalid/s?id=\u00e9&x=1#f"
    if i % 3 == 1:
        kwargs["custom_system_prompt"] = wire["customSystemPrompt"] = tv(i, 2) + " $<domain>"
        kwargs["prompt_mode"] = wire["promptMode"] = pick(["default", "append", "replace"], i)
    if i % 4 == 2:
        kwargs["session_type"] = wire["sessionType"] = "main"
    if i % 5 == 3:
        kwargs["subagent_type"] = wire["subagentType"] = ""
    return Call(lambda m, **o: m.create_session(**kwargs, **o), json_body=wire)


def c_delete_session(i: int) -> Call:
    sid = pv(i, 6)
    return Call(lambda m, **o: m.delete_session(sid, **o), path_params={"id": sid}, result="none")


def c_update_session_callbacks(i: int) -> Call:
    sid = pv(i, 8)
    cbs, wire = _callbacks(i)
    return Call(
        lambda m, **o: m.update_session_callbacks(sid, callbacks=cbs, **o),
        path_params={"id": sid},
        json_body={"callbacks": wire},
    )


class _AsyncChunks:
    def __init__(self, data: bytes, size: int) -> None:
        self._chunks = [data[k : k + size] for k in range(0, len(data), size)]

    def __aiter__(self) -> _AsyncChunks:
        return self

    async def __anext__(self) -> bytes:
        if not self._chunks:
            raise StopAsyncIteration
        return self._chunks.pop(0)


UPLOAD_DIR: list[Path] = []  # set by the upload_dir fixture (conftest.py)


def c_upload_session_file(i: int) -> Call:
    sid = pv(i, 12)
    data = pick(BINARY_VALUES, i)
    name = pick(UPLOAD_NAMES, i)
    ctype = pick([None, "application/octet-stream", "image/png", "text/plain; charset=latin-1"], i)
    form = i % 4
    extra: dict[str, Any] = {}
    if ctype is not None:
        extra["content_type"] = ctype
    if form == 0:  # bytes
        payload: Any = data
        extra["filename"] = name
    elif form == 1:  # path on disk (name taken from it)
        path = UPLOAD_DIR[0] / f"{i}-{name}"
        path.write_bytes(data)
        payload = path
        name = path.name
    elif form == 2:  # binary file object
        payload = io.BytesIO(data)
        extra["filename"] = name
    else:  # async iterator of chunks
        payload = _AsyncChunks(data, 1000)
        extra["filename"] = name
    return Call(
        lambda m, **o: m.upload_session_file(sid, payload, **extra, **o),
        path_params={"id": sid},
        upload=(data, name, ctype),
    )


def c_delete_session_file(i: int) -> Call:
    sid, fname = pv(i, 13), fv(i, 14)
    return Call(
        lambda m, **o: m.delete_session_file(sid, fname, **o),
        path_params={"id": sid, "filename": fname},
        result="none",
    )


def _file_query(i: int) -> tuple[dict[str, Any], dict[str, str]]:
    kwargs: dict[str, Any] = {}
    query: dict[str, str] = {}
    if i % 3 == 1:
        kwargs["thumb"] = query["thumb"] = pick(["100", "w100", "h240", "7"], i)
    if i % 4 == 1:
        kwargs["time"] = pick([0, 1.5, 86400, 12.25], i)
        query["time"] = str(kwargs["time"])
    return kwargs, query


def c_get_session_file(i: int) -> Call:
    sid, fname = pv(i, 15), fv(i, 16)
    kwargs, query = _file_query(i)
    variant = i % 3
    if variant == 0:
        return Call(
            lambda m, **o: m.get_session_file(sid, fname, **kwargs, **o),
            path_params={"id": sid, "filename": fname},
            query=query,
            result="bytes",
        )
    if variant == 1:
        dest = UPLOAD_DIR[0] / f"download-{i}.bin"

        async def download(m: Any, **o: Any) -> Any:
            n = await m.download_session_file(sid, fname, dest, **kwargs, **o)
            return n, dest.read_bytes()

        return Call(
            download, path_params={"id": sid, "filename": fname}, query=query, result="file"
        )

    async def iterate(m: Any, **o: Any) -> Any:
        chunks = []
        async for chunk in m.iter_session_file(sid, fname, **kwargs, **o):
            assert isinstance(chunk, bytes)
            chunks.append(chunk)
        return b"".join(chunks)

    return Call(iterate, path_params={"id": sid, "filename": fname}, query=query, result="bytes")


def c_fork_session(i: int) -> Call:
    sid, index = pv(i, 17), 1 + i * 3
    kwargs: dict[str, Any] = {"message_index": index}
    wire: dict[str, Any] = {"messageIndex": index}
    if i % 2:
        kwargs["title"] = wire["title"] = tv(i, 5)
    return Call(
        lambda m, **o: m.fork_session(sid, **kwargs, **o), path_params={"id": sid}, json_body=wire
    )


def c_send_message(i: int) -> Call:
    sid, text = pv(i, 1), tv(i, 7)
    kwargs: dict[str, Any] = {"text": text}
    wire: dict[str, Any] = {"text": text}
    # plan_mode false may be left out: spec default and Go zero value agree.
    defaults: dict[str, Any] = {"plan_mode": False}
    if i % 2:
        kwargs["plan_mode"] = wire["plan_mode"] = bool(i % 4 == 1)
    if i % 3 == 1:
        kwargs["thinking_level"] = wire["thinking_level"] = pick(
            ["off", "basic", "medium", "maximum", None], i
        )
    if i % 5 == 2:
        kwargs["max_steps"] = wire["max_steps"] = 1 + i
    return Call(
        lambda m, **o: m.send_message(sid, **kwargs, **o),
        path_params={"id": sid},
        json_body=wire,
        defaults=defaults,
    )


def c_rewind_session(i: int) -> Call:
    sid, msg = pv(i, 2), pv(i, 9)
    kwargs: dict[str, Any] = {"message_id": msg}
    # The client's default is the spec's (true), but the real server decodes the
    # field into a plain Go bool: leaving it out means false. It must be sent.
    wire: dict[str, Any] = {"messageId": msg, "cleanupMedia": True}
    if i % 2:
        kwargs["cleanup_media"] = wire["cleanupMedia"] = bool(i % 4 == 1)
    return Call(
        lambda m, **o: m.rewind_session(sid, **kwargs, **o), path_params={"id": sid}, json_body=wire
    )


def c_stream_events(i: int) -> Call:
    sid = pv(i, 19)

    async def first_events(m: Any, **o: Any) -> Any:
        async with m.stream_events(sid, reconnect=False, **o) as events:
            return [e async for e in events]

    return Call(first_events, query={"sessionId": sid}, result="events")


CALLS: dict[str, Callable[[int], Call]] = {
    "storeApiKey": c_store_api_key,
    "setApiKey": c_set_api_key,
    "initiateOAuthLogin": _no_args("initiate_oauth_login"),
    "handleOAuthCallback": c_handle_oauth_callback,
    "startOAuthFlow": _one_param("start_oauth_flow", "provider"),
    "getAuthStatus": _no_args("get_auth_status"),
    "validatePreferredProvider": _no_args("validate_preferred_provider"),
    "deleteCredentials": _one_param("delete_credentials", "provider", 3),
    "listCommands": _no_args("list_commands"),
    "getCommand": _one_param("get_command", "name", 5),
    "listMcpServers": _no_args("list_mcp_servers"),
    "getMessageHistory": c_get_message_history,
    "respondToNotification": c_respond_to_notification,
    "denyPermission": _one_param("deny_permission", "id", 2),
    "grantPermission": _one_param("grant_permission", "id", 4),
    "getPreferences": _no_args("get_preferences"),
    "updatePreferences": c_update_preferences,
    "getAvailableProviders": _no_args("get_available_providers"),
    "resetPreferences": _no_args("reset_preferences"),
    "listSessions": c_list_sessions,
    "createSession": c_create_session,
    "deleteSession": c_delete_session,
    "getSession": _one_param("get_session", "id"),
    "updateSessionCallbacks": c_update_session_callbacks,
    "cancelSessionProcessing": _one_param("cancel_session_processing", "id", 9),
    "exportSession": _one_param("export_session", "id", 10),
    "listSessionFiles": _one_param("list_session_files", "id", 11),
    "uploadSessionFile": c_upload_session_file,
    "deleteSessionFile": c_delete_session_file,
    "getSessionFile": c_get_session_file,
    "forkSession": c_fork_session,
    "getSessionMessages": _one_param("get_session_messages", "id", 18),
    "sendMessage": c_send_message,
    "rewindSession": c_rewind_session,
    "getSystemInfo": _no_args("get_system_info"),
    "listLLMTools": _no_args("list_llm_tools"),
    "getToolCredentialsStatus": _no_args("get_tool_credentials_status"),
    "getToolsStatus": _no_args("get_tools_status"),
    "healthCheck": _no_args("health_check"),
    "getOAuthHealth": _no_args("get_oauth_health"),
    "refreshOAuthTokens": _no_args("refresh_oauth_tokens"),
    "streamEvents": c_stream_events,
}
"""Every operation of the merged spec: how to call it, and what must go on the wire."""


# ------------------------------------------------------------- request checks

_SEGMENT_OK = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@%]*")


def _content_type(headers: dict[str, str]) -> str:
    for key, value in headers.items():
        if key.lower() == "content-type":
            return value
    return ""


def _go_disposition_params(header: str) -> dict[str, str]:
    """Content-Disposition parameters read the way Go's mime package reads them."""
    params: dict[str, str] = {}
    for m in re.finditer(r';\s*([A-Za-z0-9_*.-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)', header):
        key, val = m.group(1).lower(), m.group(2).strip()
        if val.startswith('"'):
            val = re.sub(r"\\(.)", r"\1", val[1:-1])
        if key.endswith("*"):
            charset, _, rest = val.partition("'")
            _, _, encoded = rest.partition("'")
            params[key[:-1]] = unquote(encoded, encoding=charset or "utf-8", errors="strict")
        elif key not in params:
            params[key] = val
    return params


def parse_multipart(ctype: str, body: bytes) -> list[tuple[dict[str, str], bytes]]:
    m = re.search(r'boundary="?([^";]+)"?', ctype)
    assert m, f"multipart Content-Type without boundary: {ctype!r}"
    delim = b"--" + m.group(1).encode()
    assert body.startswith(delim), "multipart body does not start with its boundary"
    parts = []
    for chunk in body.split(b"\r\n" + delim)[0:]:
        chunk = chunk.removeprefix(delim)
        if chunk.startswith(b"--"):
            break
        chunk = chunk.removeprefix(b"\r\n")
        head, sep, content = chunk.partition(b"\r\n\r\n")
        assert sep, "multipart part without header/body separator"
        headers = {}
        for line in head.decode("utf-8").split("\r\n"):
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        parts.append((headers, content))
    assert body.rstrip(b"\r\n").endswith(delim + b"--"), "multipart body is not terminated"
    return parts


def check_request(call: Call, op: Operation, ex: Exchange) -> None:
    ctx = ex.describe()
    assert ex.op_id == op.op_id, f"request reached {ex.op_id}, expected {op.op_id}:\n{ctx}"
    assert ex.method == op.method, ctx
    # Path parameters: one percent-encoded segment each, decoding to the exact value.
    for name, expected in call.path_params.items():
        raw = ex.path_params.get(name)
        assert raw is not None, f"path parameter {name} missing:\n{ctx}"
        assert _SEGMENT_OK.fullmatch(raw), f"unescaped characters in {name}={raw!r}:\n{ctx}"
        assert unquote(raw, errors="strict") == expected, (
            f"path parameter {name}: sent {raw!r}, decodes to {unquote(raw)!r}, "
            f"expected {expected!r}:\n{ctx}"
        )
    # Query string.
    got_query = {k: v for k, v in ex.query.items()}
    if call.query is None:
        assert not got_query, f"unexpected query {got_query}:\n{ctx}"
    else:
        for key, value in call.query.items():
            assert got_query.get(key) == [value], f"query {key}: expected {value!r}:\n{ctx}"
        for key, values in got_query.items():
            if key in call.query:
                continue
            assert key in call.query_optional, f"unexpected query parameter {key}:\n{ctx}"
            assert values == [call.query_optional[key]], f"query {key}={values}:\n{ctx}"
    ctype = _content_type(ex.request_headers)
    if call.upload is not None:
        data, name, part_type = call.upload
        assert ctype.startswith("multipart/form-data"), f"upload not multipart:\n{ctx}"
        parts = parse_multipart(ctype, ex.request_body)
        assert len(parts) == 1, f"expected one multipart part, got {len(parts)}:\n{ctx}"
        headers, content = parts[0]
        disp = _go_disposition_params(headers.get("content-disposition", ""))
        assert disp.get("name") == "file", f"multipart field is {disp.get('name')!r}:\n{ctx}"
        assert content == data, f"uploaded bytes differ ({len(content)} vs {len(data)}):\n{ctx}"
        if name is not None:
            assert disp.get("filename") == name, (
                f"a Go server reads the file name as {disp.get('filename')!r}, "
                f"expected {name!r}:\n{ctx}"
            )
        if part_type is not None:
            assert headers.get("content-type") == part_type, f"part Content-Type:\n{ctx}"
        return
    if call.json_body is None:
        if not op.has_body():
            assert ex.request_body == b"", f"body sent to an operation without one:\n{ctx}"
        return
    assert ctype.split(";")[0].strip() == "application/json", f"Content-Type {ctype!r}:\n{ctx}"
    sent = json.loads(ex.request_body)
    assert isinstance(sent, dict), ctx
    expected = dict(call.json_body)
    for key, default in call.defaults.items():
        # A value equal to a default that the server applies may be left out.
        if key not in sent and expected.get(key, default) == default:
            expected.pop(key, None)
        elif key in sent and key not in expected:
            expected[key] = default
    assert sent == expected, f"JSON body {sent!r} != expected {expected!r}:\n{ctx}"


def check_result(call: Call, op: Operation, ex: Exchange, result: Any) -> None:
    ctx = ex.describe()
    success = [s for s in op.statuses() if 200 <= s < 300]
    assert ex.status in success, f"status {ex.status}, spec says {success}:\n{ctx}"
    if call.result == "none":
        assert result is None, f"expected None, got {result!r}:\n{ctx}"
        return
    if call.result == "bytes":
        assert isinstance(result, bytes) and result == ex.body, f"bytes differ:\n{ctx}"
        return
    if call.result == "file":
        n, content = result
        assert n == len(ex.body) and content == ex.body, f"downloaded file differs:\n{ctx}"
        return
    schema = op.response_schema(ex.status)
    assert schema is not None, f"no JSON schema for {op.op_id} {ex.status}"
    try:
        assert_decoded(result, json.loads(ex.body), schema, op.op_id)
        wire = result.message if op.op_id == "sendMessage" and ex.status == 200 else result
        assert_encodes_back(wire, json.loads(ex.body), op.op_id)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{ctx}") from None


def assert_encodes_back(value: Any, raw: Any, where: str) -> None:
    """Encoding the decoded response gives back the wire document: every field the model
    knows that was sent with a value, with its wire name (``null`` and unknown fields
    aside; timestamps compared as instants). A field not sent may only appear with the
    model's documented default."""
    _encodes_back(value, json.loads(msgspec.json.encode(value)), raw, where)


def _encodes_back(value: Any, enc: Any, raw: Any, where: str) -> None:
    if isinstance(value, msgspec.Struct):
        fields = {f.encode_name: f for f in msgspec.structs.fields(value)}
        sent = {k for k, v in raw.items() if k in fields and v is not None}
        assert sent <= set(enc), f"{where}: {sorted(sent - set(enc))} lost on encoding"
        for key in set(enc) - sent:
            f = fields[key]
            default = f.default_factory() if f.default is msgspec.NODEFAULT else f.default
            assert enc[key] == msgspec.to_builtins(default), f"{where}.{key}: {enc[key]!r}"
        for key in sent:
            _encodes_back(getattr(value, fields[key].name), enc[key], raw[key], f"{where}.{key}")
    elif isinstance(value, dt.datetime):
        got = msgspec.convert(enc, dt.datetime)
        assert got == msgspec.convert(raw, dt.datetime), f"{where}: {enc!r} != {raw!r}"
    elif isinstance(value, dict):
        assert set(enc) == set(raw), f"{where}: keys {sorted(enc)} != {sorted(raw)}"
        for key in raw:
            _encodes_back(value[key], enc[key], raw[key], f"{where}[{key!r}]")
    elif isinstance(value, list):
        assert len(enc) == len(raw), f"{where}: {len(enc)} items != {len(raw)}"
        for i, item in enumerate(value):
            _encodes_back(item, enc[i], raw[i], f"{where}[{i}]")
    else:
        same_kind = isinstance(enc, bool) == isinstance(raw, bool)
        assert enc == raw and same_kind, f"{where}: encoded {enc!r} != sent {raw!r}"
