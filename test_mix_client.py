"""Unit and integration tests of mix_client against real loopback aiohttp.web servers.

Every request the client makes goes over a real socket to a server (running on its own
event loop in a background thread) that records the exact method, raw path, query,
headers and body bytes, so the tests check what is really on the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import inspect
import io
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web
from aioresponses import aioresponses
from multidict import CIMultiDict

import mix_client
from _ops import CALLS, Exchange, check_request, match_operation
from _ops import OPERATIONS as SPEC_OPERATIONS
from conftest import DROP, HANG, Handler, Reply, Scripted, reset_peak_rss, status_kib
from mix_client import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AsyncMix,
    AuthenticationError,
    BackendMessage,
    BackoffStrategy,
    BadRequestError,
    Callback,
    ErrorResponse,
    InternalServerError,
    InvalidInputError,
    Mix,
    MixError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitError,
    RequestTimeoutError,
    ResponseValidationError,
    RESTError,
    RetryConfig,
    SessionData,
    UnprocessableEntityError,
)

HERE = Path(__file__).resolve().parent
USER_AGENT = f"mix-client/{mix_client.__version__}"


# ---------------------------------------------------------------------------
# Loopback server
# ---------------------------------------------------------------------------


def free_port() -> int:
    """A port nothing listens on (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Proxy:
    """Delegates to a module, with some attributes replaced."""

    def __init__(self, target: Any, **overrides: Any) -> None:
        self._target = target
        self.__dict__.update(overrides)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


_real_sleep = asyncio.sleep
NOW = 1_700_000_000.0


class Clock:
    """A fake clock for mix_client: sleeps are recorded (and advance the clock), not slept."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.elapsed = 0.0
        self.random: float | None = None  # fixed random.random() result, or None for real

    async def sleep(self, delay: float, result: Any = None) -> Any:
        self.delays.append(delay)
        self.elapsed += delay
        await _real_sleep(0)
        return result

    def monotonic(self) -> float:
        return 1000.0 + self.elapsed

    def time(self) -> float:
        return NOW + self.elapsed

    def rand(self) -> float:
        import random

        return random.random() if self.random is None else self.random


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    import random
    import time

    c = Clock()
    monkeypatch.setattr(mix_client, "asyncio", _Proxy(asyncio, sleep=c.sleep))
    monkeypatch.setattr(mix_client, "time", _Proxy(time, monotonic=c.monotonic, time=c.time))
    monkeypatch.setattr(mix_client, "random", _Proxy(random, random=c.rand))
    return c


def sse(*frames: tuple[str, Any]) -> bytes:
    out = []
    for i, (event, data) in enumerate(frames, 1):
        payload = data if isinstance(data, str) else json.dumps(data)
        out.append(f"id: {i}\nevent: {event}\ndata: {payload}\n\n")
    return "".join(out).encode()


def sse_reply(body: bytes) -> Reply:
    return Reply(200, body=body, content_type="text/event-stream")


# ---------------------------------------------------------------------------
# Sample wire data (camelCase / snake_case exactly as in the spec)
# ---------------------------------------------------------------------------

ODD = "a/b c?#%é"
ODD_ENC = "a%2Fb%20c%3F%23%25%C3%A9"

SESSION_JSON = {
    "id": "s1",
    "title": "T",
    "sessionType": "main",
    "browserMode": "local-browser-service",
    "userMessageCount": 1,
    "assistantMessageCount": 2,
    "toolCallCount": 3,
    "promptTokens": 4,
    "completionTokens": 5,
    "cost": 0.25,
    "createdAt": "2024-01-01T00:00:00Z",
    "callbacks": [{"toolName": "*", "type": "bash_script", "bashCommand": "echo hi"}],
    "cdpUrl": "ws://cdp",
    "firstUserMessage": "hello",
    "parentSessionId": "p1",
    "parentToolCallId": "tc1",
    "subagentType": "general",
}


def check_session(r: Any) -> None:
    assert isinstance(r, SessionData)
    assert r.id == "s1"
    assert r.title == "T"
    assert r.session_type == "main"
    assert r.browser_mode == "local-browser-service"
    assert (r.user_message_count, r.assistant_message_count, r.tool_call_count) == (1, 2, 3)
    assert (r.prompt_tokens, r.completion_tokens, r.cost) == (4, 5, 0.25)
    assert r.created_at == datetime(2024, 1, 1, tzinfo=timezone.utc)
    assert r.callbacks == [Callback(tool_name="*", type="bash_script", bash_command="echo hi")]
    assert r.cdp_url == "ws://cdp"
    assert r.first_user_message == "hello"
    assert r.parent_session_id == "p1"
    assert r.parent_tool_call_id == "tc1"
    assert r.subagent_type == "general"


TOOL_CALL_JSON = {
    "id": "t1",
    "name": "bash",
    "input": '{"cmd":"ls"}',
    "type": "tool_use",
    "finished": True,
}
MESSAGE_JSON = {
    "id": "m1",
    "sessionId": "s1",
    "role": "assistant",
    "userInput": "hi",
    "assistantResponse": "hello",
    "cacheCreationTokens": 1,
    "cacheReadTokens": 2,
    "callbackResults": [
        {
            "tool_call_id": "t1",
            "tool_name": "bash",
            "callback_type": "bash_script",
            "success": True,
            "exit_code": 0,
            "stdout": "ok",
        }
    ],
    "cost": 0.5,
    "inputTokens": 3,
    "model": "claude",
    "outputTokens": 4,
    "reasoning": "because",
    "reasoningDuration": 1200,
    "toolCalls": [
        {**TOOL_CALL_JSON, "isError": True, "result": "out", "screenshotUrls": ["/a.png"]}
    ],
}


def check_messages(r: Any) -> None:
    assert isinstance(r, list)
    assert len(r) == 1
    m = r[0]
    assert isinstance(m, BackendMessage)
    assert (m.id, m.session_id, m.role, m.user_input) == ("m1", "s1", "assistant", "hi")
    assert m.assistant_response == "hello"
    assert (m.cache_creation_tokens, m.cache_read_tokens) == (1, 2)
    assert (m.input_tokens, m.output_tokens, m.cost, m.model) == (3, 4, 0.5, "claude")
    assert (m.reasoning, m.reasoning_duration) == ("because", 1200)
    assert m.callback_results is not None
    cb = m.callback_results[0]
    assert (cb.tool_call_id, cb.tool_name, cb.callback_type) == ("t1", "bash", "bash_script")
    assert (cb.success, cb.exit_code, cb.stdout) == (True, 0, "ok")
    assert m.tool_calls is not None
    tc = m.tool_calls[0]
    assert (tc.id, tc.name, tc.input, tc.type) == ("t1", "bash", '{"cmd":"ls"}', "tool_use")
    assert (tc.finished, tc.is_error, tc.result) == (True, True, "out")
    assert tc.screenshot_urls == ["/a.png"]


FILE_JSON = {
    "name": "a b.txt",
    "size": 2,
    "modified": 1700000000,
    "isDir": False,
    "url": "/api/sessions/s1/files/a%20b.txt",
}

TOOLS_STATUS_JSON = {
    "categories": {
        "search": {
            "display_name": "Search",
            "description": "Web search",
            "icon": "magnifier",
            "tools": [
                {
                    "provider": "brave",
                    "display_name": "Brave",
                    "description": "Brave search",
                    "authenticated": False,
                    "api_key_required": True,
                    "api_key_format": "BSA...",
                }
            ],
        }
    }
}


def check_tools_status(r: Any) -> None:
    cat = r.categories["search"]
    assert (cat.display_name, cat.description, cat.icon) == ("Search", "Web search", "magnifier")
    tool = cat.tools[0]
    assert (tool.provider, tool.display_name, tool.description) == (
        "brave",
        "Brave",
        "Brave search",
    )
    assert (tool.authenticated, tool.api_key_required, tool.api_key_format) == (
        False,
        True,
        "BSA...",
    )


def has(**attrs: Any) -> Callable[[Any], None]:
    """A check: the decoded result's attributes have these values."""

    def check(result: Any) -> None:
        assert {name: getattr(result, name) for name in attrs} == attrs

    return check


@dataclass
class Answer:
    """A canned answer to one operation and the check of what the client decodes from it."""

    reply: Reply
    check: Callable[[Any], None]
    accept: str = "application/json"


def echo(code: int, doc: dict[str, Any], /, **absent: Any) -> Answer:
    """An answer whose decoded result has the document's fields as attributes (and the
    ``absent`` ones, which the document leaves out, with these values)."""
    return Answer(Reply(code, doc), has(**doc, **absent))


def _check_stream(events: Any) -> None:
    assert [type(e).__name__ for e in events] == ["ConnectedEvent", "ContentEvent"]
    assert events[0].data.session_id == ODD
    assert events[0].id == "1"
    assert events[1].data.content == "Hi"


ODD_SESSION = f"/api/sessions/{ODD_ENC}"

REPLIES: dict[str, Answer] = {
    "storeApiKey": echo(200, {"message": "stored", "provider": "anthropic", "status": "ok"}),
    "setApiKey": Answer(
        Reply(200, {"success": True}), lambda r: r.success is True or pytest.fail()
    ),
    "initiateOAuthLogin": Answer(
        Reply(200, {"authUrl": "https://auth/x"}),
        has(auth_url="https://auth/x"),
    ),
    "handleOAuthCallback": echo(
        200, {"expires_in": 3600, "message": "ok", "provider": "anthropic", "status": "success"}
    ),
    "startOAuthFlow": echo(200, {"auth_url": "https://auth/y", "message": "open", "state": "st1"}),
    "getAuthStatus": Answer(
        Reply(
            200,
            {
                "providers": {
                    "anthropic": {
                        "auth_method": "oauth",
                        "authenticated": True,
                        "display_name": "Anthropic",
                    }
                }
            },
        ),
        lambda r: (
            (
                r.providers["anthropic"].auth_method,
                r.providers["anthropic"].authenticated,
                r.providers["anthropic"].display_name,
            )
            == ("oauth", True, "Anthropic")
            or pytest.fail()
        ),
    ),
    "validatePreferredProvider": echo(
        200, {"auth_method": "api_key", "message": "fine", "provider": "openai", "valid": True}
    ),
    "deleteCredentials": echo(200, {"message": "gone", "provider": "openai", "status": "deleted"}),
    "listCommands": Answer(
        Reply(200, [{"name": "help", "description": "Show help", "usage": "/help"}]),
        lambda r: (
            [(x.name, x.description, x.usage) for x in r] == [("help", "Show help", "/help")]
            or pytest.fail()
        ),
    ),
    "getCommand": echo(200, {"name": "clear", "description": "Clear", "usage": "/clear"}),
    "listMcpServers": Answer(
        Reply(
            200,
            [
                {
                    "name": "fs",
                    "connected": True,
                    "status": "ready",
                    "tools": [{"name": "read", "description": "Read a file"}],
                }
            ],
        ),
        lambda r: (
            (r[0].name, r[0].connected, r[0].status, r[0].tools[0].name, r[0].tools[0].description)
            == ("fs", True, "ready", "read", "Read a file")
            or pytest.fail()
        ),
    ),
    "getMessageHistory": Answer(Reply(200, [MESSAGE_JSON]), check_messages),
    "respondToNotification": Answer(Reply(204), lambda r: r is None or pytest.fail()),
    "denyPermission": echo(200, {"denied": True}, granted=None, status=None),
    "grantPermission": echo(200, {"granted": True}, denied=None, status=None),
    "getPreferences": Answer(
        Reply(
            200,
            {
                "available_providers": {
                    "anthropic": {"display_name": "Anthropic", "models": ["claude-x"]}
                },
                "preferences": {
                    "created_at": 1,
                    "main_agent_max_tokens": 100,
                    "main_agent_model": "claude-x",
                    "main_agent_reasoning_effort": "high",
                    "preferred_provider": "anthropic",
                    "sub_agent_max_tokens": 50,
                    "sub_agent_model": "claude-y",
                    "sub_agent_reasoning_effort": "low",
                    "updated_at": 2,
                },
            },
        ),
        lambda r: (
            (
                r.available_providers["anthropic"].display_name,
                r.available_providers["anthropic"].models,
                r.preferences.created_at,
                r.preferences.main_agent_max_tokens,
                r.preferences.main_agent_model,
                r.preferences.main_agent_reasoning_effort,
                r.preferences.preferred_provider,
                r.preferences.sub_agent_max_tokens,
                r.preferences.sub_agent_model,
                r.preferences.sub_agent_reasoning_effort,
                r.preferences.updated_at,
            )
            == (
                "Anthropic",
                ["claude-x"],
                1,
                100,
                "claude-x",
                "high",
                "anthropic",
                50,
                "claude-y",
                "low",
                2,
            )
            or pytest.fail()
        ),
    ),
    "updatePreferences": echo(
        200, {"main_agent_model": None, "sub_agent_max_tokens": 1000, "updated_at": 5}
    ),
    "getAvailableProviders": Answer(
        Reply(200, {"openai": {"display_name": "OpenAI", "models": ["gpt-a", "gpt-b"]}}),
        lambda r: (
            (list(r), r["openai"].display_name, r["openai"].models)
            == (["openai"], "OpenAI", ["gpt-a", "gpt-b"])
            or pytest.fail()
        ),
    ),
    "resetPreferences": echo(200, {"preferred_provider": "anthropic", "main_agent_max_tokens": 8}),
    "listSessions": Answer(
        Reply(200, [SESSION_JSON]), lambda r: (len(r) == 1 or pytest.fail()) and check_session(r[0])
    ),
    "createSession": Answer(Reply(201, SESSION_JSON), check_session),
    "deleteSession": Answer(Reply(204), lambda r: r is None or pytest.fail()),
    "getSession": Answer(Reply(200, SESSION_JSON), check_session),
    "updateSessionCallbacks": Answer(Reply(200, SESSION_JSON), check_session),
    "cancelSessionProcessing": echo(200, {"cancelled": True}, status=None, session_id=None),
    "exportSession": Answer(
        Reply(
            200,
            {
                "id": "s1",
                "title": "T",
                "assistantMessageCount": 1,
                "completionTokens": 2,
                "cost": 0.5,
                "createdAt": "c",
                "promptTokens": 3,
                "toolCallCount": 4,
                "updatedAt": "u",
                "userMessageCount": 5,
                "messages": [
                    {
                        "id": "m1",
                        "role": "assistant",
                        "content": "done",
                        "createdAt": "c1",
                        "updatedAt": "u1",
                        "finishReason": "end_turn",
                        "model": "claude",
                        "reasoning": "r",
                        "reasoningDuration": 7,
                        "toolCalls": [
                            {
                                **TOOL_CALL_JSON,
                                "inputJson": {"cmd": "ls"},
                                "result": "files",
                                "screenshotUrls": ["/s.png"],
                            }
                        ],
                    }
                ],
            },
        ),
        lambda r: (
            (
                r.id,
                r.title,
                r.assistant_message_count,
                r.completion_tokens,
                r.cost,
                r.created_at,
                r.prompt_tokens,
                r.tool_call_count,
                r.updated_at,
                r.user_message_count,
                r.messages[0].id,
                r.messages[0].role,
                r.messages[0].content,
                r.messages[0].created_at,
                r.messages[0].updated_at,
                r.messages[0].finish_reason,
                r.messages[0].model,
                r.messages[0].reasoning,
                r.messages[0].reasoning_duration,
                r.messages[0].tool_calls[0].input_json,
                r.messages[0].tool_calls[0].result,
                r.messages[0].tool_calls[0].screenshot_urls,
                r.messages[0].tool_calls[0].finished,
            )
            == (
                "s1",
                "T",
                1,
                2,
                0.5,
                "c",
                3,
                4,
                "u",
                5,
                "m1",
                "assistant",
                "done",
                "c1",
                "u1",
                "end_turn",
                "claude",
                "r",
                7,
                {"cmd": "ls"},
                "files",
                ["/s.png"],
                True,
            )
            or pytest.fail()
        ),
    ),
    "listSessionFiles": Answer(
        Reply(200, [FILE_JSON]),
        lambda r: (
            (r[0].name, r[0].size, r[0].modified, r[0].is_dir, r[0].url, r[0].original_name)
            == ("a b.txt", 2, 1700000000, False, FILE_JSON["url"], None)
            or pytest.fail()
        ),
    ),
    "uploadSessionFile": Answer(
        Reply(201, {**FILE_JSON, "name": "notes.txt", "originalName": "notes .txt"}),
        has(name="notes.txt", original_name="notes .txt", size=2),
    ),
    "deleteSessionFile": Answer(Reply(204), lambda r: r is None or pytest.fail()),
    "getSessionFile": Answer(
        Reply(200, body=bytes(range(256)) * 3, content_type="image/png"),
        lambda r: r == bytes(range(256)) * 3 or pytest.fail(),
        accept="*/*",
    ),
    "forkSession": Answer(Reply(201, SESSION_JSON), check_session),
    "getSessionMessages": Answer(Reply(200, [MESSAGE_JSON]), check_messages),
    "sendMessage": Answer(
        Reply(202, {"status": "processing", "sessionId": "s1"}),
        has(status="processing", session_id="s1", message=None),
    ),
    "rewindSession": Answer(Reply(200, SESSION_JSON), check_session),
    "getSystemInfo": Answer(
        Reply(200, {"storageBasePath": "/data/mix"}),
        has(storage_base_path="/data/mix"),
    ),
    "listLLMTools": Answer(
        Reply(
            200,
            {
                "tools": [
                    {
                        "name": "bash",
                        "description": "Run",
                        "parameters": {"type": "object"},
                        "required": ["cmd"],
                    }
                ]
            },
        ),
        lambda r: (
            (r.tools[0].name, r.tools[0].description, r.tools[0].parameters, r.tools[0].required)
            == ("bash", "Run", {"type": "object"}, ["cmd"])
            or pytest.fail()
        ),
    ),
    "getToolCredentialsStatus": Answer(Reply(200, TOOLS_STATUS_JSON), check_tools_status),
    "getToolsStatus": Answer(Reply(200, TOOLS_STATUS_JSON), check_tools_status),
    "healthCheck": echo(200, {"status": "ok", "timestamp": "now", "version": "1.2.3"}),
    "getOAuthHealth": Answer(
        Reply(
            200,
            {
                "status": "degraded",
                "timestamp": "t",
                "providers": {
                    "anthropic": {
                        "provider": "anthropic",
                        "status": "expired",
                        "error": "e",
                        "expires_at": "a",
                        "expires_in": "1h",
                        "last_refresh": "l",
                    }
                },
            },
        ),
        lambda r: (
            (
                r.status,
                r.timestamp,
                r.providers["anthropic"].provider,
                r.providers["anthropic"].status,
                r.providers["anthropic"].error,
                r.providers["anthropic"].expires_at,
                r.providers["anthropic"].expires_in,
                r.providers["anthropic"].last_refresh,
            )
            == ("degraded", "t", "anthropic", "expired", "e", "a", "1h", "l")
            or pytest.fail()
        ),
    ),
    "refreshOAuthTokens": echo(200, {"message": "refreshed", "status": "ok"}),
    "streamEvents": Answer(
        sse_reply(sse(("connected", {"sessionId": ODD}), ("content", {"content": "Hi"}))),
        _check_stream,
        accept="text/event-stream",
    ),
}


# ---------------------------------------------------------------------------
# 1. Every operation: exact request on the wire, decoded response
# ---------------------------------------------------------------------------


def test_table_covers_every_operation() -> None:
    # test_routes.py holds the route table itself to the spec; this, the tests' tables.
    assert (
        sorted(CALLS) == sorted(REPLIES) == sorted(SPEC_OPERATIONS) == sorted(mix_client.OPERATIONS)
    )
    assert len(CALLS) == 42


def _exchange(method: str, raw_path: str, headers: Any, sent: bytes, reply: Reply) -> Exchange:
    """What went out and what came back, in the shape the shared table checks."""
    hit = match_operation(method, raw_path.split("?", 1)[0])
    body = reply.body if reply.body is not None else json.dumps(reply.json).encode()
    return Exchange(
        method=method,
        raw_path=raw_path,
        request_headers=dict(headers),
        request_body=sent,
        status=reply.status,
        response_headers={"Content-Type": reply.content_type},
        upstream_body=body,
        body=body,
        op_id=hit[0].op_id if hit else None,
        path_params=hit[1] if hit else {},
    )


@pytest.mark.parametrize("i", range(6))
@pytest.mark.parametrize("op_id", sorted(CALLS))
async def test_request_building(op_id: str, i: int, upload_dir: Path) -> None:
    """Each operation with awkward inputs: method, path, query, headers and body (mocked
    responses, no server)."""
    call, answer, op = CALLS[op_id](i), REPLIES[op_id], SPEC_OPERATIONS[op_id]
    reply = answer.reply
    with aioresponses() as mocked:
        mocked.add(
            re.compile(r"^http://127\.0\.0\.1:9/"),
            op.method,
            status=reply.status,
            body=reply.body if reply.body is not None else json.dumps(reply.json).encode(),
            content_type=reply.content_type,
        )
        async with AsyncMix("http://127.0.0.1:9") as client:
            await asyncio.wait_for(call.invoke(client), 10)
        ((method, url), sent), *more = mocked.requests.items()
    assert not more and len(sent) == 1
    kwargs = sent[0].kwargs
    headers = CIMultiDict(kwargs["headers"])
    data = kwargs.get("data")
    if isinstance(data, aiohttp.payload.Payload):  # an upload: the multipart body
        headers["Content-Type"] = data.content_type
        data = await data.as_bytes()
    assert headers["User-Agent"] == USER_AGENT
    assert headers["Accept"] == answer.accept
    check_request(call, op, _exchange(method, url.raw_path_qs, headers, data or b"", reply))


@pytest.mark.parametrize("op_id", sorted(CALLS))
async def test_operation_on_the_wire(
    op_id: str, server: Scripted, client: AsyncMix, upload_dir: Path
) -> None:
    """Each operation over real HTTP: the route it reaches, and what it decodes."""
    call, answer, op = CALLS[op_id](0), REPLIES[op_id], SPEC_OPERATIONS[op_id]
    server.reply(answer.reply)
    result = await call.invoke(client)
    (rec,) = server.requests
    assert rec.headers["User-Agent"] == USER_AGENT
    assert rec.headers["Accept"] == answer.accept
    check_request(
        call, op, _exchange(rec.method, rec.raw_path, rec.headers, rec.body or b"", answer.reply)
    )
    answer.check(result)


def test_user_agent_names_the_version() -> None:
    assert mix_client.USER_AGENT == USER_AGENT
    assert re.fullmatch(r"mix-client/\d+\.\d+\.\d+\S*", USER_AGENT)


@pytest.mark.parametrize(
    ("call", "body"),
    [
        (lambda c: c.update_preferences(), {}),
        (lambda c: c.update_preferences(main_agent_model=None), {"main_agent_model": None}),
        (
            lambda c: c.update_preferences(
                main_agent_max_tokens=1,
                main_agent_model="m",
                main_agent_reasoning_effort="low",
                preferred_provider="openai",
                sub_agent_max_tokens=2,
                sub_agent_model="s",
                sub_agent_reasoning_effort=None,
            ),
            {
                "main_agent_max_tokens": 1,
                "main_agent_model": "m",
                "main_agent_reasoning_effort": "low",
                "preferred_provider": "openai",
                "sub_agent_max_tokens": 2,
                "sub_agent_model": "s",
                "sub_agent_reasoning_effort": None,
            },
        ),
        (lambda c: c.send_message("s", text="x"), {"text": "x"}),
        (
            lambda c: c.send_message("s", text="x", thinking_level=None),
            {"text": "x", "thinking_level": None},
        ),
        (
            lambda c: c.create_session(title="t", browser_mode="remote-cdp-websocket"),
            {"title": "t", "browserMode": "remote-cdp-websocket"},
        ),
        # cleanupMedia is always sent (its default, true, stated explicitly)
        (lambda c: c.rewind_session("s", message_id="m"), {"messageId": "m", "cleanupMedia": True}),
        (lambda c: c.fork_session("s", message_index=1), {"messageIndex": 1}),
        (lambda c: c.respond_to_notification("n", type="acknowledge"), {"type": "acknowledge"}),
        (lambda c: c.update_session_callbacks("s", callbacks=[]), {"callbacks": []}),
    ],
)
async def test_only_passed_fields_are_sent(
    server: Scripted, client: AsyncMix, call: Any, body: Any
) -> None:
    server.on("/*", Reply(200, SESSION_JSON))
    with contextlib.suppress(ResponseValidationError):
        await call(client)
    assert len(server.requests) == 1
    assert server.requests[0].json() == body


@pytest.mark.parametrize(
    ("call", "raw_path"),
    [
        (lambda c: c.list_sessions(), "/api/sessions?includeSubagents=false"),
        (lambda c: c.get_message_history(), "/api/messages/history?limit=50&offset=0"),
        (
            lambda c: c.get_session_file("s", "f.png", thumb="100"),
            "/api/sessions/s/files/f.png?thumb=100",
        ),
        (lambda c: c.get_session_file("s", "f.mp4", time=2), "/api/sessions/s/files/f.mp4?time=2"),
        (
            lambda c: c.get_session_file("s", "f.png", thumb="h5"),
            "/api/sessions/s/files/f.png?thumb=h5",
        ),
        (lambda c: c.get_session_file("s", "f"), "/api/sessions/s/files/f"),
    ],
)
async def test_query_strings(server: Scripted, client: AsyncMix, call: Any, raw_path: str) -> None:
    server.on("/*", Reply(200, []))
    await call(client)
    assert [r.raw_path for r in server.requests] == [raw_path]


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.get_session_file("s", "f", thumb="x1"),
        lambda c: c.get_session_file("s", "f", time=-1),
        lambda c: c.get_session_file("s", "f", time=True),
        lambda c: c.get_session_file("s", ".."),
        lambda c: c.get_session_file("s", "."),
        lambda c: c.get_session(".."),
        lambda c: c.get_session(""),
        lambda c: c.get_session(5),
        lambda c: c.get_message_history(limit=0),
        lambda c: c.get_message_history(offset=-1),
        lambda c: c.send_message("s", text=""),
        lambda c: c.send_message("s", text="x", max_steps=0),
        lambda c: c.fork_session("s", message_index=0),
        lambda c: c.delete_session_file("s", ".."),
    ],
)
async def test_invalid_arguments_send_nothing(
    server: Scripted, client: AsyncMix, call: Any
) -> None:
    with pytest.raises(InvalidInputError):
        await call(client)
    assert server.requests == []


