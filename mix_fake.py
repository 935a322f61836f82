"""In-process fake of the Mix REST API server, for tests and local development.

``MixFake`` serves every operation of the current Mix OpenAPI spec plus the three
operations only found in the 0.2 spec (``forkSession``, ``setApiKey``,
``initiateOAuthLogin``) from in-memory state, on a loopback port::

    async with MixFake() as url:          # "http://127.0.0.1:PORT"
        ...

    fake = MixFake()
    url = await fake.start()
    ...
    await fake.stop()

From a shell: ``python mix_fake.py --port 8088 [--host 127.0.0.1]`` serves until Ctrl-C.

Scripted agent
--------------
``POST /api/sessions/{id}/messages`` answers ``202 {"status": "processing", "sessionId": id}``
at once and runs a scripted turn in the background that publishes to the session's open
``/stream`` connections: ``user_message_created``, ``thinking`` deltas, ``content`` deltas
spelling the reply, then ``complete`` (``done: true``, ``messageId``, ``content`` = full reply,
``reasoning``, ``reasoningDuration``).
The default reply is ``f"Echo: {text}"``; ``fake.script_reply(session_id, text)`` queues the
reply of the next turn and ``fake.reply_hook(session_id, text) -> str | None`` computes one.
With ``plan_mode: true`` the stored user message and ``user_message_created.content`` are
``text + "\n\n<system-reminder>\n" + PLAN_MODE_PROMPT + "\n</system-reminder>"`` (special
texts are still read from ``text``).

Like the Go server, a run is stored as steps, each step a new assistant message id:
``user``, then per tool call an ``assistant`` row (``finishReason`` ``tool_use``, the call in
``toolCalls``), a ``tool`` row (the result) and, for each session callback of type
``send_message`` whose ``toolName`` is the tool's (case-insensitive), a ``user`` row with its
``messageContent``, injected with no event; last an ``assistant`` row with the reply
(``end_turn``, with the run's tokens and cost).  A step's tool and content events carry its
``assistantMessageId``; thinking goes with the first step, whose row keeps the ``reasoning``
(so, as on the Go server, whose ``complete`` carries the final message's own, ``complete``
has ``reasoning`` only when no tool step came first); ``complete.messageId`` is the last
row.  Rows are stored as the run goes (an assistant row is partial in
``GET /api/sessions/{id}/messages`` while it is written) and get their finish reason before
the next event: ``end_turn`` before ``complete``, ``error`` for an ``[error]`` run,
``canceled`` for a cancelled one.  A message sent while a run of the session is active is
queued behind it (``busy="queue"``: its user row is stored when it starts) or refused with
500 naming the busy session (``busy="refuse"``), the two behaviours of real server versions.
Tool names are the server's lowercase ones (``bash``, ``write``, ``task``; ``/api/tools``
lists ``bash``, ``read_text``, ``write``, ``glob``, ``grep``, ``task``).

Special texts in a message (they combine; tool steps come in this order):

``[tool]``
    a ``bash`` step, one per occurrence: ``tool_use_start``, several
    ``tool_use_parameter_delta`` pieces of the JSON input,
    ``tool_use_parameter_streaming_complete`` (full input), ``tool_execution_start``,
    ``tool_execution_complete`` (success).
``[permission]``
    a ``write`` step that publishes a ``permission`` event and waits until
    ``/api/permissions/{id}/grant`` or ``/deny`` is called.  Granted, the run goes on; denied,
    the tool result is an error (``success: false``, ``isError``), the step's row gets
    ``finishReason`` ``permission_denied`` and the run ends with ``error``
    ``{"type": "error", "error": "Permission denied"}`` and no ``complete``.
``[subagent]``
    a ``task`` step whose sub-agent events (``user_message_created``, ``thinking``,
    ``content``, ``complete``) carry ``parentToolCallId``; the sub-agent ``complete`` comes
    before the turn's own ``complete``.  A hidden ``subagent`` session is recorded.
``[notification]``
    publishes a ``notification`` event (answer it with ``/api/notifications/{id}/respond``).
``[ratelimit]``
    publishes ``rate_limit_error`` (``RATE_LIMIT_EVENT``: ``retryAfter`` 1, ``attempt`` 1,
    ``maxAttempts`` 3) before the final content; the run goes on.
``[error]``
    ends the turn with an ``error`` event and no ``complete``.
``[slow]``
    pauses ``slow_delay`` seconds between events (handy to cancel a turn mid-way).

A text starting with ``/`` is a slash command (``/help``, ``/clear``, ``/cost``, ``/session``):
it answers 200 ``{"id": "cmd-<name>", "role": "assistant", "userInput", "assistantResponse"}``
(the Go server's shape, no ``sessionId``), publishes nothing and runs no agent; an unknown
command answers 404.
When no LLM provider has credentials, sending a message answers 401.

Streams (``GET /stream?sessionId=...``)
---------------------------------------
Framing follows the real server: every event is one chunk
``id: N\\nevent: NAME\\ndata: <one-line JSON>\\nretry: MS\\n\\n``, with the Go server's
``retry`` on every frame: ``retry_ms`` (30000) for ordinary events, ``heartbeat_retry_ms``
(45000) for heartbeats, the error's ``retryAfter`` or ``error_retry_ms`` (750) for errors, the
``retryAfter`` number as it is (``retry: 1`` for ``retryAfter: 1``) for ``rate_limit_error``.
Ids restart at 1 on every connection, ``connected`` comes first, then
``heartbeat`` (``{"type": "ping"}``) every ``heartbeat_interval`` seconds.  Like the real
server: events published before a stream registers are dropped, ``Last-Event-ID`` is ignored,
``session_created`` / ``session_deleted`` go to every open stream, each stream buffers
``buffer_size`` events and drops the rest, an unknown session gets 200 with one ``error`` event.
JSON escapes ``<``, ``>`` and ``&`` as ``\\u003c``, ``\\u003e``, ``\\u0026``.

Fault injection
---------------
An *operation* is an operationId (``"getSession"``) or ``"METHOD /path"`` where the path is
a route template (``"/api/sessions/{id}"``) or a glob over the request path
(``"/api/sessions/*"``); the method may be left out.

* ``fake.fail_next(op, times=1, status=503, retry_after=None, body=None)``
* ``fake.drop_next(op, times=1)``: close the connection without answering (aiohttp clients
  resend an idempotent request once after a disconnect: use ``times=2`` to surface a drop)
* ``fake.delay_next(op, seconds, times=1)``
* ``fake.cut_stream_after(k)``: the next opened stream drops its connection after k events
  (``connected`` included)
* ``fake.cut_stream_before(event, times=1, session_id=None)``: a stream drops its connection
  instead of writing the next main-agent ``event`` (``"complete"``, ``"error"``, ...): the
  event is lost in the reconnect gap, as with the real server
* ``fake.drop_events(event, times=1, session_id=None)``: the next such main-agent events
  are published to no stream
* ``fake.disable(*ops)``: answer 404, like a server version without these routes
* ``fake.handle_next(op, handler, times=1)``: answer with your own aiohttp handler
  (``times=math.inf``: every time; the glob ``"/*"`` matches every path)
* ``fake.clear_faults()``

Every request is recorded in ``fake.requests`` (``RecordedRequest(method, path, query,
headers, body)``; upload bodies are not kept) and counted in ``fake.hits[operation_id]``.
``fake.publish(session_id, event, data)`` pushes any event (also unknown names) to the
streams of a session, ``fake.broadcast(event, data)`` to every stream.  Other helpers:
``wait_for_streams``, ``wait_streams_closed``, ``wait_connections``, ``open_connections``,
``wait_idle``, ``stream_count``, ``active_runs``, ``pending_permissions``,
``pending_notifications``, ``add_session``, ``add_file``, ``dropped_events``.

``FakeThread(**kwargs)`` serves a ``MixFake`` from its own thread and event loop (for
blocking ``Mix`` code): ``.url``, ``.fake``, ``.call(coro)``, ``.sync(fn)``, ``.stop()``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fnmatch
import itertools
import json
import math
import mimetypes
import re
import secrets
import threading
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime, timezone
from types import TracebackType
from typing import Any, NamedTuple, TypeVar
from urllib.parse import quote

from aiohttp import BodyPartReader, web

__all__ = ["PLAN_MODE_PROMPT", "FakeThread", "MixFake", "RecordedRequest"]

JSON = dict[str, Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
T = TypeVar("T")

# ---------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------

DEFAULT_MAX_UPLOAD_BYTES = 32 * 1024 * 1024
SSE_RETRY_MS = 30000
"""``retry:`` of ordinary frames (the Go server's value)."""
SSE_HEARTBEAT_RETRY_MS = 45000
SSE_ERROR_RETRY_MS = 750
BUSY_MODES = ("queue", "refuse")
VERSION = "1.0.0"

LLM_PROVIDERS: dict[str, str] = {
    "anthropic": "Anthropic",
    "openai": "OpenAI",
    "openrouter": "OpenRouter",
    "gemini": "Google Gemini",
}
API_KEY_PROVIDERS = (*LLM_PROVIDERS, "brave")
PROVIDER_MODELS: dict[str, list[str]] = {
    "anthropic": ["claude-sonnet-4", "claude-opus-4", "claude-3-5-haiku"],
    "openai": ["gpt-4.1", "o3", "o4-mini"],
    "openrouter": ["anthropic/claude-sonnet-4", "openai/gpt-4.1"],
    "gemini": ["gemini-2.5-pro", "gemini-2.5-flash"],
}
BROWSER_MODES = ("electron-embedded-browser", "local-browser-service", "remote-cdp-websocket")
PROMPT_MODES = ("default", "append", "replace")
PROMPT_LIMITS = {"append": 51_200, "replace": 102_400}
CALLBACK_TYPES = ("bash_script", "sub_agent", "send_message")
CALLBACK_FIELDS = frozenset(
    {
        "bashCommand",
        "bashTimeout",
        "excludeFromContext",
        "includeFullHistory",
        "messageContent",
        "name",
        "subAgentPrompt",
        "subAgentType",
        "toolName",
        "type",
    }
)
THINKING_LEVELS = ("off", "basic", "medium", "maximum")
NOTIFICATION_RESPONSES = ("acknowledge", "text", "choice")
THUMB_RE = re.compile(r"^(\d+|w\d+|h\d+)$")
MODEL = "claude-sonnet-4"
PLAN_MODE_PROMPT = (
    "Plan mode is active. Study the request and the files it concerns, then present a\n"
    "step-by-step plan and wait for the user to approve it.\n"
    "Do not make changes yet: do not edit or write files and do not run commands that\n"
    "modify the system until plan mode ends."
)
"""What a ``plan_mode`` message gets appended, in a ``<system-reminder>`` block (the Go
server loads its own text from a prompt file)."""
RATE_LIMIT_EVENT: JSON = {
    "type": "rate_limit_error",
    "error": "Rate limit exceeded; will automatically retry.",
    "retryAfter": 1,
    "attempt": 1,
    "maxAttempts": 3,
}
"""Data of the ``rate_limit_error`` event a ``[ratelimit]`` run publishes (``retryAfter`` in
seconds; the frame's ``retry:`` line carries the same number)."""

DEFAULT_PREFERENCES: JSON = {
    "preferred_provider": "anthropic",
    "main_agent_model": "claude-sonnet-4",
    "main_agent_max_tokens": 8192,
    "main_agent_reasoning_effort": "medium",
    "sub_agent_model": "claude-3-5-haiku",
    "sub_agent_max_tokens": 4096,
    "sub_agent_reasoning_effort": "low",
}
PREFERENCE_INT_FIELDS = frozenset({"main_agent_max_tokens", "sub_agent_max_tokens"})

COMMANDS: dict[str, tuple[str, str]] = {
    "help": ("Show available commands", "/help [command]"),
    "clear": ("Clear the conversation context", "/clear"),
    "cost": ("Show token usage and cost of the session", "/cost"),
    "session": ("Show information about the current session", "/session"),
}

LLM_TOOLS: list[JSON] = [
    {
        "name": "bash",
        "description": "Execute bash commands in a persistent shell session",
        "parameters": {
            "type": "object",
            "properties": {
                "command": {"type": "string", "description": "The command to run"},
                "description": {"type": "string", "description": "What the command does"},
                "timeout": {"type": "integer", "description": "Timeout in milliseconds"},
            },
        },
        "required": ["command"],
    },
    {
        "name": "read_text",
        "description": "Read a text file from the local filesystem",
        "parameters": {
            "type": "object",
            "properties": {"file_path": {"type": "string"}, "offset": {"type": "integer"}},
        },
        "required": ["file_path"],
    },
    {
        "name": "write",
        "description": "Write a file to the local filesystem",
        "parameters": {
            "type": "object",
            "properties": {"file_path": {"type": "string"}, "content": {"type": "string"}},
        },
        "required": ["file_path", "content"],
    },
    {
        "name": "glob",
        "description": "Find files by glob pattern",
        "parameters": {"type": "object", "properties": {"pattern": {"type": "string"}}},
        "required": ["pattern"],
    },
    {
        "name": "grep",
        "description": "Search file contents with regular expressions",
        "parameters": {"type": "object", "properties": {"pattern": {"type": "string"}}},
        "required": ["pattern"],
    },
    {
        "name": "task",
        "description": "Delegate a task to a sub-agent",
        "parameters": {
            "type": "object",
            "properties": {
                "description": {"type": "string"},
                "prompt": {"type": "string"},
                "subagent_type": {"type": "string"},
            },
        },
        "required": ["description", "prompt"],
    },
]

TOOL_CATEGORIES: list[tuple[str, str, str, str, list[tuple[str, str, str, str]]]] = [
    (
        "web_search",
        "Web Search",
        "Search the web for real-time information",
        "\U0001f50d",
        [("brave", "Brave Search", "Privacy-focused web search with real-time results", "BSA...")],
    ),
    (
        "vision",
        "Vision",
        "Analyse images and videos",
        "\U0001f441",
        [("gemini", "Gemini Vision", "Image and video understanding", "AIza...")],
    ),
]


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def _utc(ts: float) -> str:
    """RFC 3339 timestamp (UTC, seconds) for a Unix time."""
    return (
        datetime.fromtimestamp(ts, timezone.utc)
        .isoformat(timespec="seconds")
        .replace("+00:00", "Z")
    )


def _dumps(obj: Any) -> str:
    """Compact JSON with the HTML escaping of Go's encoder."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    return (
        text.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def _json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=_dumps(data).encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


ERROR_TYPES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 422: "validation_error"}


def _error_type(status: int) -> str:
    return ERROR_TYPES.get(status, "internal_error" if status >= 500 else "bad_request")


def _error_body(status: int, message: str, error_type: str | None = None) -> JSON:
    return {
        "error": {"code": status, "message": message, "type": error_type or _error_type(status)}
    }


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


def _split(text: str, parts: int) -> list[str]:
    """Split ``text`` into at most ``parts`` non-empty pieces (word boundaries if possible)."""
    if not text:
        return []
    words = re.findall(r"\s*\S+\s*", text) or [text]
    if len(words) < parts:
        size = max(1, math.ceil(len(text) / parts))
        return [text[i : i + size] for i in range(0, len(text), size)]
    per = math.ceil(len(words) / parts)
    return ["".join(words[i : i + per]) for i in range(0, len(words), per)]


def _unsafe_name(name: str) -> bool:
    return not name.strip() or "/" in name or "\\" in name or ".." in name or "\x00" in name


class _APIError(Exception):
    """Raised by handlers; turned into an ErrorResponse by the middleware."""

    def __init__(self, status: int, message: str, error_type: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type or _error_type(status)

    def response(self) -> web.Response:
        return _json_response(_error_body(self.status, self.message, self.error_type), self.status)


def _validation(field_name: str, message: str) -> _APIError:
    return _APIError(
        400, f"Validation error for field '{field_name}': {message}", "validation_error"
    )


def _not_found(kind: str, ident: str) -> _APIError:
    return _APIError(404, f"{kind} not found: {ident}", "not_found")


async def _read_body(request: web.Request, allowed: frozenset[str]) -> JSON:
    """Decode a JSON object body, rejecting unknown fields like the real server."""
    raw = await request.read()
    if not raw.strip():
        raise _validation("body", "request body is required")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _validation("body", f"invalid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise _validation("body", "expected a JSON object")
    for key in body:
        if key not in allowed:
            raise _validation("body", f'json: unknown field "{key}"')
    return body


def _opt_str(body: JSON, key: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _validation(key, "must be a string")
    return value


def _req_str(body: JSON, key: str) -> str:
    value = _opt_str(body, key)
    if not value:
        raise _validation(key, f"{key} is required")
    return value


def _opt_bool(body: JSON, key: str) -> bool | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise _validation(key, "must be a boolean")
    return value


def _opt_int(body: JSON, key: str, minimum: int | None = None) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _validation(key, "must be an integer")
    if minimum is not None and value < minimum:
        raise _validation(key, f"must be >= {minimum}")
    return value


def _validate_callbacks(value: Any) -> list[JSON]:
    if not isinstance(value, list):
        raise _validation("callbacks", "must be an array")
    result: list[JSON] = []
    for index, item in enumerate(value):
        name = f"callbacks[{index}]"
        if not isinstance(item, dict):
            raise _validation(name, "must be an object")
        for key in item:
            if key not in CALLBACK_FIELDS:
                raise _validation(name, f'json: unknown field "{key}"')
        if not isinstance(item.get("toolName"), str) or not item["toolName"]:
            raise _validation(f"{name}.toolName", "toolName is required")
        kind = item.get("type")
        if kind not in CALLBACK_TYPES:
            raise _validation(f"{name}.type", "must be one of: " + ", ".join(CALLBACK_TYPES))
        required = {
            "bash_script": "bashCommand",
            "sub_agent": "subAgentPrompt",
            "send_message": "messageContent",
        }[kind]
        if not isinstance(item.get(required), str) or not item[required]:
            raise _validation(f"{name}.{required}", f"{required} is required for {kind}")
        if kind == "send_message" and item.get("excludeFromContext") is True:
            raise _validation(
                f"{name}.excludeFromContext", "not allowed for send_message callbacks"
            )
        for key in ("bashTimeout",):
            if key in item:
                _opt_int(item, key, minimum=1)
        for key in ("excludeFromContext", "includeFullHistory"):
            if key in item:
                _opt_bool(item, key)
        for key in ("name", "subAgentType", "bashCommand", "subAgentPrompt", "messageContent"):
            if key in item:
                _opt_str(item, key)
        result.append(dict(item))
    return result


# ---------------------------------------------------------------------------
# State
# ---------------------------------------------------------------------------


class RecordedRequest(NamedTuple):
    """One request as the fake received it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass
class _Message:
    id: str
    session_id: str
    role: str
    content: str
    created_at: float
    reasoning: str = ""
    reasoning_duration: int = 0
    tool_calls: list[JSON] = field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0
    finish_reason: str | None = None

    def backend(self) -> JSON:
        data: JSON = {
            "id": self.id,
            "sessionId": self.session_id,
            "role": self.role,
            "userInput": self.content,
        }
        if self.role == "assistant":
            data["assistantResponse"] = self.content
            data["model"] = MODEL
            data["inputTokens"] = self.input_tokens
            data["outputTokens"] = self.output_tokens
            data["cost"] = self.cost
        if self.tool_calls:
            data["toolCalls"] = [dict(tc) for tc in self.tool_calls]
        if self.reasoning:
            data["reasoning"] = self.reasoning
            data["reasoningDuration"] = self.reasoning_duration
        return data

    def export(self) -> JSON:
        data: JSON = {
            "id": self.id,
            "role": self.role,
            "content": self.content,
            "createdAt": _utc(self.created_at),
            "updatedAt": _utc(self.created_at),
        }
        if self.role == "assistant":
            data["model"] = MODEL
        if self.finish_reason:
            data["finishReason"] = self.finish_reason
        if self.reasoning:
            data["reasoning"] = self.reasoning
            data["reasoningDuration"] = self.reasoning_duration
        if self.tool_calls:
            calls: list[JSON] = []
            for tc in self.tool_calls:
                call = {k: tc[k] for k in ("id", "name", "input", "type", "finished")}
                with contextlib.suppress(ValueError):
                    parsed = json.loads(tc["input"])
                    if isinstance(parsed, dict):
                        call["inputJson"] = parsed
                if "result" in tc:
                    call["result"] = tc["result"]
                calls.append(call)
            data["toolCalls"] = calls
        return data


@dataclass
class _File:
    data: bytes
    modified: float


@dataclass
class _Session:
    id: str
    title: str
    browser_mode: str
    created_at: float
    session_type: str = "main"
    cdp_url: str | None = None
    callbacks: list[JSON] | None = None
    custom_system_prompt: str | None = None
    prompt_mode: str = "default"
    parent_session_id: str | None = None
    parent_tool_call_id: str | None = None
    subagent_type: str | None = None
    updated_at: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    messages: list[_Message] = field(default_factory=list)
    files: dict[str, _File] = field(default_factory=dict)

    def to_json(self) -> JSON:
        users = [m for m in self.messages if m.role == "user"]
        data: JSON = {
            "id": self.id,
            "title": self.title,
            "sessionType": self.session_type,
            "browserMode": self.browser_mode,
            "userMessageCount": len(users),
            "assistantMessageCount": sum(1 for m in self.messages if m.role == "assistant"),
            "toolCallCount": sum(len(m.tool_calls) for m in self.messages),
            "promptTokens": self.prompt_tokens,
            "completionTokens": self.completion_tokens,
            "cost": self.cost,
            "createdAt": _utc(self.created_at),
        }
        if self.callbacks:
            data["callbacks"] = [dict(cb) for cb in self.callbacks]
        if self.cdp_url:
            data["cdpUrl"] = self.cdp_url
        if users:
            data["firstUserMessage"] = users[0].content
        if self.parent_session_id:
            data["parentSessionId"] = self.parent_session_id
        if self.parent_tool_call_id:
            data["parentToolCallId"] = self.parent_tool_call_id
        if self.subagent_type:
            data["subagentType"] = self.subagent_type
        return data

    def export(self) -> JSON:
        data = self.to_json()
        return {
            "id": self.id,
            "title": self.title,
            "userMessageCount": data["userMessageCount"],
            "assistantMessageCount": data["assistantMessageCount"],
            "toolCallCount": data["toolCallCount"],
            "promptTokens": self.prompt_tokens,
            "completionTokens": self.completion_tokens,
            "cost": self.cost,
            "createdAt": _utc(self.created_at),
            "updatedAt": _utc(self.updated_at or self.created_at),
            "messages": [m.export() for m in self.messages],
        }

    def file_info(self, name: str) -> JSON:
        f = self.files[name]
        return {
            "name": name,
            "size": len(f.data),
            "modified": int(f.modified),
            "isDir": False,
            "url": f"/api/sessions/{quote(self.id, safe='')}/files/{quote(name, safe='')}",
        }


class _ToolStep(NamedTuple):
    """One tool call of a scripted run (a step of its own)."""

    name: str
    input: JSON
    result: str
    permission: bool = False
    between: Callable[[str], Awaitable[None]] | None = None


class _Stream:
    """One open ``/stream`` connection."""

    def __init__(self, session_id: str, maxsize: int) -> None:
        self.session_id = session_id
        self.queue: asyncio.Queue[tuple[str, JSON] | None] = asyncio.Queue(maxsize=maxsize)
        self.next_id = 0

    def offer(self, item: tuple[str, JSON] | None) -> bool:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            return False
        return True

    def close(self) -> None:
        while not self.offer(None):
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()


@dataclass
class _EventRule:
    event: str
    remaining: int
    session_id: str | None = None


def _take_event_rule(
    rules: list[_EventRule], session_id: str | None, event: str, data: JSON
) -> bool:
    if not rules or data.get("parentToolCallId"):
        return False
    for rule in rules:
        if rule.remaining > 0 and rule.event == event and rule.session_id in (None, session_id):
            rule.remaining -= 1
            if rule.remaining == 0:
                rules.remove(rule)
            return True
    return False


@dataclass
class _Rule:
    kind: str
    key: str
    remaining: float
    status: int = 503
    retry_after: str | None = None
    body: bytes | str | JSON | None = None
    seconds: float = 0.0
    handler: Handler | None = None


# ---------------------------------------------------------------------------
# The fake server
# ---------------------------------------------------------------------------


class MixFake:
    """An in-memory Mix server on a loopback port (see the module docstring)."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        heartbeat_interval: float = 45.0,
        max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
        event_delay: float = 0.0,
        buffer_size: int = 50,
        slow_delay: float = 0.2,
        authenticated: bool = True,
        storage_base_path: str = "/tmp/mix/sessions",
        busy: str = "queue",
        retry_ms: int = SSE_RETRY_MS,
        heartbeat_retry_ms: int = SSE_HEARTBEAT_RETRY_MS,
        error_retry_ms: int = SSE_ERROR_RETRY_MS,
    ) -> None:
        if busy not in BUSY_MODES:
            raise ValueError(f"busy must be one of {BUSY_MODES}, not {busy!r}")
        self.host = host
        self.busy = busy
        """A message sent while a run is active: ``"queue"`` runs it after the active one,
        ``"refuse"`` answers 500 naming the busy session (both are real server behaviours)."""
        self.retry_ms = retry_ms
        self.heartbeat_retry_ms = heartbeat_retry_ms
        self.error_retry_ms = error_retry_ms
        self.port = port
        self.heartbeat_interval = heartbeat_interval
        self.max_upload_bytes = max_upload_bytes
        self.event_delay = event_delay
        self.buffer_size = buffer_size
        self.slow_delay = slow_delay
        self.storage_base_path = storage_base_path
        self.url = ""
        self.requests: list[RecordedRequest] = []
        self.hits: Counter[str] = Counter()
        self.dropped_events = 0
        self.reply_hook: Callable[[str, str], str | None] | None = None

        self._sessions: dict[str, _Session] = {}
        self._streams: list[_Stream] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._credentials: dict[str, str] = {"anthropic": "api_key"} if authenticated else {}
        self._oauth_states: set[str] = set()
        self._oauth_expiry: float = 0.0
        self._preferences: JSON | None = None
        self._permissions: dict[str, asyncio.Future[bool]] = {}
        self._notifications: dict[str, str] = {}
        self._replies: dict[str | None, deque[str]] = {}
        self._runs: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._rules: list[_Rule] = []
        self._cuts: deque[int] = deque()
        self._cut_before: list[_EventRule] = []
        self._event_drops: list[_EventRule] = []
        self._disabled: set[str] = set()
        self._counter = itertools.count(1)
        self._runner: web.AppRunner | None = None

        self.app = web.Application(
            middlewares=[self._make_middleware()],
            client_max_size=max(8 * 1024 * 1024, max_upload_bytes * 2),
        )
        self.operations: dict[str, tuple[str, str]] = {}
        for method, path, op, handler in self._routes():
            self.app.router.add_route(method, path, handler, name=op)
            self.operations[op] = (method, path)

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> str:
        """Bind the server and return its base URL."""
        if self._runner is not None:
            return self.url
        runner = web.AppRunner(
            self.app, handler_cancellation=True, shutdown_timeout=0.5, access_log=None
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        self._runner = runner
        host, port = runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self.url

    async def stop(self) -> None:
        """Close every stream, cancel running turns and shut the server down."""
        for stream in list(self._streams):
            stream.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2)
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> str:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- test controls -----------------------------------------------------

    def _check_operation(self, operation: str) -> None:
        if operation not in self.operations and "/" not in operation:
            raise ValueError(f"unknown operation {operation!r}")

    def fail_next(
        self,
        operation: str,
        times: int = 1,
        status: int = 503,
        retry_after: str | None = None,
        body: bytes | str | JSON | None = None,
    ) -> None:
        """Answer the next ``times`` matching requests with ``status`` (ErrorResponse body)."""
        self._check_operation(operation)
        self._rules.append(_Rule("fail", operation, times, status, retry_after, body))

    def handle_next(self, operation: str, handler: Handler, times: float = 1) -> None:
        """Answer the next ``times`` matching requests (``math.inf``: all of them) with
        ``handler(request)``, for a fault no other control expresses (a reply made of parts,
        a hold, a redirect...). The request is recorded and counted first, as always; the
        glob ``"/*"`` matches every path, also those outside the API."""
        self._check_operation(operation)
        self._rules.append(_Rule("handle", operation, times, handler=handler))

    async def wait_requests(self, count: int, timeout: float = 5.0) -> None:
        """Wait until at least ``count`` requests have arrived (recorded in ``requests``)."""
        await self._wait_until(
            lambda: len(self.requests) >= count, timeout, f"{count} requests did not arrive"
        )

    def drop_next(self, operation: str, times: int = 1) -> None:
        """Close the connection of the next ``times`` matching requests without answering."""
        self._check_operation(operation)
        self._rules.append(_Rule("drop", operation, times))

    def delay_next(self, operation: str, seconds: float, times: int = 1) -> None:
        """Hold the next ``times`` matching requests for ``seconds`` before handling them."""
        self._check_operation(operation)
        self._rules.append(_Rule("delay", operation, times, seconds=seconds))

    def cut_stream_after(self, k: int) -> None:
        """Make the next opened stream drop its connection after ``k`` events."""
        self._cuts.append(k)

    def cut_stream_before(self, event: str, times: int = 1, session_id: str | None = None) -> None:
        """Drop the connection of a stream (of ``session_id``, or any) instead of writing its
        next main-agent ``event`` frame (no ``parentToolCallId``): that event is lost for the
        stream, like a ``complete`` or ``error`` that falls into a reconnect gap. Applies to the
        next ``times`` such frames."""
        self._cut_before.append(_EventRule(event, times, session_id))

    def drop_events(self, event: str, times: int = 1, session_id: str | None = None) -> None:
        """Publish the next ``times`` main-agent ``event`` events (of ``session_id``, or any) to
        no stream (counted in ``dropped_events``), like events lost while no stream was open."""
        self._event_drops.append(_EventRule(event, times, session_id))

    def disable(self, *operations: str) -> None:
        """Answer 404 for these operations (a server version without the routes)."""
        for op in operations:
            self._check_operation(op)
        self._disabled.update(operations)

    def enable(self, *operations: str) -> None:
        self._disabled.difference_update(operations)

    def clear_faults(self) -> None:
        self._rules.clear()
        self._cuts.clear()
        self._cut_before.clear()
        self._event_drops.clear()
        self._disabled.clear()

    def script_reply(self, session_id: str | None, reply: str) -> None:
        """Queue the reply of the next turn of ``session_id`` (``None``: any session)."""
        self._replies.setdefault(session_id, deque()).append(reply)

    def publish(self, session_id: str, event: str, data: JSON) -> int:
        """Push an event to the open streams of a session; returns how many took it."""
        return self._publish(session_id, event, data)

    def broadcast(self, event: str, data: JSON) -> int:
        """Push an event to every open stream."""
        return self._publish(None, event, data)

    def stream_count(self, session_id: str | None = None) -> int:
        return sum(1 for s in self._streams if session_id in (None, s.session_id))

    async def wait_for_streams(
        self, session_id: str | None = None, count: int = 1, timeout: float = 5.0
    ) -> None:
        """Wait until at least ``count`` streams (of a session) are open."""
        await self._wait_until(
            lambda: self.stream_count(session_id) >= count, timeout, "streams did not open"
        )

    async def wait_streams_closed(
        self, session_id: str | None = None, timeout: float = 5.0
    ) -> None:
        """Wait until no stream (of a session) is open: the server has seen every close."""
        await self._wait_until(
            lambda: self.stream_count(session_id) == 0, timeout, "streams stayed open"
        )

    async def _wait_until(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        async def wait() -> None:
            while not done():
                waiter = asyncio.get_running_loop().create_future()
                self._waiters.append(waiter)
                await waiter

        try:
            await asyncio.wait_for(wait(), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"{what} within {timeout} s") from None

    def _changed(self) -> None:
        """Wake the ``_wait_until`` waiters: a stream opened or closed, a request arrived."""
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    @property
    def open_connections(self) -> int:
        """TCP connections the server holds open now: its view of the clients' pools."""
        server = self._runner.server if self._runner is not None else None
        return len(server.connections) if server is not None else 0

    async def wait_connections(self, count: int = 0, timeout: float = 5.0) -> None:
        """Wait until the server holds at most ``count`` open connections (clients closed
        theirs). aiohttp has no close hook to wait on: this polls, bounded by ``timeout``."""
        deadline = time.monotonic() + timeout
        while self.open_connections > count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.open_connections} connections stayed open")
            await asyncio.sleep(0.01)

    async def wait_idle(self, session_id: str | None = None, timeout: float = 5.0) -> None:
        """Wait until the scripted turns (of a session) are over."""
        tasks = [t for sid, t in self._runs.items() if session_id in (None, sid)]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    @property
    def active_runs(self) -> list[str]:
        """The sessions whose scripted turn is running now."""
        return [sid for sid, task in self._runs.items() if not task.done()]

    @property
    def pending_permissions(self) -> list[str]:
        return [pid for pid, fut in self._permissions.items() if not fut.done()]

    @property
    def pending_notifications(self) -> list[str]:
        return list(self._notifications)

    def add_session(
        self, title: str = "Test session", browser_mode: str = "local-browser-service"
    ) -> str:
        """Create a session directly (no request, no broadcast) and return its id."""
        session = self._new_session(title, browser_mode)
        return session.id

    def add_file(self, session_id: str, name: str, data: bytes) -> None:
        self._sessions[session_id].files[name] = _File(data, time.time())

    # -- internals ---------------------------------------------------------

    def _new_session(self, title: str, browser_mode: str, **kwargs: Any) -> _Session:
        now = time.time()
        session = _Session(
            id=f"session-{next(self._counter)}-{secrets.token_hex(4)}",
            title=title,
            browser_mode=browser_mode,
            created_at=now,
            updated_at=now,
            **kwargs,
        )
        self._sessions[session.id] = session
        return session

    def _session(self, request: web.Request) -> _Session:
        sid = request.match_info["id"]
        session = self._sessions.get(sid)
        if session is None:
            raise _not_found("Session", sid)
        return session

    def _publish(self, session_id: str | None, event: str, data: JSON) -> int:
        if _take_event_rule(self._event_drops, session_id, event, data):
            self.dropped_events += 1
            return 0
        delivered = 0
        for stream in list(self._streams):
            if session_id is not None and stream.session_id != session_id:
                continue
            if stream.offer((event, dict(data))):
                delivered += 1
            else:
                self.dropped_events += 1
        return delivered

    def _rule_matches(self, rule: _Rule, request: web.Request, op: str | None) -> bool:
        key = rule.key
        if key == op:
            return True
        if "/" not in key:
            return False
        method, _, path = key.partition(" ") if " " in key else ("", "", key)
        if method and method.upper() != request.method:
            return False
        resource = request.match_info.route.resource
        template = resource.canonical if resource is not None else None
        return path == template or fnmatch.fnmatchcase(request.path, path)

    def _take_rules(self, request: web.Request, op: str | None) -> list[_Rule]:
        fired: list[_Rule] = []
        for rule in self._rules:
            if rule.remaining > 0 and self._rule_matches(rule, request, op):
                if any(r.kind == rule.kind for r in fired):
                    continue
                rule.remaining -= 1
                fired.append(rule)
        self._rules = [r for r in self._rules if r.remaining > 0]
        return fired

    def _make_middleware(self) -> Any:
        fake = self

        @web.middleware
        async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            route = request.match_info.route
            op = route.name if route.resource is not None else None
            body = b""
            if op not in ("uploadSessionFile", "streamEvents") and request.can_read_body:
                try:
                    body = await request.read()
                except web.HTTPRequestEntityTooLarge:
                    return _json_response(_error_body(413, "request body too large"), 413)
            fake.requests.append(
                RecordedRequest(
                    request.method,
                    request.path,
                    dict(request.query),
                    dict(request.headers),
                    body,
                )
            )
            if op is not None:
                fake.hits[op] += 1
            fake._changed()
            for rule in fake._take_rules(request, op):
                if rule.kind == "delay":
                    await asyncio.sleep(rule.seconds)
                elif rule.kind == "handle":
                    assert rule.handler is not None
                    return await rule.handler(request)
                elif rule.kind == "drop":
                    if request.transport is not None:
                        request.transport.close()
                    return web.Response(status=499)
                else:
                    return fake._failure(rule)
            if op is not None and op in fake._disabled:
                return _json_response(_error_body(404, "404 page not found"), 404)
            try:
                return await handler(request)
            except _APIError as exc:
                return exc.response()
            except web.HTTPMethodNotAllowed as exc:
                return _json_response(
                    _error_body(405, f"method {request.method} not allowed", "bad_request"),
                    405,
                    headers={"Allow": ", ".join(sorted(exc.allowed_methods))},
                )
            except web.HTTPNotFound:
                return _json_response(_error_body(404, "404 page not found"), 404)

        return middleware

    def _failure(self, rule: _Rule) -> web.Response:
        headers = {"Retry-After": rule.retry_after} if rule.retry_after is not None else None
        if rule.body is None:
            return _json_response(
                _error_body(rule.status, f"injected failure ({rule.status})"),
                rule.status,
                headers,
            )
        if isinstance(rule.body, dict):
            return _json_response(rule.body, rule.status, headers)
        raw = rule.body.encode() if isinstance(rule.body, str) else rule.body
        return web.Response(
            body=raw, status=rule.status, headers=headers, content_type="application/json"
        )

    def _routes(self) -> list[tuple[str, str, str, Handler]]:
        return [
            ("POST", "/api/auth/api-key", "storeApiKey", self._store_api_key),
            ("POST", "/api/auth/apikey", "setApiKey", self._set_api_key),
            ("POST", "/api/auth/login", "initiateOAuthLogin", self._oauth_login),
            ("POST", "/api/auth/oauth-callback", "handleOAuthCallback", self._oauth_callback),
            ("POST", "/api/auth/oauth/{provider}", "startOAuthFlow", self._oauth_flow),
            ("GET", "/api/auth/status", "getAuthStatus", self._auth_status),
            ("GET", "/api/auth/validate", "validatePreferredProvider", self._auth_validate),
            ("DELETE", "/api/auth/{provider}", "deleteCredentials", self._delete_credentials),
            ("GET", "/api/commands", "listCommands", self._list_commands),
            ("GET", "/api/commands/{name}", "getCommand", self._get_command),
            ("GET", "/api/mcp", "listMcpServers", self._list_mcp),
            ("GET", "/api/messages/history", "getMessageHistory", self._history),
            (
                "POST",
                "/api/notifications/{id}/respond",
                "respondToNotification",
                self._respond_notification,
            ),
            ("POST", "/api/permissions/{id}/deny", "denyPermission", self._deny),
            ("POST", "/api/permissions/{id}/grant", "grantPermission", self._grant),
            ("GET", "/api/preferences", "getPreferences", self._get_preferences),
            ("POST", "/api/preferences", "updatePreferences", self._update_preferences),
            ("GET", "/api/preferences/providers", "getAvailableProviders", self._providers),
            ("POST", "/api/preferences/reset", "resetPreferences", self._reset_preferences),
            ("GET", "/api/sessions", "listSessions", self._list_sessions),
            ("POST", "/api/sessions", "createSession", self._create_session),
            ("DELETE", "/api/sessions/{id}", "deleteSession", self._delete_session),
            ("GET", "/api/sessions/{id}", "getSession", self._get_session),
            ("PATCH", "/api/sessions/{id}/callbacks", "updateSessionCallbacks", self._callbacks),
            ("POST", "/api/sessions/{id}/cancel", "cancelSessionProcessing", self._cancel),
            ("GET", "/api/sessions/{id}/export", "exportSession", self._export),
            ("GET", "/api/sessions/{id}/files", "listSessionFiles", self._list_files),
            ("POST", "/api/sessions/{id}/files/upload", "uploadSessionFile", self._upload),
            (
                "DELETE",
                "/api/sessions/{id}/files/{filename}",
                "deleteSessionFile",
                self._delete_file,
            ),
            ("GET", "/api/sessions/{id}/files/{filename}", "getSessionFile", self._get_file),
            ("POST", "/api/sessions/{id}/fork", "forkSession", self._fork),
            ("GET", "/api/sessions/{id}/messages", "getSessionMessages", self._messages),
            ("POST", "/api/sessions/{id}/messages", "sendMessage", self._send_message),
            ("POST", "/api/sessions/{id}/rewind", "rewindSession", self._rewind),
            ("GET", "/api/system/info", "getSystemInfo", self._system_info),
            ("GET", "/api/tools", "listLLMTools", self._tools),
            (
                "GET",
                "/api/tools/credentials-status",
                "getToolCredentialsStatus",
                self._tool_credentials,
            ),
            ("GET", "/api/tools/status", "getToolsStatus", self._tools_status),
            ("GET", "/health", "healthCheck", self._health),
            ("GET", "/health/auth", "getOAuthHealth", self._oauth_health),
            ("POST", "/internal/auth/refresh-tokens", "refreshOAuthTokens", self._refresh_tokens),
            ("GET", "/stream", "streamEvents", self._stream),
        ]

    # -- authentication ----------------------------------------------------

    async def _store_api_key(self, request: web.Request) -> web.StreamResponse:
        body = await _read_body(request, frozenset({"api_key", "provider"}))
        provider = _req_str(body, "provider")
        if provider not in API_KEY_PROVIDERS:
            raise _validation(
                "provider",
                f"invalid provider '{provider}', must be one of: " + ", ".join(API_KEY_PROVIDERS),
            )
        api_key = _opt_str(body, "api_key")
        if not api_key or not api_key.strip():
            raise _validation("api_key", "api_key is required")
        self._credentials[provider] = "api_key"
        return _json_response(
            {
                "message": f"API key stored successfully for {provider}",
                "provider": provider,
                "status": "success",
            }
        )

    async def _set_api_key(self, request: web.Request) -> web.StreamResponse:
        body = await _read_body(request, frozenset({"apiKey"}))
        api_key = _opt_str(body, "apiKey")
        if not api_key or not api_key.strip():
            raise _validation("apiKey", "apiKey is required")
        self._credentials["anthropic"] = "api_key"
        return _json_response({"success": True})

    def _new_oauth_state(self) -> tuple[str, str]:
        state = secrets.token_urlsafe(16)
        self._oauth_states.add(state)
        url = f"https://claude.ai/oauth/authorize?client_id=mix&response_type=code&state={state}"
        return state, url

    async def _oauth_login(self, request: web.Request) -> web.StreamResponse:
        _, url = self._new_oauth_state()
        return _json_response({"authUrl": url})

    async def _oauth_flow(self, request: web.Request) -> web.StreamResponse:
        provider = request.match_info["provider"]
        if provider != "anthropic":
            raise _APIError(400, f"OAuth is not supported for provider '{provider}'")
        state, url = self._new_oauth_state()
        return _json_response(
            {
                "auth_url": url,
                "message": "Open the URL, authorize, then post the code to /api/auth/oauth-callback",
                "state": state,
            }
        )

    async def _oauth_callback(self, request: web.Request) -> web.StreamResponse:
        body = await _read_body(request, frozenset({"provider", "code", "state"}))
        provider = _req_str(body, "provider")
        _req_str(body, "code")
        state = _req_str(body, "state")
        if provider != "anthropic":
            raise _APIError(400, f"OAuth is not supported for provider '{provider}'")
        if state not in self._oauth_states:
            raise _APIError(400, "invalid or expired OAuth state")
        self._oauth_states.discard(state)
        self._credentials[provider] = "oauth"
        self._oauth_expiry = time.time() + 3600
        return _json_response(
            {
                "expires_in": 3600,
                "message": "OAuth authentication completed",
                "provider": provider,
                "status": "success",
            }
        )

    async def _auth_status(self, request: web.Request) -> web.StreamResponse:
        providers = {
            name: {
                "auth_method": self._credentials.get(name, "none"),
                "authenticated": name in self._credentials,
                "display_name": display,
            }
            for name, display in LLM_PROVIDERS.items()
        }
        return _json_response({"providers": providers})

    def _preferred_provider(self) -> str:
        prefs = self._preferences or DEFAULT_PREFERENCES
        return str(prefs.get("preferred_provider") or "anthropic")

    async def _auth_validate(self, request: web.Request) -> web.StreamResponse:
        provider = self._preferred_provider()
        method = self._credentials.get(provider, "none")
        valid = provider in self._credentials
        return _json_response(
            {
                "auth_method": method,
                "message": f"{provider} is authenticated"
                if valid
                else f"{provider} is not authenticated",
                "provider": provider,
                "valid": valid,
            }
        )

    async def _delete_credentials(self, request: web.Request) -> web.StreamResponse:
        provider = request.match_info["provider"]
        if provider not in API_KEY_PROVIDERS:
            raise _validation("provider", f"invalid provider '{provider}'")
        self._credentials.pop(provider, None)
        return _json_response(
            {
                "message": f"Credentials deleted for {provider}",
                "provider": provider,
                "status": "success",
            }
        )

    async def _oauth_health(self, request: web.Request) -> web.StreamResponse:
        now = time.time()
        providers: JSON = {}
        for name in ("anthropic",):
            if self._credentials.get(name) == "oauth":
                left = max(0, int(self._oauth_expiry - now))
                providers[name] = {
                    "provider": name,
                    "status": "active" if left > 0 else "expired",
                    "expires_at": _utc(self._oauth_expiry),
                    "expires_in": f"{left // 3600}h{left % 3600 // 60}m{left % 60}s",
                    "last_refresh": _utc(self._oauth_expiry - 3600),
                }
            else:
                providers[name] = {"provider": name, "status": "not_found"}
        return _json_response({"status": "healthy", "providers": providers, "timestamp": _utc(now)})

    async def _refresh_tokens(self, request: web.Request) -> web.StreamResponse:
        if self._credentials.get("anthropic") == "oauth":
            self._oauth_expiry = time.time() + 3600
        return _json_response(
            {"message": "Token refresh triggered successfully", "status": "success"}
        )

    # -- system ------------------------------------------------------------

    async def _list_commands(self, request: web.Request) -> web.StreamResponse:
        return _json_response(
            [{"name": name, "description": desc} for name, (desc, _) in COMMANDS.items()]
        )

    async def _get_command(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in COMMANDS:
            raise _not_found("Command", name)
        desc, usage = COMMANDS[name]
        return _json_response({"name": name, "description": desc, "usage": usage})

    async def _list_mcp(self, request: web.Request) -> web.StreamResponse:
        return _json_response(
            [
                {
                    "name": "brave",
                    "connected": True,
                    "status": "connected",
                    "tools": [{"name": "brave_search", "description": "Search the web with Brave"}],
                },
                {"name": "playwright", "connected": False, "status": "failed", "tools": None},
            ]
        )

    async def _system_info(self, request: web.Request) -> web.StreamResponse:
        return _json_response({"storageBasePath": self.storage_base_path})

    async def _tools(self, request: web.Request) -> web.StreamResponse:
        return _json_response({"tools": LLM_TOOLS})

    def _tool_categories(self, detailed: bool) -> JSON:
        categories: JSON = {}
        for key, display, description, icon, tools in TOOL_CATEGORIES:
            entries: list[JSON] = []
            for provider, tool_display, tool_description, key_format in tools:
                entry: JSON = {
                    "provider": provider,
                    "display_name": tool_display,
                    "description": tool_description,
                    "api_key_required": True,
                    "authenticated": provider in self._credentials,
                }
                if detailed:
                    entry["api_key_format"] = key_format
                entries.append(entry)
            category: JSON = {"display_name": display, "tools": entries}
            if detailed:
                category["description"] = description
                category["icon"] = icon
            categories[key] = category
        return {"categories": categories}

    async def _tool_credentials(self, request: web.Request) -> web.StreamResponse:
        return _json_response(self._tool_categories(detailed=True))

    async def _tools_status(self, request: web.Request) -> web.StreamResponse:
        return _json_response(self._tool_categories(detailed=False))

    async def _health(self, request: web.Request) -> web.StreamResponse:
        return _json_response({"status": "ok", "timestamp": _utc(time.time()), "version": VERSION})

    # -- preferences -------------------------------------------------------

    def _available_providers(self) -> JSON:
        return {
            name: {"display_name": display, "models": list(PROVIDER_MODELS[name])}
            for name, display in LLM_PROVIDERS.items()
        }

    async def _get_preferences(self, request: web.Request) -> web.StreamResponse:
        prefs = dict(self._preferences) if self._preferences is not None else None
        return _json_response(
            {"available_providers": self._available_providers(), "preferences": prefs}
        )

    async def _update_preferences(self, request: web.Request) -> web.StreamResponse:
        fields = frozenset(DEFAULT_PREFERENCES)
        body = await _read_body(request, fields)
        changes: JSON = {}
        for key, value in body.items():
            if value is None:
                changes[key] = DEFAULT_PREFERENCES[key]
            elif key in PREFERENCE_INT_FIELDS:
                changes[key] = _opt_int(body, key, minimum=1)
            else:
                changes[key] = _opt_str(body, key)
        provider = changes.get("preferred_provider")
        if provider is not None and provider not in LLM_PROVIDERS:
            raise _validation("preferred_provider", f"unknown provider '{provider}'")
        now = int(time.time())
        if self._preferences is None:
            self._preferences = {**DEFAULT_PREFERENCES, "created_at": now}
        self._preferences.update(changes)
        self._preferences["updated_at"] = now
        return _json_response(dict(self._preferences))

    async def _providers(self, request: web.Request) -> web.StreamResponse:
        return _json_response(self._available_providers())

    async def _reset_preferences(self, request: web.Request) -> web.StreamResponse:
        now = int(time.time())
        created = self._preferences.get("created_at", now) if self._preferences else now
        self._preferences = {**DEFAULT_PREFERENCES, "created_at": created, "updated_at": now}
        return _json_response(dict(self._preferences))

    # -- permissions and notifications -------------------------------------

    def _resolve_permission(self, pid: str, granted: bool) -> None:
        future = self._permissions.get(pid)
        if future is not None and not future.done():
            future.set_result(granted)

    async def _grant(self, request: web.Request) -> web.StreamResponse:
        pid = request.match_info["id"]
        self._resolve_permission(pid, True)
        return _json_response(
            {"status": "granted", "id": pid, "message": "Permission granted", "granted": True}
        )

    async def _deny(self, request: web.Request) -> web.StreamResponse:
        pid = request.match_info["id"]
        self._resolve_permission(pid, False)
        return _json_response(
            {"status": "denied", "id": pid, "message": "Permission denied", "denied": True}
        )

    async def _respond_notification(self, request: web.Request) -> web.StreamResponse:
        nid = request.match_info["id"]
        body = await _read_body(request, frozenset({"type", "value"}))
        kind = body.get("type")
        if kind not in NOTIFICATION_RESPONSES:
            raise _validation("type", "must be one of: " + ", ".join(NOTIFICATION_RESPONSES))
        value = _opt_str(body, "value")
        if kind in ("text", "choice") and not value:
            raise _validation("value", f"value is required for {kind} responses")
        if nid not in self._notifications:
            raise _not_found("Notification", nid)
        del self._notifications[nid]
        return web.Response(status=204)

    # -- sessions ----------------------------------------------------------

    async def _list_sessions(self, request: web.Request) -> web.StreamResponse:
        raw = request.query.get("includeSubagents", "false").lower()
        if raw not in ("true", "false", "1", "0", ""):
            raise _validation("includeSubagents", "must be a boolean")
        include = raw in ("true", "1")
        sessions = [
            s.to_json()
            for s in reversed(list(self._sessions.values()))
            if include or s.session_type != "subagent"
        ]
        return _json_response(sessions)

    async def _create_session(self, request: web.Request) -> web.StreamResponse:
        body = await _read_body(
            request,
            frozenset(
                {
                    "title",
                    "browserMode",
                    "callbacks",
                    "cdpUrl",
                    "customSystemPrompt",
                    "promptMode",
                    "sessionType",
                    "subagentType",
                }
            ),
        )
        title = _opt_str(body, "title")
        if not title or not title.strip():
            raise _validation("title", "title is required")
        browser_mode = _opt_str(body, "browserMode")
        if not browser_mode:
            raise _validation("browserMode", "browserMode is required")
        if browser_mode not in BROWSER_MODES:
            raise _validation("browserMode", "must be one of: " + ", ".join(BROWSER_MODES))
        cdp_url = _opt_str(body, "cdpUrl")
        if browser_mode == "remote-cdp-websocket":
            if not cdp_url:
                raise _validation("cdpUrl", "cdpUrl is required for remote-cdp-websocket")
            if not cdp_url.startswith(("ws://", "wss://")):
                raise _validation("cdpUrl", "must start with 'ws://' or 'wss://'")
        else:
            cdp_url = None
        prompt_mode = _opt_str(body, "promptMode") or "default"
        if prompt_mode not in PROMPT_MODES:
            raise _validation("promptMode", "promptMode must be 'default', 'append', or 'replace'")
        session_type = _opt_str(body, "sessionType") or "main"
        if session_type != "main":
            raise _validation(
                "sessionType",
                "API can only create main sessions. Subagent sessions are created automatically.",
            )
        if _opt_str(body, "subagentType"):
            raise _validation("subagentType", "subagentType cannot be set for API-created sessions")
        prompt = _opt_str(body, "customSystemPrompt")
        limit = PROMPT_LIMITS.get(prompt_mode)
        if prompt and limit is not None and len(prompt.encode()) > limit:
            raise _validation(
                "customSystemPrompt",
                f"Custom prompt size ({len(prompt.encode()) // 1024}KB) exceeds "
                f"{prompt_mode} mode limit of {limit // 1024}KB",
            )
        callbacks = _validate_callbacks(body["callbacks"]) if body.get("callbacks") else None
        session = self._new_session(
            title,
            browser_mode,
            cdp_url=cdp_url,
            callbacks=callbacks,
            custom_system_prompt=prompt,
            prompt_mode=prompt_mode,
        )
        self._publish(
            None,
            "session_created",
            {
                "type": "session_created",
                "sessionId": session.id,
                "title": session.title,
                "createdAt": int(session.created_at),
            },
        )
        return _json_response(session.to_json(), 201)

    async def _get_session(self, request: web.Request) -> web.StreamResponse:
        return _json_response(self._session(request).to_json())

    async def _delete_session(self, request: web.Request) -> web.StreamResponse:
        session = self._session(request)
        self._cancel_runs(session.id)
        del self._sessions[session.id]
        self._publish(None, "session_deleted", {"type": "session_deleted", "sessionId": session.id})
        return web.Response(status=204)

    async def _callbacks(self, request: web.Request) -> web.StreamResponse:
        session = self._session(request)
        body = await _read_body(request, frozenset({"callbacks"}))
        if "callbacks" not in body or body["callbacks"] is None:
            raise _validation("callbacks", "callbacks is required")
        session.callbacks = _validate_callbacks(body["callbacks"])
        session.updated_at = time.time()
        return _json_response(session.to_json())

    async def _cancel(self, request: web.Request) -> web.StreamResponse:
        session = self._session(request)
        self._cancel_runs(session.id)
        return _json_response({"cancelled": True, "status": "cancelled", "sessionId": session.id})

    async def _export(self, request: web.Request) -> web.StreamResponse:
        session = self._session(request)
        return _json_response(
            session.export(),
            headers={
                "Content-Disposition": f"attachment; filename=session_{session.id}_transcript.json"
            },
        )

    async def _fork(self, request: web.Request) -> web.StreamResponse:
        source = self._session(request)
        body = await _read_body(request, frozenset({"messageIndex", "title"}))
        index = _opt_int(body, "messageIndex")
        if index is None or index < 1:
            raise _validation("messageIndex", "messageIndex must be > 0")
        if index > len(source.messages):
            raise _validation(
                "messageIndex", f"messageIndex {index} exceeds message count {len(source.messages)}"
            )
        title = _opt_str(body, "title") or "Forked Session"
        fork = self._new_session(title, source.browser_mode, cdp_url=source.cdp_url)
        for msg in source.messages[:index]:
            copy = _Message(**{**msg.__dict__, "id": _new_id("msg"), "session_id": fork.id})
            copy.tool_calls = [dict(tc) for tc in msg.tool_calls]
            fork.messages.append(copy)
        fork.prompt_tokens = source.prompt_tokens
        fork.completion_tokens = source.completion_tokens
        self._publish(
            None,
            "session_created",
            {
                "type": "session_created",
                "sessionId": fork.id,
                "title": fork.title,
                "createdAt": int(fork.created_at),
            },
        )
        return _json_response(fork.to_json(), 201)

    async def _rewind(self, request: web.Request) -> web.StreamResponse:
        session = self._session(request)
        body = await _read_body(request, frozenset({"messageId", "cleanupMedia"}))
        message_id = _opt_str(body, "messageId")
        if not message_id:
            raise _validation("messageId", "messageId is required")
        cleanup = _opt_bool(body, "cleanupMedia")
        index = next((i for i, m in enumerate(session.messages) if m.id == message_id), None)
        if index is None:
            raise _not_found("Message", message_id)
        keep = session.messages[: index + 1]
        dropped = session.messages[index + 1 :]
        session.messages = keep
        if dropped and cleanup is not False:
            cutoff = dropped[0].created_at
            for name in [n for n, f in session.files.items() if f.modified >= cutoff]:
                del session.files[name]
        session.updated_at = time.time()
        return _json_response(session.to_json())

    # -- files -------------------------------------------------------------

    async def _list_files(self, request: web.Request) -> web.StreamResponse:
        session = self._session(request)
        return _json_response([session.file_info(name) for name in sorted(session.files)])

    def _file_name(self, request: web.Request) -> str:
        name = request.match_info["filename"]
        if _unsafe_name(name):
            raise _validation("filename", f"invalid filename '{name}'")
        return name

    async def _upload(self, request: web.Request) -> web.StreamResponse:
        session = self._session(request)
        try:
            reader = await request.multipart()
        except (AssertionError, ValueError, KeyError) as exc:
            raise _APIError(400, f"expected multipart/form-data: {exc}") from None
        while True:
            part = await reader.next()
            if part is None:
                raise _validation("file", "file is required (multipart field 'file')")
            if isinstance(part, BodyPartReader) and part.name == "file":
                break
            if isinstance(part, BodyPartReader):
                await part.release()
        original = part.filename
        if original is None or _unsafe_name(original):
            raise _validation("file", f"invalid file name {original!r}")
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = await part.read_chunk(64 * 1024)
            if not chunk:
                break
            size += len(chunk)
            if size > self.max_upload_bytes:
                raise _APIError(
                    413,
                    f"File too large (max {self.max_upload_bytes // (1024 * 1024)}MB)",
                    "bad_request",
                )
            chunks.append(chunk)
        name = re.sub(r"\s", "_", original)
        session.files[name] = _File(b"".join(chunks), time.time())
        info = session.file_info(name)
        if name != original:
            info["originalName"] = original
        return _json_response(info, 201)

    async def _get_file(self, request: web.Request) -> web.StreamResponse:
        session = self._session(request)
        name = self._file_name(request)
        thumb = request.query.get("thumb")
        if thumb is not None and not THUMB_RE.match(thumb):
            raise _validation("thumb", "must match ^(\\d+|w\\d+|h\\d+)$")
        raw_time = request.query.get("time")
        if raw_time is not None:
            try:
                offset = float(raw_time)
            except ValueError:
                raise _validation("time", "must be a number") from None
            if not math.isfinite(offset) or not 0 <= offset <= 86400:
                raise _validation("time", "must be between 0 and 86400")
        stored = session.files.get(name)
        if stored is None:
            raise _not_found("File", name)
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if thumb is not None and not content_type.startswith(("image/", "video/")):
            raise _validation("thumb", "thumbnails are only available for images and videos")
        if thumb is not None and content_type.startswith("video/"):
            content_type = "image/jpeg"
        return web.Response(body=stored.data, content_type=content_type)

    async def _delete_file(self, request: web.Request) -> web.StreamResponse:
        session = self._session(request)
        name = self._file_name(request)
        if name not in session.files:
            raise _not_found("File", name)
        del session.files[name]
        return web.Response(status=204)

    # -- messages ----------------------------------------------------------

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        session = self._session(request)
        return _json_response([m.backend() for m in session.messages])

    async def _history(self, request: web.Request) -> web.StreamResponse:
        def parse(name: str, default: int, low: int, high: int | None) -> int:
            raw = request.query.get(name)
            if raw is None:
                return default
            try:
                value = int(raw)
            except ValueError:
                raise _validation(name, "must be an integer") from None
            if value < low or (high is not None and value > high):
                bound = f"between {low} and {high}" if high is not None else f">= {low}"
                raise _validation(name, f"must be {bound}")
            return value

        limit = parse("limit", 50, 1, 1000)
        offset = parse("offset", 0, 0, None)
        messages = [
            m
            for s in self._sessions.values()
            if s.session_type != "subagent"
            for m in s.messages
            if m.role == "user"
        ]
        messages.sort(key=lambda m: m.created_at, reverse=True)
        return _json_response([m.backend() for m in messages[offset : offset + limit]])

    async def _send_message(self, request: web.Request) -> web.StreamResponse:
        body = await _read_body(
            request, frozenset({"text", "plan_mode", "thinking_level", "max_steps"})
        )
        text = _opt_str(body, "text")
        if not text:
            raise _validation("content", "message content is required")
        plan_mode = _opt_bool(body, "plan_mode") is True
        level = body.get("thinking_level")
        if level is not None and level not in THINKING_LEVELS:
            raise _validation("thinking_level", "must be one of: off, basic, medium, maximum")
        _opt_int(body, "max_steps", minimum=1)
        session = self._session(request)
        if not any(p in self._credentials for p in LLM_PROVIDERS):
            message = "Authentication required. Please store an API key or log in."
            self._publish(session.id, "error", {"type": "authentication_error", "error": message})
            raise _APIError(401, message, "unauthorized")
        if text.startswith("/"):
            return self._slash_command(session, text)
        previous = self._runs.get(session.id)
        if previous is not None and not previous.done() and self.busy == "refuse":
            raise _APIError(
                500,
                f"Failed to send message to agent: session {session.id} is busy",
                "internal_error",
            )
        task = asyncio.get_running_loop().create_task(
            self._run_turn(session, text, previous, level != "off", plan_mode),
            name=f"mix-turn:{session.id}",
        )
        self._runs[session.id] = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return _json_response({"status": "processing", "sessionId": session.id}, 202)

    def _slash_command(self, session: _Session, text: str) -> web.StreamResponse:
        name, _, args = text[1:].strip().partition(" ")
        if name not in COMMANDS:
            raise _not_found(
                "Command",
                f"'{name}'. Available commands: [{' '.join(COMMANDS)}]",
            )
        if name == "help":
            if args.strip() in COMMANDS:
                desc, usage = COMMANDS[args.strip()]
                result = f"{usage}: {desc}"
            else:
                result = "Available commands:\n" + "\n".join(
                    f"/{n} - {d}" for n, (d, _) in COMMANDS.items()
                )
        elif name == "cost":
            result = (
                f"Tokens: {session.prompt_tokens} prompt, {session.completion_tokens} completion;"
                f" cost ${session.cost:.4f}"
            )
        elif name == "session":
            result = f"Session {session.id}: {session.title}"
        else:
            result = "Conversation context cleared"
        return _json_response(
            {
                "id": f"cmd-{name}",
                "role": "assistant",
                "userInput": text,
                "assistantResponse": result,
            }
        )

    # -- scripted agent ----------------------------------------------------

    def _cancel_runs(self, session_id: str) -> None:
        """Cancel the running and the queued turns of a session."""
        for task in self._tasks:
            if task.get_name() == f"mix-turn:{session_id}" and not task.done():
                task.cancel()

    def _next_reply(self, session_id: str, text: str) -> str:
        for key in (session_id, None):
            queue = self._replies.get(key)
            if queue:
                return queue.popleft()
        if self.reply_hook is not None:
            reply = self.reply_hook(session_id, text)
            if reply is not None:
                return reply
        return f"Echo: {text}"

    async def _pause(self, slow: bool) -> None:
        delay = max(self.event_delay, self.slow_delay if slow else 0.0)
        await asyncio.sleep(delay)

    async def _emit(self, sid: str, event: str, data: JSON, slow: bool) -> None:
        self._publish(sid, event, {"type": event, **data})
        await self._pause(slow)

    async def _tool_call(
        self,
        sid: str,
        name: str,
        tool_input: JSON,
        result: str,
        assistant_id: str,
        slow: bool,
        permission: bool = False,
        parent: str | None = None,
        between: Callable[[str], Awaitable[None]] | None = None,
    ) -> JSON:
        call_id = _new_id("toolu")
        raw = json.dumps(tool_input)
        extra: JSON = {"assistantMessageId": assistant_id}
        if parent:
            extra["parentToolCallId"] = parent
        await self._emit(sid, "tool_use_start", {"name": name, "id": call_id, **extra}, slow)
        for piece in _split(raw, 4):
            await self._emit(
                sid,
                "tool_use_parameter_delta",
                {"toolCallId": call_id, "input": piece, **extra},
                slow,
            )
        await self._emit(
            sid,
            "tool_use_parameter_streaming_complete",
            {"name": name, "input": raw, "id": call_id, **extra},
            slow,
        )
        success = True
        if permission:
            pid = _new_id("perm")
            future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            self._permissions[pid] = future
            await self._emit(
                sid,
                "permission",
                {
                    "id": pid,
                    "sessionId": sid,
                    "toolName": name,
                    "description": f"{name} wants to write {tool_input.get('file_path', '')}",
                    "action": "write",
                    "path": str(tool_input.get("file_path", "")),
                    "params": tool_input,
                },
                slow,
            )
            try:
                success = await future
            finally:
                self._permissions.pop(pid, None)
            if not success:
                result = "Permission denied by user"
        progress_extra: JSON = {"parentToolCallId": parent} if parent else {}
        await self._emit(
            sid,
            "tool_execution_start",
            {
                "toolName": name,
                "progress": f"Executing tool: {name}",
                "toolCallId": call_id,
                **progress_extra,
            },
            slow,
        )
        if between is not None and success:
            await between(call_id)
        await self._emit(
            sid,
            "tool_execution_complete",
            {
                "toolName": name,
                "progress": f"Tool {name} execution "
                + ("completed" if success else "failed: permission denied"),
                "success": success,
                "toolCallId": call_id,
                **progress_extra,
            },
            slow,
        )
        call: JSON = {
            "id": call_id,
            "name": name,
            "input": raw,
            "type": "tool_use",
            "finished": True,
            "result": result,
        }
        if not success:
            call["isError"] = True
        return call

    async def _subagent(self, parent: _Session, call_id: str, prompt: str, slow: bool) -> None:
        sid = parent.id
        sub = self._new_session(
            f"Sub-agent: {prompt[:40]}",
            parent.browser_mode,
            session_type="subagent",
            parent_session_id=parent.id,
            parent_tool_call_id=call_id,
            subagent_type="general-purpose",
        )
        tag: JSON = {"parentToolCallId": call_id}
        now = time.time()
        user = _Message(_new_id("msg"), sub.id, "user", prompt, now)
        sub.messages.append(user)
        await self._emit(
            sid, "user_message_created", {"messageId": user.id, "content": prompt, **tag}, slow
        )
        reply = f"Sub-agent finished: {prompt}"
        answer = _Message(
            _new_id("msg"),
            sub.id,
            "assistant",
            reply,
            time.time(),
            reasoning="Working on the delegated task.",
            reasoning_duration=300,
            input_tokens=20,
            output_tokens=len(reply.split()),
        )
        await self._emit(
            sid,
            "thinking",
            {"content": answer.reasoning, "assistantMessageId": answer.id, **tag},
            slow,
        )
        for piece in _split(reply, 3):
            await self._emit(
                sid, "content", {"content": piece, "assistantMessageId": answer.id, **tag}, slow
            )
        sub.messages.append(answer)
        await self._emit(
            sid,
            "complete",
            {
                "done": True,
                "messageId": answer.id,
                "content": reply,
                "reasoning": answer.reasoning,
                "reasoningDuration": answer.reasoning_duration,
                **tag,
            },
            slow,
        )

    def _tool_steps(self, session: _Session, text: str, slow: bool) -> list[_ToolStep]:
        """The tool calls a run's text asks for, one step each: every ``[tool]`` a ``bash``
        call, then ``[permission]`` a ``write`` call, then ``[subagent]`` a ``task`` call."""
        steps = [
            _ToolStep(
                "bash", {"command": "echo hello", "description": "Print a greeting"}, "hello\n"
            )
            for _ in range(text.count("[tool]"))
        ]
        if "[permission]" in text:
            steps.append(
                _ToolStep(
                    "write",
                    {"file_path": "/tmp/mix/notes.txt", "content": "hello"},
                    "File written: /tmp/mix/notes.txt",
                    permission=True,
                )
            )
        if "[subagent]" in text:
            prompt = "Research the topic"

            async def run_sub(call_id: str) -> None:
                await self._subagent(session, call_id, prompt, slow)

            steps.append(
                _ToolStep(
                    "task",
                    {
                        "description": "Delegate research",
                        "prompt": prompt,
                        "subagent_type": "general-purpose",
                    },
                    f"Sub-agent finished: {prompt}",
                    between=run_sub,
                )
            )
        return steps

    async def _run_turn(
        self,
        session: _Session,
        text: str,
        previous: asyncio.Task[None] | None,
        thinking: bool,
        plan_mode: bool = False,
    ) -> None:
        if previous is not None and not previous.done():
            await asyncio.wait([previous])
        sid = session.id
        slow = "[slow]" in text
        # Like the real server, each step of the run is an assistant message of its own,
        # stored as it is written: partial while the run goes on, with a finish reason
        # (export ``finishReason``) once final. ``current`` is the one being written.
        current: _Message | None = None

        def store(role: str, content: str) -> _Message:
            message = _Message(_new_id("msg"), sid, role, content, time.time())
            if sid in self._sessions:
                session.messages.append(message)
                session.updated_at = message.created_at
            return message

        try:
            await asyncio.sleep(0)
            content = text
            if plan_mode:
                content = f"{text}\n\n<system-reminder>\n{PLAN_MODE_PROMPT}\n</system-reminder>"
            user = store("user", content)
            current = store("assistant", "")
            await self._emit(
                sid, "user_message_created", {"messageId": user.id, "content": content}, slow
            )
            reasoning = ""
            if thinking:
                for piece in ("Let me think about ", "how to answer this."):
                    reasoning += piece
                    current.reasoning = reasoning
                    await self._emit(
                        sid,
                        "thinking",
                        {"content": piece, "assistantMessageId": current.id},
                        slow,
                    )
            for step in self._tool_steps(session, text, slow):
                if current is None:
                    current = store("assistant", "")
                call = await self._tool_call(
                    sid,
                    step.name,
                    step.input,
                    step.result,
                    current.id,
                    slow,
                    permission=step.permission,
                    between=step.between,
                )
                # assistant (tool_use) -> tool (results) -> users injected by callbacks
                denied = bool(call.get("isError"))
                current.tool_calls.append(call)
                current.reasoning_duration = 1200 if current.reasoning else 0
                current.finish_reason = "permission_denied" if denied else "tool_use"
                current = None
                store("tool", str(call["result"]))
                if denied:
                    self._publish(sid, "error", {"type": "error", "error": "Permission denied"})
                    return
                for callback in session.callbacks or ():
                    if (
                        callback.get("type") == "send_message"
                        and str(callback.get("toolName", "")).lower() == step.name.lower()
                    ):
                        store("user", str(callback["messageContent"]))
            answer = current if current is not None else store("assistant", "")
            current = answer
            if "[notification]" in text:
                nid = _new_id("notif")
                self._notifications[nid] = sid
                await self._emit(
                    sid,
                    "notification",
                    {
                        "id": nid,
                        "sessionId": sid,
                        "notificationType": "question",
                        "title": "Question",
                        "message": "Continue with the plan?",
                        "responseType": "choice",
                        "choices": ["yes", "no"],
                        "timeout": 300,
                        "createdAt": int(time.time()),
                    },
                    slow,
                )
            if "[ratelimit]" in text:
                await self._emit(sid, "rate_limit_error", dict(RATE_LIMIT_EVENT), slow)
            if "[error]" in text:
                answer.finish_reason = "error"
                await self._emit(
                    sid, "error", {"error": "Scripted agent failure", "type": "agent_error"}, slow
                )
                return
            reply = self._next_reply(sid, text)
            for piece in _split(reply, 4):
                answer.content += piece
                await self._emit(
                    sid, "content", {"content": piece, "assistantMessageId": answer.id}, slow
                )
            prompt_tokens = 10 + len(text.split())
            completion_tokens = 5 + len(reply.split())
            cost = round((prompt_tokens * 3 + completion_tokens * 15) / 1_000_000, 6)
            answer.content = reply
            answer.reasoning_duration = 1200 if answer.reasoning else 0
            answer.input_tokens = prompt_tokens
            answer.output_tokens = completion_tokens
            answer.cost = cost
            answer.finish_reason = "end_turn"
            answer.created_at = time.time()
            if sid in self._sessions:
                session.prompt_tokens += prompt_tokens
                session.completion_tokens += completion_tokens
                session.cost = round(session.cost + cost, 6)
                session.updated_at = answer.created_at
            final: JSON = {"done": True, "messageId": answer.id, "content": reply}
            if answer.reasoning:  # the final row's own, as the Go server sends it
                final["reasoning"] = answer.reasoning
                final["reasoningDuration"] = answer.reasoning_duration
            self._publish(sid, "complete", {"type": "complete", **final})
        except asyncio.CancelledError:
            if current is not None and current.finish_reason is None:
                current.finish_reason = "canceled"
            self._publish(sid, "error", {"type": "cancelled", "error": "Request cancelled by user"})
            raise
        finally:
            if self._runs.get(sid) is asyncio.current_task():
                del self._runs[sid]

    # -- streaming ---------------------------------------------------------

    def _frame(self, stream: _Stream, event: str, data: JSON) -> bytes:
        # Like the Go server: ``retry`` on every frame, by event (an error's or a rate
        # limit's own retryAfter).
        stream.next_id += 1
        if event == "heartbeat":
            retry = self.heartbeat_retry_ms
        elif event in ("error", "rate_limit_error"):
            # the event's retryAfter (seconds for a rate limit) is written as it is
            after = data.get("retryAfter")
            if isinstance(after, int) and after > 0:
                retry = after
            else:
                retry = self.error_retry_ms if event == "error" else self.retry_ms
        else:
            retry = self.retry_ms
        return (
            f"id: {stream.next_id}\nevent: {event}\ndata: {_dumps(data)}\nretry: {retry}\n\n"
        ).encode()

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        sid = request.query.get("sessionId", "")
        if not sid:
            raise _validation("sessionId", "sessionId query parameter is required")
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "Connection": "keep-alive",
                "Access-Control-Allow-Origin": "*",
            }
        )
        await response.prepare(request)
        stream = _Stream(sid, self.buffer_size)
        if sid not in self._sessions:
            with contextlib.suppress(ConnectionError):
                await response.write(
                    self._frame(stream, "error", {"error": f"Invalid session ID: {sid}"})
                )
                await response.write_eof()
            return response
        cut = self._cuts.popleft() if self._cuts else None
        self._streams.append(stream)
        self._changed()
        loop = asyncio.get_running_loop()
        try:
            item: tuple[str, JSON] | None = ("connected", {"sessionId": sid})
            next_beat = loop.time() + self.heartbeat_interval
            while item is not None:
                if _take_event_rule(self._cut_before, sid, *item):
                    if request.transport is not None:
                        request.transport.close()
                    return response
                await response.write(self._frame(stream, *item))
                if cut is not None and stream.next_id >= cut:
                    if request.transport is not None:
                        request.transport.close()
                    return response
                while True:
                    try:
                        item = await asyncio.wait_for(
                            stream.queue.get(), timeout=max(0.0, next_beat - loop.time())
                        )
                        break
                    except asyncio.TimeoutError:
                        next_beat = loop.time() + self.heartbeat_interval
                        item = ("heartbeat", {"type": "ping"})
                        break
            with contextlib.suppress(ConnectionError):
                await response.write_eof()
        except ConnectionError:
            pass
        finally:
            with contextlib.suppress(ValueError):
                self._streams.remove(stream)
            self._changed()
        return response