# ---------------------------------------------------------------------------
# 2. Path parameters arrive intact as one segment
# ---------------------------------------------------------------------------

WEIRD = [
    ("a/b", "a%2Fb"),
    ("a?b", "a%3Fb"),
    ("a#b", "a%23b"),
    ("100%", "100%25"),
    ("%2F", "%252F"),
    ("a b", "a%20b"),
    ("café", "caf%C3%A9"),
    ("日本", "%E6%97%A5%E6%9C%AC"),
    ("..x", "..x"),
    ("a/../b", "a%2F..%2Fb"),
    ("a\\b", "a%5Cb"),
    ("a+b&c=d;e", "a%2Bb%26c%3Dd%3Be"),
    (ODD, ODD_ENC),
]


@pytest.mark.parametrize(("value", "encoded"), WEIRD)
async def test_path_parameter_is_one_intact_segment(
    server: Scripted, client: AsyncMix, value: str, encoded: str
) -> None:
    server.on("/*", Reply(200, {**SESSION_JSON, "id": value}))
    session = await client.get_session(value)
    assert session.id == value
    rec = server.requests[0]
    assert rec.raw_path == f"/api/sessions/{encoded}"
    assert rec.route == "/api/sessions/{id}"
    assert rec.match == {"id": value}


@pytest.mark.parametrize(("value", "encoded"), WEIRD)
async def test_file_name_and_id_are_intact_segments(
    server: Scripted, client: AsyncMix, value: str, encoded: str
) -> None:
    server.on("/*", Reply(204))
    await client.delete_session_file(value, value + "x")
    rec = server.requests[0]
    assert rec.raw_path == f"/api/sessions/{encoded}/files/{encoded}x"
    assert rec.route == "/api/sessions/{id}/files/{filename}"
    assert rec.match == {"id": value, "filename": value + "x"}


async def test_stream_session_id_query_is_encoded(server: Scripted, client: AsyncMix) -> None:
    server.on("/*", sse_reply(sse(("connected", {"sessionId": "a&b=c #é"}))))
    async with client.stream_events("a&b=c #é", reconnect=False) as events:
        got = [e async for e in events]
    assert len(got) == 1
    rec = server.requests[0]
    assert rec.raw_path == "/stream?sessionId=a%26b%3Dc%20%23%C3%A9"


# ---------------------------------------------------------------------------
# 3. Tolerant decoding of the real server's replies
# ---------------------------------------------------------------------------


async def test_error_type_outside_the_enum(server: Scripted, client: AsyncMix) -> None:
    server.reply(
        Reply(
            400,
            {"error": {"code": 400, "message": "bad provider", "type": "INVALID_PROVIDER"}},
        )
    )
    with pytest.raises(BadRequestError) as info:
        await client.store_api_key(api_key="k", provider="anthropic")
    assert info.value.error == RESTError(code=400, message="bad provider", type="INVALID_PROVIDER")


async def test_session_type_forked(server: Scripted, client: AsyncMix) -> None:
    server.reply(Reply(200, {**SESSION_JSON, "sessionType": "forked", "browserMode": "new-mode"}))
    session = await client.get_session("s1")
    assert session.session_type == "forked"
    assert session.browser_mode == "new-mode"


async def test_cancel_reply_of_the_real_server(server: Scripted, client: AsyncMix) -> None:
    server.reply(Reply(200, {"status": "cancelled", "sessionId": "s1"}))
    result = await client.cancel_session_processing("s1")
    assert (result.status, result.session_id, result.cancelled) == ("cancelled", "s1", None)


@pytest.mark.parametrize("verb", ["grant", "deny"])
async def test_permission_reply_of_the_real_server(
    server: Scripted, client: AsyncMix, verb: str
) -> None:
    server.reply(Reply(200, {"status": verb + "ed", "id": "p1", "message": "done"}))
    method = client.grant_permission if verb == "grant" else client.deny_permission
    result = await method("p1")
    assert (result.status, result.id, result.message) == (verb + "ed", "p1", "done")
    assert (result.granted, result.denied) == (None, None)


async def test_slash_command_answers_200_with_a_message(server: Scripted, client: AsyncMix) -> None:
    server.reply(Reply(200, {**MESSAGE_JSON, "userInput": "/help", "assistantResponse": "Help!"}))
    result = await client.send_message("s1", text="/help")
    assert result.status == "completed"
    assert result.session_id == "s1"
    assert result.message is not None
    assert isinstance(result.message, BackendMessage)
    assert (result.message.user_input, result.message.assistant_response) == ("/help", "Help!")


async def test_messages_of_unknown_session_is_empty_list(
    server: Scripted, client: AsyncMix
) -> None:
    server.reply(Reply(200, []))
    assert await client.get_session_messages("nope") == []


async def test_unknown_extra_fields_are_ignored(server: Scripted, client: AsyncMix) -> None:
    server.reply(
        Reply(200, {**SESSION_JSON, "brandNew": {"x": [1, 2]}, "workingDirectory": "/w"}),
        Reply(200, [{**MESSAGE_JSON, "extra": 1, "toolCalls": [{"id": "t", "newField": True}]}]),
    )
    check_session(await client.get_session("s1"))
    messages = await client.get_session_messages("s1")
    assert messages[0].tool_calls is not None
    assert messages[0].tool_calls[0].id == "t"