class FakeThread:
    """A ``MixFake`` served from its own event loop in a background thread: for blocking
    ``Mix`` calls, and for tests that block or close their own loop::

        with FakeThread() as server:
            mix = Mix(server.url)
            server.call(server.fake.wait_streams_closed())  # a coroutine, run on its loop
            server.sync(server.fake.add_session)  # a plain call, run on its loop
    """

    def __init__(self, **kwargs: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="mix-fake", daemon=True)
        self.thread.start()
        self.fake = MixFake(**kwargs)
        self.url = self.call(self.fake.start())

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        """Run ``coro`` on the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def sync(self, fn: Callable[[], T]) -> T:
        """Call ``fn`` on the server's loop (the fake's state belongs to that thread)."""

        async def run() -> T:
            return fn()

        return self.call(run())

    def stop(self) -> None:
        """Stop the server, end what still runs on its loop, join the thread."""
        if self.loop.is_closed():
            return

        async def shutdown() -> None:
            await self.fake.stop()
            current = asyncio.current_task()
            rest = [t for t in asyncio.all_tasks() if t is not current]
            for task in rest:
                task.cancel()
            if rest:
                await asyncio.wait(rest, timeout=5)

        with contextlib.suppress(Exception):
            self.call(shutdown(), 10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def __enter__(self) -> FakeThread:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


async def _serve(args: argparse.Namespace) -> None:
    fake = MixFake(
        host=args.host,
        port=args.port,
        heartbeat_interval=args.heartbeat_interval,
        event_delay=args.event_delay,
    )
    url = await fake.start()
    print(f"Mix fake server listening on {url} (Ctrl-C to stop)", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await fake.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve an in-memory fake of the Mix REST API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8088)
    parser.add_argument("--heartbeat-interval", type=float, default=45.0)
    parser.add_argument("--event-delay", type=float, default=0.0)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