async def test_missing_optional_fields_default(server: Scripted, client: AsyncMix) -> None:
    server.reply(Reply(200, {"id": "s1"}), Reply(200, {}))
    session = await client.get_session("s1")
    assert (session.id, session.title, session.session_type, session.cost) == ("s1", "", "", 0.0)
    assert session.callbacks is None
    health = await client.health_check()
    assert (health.status, health.version) == (None, None)


async def test_204_gives_none(server: Scripted, client: AsyncMix) -> None:
    server.reply(Reply(204), Reply(204), Reply(204))
    assert await client.delete_session("s1") is None
    assert await client.delete_session_file("s1", "f.txt") is None
    assert await client.respond_to_notification("n1", type="text", value="v") is None


async def test_json_escapes_are_decoded(server: Scripted, client: AsyncMix) -> None:
    server.reply(Reply(200, body=b'{"id":"s1","title":"\\u003cb\\u003e \\u0026"}'))
    session = await client.get_session("s1")
    assert session.title == "<b> &"


async def test_reasoning_duration_in_seconds_still_decodes(
    server: Scripted, client: AsyncMix
) -> None:
    server.reply(Reply(200, [{**MESSAGE_JSON, "reasoningDuration": 3}]))
    messages = await client.get_session_messages("s1")
    assert messages[0].reasoning_duration == 3
    server.reply(Reply(200, [{**MESSAGE_JSON, "reasoningDuration": 2.5}]))
    messages = await client.get_session_messages("s1")
    assert messages[0].reasoning_duration == 2.5


# ---------------------------------------------------------------------------
# 4. Errors
# ---------------------------------------------------------------------------

STATUS_CLASSES = [
    (400, BadRequestError),
    (401, AuthenticationError),
    (404, NotFoundError),
    (408, RequestTimeoutError),
    (413, PayloadTooLargeError),
    (422, UnprocessableEntityError),
    (429, RateLimitError),
    (500, InternalServerError),
    (502, InternalServerError),
    (503, InternalServerError),
    (418, APIStatusError),
]


@pytest.mark.parametrize(("status", "cls"), STATUS_CLASSES)
async def test_status_maps_to_error_class(
    server: Scripted, client: AsyncMix, status: int, cls: type[APIStatusError]
) -> None:
    body = {"error": {"code": status, "message": f"boom {status}", "type": "SOME_TYPE"}}
    server.reply(Reply(status, body, headers={"X-Request-Id": "r-1"}))
    with pytest.raises(APIStatusError) as info:
        await client.get_session("s 1", max_retries=0)
    err = info.value
    assert type(err) is cls
    assert isinstance(err, MixError)
    assert isinstance(err, ErrorResponse)
    assert err.status_code == status
    assert err.headers["X-Request-Id"] == "r-1"
    assert json.loads(err.body) == body
    assert err.error == RESTError(code=status, message=f"boom {status}", type="SOME_TYPE")
    assert err.data is not None
    assert err.data.error is err.error
    assert err.method == "GET"
    url = f"{server.url}/api/sessions/s%201"
    assert err.url == url
    text = str(err)
    assert "\n" not in text
    for part in ("GET", url, str(status), f"boom {status}"):
        assert part in text
    assert len(server.requests) == 1


async def test_post_error_names_post(server: Scripted, client: AsyncMix) -> None:
    server.reply(
        Reply(422, {"error": {"code": 422, "message": "Validation error for field 'title'"}})
    )
    with pytest.raises(UnprocessableEntityError) as info:
        await client.create_session(title="", browser_mode="local-browser-service")
    assert info.value.method == "POST"
    assert str(info.value).startswith(f"POST {server.url}/api/sessions")
    assert "Validation error for field 'title'" in str(info.value)
    assert info.value.error is not None
    assert info.value.error.type == ""


async def test_non_json_error_body(server: Scripted, client: AsyncMix) -> None:
    server.reply(Reply(404, body=b"<html>no such page</html>", content_type="text/html"))
    with pytest.raises(NotFoundError) as info:
        await client.get_tools_status()
    err = info.value
    assert err.error is None
    assert err.data.error == RESTError(code=404, message="no such page", type="")
    assert err.body == "<html>no such page</html>"
    assert "no such page" in str(err)
    assert "404" in str(err)


async def test_multiline_server_message_stays_one_line(server: Scripted, client: AsyncMix) -> None:
    server.reply(
        Reply(400, {"error": {"code": 400, "message": "bad\nthing\r\n here", "type": "x"}})
    )
    with pytest.raises(BadRequestError) as info:
        await client.get_session("s")
    assert str(info.value).endswith("-> 400: bad thing here")
    assert info.value.error is not None
    assert info.value.error.message == "bad\nthing\r\n here"


async def test_error_with_unknown_json_shape(server: Scripted, client: AsyncMix) -> None:
    server.reply(Reply(400, {"message": "plain"}))
    with pytest.raises(BadRequestError) as info:
        await client.get_command("x")
    assert info.value.error is None
    assert info.value.body == '{"message": "plain"}'


def test_error_hierarchy() -> None:
    assert ErrorResponse is APIStatusError
    for cls in (
        APIStatusError,
        BadRequestError,
        AuthenticationError,
        NotFoundError,
        RequestTimeoutError,
        PayloadTooLargeError,
        UnprocessableEntityError,
        RateLimitError,
        InternalServerError,
        APIConnectionError,
        APITimeoutError,
        ResponseValidationError,
        InvalidInputError,
    ):
        assert issubclass(cls, MixError), cls
    for _, cls in STATUS_CLASSES:
        assert issubclass(cls, APIStatusError)
    assert issubclass(APITimeoutError, APIConnectionError)
    assert issubclass(InvalidInputError, ValueError)


@pytest.mark.parametrize(
    ("body", "cause"),
    [
        (b'{"title": "no id"}', msgspec.ValidationError),
        (b'{"id": 5}', msgspec.ValidationError),
        (b"not json", msgspec.DecodeError),
        (b"", msgspec.DecodeError),
    ],
)
async def test_2xx_body_not_matching_the_schema(
    server: Scripted, client: AsyncMix, body: bytes, cause: type[Exception]
) -> None:
    server.reply(Reply(200, body=body))
    with pytest.raises(ResponseValidationError) as info:
        await client.get_session("s1")
    err = info.value
    assert isinstance(err.cause, cause)
    assert err.__cause__ is err.cause
    assert err.raw_body == body
    assert err.body == body.decode()
    assert err.status_code == 200
    assert err.method == "GET"
    assert err.url == f"{server.url}/api/sessions/s1"
    assert len(server.requests) == 1


async def test_connection_refused(clock: Clock) -> None:
    port = free_port()
    async with AsyncMix(f"http://127.0.0.1:{port}") as c:
        with pytest.raises(APIConnectionError) as info:
            await c.health_check()
    err = info.value
    assert type(err) is APIConnectionError
    assert isinstance(err.__cause__, aiohttp.ClientConnectorError)
    assert err.method == "GET"
    assert err.url == f"http://127.0.0.1:{port}/health"
    assert f"127.0.0.1:{port}" in str(err)
    assert len(clock.delays) == 2  # the default two retries


async def test_no_answer_within_timeout(server: Scripted, client: AsyncMix) -> None:
    server.reply(HANG)
    with pytest.raises(APITimeoutError) as info:
        await client.get_session("s1", timeout=0.2, max_retries=0)
    assert isinstance(info.value, APIConnectionError)
    assert info.value.method == "GET"
    assert len(server.requests) == 1


async def test_timeout_is_retried_for_get(server: Scripted, client: AsyncMix, clock: Clock) -> None:
    server.reply(HANG, Reply(200, SESSION_JSON))
    # No total limit (a total covers the whole call): only this attempt's read times out.
    check_session(await client.get_session("s1", timeout=aiohttp.ClientTimeout(sock_read=0.2)))
    assert len(server.requests) == 2
    assert len(clock.delays) == 1


async def test_invalid_timeout_value(client: AsyncMix, server: Scripted) -> None:
    for bad in (0, -1, "5", True):
        with pytest.raises(InvalidInputError):
            await client.health_check(timeout=bad)  # type: ignore[arg-type]
    assert server.requests == []


# ---------------------------------------------------------------------------
# 5. Retries
# ---------------------------------------------------------------------------


async def test_get_503_retried_twice_by_default(
    server: Scripted, client: AsyncMix, clock: Clock
) -> None:
    server.on("/*", Reply(503, {"error": {"code": 503, "message": "busy"}}))
    with pytest.raises(InternalServerError) as info:
        await client.get_session("s1")
    assert info.value.status_code == 503
    assert len(server.requests) == 3
    assert len(clock.delays) == 2


async def test_get_recovers_after_failures(
    server: Scripted, client: AsyncMix, clock: Clock
) -> None:
    server.reply(Reply(503), Reply(503), Reply(200, SESSION_JSON))
    check_session(await client.get_session("s1"))
    assert len(server.requests) == 3
    assert all(r.raw_path == "/api/sessions/s1" for r in server.requests)


async def test_max_retries_zero_per_call(server: Scripted, client: AsyncMix, clock: Clock) -> None:
    server.on("/*", Reply(503))
    with pytest.raises(InternalServerError):
        await client.get_session("s1", max_retries=0)
    assert len(server.requests) == 1
    assert clock.delays == []


async def test_max_retries_per_client(server: Scripted, clock: Clock) -> None:
    server.on("/*", Reply(503))
    async with AsyncMix(server.url, max_retries=0) as c:
        with pytest.raises(InternalServerError):
            await c.get_session("s1")
        assert len(server.requests) == 1
        # a per-call value overrides the client's
        with pytest.raises(InternalServerError):
            await c.get_session("s1", max_retries=1)
        assert len(server.requests) == 3
    async with AsyncMix(server.url, max_retries=4) as c:
        with pytest.raises(InternalServerError):
            await c.get_session("s1")
    assert len(server.requests) == 3 + 5


async def test_negative_max_retries_rejected(server: Scripted) -> None:
    with pytest.raises(InvalidInputError):
        AsyncMix(server.url, max_retries=-1)
    async with AsyncMix(server.url) as c:
        with pytest.raises(InvalidInputError):
            await c.health_check(max_retries=-1)
    assert server.requests == []


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408, 429])
async def test_get_retried_on_status(
    server: Scripted, client: AsyncMix, clock: Clock, status: int
) -> None:
    server.reply(Reply(status), Reply(200, [SESSION_JSON]))
    sessions = await client.list_sessions()
    check_session(sessions[0])
    assert len(server.requests) == 2
    assert len(clock.delays) == 1


@pytest.mark.parametrize("status", [400, 401, 404, 413, 422, 418])
async def test_get_not_retried_on_client_errors(
    server: Scripted, client: AsyncMix, clock: Clock, status: int
) -> None:
    server.on("/*", Reply(status))
    with pytest.raises(APIStatusError):
        await client.list_sessions()
    assert len(server.requests) == 1
    assert clock.delays == []


async def test_get_retried_on_dropped_connection(
    server: Scripted, client: AsyncMix, clock: Clock
) -> None:
    # aiohttp itself resends an idempotent request once on a dropped connection; the
    # second drop reaches the client, which retries after a backoff delay.
    server.reply(DROP, DROP, Reply(200, SESSION_JSON))
    check_session(await client.get_session("s1"))
    assert len(server.requests) == 3
    assert len(clock.delays) == 1


async def test_delete_is_retried_too(server: Scripted, client: AsyncMix, clock: Clock) -> None:
    server.reply(Reply(502), Reply(204))
    assert await client.delete_session("s1") is None
    assert [r.method for r in server.requests] == ["DELETE", "DELETE"]


@pytest.mark.parametrize("status", [429, 503])
async def test_post_retried_on_429_and_503(
    server: Scripted, client: AsyncMix, clock: Clock, status: int
) -> None:
    server.reply(Reply(status), Reply(202, {"status": "processing", "sessionId": "s1"}))
    result = await client.send_message("s1", text="hi")
    assert result.status == "processing"
    assert len(server.requests) == 2
    assert [r.json() for r in server.requests] == [{"text": "hi"}, {"text": "hi"}]


@pytest.mark.parametrize("status", [500, 502, 504, 408])
async def test_post_not_retried_on_other_5xx(
    server: Scripted, client: AsyncMix, clock: Clock, status: int
) -> None:
    server.on("/*", Reply(status))
    with pytest.raises(APIStatusError) as info:
        await client.send_message("s1", text="hi")
    assert info.value.status_code == status
    assert len(server.requests) == 1
    assert clock.delays == []


async def test_post_not_retried_after_dropped_connection(
    server: Scripted, client: AsyncMix, clock: Clock
) -> None:
    server.reply(DROP, Reply(202, {"status": "processing", "sessionId": "s1"}))
    with pytest.raises(APIConnectionError) as info:
        await client.send_message("s1", text="hi")
    assert isinstance(info.value.__cause__, aiohttp.ClientError)
    assert len(server.requests) == 1
    assert clock.delays == []


async def test_post_retried_on_connection_refused(clock: Clock) -> None:
    async with AsyncMix(f"http://127.0.0.1:{free_port()}") as c:
        with pytest.raises(APIConnectionError):
            await c.create_session(title="t", browser_mode="local-browser-service")
    assert len(clock.delays) == 2


async def test_connection_errors_not_retried_when_disabled(clock: Clock) -> None:
    config = RetryConfig("backoff", BackoffStrategy(1, 5, 2.0, 10_000), False)
    async with AsyncMix(f"http://127.0.0.1:{free_port()}", retry_config=config) as c:
        with pytest.raises(APIConnectionError):
            await c.health_check()
    assert clock.delays == []


async def test_retry_after_seconds(server: Scripted, client: AsyncMix, clock: Clock) -> None:
    server.reply(Reply(429, headers={"Retry-After": "7"}), Reply(200, {"status": "ok"}))
    assert (await client.health_check()).status == "ok"
    assert clock.delays == [7.0]


async def test_retry_after_http_date(server: Scripted, client: AsyncMix, clock: Clock) -> None:
    date = email.utils.formatdate(NOW + 9, usegmt=True)
    server.reply(Reply(503, headers={"Retry-After": date}), Reply(200, {"status": "ok"}))
    assert (await client.health_check()).status == "ok"
    assert clock.delays == [9.0]


async def test_retry_after_in_the_past_is_zero(
    server: Scripted, client: AsyncMix, clock: Clock
) -> None:
    date = email.utils.formatdate(NOW - 100, usegmt=True)
    server.reply(Reply(503, headers={"Retry-After": date}), Reply(200, {"status": "ok"}))
    assert (await client.health_check()).status == "ok"
    assert clock.delays == [0.0]


@pytest.mark.parametrize("value", ["3600", "120.5"])
async def test_retry_after_is_capped_at_60s(
    server: Scripted, client: AsyncMix, clock: Clock, value: str
) -> None:
    server.reply(Reply(429, headers={"Retry-After": value}), Reply(200, {"status": "ok"}))
    await client.health_check(timeout=None)  # no total limit: a 60 s wait fits
    assert clock.delays == [60.0]


async def test_retry_after_on_post(server: Scripted, client: AsyncMix, clock: Clock) -> None:
    server.reply(Reply(429, headers={"Retry-After": "2"}), Reply(202, {"status": "processing"}))
    await client.send_message("s1", text="hi")
    assert clock.delays == [2.0]


async def test_unparsable_retry_after_falls_back_to_backoff(
    server: Scripted, client: AsyncMix, clock: Clock
) -> None:
    server.reply(Reply(503, headers={"Retry-After": "soon"}), Reply(200, {"status": "ok"}))
    await client.health_check()
    assert len(clock.delays) == 1
    assert 0.375 <= clock.delays[0] <= 0.5


async def test_exponential_backoff_with_jitter(
    server: Scripted, client: AsyncMix, clock: Clock
) -> None:
    server.on("/*", Reply(503))
    with pytest.raises(InternalServerError):
        await client.get_session("s1", max_retries=7)
    assert len(server.requests) == 8
    bases = [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert len(clock.delays) == len(bases)
    for delay, base in zip(clock.delays, bases, strict=True):
        assert 0.75 * base <= delay <= base, (delay, base)
    assert any(d < b for d, b in zip(clock.delays, bases, strict=True))  # jittered


async def test_backoff_strategy_values_are_used(server: Scripted, clock: Clock) -> None:
    clock.random = 0.0
    config = RetryConfig("backoff", BackoffStrategy(100, 1000, 3.0, 0), True)
    server.on("/*", Reply(503))
    async with AsyncMix(server.url, retry_config=config, max_retries=4) as c:
        with pytest.raises(InternalServerError):
            await c.health_check()
    assert clock.delays == pytest.approx([0.1, 0.3, 0.9, 1.0])


async def test_per_call_max_retries_keeps_the_client_backoff(
    server: Scripted, clock: Clock
) -> None:
    clock.random = 0.0
    config = RetryConfig("backoff", BackoffStrategy(100, 100, 1.0, 0), True)
    server.on("/*", Reply(503))
    async with AsyncMix(server.url, retry_config=config) as c:
        with pytest.raises(InternalServerError):
            await c.health_check(max_retries=3)
        assert clock.delays == pytest.approx([0.1, 0.1, 0.1])
        with pytest.raises(InternalServerError):
            await c.with_options(max_retries=1).health_check()
        assert clock.delays == pytest.approx([0.1] * 4)
    async with AsyncMix(server.url, max_retries=1) as c:
        with pytest.raises(InternalServerError):
            await c.health_check(retry_config=config)
    assert clock.delays == pytest.approx([0.1] * 5)
    assert len(server.requests) == 4 + 2 + 2


async def test_retry_config_none_disables(server: Scripted, clock: Clock) -> None:
    server.on("/*", Reply(503))
    async with AsyncMix(server.url) as c:
        with pytest.raises(InternalServerError):
            await c.get_session("s1", retry_config=RetryConfig("none"))
    assert len(server.requests) == 1
    async with AsyncMix(server.url, retry_config=RetryConfig("none", None, False)) as c:
        with pytest.raises(InternalServerError):
            await c.get_session("s1")
    assert len(server.requests) == 2
    assert clock.delays == []


async def test_max_elapsed_time_stops_retrying(server: Scripted, clock: Clock) -> None:
    clock.random = 0.0  # no jitter: every delay is exactly 1 s
    config = RetryConfig("backoff", BackoffStrategy(1000, 1000, 1.0, 2500), True)
    server.on("/*", Reply(503))
    async with AsyncMix(server.url, retry_config=config) as c:
        with pytest.raises(InternalServerError):
            await c.health_check()
    # retries at t=0 (+1 -> 1.0 <= 2.5) and t=1 (+1 -> 2.0), not at t=2 (+1 -> 3.0 > 2.5)
    assert clock.delays == [1.0, 1.0]
    assert len(server.requests) == 3


async def test_tiny_real_backoff(server: Scripted) -> None:
    config = RetryConfig("backoff", BackoffStrategy(1, 5, 2.0, 10_000), True)
    server.reply(Reply(503), Reply(503), Reply(503), Reply(200, {"status": "ok"}))
    async with AsyncMix(server.url, retry_config=config) as c:
        assert (await c.health_check()).status == "ok"
    assert len(server.requests) == 4


async def test_async_iterator_upload_never_retried(
    server: Scripted, client: AsyncMix, clock: Clock
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"abc"
        yield b"def"

    server.on("/*", Reply(503))
    with pytest.raises(InternalServerError):
        await client.upload_session_file("s1", chunks(), filename="x.bin")
    assert len(server.requests) == 1
    assert clock.delays == []
    assert server.requests[0].body is not None
    assert b"abcdef" in server.requests[0].body


async def test_path_upload_replayed_whole_on_retry(
    server: Scripted, client: AsyncMix, clock: Clock, tmp_path: Path
) -> None:
    path = tmp_path / "data.bin"
    content = os.urandom(600_000)
    path.write_bytes(content)
    server.reply(Reply(503), Reply(201, {"name": "data.bin", "size": len(content)}))
    info = await client.upload_session_file("s1", path)
    assert info.size == len(content)
    assert len(server.requests) == 2
    first, second = (r.body for r in server.requests)
    assert first == second
    assert first is not None
    assert content in first


async def test_seekable_file_upload_replayed_from_its_position(
    server: Scripted, client: AsyncMix, clock: Clock
) -> None:
    f = io.BytesIO(b"SKIPpayload")
    f.seek(4)
    server.reply(Reply(429), Reply(201, {"name": "p.bin"}))
    await client.upload_session_file("s1", f, filename="p.bin")
    bodies = [r.body for r in server.requests]
    assert len(bodies) == 2
    for body in bodies:
        assert body is not None
        assert b"\r\n\r\npayload\r\n--" in body
        assert b"SKIP" not in body


# ---------------------------------------------------------------------------
# 6. Timeouts and sessions
# ---------------------------------------------------------------------------


@pytest.fixture
def spy_timeouts(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    seen: list[Any] = []
    original = aiohttp.ClientSession.request

    def request(self: aiohttp.ClientSession, method: str, url: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("timeout", "<not passed>"))
        return original(self, method, url, **kwargs)

    monkeypatch.setattr(aiohttp.ClientSession, "request", request)
    return seen


async def test_default_timeouts(
    server: Scripted, client: AsyncMix, spy_timeouts: list[Any]
) -> None:
    server.on("/*", Reply(200, {}))
    await client.health_check()
    assert spy_timeouts == [aiohttp.ClientTimeout(total=60, connect=5)]
    await client.health_check(timeout=3)
    assert spy_timeouts[-1].total == 3
    custom = aiohttp.ClientTimeout(total=11, sock_read=2)
    await client.health_check(timeout=custom)
    assert spy_timeouts[-1] == custom
    server.on("/*", Reply(200, body=b"x"))
    await client.get_session_file("s", "f")
    # transfers have no total limit, only a connect and a no-progress limit
    assert spy_timeouts[-1] == aiohttp.ClientTimeout(total=None, connect=5, sock_read=60)


async def test_client_timeout_setting(server: Scripted, spy_timeouts: list[Any]) -> None:
    async with AsyncMix(server.url, timeout=7) as c:
        await c.health_check()
        assert spy_timeouts[-1].total == 7
        await c.health_check(timeout=None)
        assert spy_timeouts[-1].total is None
    async with AsyncMix(server.url, timeout=None) as c:
        await c.health_check()
        assert spy_timeouts[-1].total is None


async def test_per_call_timeout_overrides(server: Scripted) -> None:
    server.reply(HANG)
    async with AsyncMix(server.url, timeout=30) as c:
        with pytest.raises(APITimeoutError):
            await c.health_check(timeout=0.2, max_retries=0)


async def test_user_session_keeps_its_settings_and_stays_open(
    server: Scripted,
) -> None:
    session = aiohttp.ClientSession(
        headers={"X-Mine": "yes"}, timeout=aiohttp.ClientTimeout(total=0.3)
    )
    try:
        server.hang_for = 5
        server.reply(Reply(200, {"status": "ok"}), HANG)
        async with AsyncMix(server.url, session=session) as c:
            assert (await c.health_check()).status == "ok"
            rec = server.requests[0]
            assert rec.headers["X-Mine"] == "yes"
            assert rec.headers["User-Agent"] == USER_AGENT
            # the session's own 0.3 s timeout applies (not the client's 60 s default)
            with pytest.raises(APITimeoutError):
                await c.health_check(max_retries=0)
        assert not session.closed
        c2 = AsyncMix(server.url, session=session)
        await c2.aclose()
        assert not session.closed
    finally:
        await session.close()


async def test_user_session_json_headers(server: Scripted) -> None:
    async with (
        aiohttp.ClientSession() as session,
        AsyncMix(server.url, session=session, headers={"X-Client": "1"}) as c,
    ):
        server.on("/*", Reply(200, {}))
        await c.store_api_key(api_key="k", provider="openai")
        await c.health_check()
    post, get = server.requests
    assert post.headers["Content-Type"] == "application/json"
    assert post.headers["User-Agent"] == USER_AGENT
    assert post.headers["X-Client"] == "1"
    assert get.headers["X-Client"] == "1"
    assert "Content-Type" not in get.headers


async def test_own_session_is_closed(server: Scripted) -> None:
    c = AsyncMix(server.url)
    await c.health_check()
    with pytest.raises(asyncio.TimeoutError):  # the pool keeps its connection open
        await asyncio.to_thread(server.wait_connections_closed, 0.3)
    await c.aclose()
    await asyncio.to_thread(server.wait_connections_closed)
    async with AsyncMix(server.url) as c2:
        await c2.health_check()
    await asyncio.to_thread(server.wait_connections_closed)


async def test_closed_client_refuses_calls(server: Scripted) -> None:
    async with AsyncMix(server.url) as c:
        await c.health_check()
    with pytest.raises(MixError):
        await c.health_check()
    assert len(server.requests) == 1


# ---------------------------------------------------------------------------
# 7. Uploads and downloads
# ---------------------------------------------------------------------------


@dataclass
class Part:
    name: str | None
    filename: str | None
    content_type: str | None
    data: bytes


@pytest.fixture
def parts(server: Scripted) -> list[Part]:
    """The parts of every upload the server receives (it answers each with a FileInfo)."""
    parts: list[Part] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        reader = await request.multipart()
        count = 0
        while True:
            part = await reader.next()
            if part is None:
                break
            assert isinstance(part, aiohttp.BodyPartReader)
            data = await part.read()
            parts.append(
                Part(part.name, part.filename, part.headers.get("Content-Type"), bytes(data))
            )
            count += 1
        last = parts[-1]
        return web.json_response(
            {"name": last.filename, "size": len(last.data), "isDir": False}, status=201
        )

    server.on("/*", handler, read_body=False)
    return parts


async def test_upload_from_path(
    server: Scripted, parts: list[Part], client: AsyncMix, tmp_path: Path
) -> None:
    content = bytes(range(256)) * 10
    path = tmp_path / "report 1.pdf"
    path.write_bytes(content)
    info = await client.upload_session_file("s1", str(path))
    assert (info.name, info.size) == ("report 1.pdf", len(content))
    assert parts == [Part("file", "report 1.pdf", "application/pdf", content)]
    rec = server.requests[0]
    assert rec.raw_path == "/api/sessions/s1/files/upload"
    assert rec.headers["User-Agent"] == USER_AGENT
    assert rec.headers["Content-Type"].startswith("multipart/form-data; boundary=")
    # also a pathlib.Path
    await client.upload_session_file("s1", path)
    assert parts[1] == parts[0]


async def test_upload_open_binary_file(parts: list[Part], client: AsyncMix, tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    with path.open("rb") as f:
        await client.upload_session_file("s1", f)
    assert parts == [Part("file", "photo.png", "image/png", b"\x89PNG\r\n\x1a\n\x00\xff")]


async def test_upload_bytes_needs_filename(parts: list[Part], client: AsyncMix) -> None:
    data = bytes(range(255, -1, -1))  # not UTF-8
    await client.upload_session_file("s1", data, filename="notes.txt")
    await client.upload_session_file("s1", bytearray(b"ba"), filename="b.json")
    await client.upload_session_file("s1", memoryview(b"mv"), filename="c.bin")
    assert parts == [
        Part("file", "notes.txt", "text/plain", data),
        Part("file", "b.json", "application/json", b"ba"),
        Part("file", "c.bin", "application/octet-stream", b"mv"),
    ]


async def test_upload_async_iterator(parts: list[Part], client: AsyncMix) -> None:

    async def gen() -> AsyncIterator[bytes]:
        for i in range(5):
            yield bytes([i]) * 1000
            await asyncio.sleep(0)

    info = await client.upload_session_file("s1", gen(), filename="stream.json")
    assert info.size == 5000
    assert parts == [
        Part(
            "file", "stream.json", "application/json", b"".join(bytes([i]) * 1000 for i in range(5))
        )
    ]


async def test_upload_original_sdk_dict_form(parts: list[Part], client: AsyncMix) -> None:
    await client.upload_session_file("s1", {"file_name": "pic.png", "content": b"\x00\x01"})
    await client.upload_session_file(
        "s1", {"file_name": "d.dat", "content": b"x", "content_type": "application/x-dat"}
    )
    assert parts == [
        Part("file", "pic.png", "image/png", b"\x00\x01"),
        Part("file", "d.dat", "application/x-dat", b"x"),
    ]


async def test_upload_content_type_and_filename_override(
    parts: list[Part], client: AsyncMix, tmp_path: Path
) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(b"\xc3\x28 invalid utf8 \xff")
    await client.upload_session_file(
        "s1", path, filename="renamed é.csv", content_type="application/x-custom"
    )
    assert parts == [
        Part("file", "renamed é.csv", "application/x-custom", b"\xc3\x28 invalid utf8 \xff")
    ]


async def test_upload_filename_with_quote(parts: list[Part], client: AsyncMix) -> None:
    await client.upload_session_file("s1", b"q", filename='say "hi".txt')
    assert parts[0].filename == 'say "hi".txt'
    assert parts[0].data == b"q"


@pytest.mark.parametrize(
    "make",
    [
        lambda tmp: (str(tmp / "missing.txt"), {}),
        lambda tmp: (tmp / "missing.txt", {}),
        lambda tmp: (str(tmp), {}),
        lambda tmp: (b"x", {"filename": ".."}),
        lambda tmp: (b"x", {"filename": "."}),
        lambda tmp: (b"x", {"filename": ""}),
        lambda tmp: (b"x", {"filename": "a\nb"}),
        lambda tmp: (b"x", {}),
        lambda tmp: (123, {"filename": "n.txt"}),
        lambda tmp: (["x"], {"filename": "n.txt"}),
        lambda tmp: ({"file_name": "x.txt"}, {}),
        lambda tmp: ({"content": b"x"}, {}),
    ],
)
async def test_bad_upload_input_sends_nothing(
    server: Scripted, client: AsyncMix, tmp_path: Path, make: Any
) -> None:
    file, kwargs = make(tmp_path)
    with pytest.raises(InvalidInputError):
        await client.upload_session_file("s1", file, **kwargs)
    assert server.requests == []


async def test_upload_text_mode_file_fails(
    server: Scripted, client: AsyncMix, tmp_path: Path
) -> None:
    path = tmp_path / "t.txt"
    path.write_text("text")
    server.on("/*", Reply(201, {"name": "t.txt"}))
    with path.open("r") as f, pytest.raises(MixError):
        await client.upload_session_file("s1", f, max_retries=0)


BIG = 256 << 20


async def test_large_upload_from_path_has_constant_memory(
    server: Scripted, client: AsyncMix, tmp_path: Path
) -> None:
    seen: dict[str, Any] = {}

    async def handler(request: web.Request) -> web.StreamResponse:
        total = 0
        head = b""
        async for chunk in request.content.iter_chunked(1 << 20):
            if len(head) < 512:
                head += chunk[:512]
            total += len(chunk)
        seen["total"] = total
        seen["length"] = request.headers.get("Content-Length")
        seen["head"] = head
        return web.json_response({"name": "big.bin", "size": total}, status=201)

    server.on("/*", handler, read_body=False)
    small = tmp_path / "warm.bin"
    small.write_bytes(b"w" * 1_000_000)
    await client.upload_session_file("s1", small)  # warm up: pools, imports, buffers

    path = tmp_path / "big.bin"
    with path.open("wb") as f:
        f.truncate(BIG)  # sparse
    rss_before = status_kib("VmRSS")
    reset_peak_rss()
    info = await client.upload_session_file("s1", path)
    peak = status_kib("VmHWM")
    assert info.name == "big.bin"
    assert seen["length"] is not None
    assert seen["total"] == int(seen["length"])
    assert BIG < seen["total"] < BIG + 1024
    assert b'name="file"; filename="big.bin"' in seen["head"]
    growth_mib = (peak - rss_before) / 1024
    assert growth_mib < 16, f"peak RSS grew by {growth_mib:.1f} MiB"


async def test_get_session_file_exact_bytes(server: Scripted, client: AsyncMix) -> None:
    data = bytes(range(256)) * 4099
    server.reply(Reply(200, body=data, content_type="application/octet-stream"))
    assert await client.get_session_file("s1", "f.bin") == data

    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()  # no Content-Length: chunked
        await resp.prepare(request)
        for i in range(0, len(data), 7777):
            await resp.write(data[i : i + 7777])
        await resp.write_eof()
        return resp

    server.reply(chunked, Reply(200, body=b"", content_type="image/png"))
    assert await client.get_session_file("s1", "f.bin", thumb="w100", time=2) == data
    assert server.requests[1].raw_path == "/api/sessions/s1/files/f.bin?thumb=w100&time=2"
    assert await client.get_session_file("s1", "empty.png") == b""


async def test_get_session_file_errors(server: Scripted, client: AsyncMix) -> None:
    server.reply(Reply(404, {"error": {"code": 404, "message": "file not found"}}))
    with pytest.raises(NotFoundError) as info:
        await client.get_session_file("s1", "nope.txt")
    assert info.value.error is not None
    assert info.value.error.message == "file not found"
    for kwargs in ({"thumb": "x1"}, {"time": -1}, {"thumb": "w"}, {"time": 86401}):
        with pytest.raises(InvalidInputError):
            await client.get_session_file("s1", "f.mp4", **kwargs)
    assert len(server.requests) == 1


def _stream_handler(
    size: int, chunk: int = 1 << 20, aborted: threading.Event | None = None
) -> Handler:
    block = bytes(range(256)) * (chunk // 256)

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.content_length = size
        await resp.prepare(request)
        sent = 0
        try:
            while sent < size:
                piece = block[: min(chunk, size - sent)]
                await resp.write(piece)
                sent += len(piece)
        except (ConnectionError, RuntimeError, asyncio.CancelledError):
            if aborted is not None:
                aborted.set()
            raise
        await resp.write_eof()
        return resp

    return handler


async def test_download_large_file_to_path_with_constant_memory(
    server: Scripted, client: AsyncMix, tmp_path: Path
) -> None:
    server.on("/*", _stream_handler(4 << 20), read_body=False)
    dest = tmp_path / "warm.bin"
    assert await client.download_session_file("s1", "warm.bin", dest) == 4 << 20  # warm up

    server.on("/*", _stream_handler(BIG), read_body=False)
    dest = tmp_path / "big.bin"
    rss_before = status_kib("VmRSS")
    reset_peak_rss()
    written = await client.download_session_file("s1", "big.bin", str(dest))
    peak = status_kib("VmHWM")
    assert written == BIG
    assert dest.stat().st_size == BIG
    block = bytes(range(256)) * 4096
    with dest.open("rb") as f:
        assert f.read(len(block)) == block
        f.seek(BIG - len(block))
        assert f.read() == block
    growth_mib = (peak - rss_before) / 1024
    assert growth_mib < 16, f"peak RSS grew by {growth_mib:.1f} MiB"
    assert server.requests[-1].raw_path == "/api/sessions/s1/files/big.bin"


async def test_download_into_directory(server: Scripted, client: AsyncMix, tmp_path: Path) -> None:
    server.on("/*", Reply(200, body=b"content"))
    assert await client.download_session_file("s1", "x y.txt", tmp_path) == 7
    assert (tmp_path / "x y.txt").read_bytes() == b"content"


async def test_iter_session_file_yields_chunks(server: Scripted, client: AsyncMix) -> None:
    size = 3 * 65536 + 123
    server.on("/*", _stream_handler(size, chunk=65536), read_body=False)
    got: list[bytes] = []
    async with client.iter_session_file("s1", "f.bin", chunk_size=65536) as chunks:
        assert chunks.content_length == size
        assert chunks.content_type == "application/octet-stream"
        async for chunk in chunks:
            assert 0 < len(chunk) <= 65536
            got.append(chunk)
    data = b"".join(got)
    assert len(data) == size
    assert data[:512] == bytes(range(256)) * 2
    assert len(got) >= 4


async def test_iter_session_file_closes_on_early_break(server: Scripted, client: AsyncMix) -> None:
    aborted = threading.Event()
    server.on("/*", _stream_handler(1 << 30, chunk=65536, aborted=aborted), read_body=False)
    async with client.iter_session_file("s1", "huge.bin", chunk_size=4096) as chunks:
        async for chunk in chunks:
            assert len(chunk) <= 4096
            break
    # the server sees the connection go away instead of sending the whole GiB
    assert await asyncio.to_thread(aborted.wait, 10)


async def test_iter_session_file_error_status(server: Scripted, client: AsyncMix) -> None:
    server.reply(Reply(404, {"error": {"code": 404, "message": "gone"}}))
    with pytest.raises(NotFoundError):
        async with client.iter_session_file("s1", "f.bin") as chunks:
            async for _ in chunks:
                pass


# ---------------------------------------------------------------------------
# 8. Logging
# ---------------------------------------------------------------------------

SECRET = "sk-ant-SECRET-0123456789"


async def test_debug_logging_redacts_credentials(
    server: Scripted, client: AsyncMix, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="mix_client")
    server.on(
        "/*",
        Reply(
            200, {"message": "stored", "provider": "anthropic", "status": "ok", "api_key": SECRET}
        ),
    )
    await client.store_api_key(api_key=SECRET, provider="anthropic")
    await client.set_api_key(api_key=SECRET)
    await client.handle_oauth_callback(provider="anthropic", code=SECRET, state="s")
    await client.health_check(headers={"Authorization": f"Bearer {SECRET}", "X-Api-Key": SECRET})
    server.reply(Reply(400, {"error": {"code": 400, "message": "bad", "apiKey": SECRET}}))
    with pytest.raises(BadRequestError):
        await client.store_api_key(api_key=SECRET, provider="anthropic")
    # the key really was sent
    assert server.requests[0].json()["api_key"] == SECRET
    assert server.requests[3].headers["Authorization"] == f"Bearer {SECRET}"

    records = [r for r in caplog.records if r.name == "mix_client"]
    messages = [r.getMessage() for r in records]
    assert any(m.startswith("-> POST ") and "/api/auth/api-key" in m for m in messages)
    assert any(m.startswith("<- POST ") and "/api/auth/api-key 200" in m for m in messages)
    assert any(m.startswith("-> GET ") and "/health" in m for m in messages)
    assert any("<- POST" in m and " 400 " in m for m in messages)
    assert any("Authorization" in m for m in messages)
    for record, message in zip(records, messages, strict=True):
        assert SECRET not in message
        assert SECRET not in repr(record.args)
        assert SECRET not in str(record.msg)
    assert SECRET not in caplog.text


async def test_no_logging_above_debug(
    server: Scripted, client: AsyncMix, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mix_client")
    await client.health_check()
    assert [r for r in caplog.records if r.name == "mix_client"] == []


async def test_custom_logger(server: Scripted, caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("my.app.mix")
    caplog.set_level(logging.DEBUG, logger="my.app.mix")
    async with AsyncMix(server.url, logger=logger) as c:
        await c.health_check()
    assert any(r.name == "my.app.mix" and "/health" in r.getMessage() for r in caplog.records)


def test_mix_debug_env_leaves_root_logger_alone() -> None:
    # In a fresh interpreter: what MIX_DEBUG installs happens once per process.
    code = """
import logging, os
import mix_client
log, root = logging.getLogger("mix_client"), logging.getLogger()
log.setLevel(logging.WARNING)
root_saved = (root.level, list(root.handlers))
os.environ.pop("MIX_DEBUG", None)
mix_client.AsyncMix("http://127.0.0.1:1")
assert log.level == logging.WARNING and not log.handlers
os.environ["MIX_DEBUG"] = "true"
mix_client.AsyncMix("http://127.0.0.1:1")
assert log.level == logging.DEBUG and log.isEnabledFor(logging.DEBUG)
assert len(log.handlers) == 1
assert (root.level, root.handlers) == root_saved
mix_client.AsyncMix("http://127.0.0.1:1")  # no second handler
assert len(log.handlers) == 1
print("DONE")
"""
    env = {k: v for k, v in os.environ.items() if k != "MIX_DEBUG"}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env, cwd=HERE
    )
    assert proc.returncode == 0 and "DONE" in proc.stdout, proc.stderr


# ---------------------------------------------------------------------------
# 9. Client construction
# ---------------------------------------------------------------------------


def test_server_url_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MIX_SERVER_URL", raising=False)
    assert AsyncMix().server_url == "http://localhost:8088"
    monkeypatch.setenv("MIX_SERVER_URL", "https://mix.example:9000/")
    assert AsyncMix().server_url == "https://mix.example:9000"
    assert AsyncMix("http://other:1").server_url == "http://other:1"


@pytest.mark.parametrize("url", ["localhost:8088", "ftp://x", "//x", "mix"])
def test_invalid_server_url(url: str) -> None:
    with pytest.raises(InvalidInputError):
        AsyncMix(url)


async def test_server_url_with_prefix(server: Scripted) -> None:
    server.on("/*", Reply(200, {"status": "ok"}))
    async with AsyncMix(server.url + "/prefix/") as c:
        await c.health_check()
    assert server.requests[0].raw_path == "/prefix/health"


async def test_client_headers_sent_with_every_request(server: Scripted) -> None:
    async with AsyncMix(server.url, headers={"X-Team": "blue"}) as c:
        await c.health_check()
        await c.store_api_key(api_key="k", provider="openai", headers={"X-Call": "1"})
    first, second = server.requests
    assert first.headers["X-Team"] == "blue"
    assert second.headers["X-Team"] == "blue"
    assert second.headers["X-Call"] == "1"
    assert second.headers["Content-Type"] == "application/json"
    assert "X-Call" not in first.headers


async def test_with_options_shares_the_session(server: Scripted, clock: Clock) -> None:
    async with AsyncMix(server.url) as c:
        fast = c.with_options(max_retries=0, headers={"X-Opt": "1"})
        server.on("/*", Reply(503))
        with pytest.raises(InternalServerError):
            await fast.health_check()
        assert len(server.requests) == 1
        assert server.requests[0].headers["X-Opt"] == "1"
        with pytest.raises(InternalServerError):
            await c.health_check()
        assert len(server.requests) == 4
        assert "X-Opt" not in server.requests[-1].headers
    await asyncio.to_thread(server.wait_connections_closed)  # closing c closed what fast used


async def test_with_options_after_first_call_shares_the_session(server: Scripted) -> None:
    async with AsyncMix(server.url) as c:
        await c.health_check()
        other = c.with_options(timeout=5)
        await other.health_check()
    # one pool: closing the first client closed the connection the second one used
    await asyncio.to_thread(server.wait_connections_closed)


# ---------------------------------------------------------------------------
# 10. The blocking facade
# ---------------------------------------------------------------------------

SYNC_EXCLUDED = {"aclose", "with_options"}


def _public_async_methods() -> list[str]:
    names = []
    for name, member in inspect.getmembers(AsyncMix):
        if name.startswith("_") or name in SYNC_EXCLUDED or not callable(member):
            continue
        names.append(name)
    return names


def test_sync_facade_has_every_method_with_the_same_signature() -> None:
    names = _public_async_methods()
    assert len(names) >= 46
    amix = AsyncMix("http://127.0.0.1:1")
    with Mix("http://127.0.0.1:1") as mix:
        for name in names:
            assert hasattr(mix, name), name
            async_fn = getattr(amix, name)
            sync_fn = getattr(mix, name)
            # Mix's signature is copied from the async method it wraps, so comparing the two
            # proves nothing unless it is the same-named method that runs: check that first.
            assert inspect.unwrap(sync_fn) is inspect.unwrap(getattr(AsyncMix, name)), name
            a_sig = inspect.signature(async_fn)
            s_sig = inspect.signature(sync_fn)
            assert list(s_sig.parameters.values()) == list(a_sig.parameters.values()), name
            if inspect.iscoroutinefunction(getattr(AsyncMix, name)):
                assert not inspect.iscoroutinefunction(sync_fn), name
                assert s_sig.return_annotation == a_sig.return_annotation, name
            assert sync_fn.__doc__ == async_fn.__doc__, name


def test_sync_calls_from_a_plain_thread(server: Scripted) -> None:
    server.reply(Reply(200, SESSION_JSON), Reply(404, {"error": {"code": 404, "message": "no"}}))
    with Mix(server.url) as mix:
        check_session(mix.get_session(ODD))
        with pytest.raises(NotFoundError):
            mix.get_session("missing", max_retries=0)
    assert server.requests[0].raw_path == ODD_SESSION


def _echo_session(request: web.Request) -> Awaitable[web.StreamResponse]:
    async def reply() -> web.StreamResponse:
        return web.json_response({"id": request.match_info["id"], "title": "t"})

    return reply()


def test_sync_calls_from_many_threads(server: Scripted) -> None:
    server.on("/*", _echo_session)
    results: dict[tuple[int, int], str] = {}
    errors: list[BaseException] = []
    with Mix(server.url) as mix:

        def work(t: int) -> None:
            try:
                for i in range(10):
                    results[(t, i)] = mix.get_session(f"s{t}-{i}").id
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(30)
    assert errors == []
    assert results == {(t, i): f"s{t}-{i}" for t in range(8) for i in range(10)}
    assert len(server.requests) == 80


async def test_sync_call_inside_a_running_event_loop(server: Scripted) -> None:
    # The server runs on its own thread and loop; this loop is blocked by the call.
    asyncio.get_running_loop()
    server.on("/*", Reply(200, {"status": "ok", "version": "9"}))
    with Mix(server.url) as mix:
        health = mix.health_check()
        assert (health.status, health.version) == ("ok", "9")
    assert server.requests[0].raw_path == "/health"


def loop_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "mix-client-loop" and t.is_alive()}


def test_with_mix_closes(server: Scripted) -> None:
    before = loop_threads()
    with Mix(server.url) as mix:
        mix.health_check()
        (thread,) = loop_threads() - before
    server.wait_connections_closed()
    thread.join(5)
    assert not thread.is_alive()
    for _ in range(3):
        with pytest.raises(MixError):
            mix.health_check()
    mix.close()  # again: harmless
    # a call after close must not start a new background loop that nothing stops
    assert loop_threads() == before
    assert len(server.requests) == 1


def test_sync_stream_iterator(server: Scripted) -> None:
    server.on(
        "/*",
        sse_reply(
            sse(
                ("connected", {"sessionId": "s1"}),
                ("content", {"type": "content", "content": "Hel"}),
                ("content", {"type": "content", "content": "lo"}),
                ("complete", {"type": "complete", "done": True, "content": "Hello"}),
            )
        ),
    )
    with Mix(server.url) as mix:
        with mix.stream_events("s1", reconnect=False) as events:
            got = list(events)
        names = [e.event for e in got]
        assert names == ["connected", "content", "content", "complete"]
        assert "".join(e.data.content for e in got if isinstance(e, mix_client.ContentEvent)) == (
            "Hello"
        )
        # iter_session_file is a plain iterator too
        server.on("/*", Reply(200, body=b"abcdef"))
        with mix.iter_session_file("s1", "f.txt", chunk_size=4) as chunks:
            assert list(chunks) == [b"abcd", b"ef"]


def test_sync_error_in_the_factory_stops_the_thread() -> None:
    before = {t for t in threading.enumerate() if t.name == "mix-client-loop"}
    with pytest.raises(InvalidInputError):
        Mix("not a url")
    after = {t for t in threading.enumerate() if t.name == "mix-client-loop" and t.is_alive()}
    assert after <= before


def test_mypy_sees_the_sync_return_types(tmp_path: Path) -> None:
    from mypy import api

    snippet = tmp_path / "snippet.py"
    snippet.write_text(
        "from mix_client import Mix\n"
        "mix = Mix()\n"
        'reveal_type(mix.get_session("x"))\n'
        "reveal_type(mix.list_sessions())\n"
        "reveal_type(mix.delete_session('x'))\n"
        "mix.get_session(5)\n"
    )
    stdout, _stderr, _status = api.run(
        [
            "--strict",
            "--no-error-summary",
            "--cache-dir",
            str(HERE / ".mypy_cache"),
            "--config-file",
            str(HERE / "pyproject.toml"),
            str(snippet),
        ]
    )
    lines = stdout.splitlines()
    assert any('Revealed type is "mix_client.SessionData"' in line for line in lines), stdout
    assert any(
        re.search(r'Revealed type is "(builtins\.)?list\[mix_client\.SessionData\]"', line)
        for line in lines
    ), stdout
    assert any('Revealed type is "None"' in line for line in lines), stdout
    errors = [line for line in lines if ": error:" in line]
    # the only error is the deliberate wrong argument type on the last line
    assert len(errors) == 1, stdout
    assert "snippet.py:6:" in errors[0] and "arg-type" in errors[0], stdout


# ---------------------------------------------------------------------------
# 11. stream_events basics
# ---------------------------------------------------------------------------

STREAM = sse(
    ("connected", {"sessionId": "s1"}),
    ("thinking", {"type": "content", "content": "hmm"}),  # named by the event line
    ("content", {"type": "content", "content": "Hi"}),
    ("rate_limit_error", {"error": "slow down", "retryAfter": 1000}),
    ("session_created", {"type": "session_created", "sessionId": "other", "title": "x"}),
    ("session_created", {"type": "session_created", "sessionId": "s1", "title": "mine"}),
    ("session_deleted", {"type": "session_deleted", "sessionId": "other"}),
    ("complete", {"type": "complete", "done": True, "content": "Hi"}),
)


async def test_stream_events_typed(server: Scripted, client: AsyncMix) -> None:
    server.on("/*", sse_reply(STREAM))
    async with client.stream_events("s1", reconnect=False) as events:
        got = [e async for e in events]
    assert [type(e).__name__ for e in got] == [
        "ConnectedEvent",
        "ThinkingEvent",
        "ContentEvent",
        "UnknownEvent",
        "SessionCreatedEvent",
        "CompleteEvent",
    ]
    assert got[1].data.content == "hmm"
    unknown = got[3]
    assert isinstance(unknown, mix_client.UnknownEvent)
    assert unknown.event == "rate_limit_error"
    assert unknown.data == {"error": "slow down", "retryAfter": 1000}
    assert got[4].data.title == "mine"
    assert isinstance(got[5], mix_client.CompleteEvent)
    assert got[5].data.done is True
    assert [e.id for e in got] == ["1", "2", "3", "4", "6", "8"]
    rec = server.requests[0]
    assert rec.raw_path == "/stream?sessionId=s1"
    assert rec.headers["Accept"] == "text/event-stream"
    assert rec.headers["User-Agent"] == USER_AGENT


async def test_stream_events_other_sessions_included_on_request(
    server: Scripted, client: AsyncMix
) -> None:
    server.on("/*", sse_reply(STREAM))
    async with client.stream_events("s1", reconnect=False, include_other_sessions=True) as ev:
        got = [e async for e in ev]
    created = [e for e in got if isinstance(e, mix_client.SessionCreatedEvent)]
    assert [e.data.session_id for e in created] == ["other", "s1"]
    deleted = [e for e in got if isinstance(e, mix_client.SessionDeletedEvent)]
    assert [e.data.session_id for e in deleted] == ["other"]
    assert len(got) == 8


async def test_stream_events_error_status(server: Scripted, client: AsyncMix) -> None:
    server.on("/*", Reply(404, {"error": {"code": 404, "message": "no stream"}}))
    with pytest.raises(NotFoundError):
        async with client.stream_events("s1") as events:
            async for _ in events:
                pass


async def test_download_to_bytes_lets_other_tasks_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server faster than the reader never makes the read wait; the loop still gets turns."""
    chunk = b"x" * (1 << 20)
    seen_during: list[int] = []
    ticks = 0
    left = 16

    async def read(self: aiohttp.StreamReader, n: int = -1) -> bytes:
        nonlocal left
        seen_during.append(ticks)
        left -= 1
        return chunk if left >= 0 else b""  # never suspends, like a full buffer

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    monkeypatch.setattr(aiohttp.StreamReader, "read", read)
    task = asyncio.create_task(ticker())
    with aioresponses() as mocked:
        mocked.get(re.compile(r"^http://127\.0\.0\.1:9/.*$"), body=b"")
        async with AsyncMix("http://127.0.0.1:9") as client:
            data = await client.get_session_file("s", "big.bin")
    task.cancel()
    assert len(data) == 16 << 20
    assert seen_during[-1] > seen_during[0]  # the ticker ran while the chunks were read
