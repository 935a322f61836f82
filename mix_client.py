"""mix_client: a fast, typed, single-file, async-first client for the Mix REST API.

Mix is an agent app: sessions, messages, files, provider auth, preferences, tools and a
Server-Sent-Events stream of what the agent does. This module is the whole client:

    import asyncio
    from mix_client import AsyncMix

    async def main() -> None:
        async with AsyncMix("http://localhost:8088") as mix:
            session = await mix.create_session(title="demo", browser_mode="local-browser-service")
            turn = await mix.send_and_wait(session.id, "Hello!")
            print(turn.text)

    asyncio.run(main())

Blocking code uses :class:`Mix`, which has the same methods without ``await``.

Runtime dependencies: aiohttp and msgspec. Drop this file into a project, or install it.

Sections, in the order data flows (each defined before it is used):

1. Models: response Structs (tolerant) and request-body Structs (strict).
2. Errors: ``MixError`` and its tree, and the status-to-error mapping.
3. Transport: input checks, retry policy, timeouts, per-call options, request-body
   encoding; logging, the route table (``_Op`` rows, ``OPERATIONS``), the one retry
   decision (``_retry_delay``), the pool and its lifecycle (``_Pool``: the aiohttp
   sessions, the open streams, closing, a new loop, finalizers), the one request
   pipeline (``_send``; ``_call`` decodes its answer), uploads and downloads
   (``FileDownload``, ``_read_file``, ``_save_file``).
4. Streaming: ``SSEDecoder``, typed events and ``decode_event``, ``EventStream``.
5. Turns: ``Turn``, ``TurnStream`` and the turn runner ``query``/``send_and_wait``
   use (``_turn_events``; ``_read_run``, ``_check_end``, ``_reconcile`` read the export;
   ``_collect_turn`` folds the events into a ``Turn``).
6. Client: ``AsyncMix``: its options, and one short method per endpoint.
7. Blocking facade: ``Mix``, the same methods run on a private event-loop thread.
8. CLI: ``python -m mix_client``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import email.utils
import functools
import inspect
import io
import logging
import math
import mimetypes
import os
import random
import re
import sys
import threading
import time
import weakref
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from datetime import datetime
from typing import (
    TYPE_CHECKING,
    Any,
    ClassVar,
    Concatenate,
    Final,
    Generic,
    Literal,
    NamedTuple,
    NoReturn,
    ParamSpec,
    Protocol,
    TypeAlias,
    TypedDict,
    TypeVar,
    Union,
    get_args,
    get_type_hints,
    overload,
)
from urllib.parse import quote

import aiohttp
import msgspec
from msgspec import UNSET, UnsetType
from yarl import URL


class _SelfStandIn:
    """Run-time stand-in for ``typing.Self`` on Python 3.10."""


class _UnpackStandIn:
    """Run-time stand-in for ``typing.Unpack`` on Python 3.10: ``Unpack[RequestOptions]``."""

    def __class_getitem__(cls, item: Any) -> Any:
        from types import GenericAlias

        return GenericAlias(cls, item)


# ``typing.get_type_hints()`` must resolve every public annotation at run time, and
# typing_extensions is not a runtime dependency.
if TYPE_CHECKING:
    from typing_extensions import Self, Unpack
elif sys.version_info >= (3, 11):
    from typing import Self, Unpack
else:  # pragma: no cover - Python 3.10
    Self = _SelfStandIn
    Unpack = _UnpackStandIn

__version__ = "0.1.0"

# fmt: off
__all__ = [
    "DEFAULT_IDLE_TIMEOUT", "DEFAULT_MAX_EVENT_SIZE", "DEFAULT_SERVER_URL", "DEFAULT_TIMEOUT",
    "OPERATIONS", "TRANSFER_TIMEOUT", "UNSET", "APIConnectionError", "APIStatusError",
    "APITimeoutError", "AgentError", "AmbiguousRunError", "AsyncMix", "AuthStatusResponse", "AuthenticationError",
    "BackendMessage", "BackoffStrategy", "BadRequestError", "BaseEvent", "BrowserMode",
    "Callback", "CallbackDict", "CallbackResult", "CallbackType", "CancelResult",
    "ClientClosedError", "Command", "CompleteData", "CompleteEvent", "ConnectedData",
    "ConnectedEvent", "ContentData", "ContentEvent", "DeleteCredentialsResponse",
    "DownloadedFile", "ErrorBody", "ErrorData", "ErrorEvent", "ErrorResponse", "EventStream",
    "EventTooLargeError", "ExportMessage", "ExportSession", "ExportToolCall", "FileDownload",
    "FileInfo", "FileInput", "HealthResponse", "HealthServices", "HeartbeatData",
    "HeartbeatEvent", "InternalServerError", "InvalidInputError", "LLMTool", "LLMToolsResponse",
    "McpServer", "McpTool", "Mix", "MixError", "MixEvent", "NotFoundError", "NotificationData",
    "NotificationEvent", "NotificationResponseType", "OAuthCallbackResponse",
    "OAuthFlowResponse", "OAuthHealthResponse", "OAuthLoginResponse", "PayloadTooLargeError",
    "PermissionData", "PermissionEvent", "PermissionResult", "PreferencesResponse",
    "ProgressCallback", "PromptMode", "Provider", "ProviderAuthStatus", "ProviderInfo",
    "ProviderOAuthHealth", "RESTError", "RateLimitError", "Reconnected", "ReconnectedData",
    "RedirectError", "RefreshTokensResponse", "RequestOptions", "RequestTimeoutError",
    "ResponseValidationError", "RetryConfig", "SSEDecoder", "SendMessageResponse",
    "ServerSentEvent", "SessionCreatedData", "SessionCreatedEvent", "SessionData",
    "SessionDeletedData", "SessionDeletedEvent", "SetApiKeyResponse", "StoreApiKeyResponse",
    "StreamEvent", "SyncFileDownload", "SyncStream", "SystemInfo", "ThinkingData",
    "ThinkingEvent", "ThinkingLevel", "Timeout", "Timestamp", "ToolCall", "ToolCategory",
    "ToolExecutionCompleteData", "ToolExecutionCompleteEvent", "ToolExecutionStartData",
    "ToolExecutionStartEvent", "ToolInputAccumulator", "ToolStatus",
    "ToolUseParameterDeltaData", "ToolUseParameterDeltaEvent",
    "ToolUseParameterStreamingCompleteData", "ToolUseParameterStreamingCompleteEvent",
    "ToolUseStartData", "ToolUseStartEvent", "ToolsStatusResponse", "Turn", "TurnEvent",
    "TurnRecovered", "TurnRecoveredData", "TurnStream", "TurnToolCall", "UnknownEvent",
    "UnprocessableEntityError", "UnsetType", "UserMessageCreatedData",
    "UserMessageCreatedEvent", "UserPreferences", "ValidateProviderResponse", "decode_event",
    "parse_tool_input",
]
# fmt: on

T = TypeVar("T")
R = TypeVar("R")
P = ParamSpec("P")

DEFAULT_SERVER_URL: Final = "http://localhost:8088"
USER_AGENT: Final = f"mix-client/{__version__}"

# ---------------------------------------------------------------------------
# 1. Models: the wire's shapes (responses tolerant, request bodies strict)
# ---------------------------------------------------------------------------
# Responses are decoded tolerantly: unknown fields are ignored, enum-valued fields are
# plain ``str`` (an unknown value never fails), and fields the real server may omit
# default to ``None``. Requests are strict: request bodies are separate Structs with
# ``omit_defaults=True`` so nothing the caller did not set is sent.
#
# Encoding a decoded response (``msgspec.json.encode``, ``msgspec.to_builtins``) gives
# back what the server sent, with the wire names: every field with a value is kept,
# ``false``/``0``/``""``/``[]`` included (their defaults come from ``_kept``, which
# ``omit_defaults`` never drops); an optional field the server left out (or sent as
# ``null``) is ``None`` and stays out. Timestamps are ``datetime`` (see ``Timestamp``).


def _kept(factory: Callable[[], T]) -> T:
    """A field default that ``omit_defaults`` never drops.

    msgspec omits a field whose value *is* its default object, or an empty collection
    made by the ``list``/``dict`` factory; a value made by any other factory is always
    encoded. ``test_models.py`` checks this behaviour of msgspec.
    """
    return msgspec.field(default_factory=factory)


def _empty_list() -> list[Any]:
    return []


def _empty_dict() -> dict[str, Any]:
    return {}


if TYPE_CHECKING:
    Timestamp: TypeAlias = Union[datetime, str]  # noqa: UP007
else:
    # msgspec cannot decode a ``datetime | str`` union, so the text is decoded and the
    # model's ``__post_init__`` turns it into a ``datetime`` when it parses.
    Timestamp = str
"""A date-time field: a ``datetime`` (RFC 3339, sub-microsecond digits rounded), or the
server's text unchanged when it does not parse (a response never fails on a timestamp)."""


@overload
def _timestamp(value: Timestamp) -> Timestamp: ...
@overload
def _timestamp(value: None) -> None: ...
def _timestamp(value: Timestamp | None) -> Timestamp | None:
    if type(value) is str and value:
        try:
            return msgspec.convert(value, datetime)
        except msgspec.ValidationError:
            return value
    return value


Provider = Literal["anthropic", "openai", "openrouter", "gemini", "brave"]
BrowserMode = Literal["electron-embedded-browser", "local-browser-service", "remote-cdp-websocket"]
PromptMode = Literal["default", "append", "replace"]
ThinkingLevel = Literal["off", "basic", "medium", "maximum"]
NotificationResponseType = Literal["acknowledge", "text", "choice"]
CallbackType = Literal["bash_script", "sub_agent", "send_message"]


class _Model(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Base of every model, response or request body, whose wire names are snake_case."""


class _CamelModel(_Model, rename="camel"):
    """Base of every model, response or request body, whose wire names are camelCase."""


class RESTError(_Model):
    """The ``error`` object of an error body. ``type`` may hold codes outside the spec.

    For a status error whose body was not a JSON error (a ``text/plain`` 400, a proxy's
    HTML 502), the client builds one: ``code`` is the HTTP status, ``message`` the text
    (bounded) and ``type`` is ``""``.
    """

    code: int = _kept(int)
    message: str = _kept(str)
    type: str = _kept(str)


class ErrorBody(_Model):
    """An error response body: ``{"error": RESTError}``."""

    error: RESTError


class StoreApiKeyResponse(_Model):
    message: str | None = None
    provider: str | None = None
    status: str | None = None


class SetApiKeyResponse(_Model):
    """Reply to ``set_api_key``: the 0.2 spec says ``success``; servers send ``status``/``message``."""

    success: bool | None = None
    status: str | None = None
    message: str | None = None


class OAuthLoginResponse(_CamelModel):
    auth_url: str | None = None


class OAuthCallbackResponse(_Model):
    expires_in: int | None = None
    message: str | None = None
    provider: str | None = None
    status: str | None = None


class OAuthFlowResponse(_Model):
    auth_url: str | None = None
    message: str | None = None
    state: str | None = None


class ProviderAuthStatus(_Model):
    auth_method: str | None = None
    """``oauth``, ``api_key`` or ``none`` (other values are kept)."""
    authenticated: bool | None = None
    display_name: str | None = None


class AuthStatusResponse(_Model):
    providers: dict[str, ProviderAuthStatus] = _kept(_empty_dict)


class ValidateProviderResponse(_Model):
    auth_method: str | None = None
    message: str | None = None
    provider: str | None = None
    valid: bool | None = None
    error: str | None = None
    """Sent by servers when no preferred provider is set (``valid`` is then false)."""


class DeleteCredentialsResponse(_Model):
    message: str | None = None
    provider: str | None = None
    status: str | None = None


class Command(_Model):
    name: str | None = None
    description: str | None = None
    usage: str | None = None
    type: str | None = None
    """Sent by servers: ``builtin`` or ``file`` (other values are kept)."""


class McpTool(_Model):
    name: str = _kept(str)
    description: str = _kept(str)


class McpServer(_Model):
    name: str
    connected: bool = _kept(bool)
    status: str = _kept(str)
    tools: list[McpTool] | None = None


class CallbackResult(_Model):
    """Result of a session callback run after a tool (``CallbackResultData``)."""

    tool_call_id: str = _kept(str)
    tool_name: str = _kept(str)
    callback_type: str = _kept(str)
    success: bool = _kept(bool)
    callback_name: str | None = None
    error: str | None = None
    exclude_from_context: bool | None = None
    exit_code: int | None = None
    stderr: str | None = None
    stdout: str | None = None
    subagent_id: str | None = None
    subagent_result: str | None = None


class ToolCall(_CamelModel):
    """A tool call stored with a message (``ToolCallData``)."""

    id: str
    name: str = _kept(str)
    input: str = _kept(str)
    type: str = _kept(str)
    finished: bool = _kept(bool)
    is_error: bool | None = None
    result: str | None = None
    screenshot_urls: list[str] | None = None


class BackendMessage(_CamelModel):
    """A stored message exchange: the user's input and the assistant's response."""

    id: str
    session_id: str = _kept(str)
    role: str = _kept(str)
    user_input: str = _kept(str)
    assistant_response: str | None = None
    cache_creation_tokens: int | None = None
    cache_read_tokens: int | None = None
    callback_results: list[CallbackResult] | None = None
    cost: float | None = None
    input_tokens: int | None = None
    model: str | None = None
    output_tokens: int | None = None
    reasoning: str | None = None
    reasoning_duration: int | float | None = None
    """Milliseconds per the spec; some server versions send seconds."""
    tool_calls: list[ToolCall] | None = None


class PermissionResult(_Model):
    """Reply to grant/deny. The spec says ``granted``/``denied``; servers send ``status``/``id``/``message``."""

    granted: bool | None = None
    denied: bool | None = None
    status: str | None = None
    id: str | None = None
    message: str | None = None


class ProviderInfo(_Model):
    display_name: str | None = None
    models: list[str] | dict[str, Any] | None = None


class UserPreferences(_Model):
    created_at: int | None = None
    """Unix seconds."""
    main_agent_max_tokens: int | None = None
    main_agent_model: str | None = None
    main_agent_reasoning_effort: str | None = None
    preferred_provider: str | None = None
    sub_agent_max_tokens: int | None = None
    sub_agent_model: str | None = None
    sub_agent_reasoning_effort: str | None = None
    updated_at: int | None = None
    """Unix seconds."""


class PreferencesResponse(_Model):
    available_providers: dict[str, ProviderInfo] = _kept(_empty_dict)
    preferences: UserPreferences | None = None


class Callback(_CamelModel):
    """A session-level callback run after tool completion (sent and received).

    >>> Callback(tool_name="*", type="bash_script", bash_command="echo $CALLBACK_TOOL_NAME")
    """

    tool_name: str
    type: str
    """``bash_script``, ``sub_agent`` or ``send_message``."""
    bash_command: str | None = None
    bash_timeout: int | None = None
    exclude_from_context: bool | None = None
    include_full_history: bool | None = None
    message_content: str | None = None
    name: str | None = None
    sub_agent_prompt: str | None = None
    sub_agent_type: str | None = None


class SessionData(_CamelModel):
    """A session and its counters. ``session_type`` may be ``"forked"`` on some servers."""

    id: str
    title: str = _kept(str)
    session_type: str = _kept(str)
    browser_mode: str = _kept(str)
    user_message_count: int = _kept(int)
    assistant_message_count: int = _kept(int)
    tool_call_count: int = _kept(int)
    prompt_tokens: int = _kept(int)
    completion_tokens: int = _kept(int)
    cost: float = _kept(float)
    created_at: Timestamp = _kept(str)
    callbacks: list[Callback] | None = None
    cdp_url: str | None = None
    first_user_message: str | None = None
    parent_session_id: str | None = None
    parent_tool_call_id: str | None = None
    subagent_type: str | None = None

    def __post_init__(self) -> None:
        self.created_at = _timestamp(self.created_at)


class CancelResult(_CamelModel):
    """Reply to cancel. The spec says ``cancelled``; servers send ``status``/``sessionId``."""

    cancelled: bool | None = None
    status: str | None = None
    session_id: str | None = None


class ExportToolCall(_CamelModel):
    id: str
    name: str = _kept(str)
    input: str = _kept(str)
    type: str = _kept(str)
    finished: bool = _kept(bool)
    input_json: Any = None
    """The parsed tool input: usually an object, kept whole."""
    result: str | None = None
    is_error: bool | None = None
    metadata: str | None = None
    screenshot_urls: list[str] | None = None


class ExportMessage(_CamelModel):
    id: str
    role: str = _kept(str)
    content: str = _kept(str)
    created_at: Timestamp = _kept(str)
    updated_at: Timestamp = _kept(str)
    finish_reason: str | None = None
    model: str | None = None
    reasoning: str | None = None
    reasoning_duration: int | float | None = None
    thinking_blocks: list[str] | None = None
    redacted_thinking_blocks: list[str] | None = None
    tool_calls: list[ExportToolCall] | None = None

    def __post_init__(self) -> None:
        self.created_at = _timestamp(self.created_at)
        self.updated_at = _timestamp(self.updated_at)


class ExportSession(_CamelModel):
    id: str
    title: str = _kept(str)
    messages: list[ExportMessage] = _kept(_empty_list)
    assistant_message_count: int | None = None
    completion_tokens: int | None = None
    cost: float | None = None
    created_at: Timestamp | None = None
    prompt_tokens: int | None = None
    tool_call_count: int | None = None
    updated_at: Timestamp | None = None
    user_message_count: int | None = None

    def __post_init__(self) -> None:
        self.created_at = _timestamp(self.created_at)
        self.updated_at = _timestamp(self.updated_at)


class FileInfo(_CamelModel):
    name: str
    size: int = _kept(int)
    modified: int = _kept(int)
    """Unix seconds."""
    is_dir: bool = _kept(bool)
    url: str = _kept(str)
    original_name: str | None = None
    """Present when the server changed the uploaded name (whitespace becomes ``_``)."""


class SendMessageResponse(_CamelModel):
    """Reply to :meth:`AsyncMix.send_message`.

    ``202``: ``status="processing"``; the agent's work arrives on the event stream.
    ``200`` (slash commands such as ``/help``): ``status="completed"`` and ``message``
    holds the command's answer.
    """

    status: str = _kept(str)
    session_id: str = _kept(str)
    message: BackendMessage | None = None


class SystemInfo(_CamelModel):
    storage_base_path: str = _kept(str)


class LLMTool(_Model):
    name: str = _kept(str)
    description: str = _kept(str)
    parameters: dict[str, Any] | None = None
    required: list[str] | None = None


class LLMToolsResponse(_Model):
    tools: list[LLMTool] = _kept(_empty_list)


class ToolStatus(_Model):
    """A tool of a category in the tool status replies."""

    provider: str | None = None
    display_name: str | None = None
    description: str | None = None
    authenticated: bool | None = None
    api_key_required: bool | None = None
    api_key_format: str | None = None


class ToolCategory(_Model):
    display_name: str | None = None
    description: str | None = None
    icon: str | None = None
    tools: list[ToolStatus] = _kept(_empty_list)


class ToolsStatusResponse(_Model):
    """Reply to ``get_tools_status`` and ``get_tool_credentials_status``."""

    categories: dict[str, ToolCategory] = _kept(_empty_dict)


class HealthServices(_Model):
    """``services`` of the health reply (values such as ``healthy``, ``connected``)."""

    backend: str | None = None
    database: str | None = None


class HealthResponse(_Model):
    status: str | None = None
    timestamp: Timestamp | None = None
    version: str | None = None
    environment: str | None = None
    services: HealthServices | None = None

    def __post_init__(self) -> None:
        self.timestamp = _timestamp(self.timestamp)


class ProviderOAuthHealth(_Model):
    provider: str = _kept(str)
    status: str = _kept(str)
    """``active``, ``expired``, ``expired_no_refresh``, ``error``, ``not_found`` (others kept)."""
    error: str | None = None
    expires_at: Timestamp | None = None
    expires_in: str | None = None
    last_refresh: Timestamp | None = None

    def __post_init__(self) -> None:
        self.expires_at = _timestamp(self.expires_at)
        self.last_refresh = _timestamp(self.last_refresh)


class OAuthHealthResponse(_Model):
    status: str = _kept(str)
    """``healthy``, ``degraded`` or ``unhealthy`` (others kept)."""
    providers: dict[str, ProviderOAuthHealth] = _kept(_empty_dict)
    timestamp: Timestamp = _kept(str)

    def __post_init__(self) -> None:
        self.timestamp = _timestamp(self.timestamp)


class RefreshTokensResponse(_Model):
    message: str | None = None
    status: str | None = None


# Request bodies -------------------------------------------------------------


class _StoreApiKeyBody(_Model):
    provider: str
    api_key: str


class _SetApiKeyBody(_CamelModel):
    api_key: str


class _OAuthCallbackBody(_Model):
    provider: str
    code: str
    state: str


class _NotificationReplyBody(_Model):
    type: str
    value: str | UnsetType = UNSET


class _PreferencesBody(_Model):
    main_agent_max_tokens: int | UnsetType | None = UNSET
    main_agent_model: str | UnsetType | None = UNSET
    main_agent_reasoning_effort: str | UnsetType | None = UNSET
    preferred_provider: str | UnsetType | None = UNSET
    sub_agent_max_tokens: int | UnsetType | None = UNSET
    sub_agent_model: str | UnsetType | None = UNSET
    sub_agent_reasoning_effort: str | UnsetType | None = UNSET


class _CreateSessionBody(_CamelModel):
    title: str
    browser_mode: str
    callbacks: list[Callback] | UnsetType = UNSET
    cdp_url: str | UnsetType = UNSET
    custom_system_prompt: str | UnsetType = UNSET
    prompt_mode: str | UnsetType = UNSET
    session_type: str | UnsetType = UNSET
    subagent_type: str | UnsetType = UNSET


class _CallbacksBody(_Model):
    callbacks: list[Callback]


class _ForkBody(_CamelModel):
    message_index: int
    title: str | UnsetType = UNSET


class _SendMessageBody(_Model):
    text: str
    plan_mode: bool = False
    thinking_level: str | UnsetType | None = UNSET
    max_steps: int | UnsetType = UNSET


class _RewindBody(_CamelModel):
    message_id: str
    cleanup_media: bool  # always sent: some servers read a missing field as false


_encode = msgspec.json.Encoder().encode
_error_body_decoder: Final = msgspec.json.Decoder(ErrorBody)
_any_json_decoder: Final = msgspec.json.Decoder()


class CallbackDict(TypedDict, total=False):
    """A :class:`Callback` as a dict (the original SDK's ``CallbackTypedDict``).

    Python names (``tool_name``) or wire names (``toolName``) are accepted; ``tool_name``
    and ``type`` are required.
    """

    tool_name: str
    type: str
    bash_command: str
    bash_timeout: int
    exclude_from_context: bool
    include_full_history: bool
    message_content: str
    name: str
    sub_agent_prompt: str
    sub_agent_type: str


_body_checks: dict[type[Any], Callable[[bytes], Any]] = {}
_WIRE_PATH: Final = re.compile(r"`\$((?:\.\w+|\[\d+\])*)`")


# ---------------------------------------------------------------------------
# 2. Errors: one tree under MixError
# ---------------------------------------------------------------------------


class MixError(Exception):
    """Root of every error this client raises.

    Every error answers the attributes of the original SDK's ``MixError``, ``None`` where
    they do not apply (a connection error has no status, headers or body):

    ``message`` (str), ``status_code`` (int), ``headers`` (the response headers),
    ``body`` (the response body as text, decoded as UTF-8 with errors replaced),
    ``raw_body`` (the same body as bytes), ``raw_response`` (the
    ``aiohttp.ClientResponse``, already released) and ``data`` (an :class:`ErrorBody`,
    always present on an :class:`APIStatusError`).
    """

    message: str
    status_code: int | None = None
    headers: Mapping[str, str] | None = None
    body: str | None = None
    raw_body: bytes | None = None
    raw_response: aiohttp.ClientResponse | None = None
    data: ErrorBody | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInputError(MixError, ValueError):
    """An argument is unusable; raised before anything is sent."""


_DETAIL_LIMIT: Final = 200
_HTML_TITLE: Final = re.compile(r"<title[^>]*>(.*?)</title", re.IGNORECASE | re.DOTALL)
_HTML_TAG: Final = re.compile(r"<[^>]*>")


def _one_line(text: str, limit: int = _DETAIL_LIMIT) -> str:
    """``text`` on one line, at most ``limit`` characters (``…`` marks a cut)."""
    text = " ".join(text[: limit * 4].split())
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _text_detail(body: str) -> str:
    """What a body that is not a JSON error says, on one bounded line.

    A JSON object's ``message``/``detail``/``error`` string, an HTML page's title (or its
    text without tags), else the text itself.
    """
    head = body.lstrip()[:1]
    if head == "{":
        try:
            obj = _any_json_decoder.decode(body)
        except msgspec.DecodeError:
            obj = None
        if isinstance(obj, dict):
            for key in ("message", "detail", "error"):
                value = obj.get(key)
                if isinstance(value, str) and value.strip():
                    return _one_line(value)
    if head == "<":
        title = _HTML_TITLE.search(body[:65536])
        if title is not None and title.group(1).strip():
            return _one_line(title.group(1))
        text = _one_line(_HTML_TAG.sub(" ", body[:65536]))
        if text:
            return text
    return _one_line(body)


class APIStatusError(MixError):
    """The server answered with an HTTP error status.

    ``data`` is always an :class:`ErrorBody`, so ``err.data.error.message`` works as in
    the original SDK whatever the body was: the server's JSON error, or one built from
    the body (``code`` = the status, ``message`` = the text or an HTML page's title,
    bounded, ``type`` = ``""``). ``error`` is the server's own :class:`RESTError`, or
    ``None`` when the body was not a JSON error. ``str(err)`` is one bounded line; the
    full text is in ``body``.
    """

    status_code: int
    headers: Mapping[str, str]
    body: str
    raw_body: bytes
    error: RESTError | None
    data: ErrorBody
    method: str
    url: str

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        headers: Mapping[str, str],
        body: str,
        data: ErrorBody | None,
        method: str,
        url: str,
        raw_response: aiohttp.ClientResponse | None = None,
        raw_body: bytes | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.headers = headers
        self.body = body
        self.raw_body = body.encode("utf-8", "surrogateescape") if raw_body is None else raw_body
        self.error = data.error if data is not None else None
        if data is None:
            reason = raw_response.reason if raw_response is not None else None
            detail = _text_detail(body) or (reason or "")
            data = ErrorBody(error=RESTError(code=status_code, message=detail, type=""))
        self.data = data
        self.method = method
        self.url = url
        self.raw_response = raw_response


ErrorResponse = APIStatusError
"""Alias kept for users of the original SDK (``errors.ErrorResponse``)."""


class BadRequestError(APIStatusError):
    """400."""


class AuthenticationError(APIStatusError):
    """401: missing or invalid credentials (also: no provider authenticated)."""


class NotFoundError(APIStatusError):
    """404: unknown resource, or a route this server version does not have."""


class RequestTimeoutError(APIStatusError):
    """408: the *server* answered that it timed out waiting for the request.

    Not to be confused with :class:`APITimeoutError`: there the *client* gave up
    waiting, and no status was received.
    """


class PayloadTooLargeError(APIStatusError):
    """413: upload above the server's limit (32 MiB)."""


class UnprocessableEntityError(APIStatusError):
    """422."""


class RateLimitError(APIStatusError):
    """429."""


class InternalServerError(APIStatusError):
    """5xx."""


class RedirectError(APIStatusError):
    """3xx: the Mix API has no redirects, so none is followed. ``location`` is where it pointed."""

    @property
    def location(self) -> str | None:
        return self.headers.get("Location")


_STATUS_ERRORS: Final[dict[int, type[APIStatusError]]] = {
    400: BadRequestError,
    401: AuthenticationError,
    404: NotFoundError,
    408: RequestTimeoutError,
    413: PayloadTooLargeError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}


class APIConnectionError(MixError):
    """The request could not be completed (refused, reset, DNS...). ``__cause__`` has the detail.

    No response was received: ``status_code``, ``headers``, ``body``, ``raw_body``,
    ``raw_response`` and ``data`` are ``None``.
    """

    def __init__(self, message: str, *, method: str = "", url: str = "") -> None:
        super().__init__(message)
        self.method = method
        self.url = url


class APITimeoutError(APIConnectionError):
    """The client gave up waiting (connect, read, or total); no status was received.

    A server that answers HTTP 408 raises :class:`RequestTimeoutError` instead.
    """


class ClientClosedError(APIConnectionError):
    """The client was closed: by :meth:`AsyncMix.aclose` while this call or stream was
    in flight, or before it started."""


class ResponseValidationError(MixError):
    """A 2xx body did not match the expected schema. ``cause`` is the msgspec error.

    ``body`` is the text (UTF-8, errors replaced), ``raw_body`` the bytes; ``data`` is
    ``None``.
    """

    status_code: int
    headers: Mapping[str, str]
    body: str
    raw_body: bytes

    def __init__(
        self,
        message: str,
        *,
        cause: Exception,
        body: bytes,
        status_code: int,
        headers: Mapping[str, str],
        method: str,
        url: str,
        raw_response: aiohttp.ClientResponse | None = None,
    ) -> None:
        super().__init__(message)
        self.cause = cause
        self.raw_body = body
        self.body = body.decode("utf-8", "replace")
        self.status_code = status_code
        self.headers = headers
        self.method = method
        self.url = url
        self.raw_response = raw_response


class EventTooLargeError(MixError):
    """One SSE event (or line) grew beyond ``max_event_size`` bytes; ``limit`` is that size.

    The stream is closed: nothing more was buffered than the limit.
    """

    def __init__(self, message: str, *, limit: int) -> None:
        super().__init__(message)
        self.limit = limit


class AgentError(MixError):
    """The agent's run failed or was cancelled.

    ``event`` says how it was seen: the ``error`` event (:class:`ErrorEvent`), or the
    :class:`TurnRecovered` marker when the stream lost the end and the export showed it.
    """

    event: ErrorEvent | TurnRecovered | None

    def __init__(self, message: str, *, event: ErrorEvent | TurnRecovered | None = None) -> None:
        super().__init__(message)
        self.event = event


class AmbiguousRunError(MixError):
    """The session stores more runs of a turn's text than this client sent, and the stream
    did not show which one is the turn's: the client will not guess (another client sent
    the same text to the same session at about the same time)."""


def _status_error(
    method: str,
    url: str,
    status: int,
    headers: Mapping[str, str],
    raw: bytes,
    response: aiohttp.ClientResponse | None,
) -> APIStatusError:
    data: ErrorBody | None
    try:
        data = _error_body_decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        data = None
    body = raw.decode("utf-8", "replace")
    if data is not None and data.error.message:
        detail = _one_line(data.error.message)
    else:
        detail = _text_detail(body) or (response.reason if response and response.reason else "")
    if 300 <= status < 400:
        location = headers.get("Location", "(no Location)")
        if len(location) > 300:
            location = location[:300] + "..."
        detail = f"redirect to {location!r} not followed"
        cls: type[APIStatusError] = RedirectError
    else:
        cls = _STATUS_ERRORS.get(status) or (
            InternalServerError if status >= 500 else APIStatusError
        )
    message = f"{method} {url} -> {status}: {detail}" if detail else f"{method} {url} -> {status}"
    return cls(
        message,
        status_code=status,
        headers=headers,
        body=body,
        data=data,
        method=method,
        url=url,
        raw_response=response,
        raw_body=raw,
    )


def _bad_value(name: str, expected: str, value: object) -> InvalidInputError:
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return InvalidInputError(f"{name} must be {expected}, not {text}")


def _check_str(value: object, name: str, *, empty: bool = False) -> str:
    """A string that can be sent: no lone surrogates (and not empty unless ``empty``)."""
    if not isinstance(value, str):
        raise _bad_value(name, "a string", value)
    if not value and not empty:
        raise InvalidInputError(f"{name} must not be empty")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise _bad_value(name, "valid Unicode (it holds a lone surrogate)", value) from None
    return value


def _check_bool(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise _bad_value(name, "True or False", value)
    return value


def _check_int(value: object, name: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _bad_value(name, f"an integer >= {minimum}", value)
    return value


def _check_number(value: object, name: str, *, optional: bool = False) -> float | None:
    """A positive, finite number of seconds (or ``None`` when ``optional``)."""
    if value is None and optional:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not 0 < value < float("inf")
    ):
        raise _bad_value(name, "a positive number of seconds", value)
    return float(value)


_HEADER_NAME: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _check_headers(value: object, name: str = "headers") -> dict[str, str]:
    """HTTP headers: a mapping of token names to single-line string values."""
    if not isinstance(value, Mapping):
        raise _bad_value(name, "a mapping of header names to strings", value)
    out: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not _HEADER_NAME.fullmatch(key):
            raise _bad_value(f"{name} key", "a header name (letters, digits, '-')", key)
        _check_str(item, f"{name}[{key!r}]", empty=True)
        if "\r" in item or "\n" in item or "\x00" in item:
            raise _bad_value(f"{name}[{key!r}]", "one line of text", item)
        out[key] = item
    return out


def _check_server_url(value: object) -> str:
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        raise _bad_value("server_url", "a URL starting with http:// or https://", value)
    return _check_str(value, "server_url").rstrip("/")


def _closest(name: str, choices: Iterable[str]) -> str:
    import difflib  # only on this error path: keeps the import of this module fast

    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


# ---------------------------------------------------------------------------
# 3. Transport, part 1: input checks, retries, timeouts, per-call options
# ---------------------------------------------------------------------------


class BackoffStrategy(msgspec.Struct, frozen=True):
    """Exponential backoff, in milliseconds (the original SDK's shape)."""

    initial_interval: int
    max_interval: int
    exponent: float
    max_elapsed_time: int


class RetryConfig(msgspec.Struct, frozen=True):
    """Retry policy in the original SDK's shape.

    ``RetryConfig("backoff", BackoffStrategy(500, 8000, 2.0, 60000), True)`` retries with
    that backoff until ``max_elapsed_time`` has passed; ``RetryConfig("none", None, False)``
    turns retries off. Per call or per client (``retry_config=``).
    """

    strategy: Literal["backoff", "none"]
    backoff: BackoffStrategy | None = None
    retry_connection_errors: bool = True


class _Policy(msgspec.Struct, frozen=True):
    max_retries: int
    initial: float
    max_delay: float
    exponent: float
    max_elapsed: float | None
    retry_connection_errors: bool

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return retry_after
        base = min(self.max_delay, self.initial * self.exponent**attempt)
        return base * (1.0 - 0.25 * random.random())


_DEFAULT_MAX_RETRIES: Final = 2
_RETRY_AFTER_CAP: Final = 60.0


def _check_retry_config(config: object) -> None:
    if not isinstance(config, RetryConfig):
        raise _bad_value("retry_config", "a RetryConfig or None", config)
    if config.strategy not in ("backoff", "none"):
        raise _bad_value("RetryConfig.strategy", "'backoff' or 'none'", config.strategy)
    _check_bool(config.retry_connection_errors, "RetryConfig.retry_connection_errors")
    b = config.backoff
    if b is None:
        return
    if not isinstance(b, BackoffStrategy):
        raise _bad_value("RetryConfig.backoff", "a BackoffStrategy or None", b)
    for field in ("initial_interval", "max_interval", "max_elapsed_time", "exponent"):
        value = getattr(b, field)
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not 0 <= value < float("inf")
        ):
            raise _bad_value(f"BackoffStrategy.{field}", "a finite number >= 0", value)


def _make_policy(max_retries: int | None, config: RetryConfig | None) -> _Policy:
    if max_retries is not None:
        _check_int(max_retries, "max_retries")
    if config is None:
        n = _DEFAULT_MAX_RETRIES if max_retries is None else max_retries
        return _Policy(n, 0.5, 8.0, 2.0, None, True)
    _check_retry_config(config)
    if config.strategy == "none":
        return _Policy(0, 0.5, 8.0, 2.0, None, False)
    b = config.backoff or BackoffStrategy(500, 8000, 2.0, 0)
    elapsed = b.max_elapsed_time / 1000 if b.max_elapsed_time > 0 else None
    if max_retries is not None:
        n = max_retries
    else:
        n = sys.maxsize if elapsed is not None else _DEFAULT_MAX_RETRIES
    return _Policy(
        n,
        b.initial_interval / 1000,
        b.max_interval / 1000,
        b.exponent,
        elapsed,
        config.retry_connection_errors,
    )


def _delay_number(value: str) -> float | None:
    """A finite, non-negative number; anything else (``nan``, ``inf``, ``-1``) is ignored."""
    number = float(value)  # ValueError: not a number at all
    return number if math.isfinite(number) and number >= 0 else None


def _parse_retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("retry-after-ms")
    if value is not None:
        with contextlib.suppress(ValueError):
            millis = _delay_number(value)
            if millis is not None:
                return min(millis / 1000, _RETRY_AFTER_CAP)
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        seconds = _delay_number(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
            seconds = max(when.timestamp() - time.time(), 0.0)
        except (TypeError, ValueError, IndexError, OverflowError, OSError):
            return None
    return None if seconds is None else min(seconds, _RETRY_AFTER_CAP)


Timeout = Union[float, aiohttp.ClientTimeout, None]  # noqa: UP007 (a runtime alias on 3.10)
"""Seconds, an ``aiohttp.ClientTimeout``, or ``None`` for no limit.

Seconds mean the whole call (retries and their waits included) for plain calls, and the
longest wait without progress for uploads, downloads and streams. A ``ClientTimeout``'s
``total`` bounds the whole call; its other fields apply to each attempt.
"""

DEFAULT_TIMEOUT: Final = aiohttp.ClientTimeout(total=60, connect=5)
"""Plain calls: 5 s to connect, 60 s in all (retries included)."""
TRANSFER_TIMEOUT: Final = aiohttp.ClientTimeout(total=None, connect=5, sock_read=60)
"""Uploads and downloads: no total limit, 60 s without progress."""


def _as_timeout(value: Timeout, transfer: bool = False) -> aiohttp.ClientTimeout:
    """``value`` as a ``ClientTimeout`` for a plain call or, with ``transfer``, a transfer."""
    if isinstance(value, aiohttp.ClientTimeout):
        return value
    if value is None:
        return aiohttp.ClientTimeout(total=None)
    seconds = _check_number(value, "timeout")
    assert seconds is not None
    if transfer:
        # Transfers keep "no total limit": the number is the longest wait without progress.
        return aiohttp.ClientTimeout(total=None, connect=min(5.0, seconds), sock_read=seconds)
    return aiohttp.ClientTimeout(total=seconds, connect=min(5.0, seconds))


def _with_total(timeout: aiohttp.ClientTimeout, total: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(
        total=total,
        connect=timeout.connect,
        sock_read=timeout.sock_read,
        sock_connect=timeout.sock_connect,
        ceil_threshold=timeout.ceil_threshold,
    )


class RequestOptions(TypedDict, total=False):
    """Per-call options every method accepts as keywords (see the README's Configuration)."""

    timeout: Timeout
    max_retries: int
    retry_config: RetryConfig | None
    headers: Mapping[str, str]
    retries: RetryConfig | None
    """The original SDK's name for ``retry_config``."""
    timeout_ms: int
    """The original SDK's timeout, in milliseconds (``timeout=`` in seconds wins)."""
    http_headers: Mapping[str, str]
    """The original SDK's name for ``headers``."""
    server_url: str
    """Send this one call to another server."""
    extra_body: Mapping[str, Any]
    """Fields merged into the JSON body (POST/PATCH only)."""
    extra_query: Mapping[str, str | int | float | bool]
    """Parameters added to the query string."""
    extra_headers: Mapping[str, str]
    """Headers added last, over every other header."""


_OPTION_NAMES: Final = frozenset(RequestOptions.__annotations__)


def _method_name(op: _Op[Any]) -> str:
    """``getSession`` -> ``get_session`` (the AsyncMix method of an operation)."""
    name = op.operation_id.replace("OAuth", "Oauth").replace("LLM", "Llm")
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def _unknown_option(key: str, method: str | _Op[Any]) -> TypeError:
    if not isinstance(method, str):
        method = _method_name(method)
    known = set(_OPTION_NAMES)
    fn = getattr(AsyncMix, method, None)
    if fn is not None:
        known.update(
            p.name for p in inspect.signature(fn).parameters.values() if p.kind != p.VAR_KEYWORD
        )
        known.discard("self")
    return TypeError(
        f"{method}() got an unexpected keyword argument {key!r}{_closest(key, sorted(known))}"
    )


def _options(opts: Mapping[str, Any], method: str | _Op[Any]) -> RequestOptions:
    """Check per-call options and map the original SDK's names onto this client's."""
    out: RequestOptions = {}
    for key, value in opts.items():
        if key == "timeout":
            _as_timeout(value)
            out["timeout"] = value
        elif key == "timeout_ms":
            ms = _check_int(value, "timeout_ms", 1)
            if "timeout" not in opts:
                out["timeout"] = ms / 1000
        elif key == "max_retries":
            out["max_retries"] = _check_int(value, "max_retries")
        elif key in ("retry_config", "retries"):
            if value is not None and not isinstance(value, RetryConfig):
                raise _bad_value(key, "a RetryConfig or None", value)
            out["retry_config"] = value
        elif key in ("headers", "http_headers"):
            out["headers"] = {**out.get("headers", {}), **_check_headers(value, key)}
        elif key == "extra_headers":
            out["extra_headers"] = _check_headers(value, key)
        elif key == "server_url":
            out["server_url"] = _check_server_url(value)
        elif key == "extra_body":
            if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
                raise _bad_value("extra_body", "a mapping with string keys", value)
            out["extra_body"] = value
        elif key == "extra_query":
            if not isinstance(value, Mapping):
                raise _bad_value("extra_query", "a mapping", value)
            for name, item in value.items():
                _check_str(name, "extra_query key")
                if not isinstance(item, (str, int, float)):
                    raise _bad_value(f"extra_query[{name!r}]", "a string, number or bool", item)
                if isinstance(item, str):
                    _check_str(item, f"extra_query[{name!r}]", empty=True)
            out["extra_query"] = value
        else:
            raise _unknown_option(key, method)
    return out


def _merge_body(
    body: bytes | None, extra: Mapping[str, Any], op: _Op[Any], upload: _Upload | None
) -> bytes:
    """``extra_body`` merged into the JSON body of a POST/PATCH (its fields win)."""
    if upload is not None or op.method not in ("POST", "PATCH", "PUT"):
        raise InvalidInputError(
            f"extra_body: {_method_name(op)}() sends no JSON body "
            "(use extra_query= or extra_headers=)"
        )
    merged: dict[str, Any] = msgspec.json.decode(body) if body else {}
    merged.update(extra)
    try:
        return _encode(merged)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidInputError(f"extra_body cannot be sent as JSON: {exc}") from None


# Request bodies: checked and encoded before anything is sent --------------


def _python_names(type_: type[Any]) -> dict[str, str]:
    """Wire name -> Python name of a Struct's fields."""
    return {f.encode_name: f.name for f in msgspec.structs.fields(type_)}


def _readable(exc: Exception, type_: type[Any]) -> str:
    """A msgspec error with ``$.callbacks[0].toolName`` spelled in Python names."""
    names = _python_names(type_)
    names.update(_python_names(Callback))

    def path(match: re.Match[str]) -> str:
        parts = re.split(r"(\.\w+)", match.group(1))
        return (
            "`"
            + "".join(
                "." + names.get(p[1:], p[1:]) if p.startswith(".") else p for p in parts
            ).lstrip(".")
            + "`"
        )

    text = _WIRE_PATH.sub(path, str(exc))
    return re.sub(r"`(\w+)`", lambda m: f"`{names.get(m.group(1), m.group(1))}`", text)


def _body(obj: Any) -> bytes:
    """Encode a request body Struct, refusing values the server cannot read (before sending)."""
    try:
        raw = _encode(obj)
    except (TypeError, ValueError, OverflowError):
        for field in msgspec.structs.fields(obj):
            value = getattr(obj, field.name)
            try:
                _encode(value)
            except UnicodeEncodeError:
                raise _bad_value(
                    field.name, "valid Unicode (it holds a lone surrogate)", value
                ) from None
            except (TypeError, ValueError, OverflowError) as exc:
                raise _bad_value(field.name, f"a JSON value ({exc})", value) from None
        raise
    for name in obj.__struct_fields__:
        value = getattr(obj, name)
        if isinstance(value, (bytes, bytearray, memoryview)):  # msgspec would send base64
            raise _bad_value(name, "a string, not bytes", value)
    check = _body_checks.get(type(obj))
    if check is None:
        check = _body_checks[type(obj)] = msgspec.json.Decoder(type(obj)).decode
    try:
        check(raw)
    except msgspec.ValidationError as exc:
        raise InvalidInputError(f"invalid argument: {_readable(exc, type(obj))}") from None
    return raw


def _nested(value: object, type_: type[T], name: str) -> T:
    """A nested input: a ``type_`` Struct or a dict with its Python or wire names."""
    if isinstance(value, type_):
        return value
    if not isinstance(value, Mapping):
        raise _bad_value(name, f"a {type_.__name__} or a dict", value)
    fields = msgspec.structs.fields(type_)  # type: ignore[arg-type]
    wire_of = {f.name: f.encode_name for f in fields}
    wire_of.update({f.encode_name: f.encode_name for f in fields})
    wire: dict[str, Any] = {}
    for key, item in value.items():
        target = wire_of.get(key) if isinstance(key, str) else None
        if target is None:
            choices = [f.name for f in fields]
            raise InvalidInputError(
                f"{name}: unknown key {key!r}{_closest(str(key), choices)}; "
                f"known keys: {', '.join(choices)}"
            )
        if target in wire:
            raise InvalidInputError(f"{name}: {key!r} is given twice (Python and wire name)")
        wire[target] = item
    try:
        return msgspec.convert(wire, type_)
    except msgspec.ValidationError as exc:
        raise InvalidInputError(f"{name}: {_readable(exc, type_)}") from None


def _callbacks(value: object) -> list[Callback]:
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
        raise _bad_value("callbacks", "a list of Callback objects or dicts", value)
    return [_nested(item, Callback, f"callbacks[{i}]") for i, item in enumerate(value)]


class _NotGiven:
    def __repr__(self) -> str:
        return "NOT_GIVEN"


_NOT_GIVEN: Final = _NotGiven()


# ---------------------------------------------------------------------------
# 3. Transport, part 2: logging, the route table, the request pipeline, transfers
# ---------------------------------------------------------------------------

_log: Final = logging.getLogger("mix_client")
_SECRET_HEADERS: Final = frozenset({"authorization", "proxy-authorization", "x-api-key", "cookie"})
_SECRET_FIELDS: Final = re.compile(
    rb'("(?:api_?key|apiKey|access_token|refresh_token|token|code|password|secret)"\s*:\s*)"(?:[^"\\]|\\.)*"',
    re.IGNORECASE,
)
_debug_handler_installed = False


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _enable_debug_logging() -> None:
    """``MIX_DEBUG=true``: log this module's requests to stderr, leaving the root logger alone."""
    global _debug_handler_installed
    _log.setLevel(logging.DEBUG)
    if not _debug_handler_installed and not _log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s mix_client %(levelname)s %(message)s"))
        _log.addHandler(handler)
        _debug_handler_installed = True


def _redact_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: ("***" if k.lower() in _SECRET_HEADERS else v) for k, v in headers.items()}


def _redact_body(body: bytes | None, limit: int = 2000) -> str:
    if not body:
        return ""
    text = _SECRET_FIELDS.sub(rb'\1"***"', body[: limit * 2]).decode("utf-8", "replace")
    return text if len(text) <= limit else text[:limit] + "..."


_PLAIN_SEGMENT: Final = re.compile(r"(?!\.\.?\Z)[\w.~-]+", re.ASCII)


def _segment(value: object, name: str) -> str:
    """Percent-encode one path segment: ``/``, ``\\``, ``?``, ``#``, ``%``, spaces all survive.

    ``.`` and ``..`` alone are refused: URL handling (and any proxy that normalises
    ``%2E`` back to a dot, as RFC 3986 allows) would remove them and hit another route,
    e.g. ``DELETE /api/sessions/{id}/files/..`` becoming ``DELETE /api/sessions/{id}``.
    """
    if type(value) is str and _PLAIN_SEGMENT.fullmatch(value):
        return value  # the usual id: nothing to check or encode
    text = _check_str(value, name)
    if text in (".", ".."):
        raise InvalidInputError(
            f"{name} must not be {text!r}: URL handling would drop it and reach another route"
        )
    return quote(text, safe="")


def _check_file_name(value: object, name: str = "filename") -> str:
    """A file name for a multipart upload: any non-empty text but ``.`` and ``..``.

    The server decides what else it accepts (``sub/dir.txt``, ``a\\b``, ``v1..2``); only
    line breaks and NUL, which a MIME header cannot carry, are refused here.
    """
    value = _check_str(value, name)
    if value in (".", ".."):
        raise InvalidInputError(f"{name} must not be {value!r}: it names no file")
    if "\r" in value or "\n" in value or "\x00" in value:
        raise InvalidInputError(f"{name} {value!r} must not contain line breaks or NUL")
    return value


def _query(params: Mapping[str, object]) -> str:
    parts = []
    for key, value in params.items():
        if value is None:
            continue
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        parts.append(f"{quote(key, safe='')}={quote(text, safe='')}")
    return "&".join(parts)


Decode = Callable[[int, bytes], T]
_IDEMPOTENT_RETRY: Final = frozenset({408, 429, 500, 502, 503, 504})
_UNSAFE_RETRY: Final = frozenset({429, 503})


class _Op(Generic[T]):
    """One endpoint, declared once: operationId, HTTP method, path template, what it returns
    (a type to decode the body as, a function of the status and body, or ``None`` for no
    content), its retry class (``idempotent``: derived from the method; ``retry_statuses``
    follow it) and whether it moves a body of unbounded size (``transfer``: the transfer
    timeout).

    The path template carries the spec's parameter names (``/api/sessions/{id}``);
    :meth:`url` fills them in, each checked and percent-encoded as one segment.
    """

    __slots__ = (
        "_custom",
        "_json",
        "_parts",
        "idempotent",
        "method",
        "operation_id",
        "params",
        "path",
        "retry_statuses",
        "returns",
        "skip_headers",
        "transfer",
    )

    def __init__(
        self,
        operation_id: str,
        method: str,
        path: str,
        returns: type[T] | Decode[T] | None = None,
        *,
        transfer: bool = False,
    ) -> None:
        self.operation_id = operation_id
        self.method = method
        self.path = path
        # "/api/sessions/{id}/files/{filename}" -> literals ["/api/sessions/", "/files/", ""]
        # and parameter names ("id", "filename").
        parts = re.split(r"\{(\w+)\}", path)
        self._parts = parts[::2]
        self.params: tuple[str, ...] = tuple(parts[1::2])
        self.returns = returns
        # A function decodes as it likes; a type gets a msgspec Decoder on first use.
        self._custom: Decode[T] | None = returns if inspect.isfunction(returns) else None
        self._json: Callable[[bytes], T] | None = None
        self.idempotent = method in ("GET", "DELETE", "HEAD", "PUT")
        self.retry_statuses = _IDEMPOTENT_RETRY if self.idempotent else _UNSAFE_RETRY
        self.transfer = transfer
        # aiohttp labels a bodyless POST "application/octet-stream"; GETs need nothing
        # (and passing the argument costs every call a trip off aiohttp's fast path).
        self.skip_headers: tuple[str, ...] | None = (
            None if method in ("GET", "HEAD", "DELETE") else ("Content-Type",)
        )

    def decode(self, status: int, raw: bytes) -> T:
        """The response body as this operation returns it."""
        json = self._json
        if json is None:
            if self._custom is not None:
                return self._custom(status, raw)
            if self.returns is None:
                return None  # type: ignore[return-value]
            json = self._json = msgspec.json.Decoder(self.returns).decode
        return json(raw)

    def url(self, *values: object) -> str:
        """The path with ``values`` for its parameters, in order (each one segment)."""
        out = self._parts[0]
        for name, value, literal in zip(self.params, values, self._parts[1:], strict=True):
            out += _segment(value, name) + literal
        return out

    def __repr__(self) -> str:
        return f"<{self.operation_id}: {self.method} {self.path}>"


_SEND_COMMAND: Final = msgspec.json.Decoder(BackendMessage)
_SEND_ACCEPTED: Final = msgspec.json.Decoder(SendMessageResponse)


def _decode_send(status: int, raw: bytes) -> SendMessageResponse:
    if status == 200:
        # Slash commands (``/help``) answer at once with the command's message.
        message = _SEND_COMMAND.decode(raw)
        return SendMessageResponse(
            status="completed", session_id=message.session_id, message=message
        )
    return _SEND_ACCEPTED.decode(raw)


# Route table: every operation, declared once ----------------------------

_store_api_key = _Op("storeApiKey", "POST", "/api/auth/api-key", StoreApiKeyResponse)
_set_api_key = _Op("setApiKey", "POST", "/api/auth/apikey", SetApiKeyResponse)
_initiate_oauth_login = _Op("initiateOAuthLogin", "POST", "/api/auth/login", OAuthLoginResponse)
_handle_oauth_callback = _Op(
    "handleOAuthCallback", "POST", "/api/auth/oauth-callback", OAuthCallbackResponse
)
_start_oauth_flow = _Op("startOAuthFlow", "POST", "/api/auth/oauth/{provider}", OAuthFlowResponse)
_get_auth_status = _Op("getAuthStatus", "GET", "/api/auth/status", AuthStatusResponse)
_validate_preferred_provider = _Op(
    "validatePreferredProvider", "GET", "/api/auth/validate", ValidateProviderResponse
)
_delete_credentials = _Op(
    "deleteCredentials", "DELETE", "/api/auth/{provider}", DeleteCredentialsResponse
)
_list_commands = _Op("listCommands", "GET", "/api/commands", list[Command])
_get_command = _Op("getCommand", "GET", "/api/commands/{name}", Command)
_list_mcp_servers = _Op("listMcpServers", "GET", "/api/mcp", list[McpServer])
_get_message_history = _Op(
    "getMessageHistory", "GET", "/api/messages/history", list[BackendMessage]
)
_respond_to_notification: _Op[None] = _Op(
    "respondToNotification", "POST", "/api/notifications/{id}/respond"
)
_deny_permission = _Op("denyPermission", "POST", "/api/permissions/{id}/deny", PermissionResult)
_grant_permission = _Op("grantPermission", "POST", "/api/permissions/{id}/grant", PermissionResult)
_get_preferences = _Op("getPreferences", "GET", "/api/preferences", PreferencesResponse)
_update_preferences = _Op("updatePreferences", "POST", "/api/preferences", UserPreferences)
_get_available_providers = _Op(
    "getAvailableProviders", "GET", "/api/preferences/providers", dict[str, ProviderInfo]
)
_reset_preferences = _Op("resetPreferences", "POST", "/api/preferences/reset", UserPreferences)
_list_sessions = _Op("listSessions", "GET", "/api/sessions", list[SessionData])
_create_session = _Op("createSession", "POST", "/api/sessions", SessionData)
_delete_session: _Op[None] = _Op("deleteSession", "DELETE", "/api/sessions/{id}")
_get_session = _Op("getSession", "GET", "/api/sessions/{id}", SessionData)
_update_session_callbacks = _Op(
    "updateSessionCallbacks", "PATCH", "/api/sessions/{id}/callbacks", SessionData
)
_cancel_session_processing = _Op(
    "cancelSessionProcessing", "POST", "/api/sessions/{id}/cancel", CancelResult
)
_export_session = _Op("exportSession", "GET", "/api/sessions/{id}/export", ExportSession)
_list_session_files = _Op("listSessionFiles", "GET", "/api/sessions/{id}/files", list[FileInfo])
_upload_session_file = _Op(
    "uploadSessionFile", "POST", "/api/sessions/{id}/files/upload", FileInfo, transfer=True
)
_delete_session_file: _Op[None] = _Op(
    "deleteSessionFile", "DELETE", "/api/sessions/{id}/files/{filename}"
)
_get_session_file: _Op[None] = _Op(
    "getSessionFile", "GET", "/api/sessions/{id}/files/{filename}", transfer=True
)
_fork_session = _Op("forkSession", "POST", "/api/sessions/{id}/fork", SessionData)
_get_session_messages = _Op(
    "getSessionMessages", "GET", "/api/sessions/{id}/messages", list[BackendMessage]
)
_send_message = _Op("sendMessage", "POST", "/api/sessions/{id}/messages", _decode_send)
_rewind_session = _Op("rewindSession", "POST", "/api/sessions/{id}/rewind", SessionData)
_get_system_info = _Op("getSystemInfo", "GET", "/api/system/info", SystemInfo)
_list_llm_tools = _Op("listLLMTools", "GET", "/api/tools", LLMToolsResponse)
_get_tool_credentials_status = _Op(
    "getToolCredentialsStatus", "GET", "/api/tools/credentials-status", ToolsStatusResponse
)
_get_tools_status = _Op("getToolsStatus", "GET", "/api/tools/status", ToolsStatusResponse)
_health_check = _Op("healthCheck", "GET", "/health", HealthResponse)
_get_oauth_health = _Op("getOAuthHealth", "GET", "/health/auth", OAuthHealthResponse)
_refresh_oauth_tokens = _Op(
    "refreshOAuthTokens", "POST", "/internal/auth/refresh-tokens", RefreshTokensResponse
)
_stream_events: _Op[None] = _Op("streamEvents", "GET", "/stream", transfer=True)

OPERATIONS: Final[dict[str, _Op[Any]]] = {
    op.operation_id: op for op in list(globals().values()) if isinstance(op, _Op)
}
"""Every endpoint this client knows, by operationId."""


_CONNECT_TIMEOUTS: tuple[type[BaseException], ...] = tuple(
    t for t in (getattr(aiohttp, "ConnectionTimeoutError", None),) if isinstance(t, type)
)
_TRANSPORT_ERRORS: Final = (aiohttp.ClientError, asyncio.TimeoutError, TimeoutError, OSError)
_DISCONNECTS: Final = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)


def _retry_delay(
    policy: _Policy,
    op: _Op[Any],
    upload: _Upload | None,
    attempt: int,
    started: float,
    deadline: float | None,
    status: int | None = None,
    headers: Mapping[str, str] | None = None,
    *,
    unsent: bool = False,
) -> float | None:
    """The one retry decision: seconds to wait before the next attempt, or ``None``.

    ``status`` is the HTTP status of an error answer; ``None`` means the transport failed
    (connecting, sending, or reading the body), where ``unsent`` says the request
    certainly never reached the server. An idempotent operation is retried after either;
    any other only when unsent, or on the statuses its retry class allows (429, 503).
    A body that cannot be replayed is never sent twice, and a wait that cannot fit in the
    call's time limit or the policy's ``max_elapsed`` is not made.
    """
    if attempt >= policy.max_retries or (upload is not None and not upload.replayable):
        return None
    if status is None:
        if not policy.retry_connection_errors or not (op.idempotent or unsent):
            return None
        delay = policy.delay(attempt, None)
    elif status in op.retry_statuses:
        delay = policy.delay(attempt, _parse_retry_after(headers or {}))
    else:
        return None
    now = time.monotonic()
    if deadline is not None and now + delay >= deadline:
        return None
    if policy.max_elapsed is not None and now - started + delay > policy.max_elapsed:
        return None
    return delay


def _connection_error(exc: BaseException, method: str, url: str) -> tuple[APIConnectionError, bool]:
    """Wrap a transport failure; the flag says the request certainly never reached the server."""
    if isinstance(exc, _CONNECT_TIMEOUTS):
        return APITimeoutError(
            f"{method} {url}: timed out connecting", method=method, url=url
        ), True
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError, aiohttp.ServerTimeoutError)):
        return APITimeoutError(f"{method} {url}: timed out", method=method, url=url), False
    if isinstance(exc, aiohttp.ClientConnectorError):
        return APIConnectionError(
            f"{method} {url}: cannot connect: {exc}", method=method, url=url
        ), True
    return APIConnectionError(
        f"{method} {url}: {type(exc).__name__}: {exc}", method=method, url=url
    ), False


# The pool ---------------------------------------------------------------

DEFAULT_MAX_CONNECTIONS: Final = 100
"""Connections of plain calls, uploads and downloads (streams have a pool of their own)."""


async def _session_guard(sessions: list[aiohttp.ClientSession]) -> AsyncGenerator[None, None]:
    """Closes ``sessions`` (all made on one loop) on their own loop when finalized.

    An async generator started on a loop is finalized by that loop: ``aclose()`` is
    scheduled there when it is garbage-collected (from any thread), and
    ``loop.shutdown_asyncgens()`` (the end of ``asyncio.run()``) closes it before the loop
    closes. So a client dropped without ``aclose()``, or used from two ``asyncio.run()``
    in a row, closes its session quietly, on the right loop.
    """
    try:
        yield
    finally:
        for session in sessions:
            if not session.closed:
                with contextlib.suppress(Exception):
                    await session.close()


def _guard(sessions: list[aiohttp.ClientSession]) -> AsyncGenerator[None, None]:
    guard = _session_guard(sessions)
    step = guard.__anext__()  # registers the generator with the running loop
    with contextlib.suppress(StopIteration):
        step.send(None)  # runs it up to its ``yield``: no await needed
    return guard


def _close_now(session: aiohttp.ClientSession) -> None:
    """Mark a session whose loop is gone closed (its sockets go with the transports)."""
    connector = session.connector
    session.detach()
    close = getattr(connector, "_close", None)
    if close is not None:
        with contextlib.suppress(Exception):
            close()


class _Pool:
    """The HTTP sessions a client and its :meth:`AsyncMix.with_options` copies share.

    Plain calls, uploads and downloads use one session; event streams get a second one
    (their own connector and limit, the same cookies), so open streams never make plain
    calls wait. Sessions are made on first use inside the running loop, and again on a new
    loop (``asyncio.run`` twice); a guard closes them on their own loop when they are
    replaced or dropped. A session passed in (``user_session``) is used as is and never
    closed. ``streams`` registers the open event streams, for :meth:`close`.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession | None,
        max_connections: int | None,
        max_stream_connections: int | None,
    ) -> None:
        for name, value in (
            ("max_connections", max_connections),
            ("max_stream_connections", max_stream_connections),
        ):
            if value is not None:
                _check_int(value, name, 1)
                if session is not None:
                    raise InvalidInputError(
                        f"{name} does not apply with session=: the session's connector sets"
                        " the limit (aiohttp.TCPConnector(limit=...))"
                    )
        self.max_connections: int = max_connections or DEFAULT_MAX_CONNECTIONS
        self.max_stream_connections = max_stream_connections
        self.user_session = session
        self.headers: dict[str, str] = {}
        """The default headers of the sessions made here (the original client's)."""
        self.streams: weakref.WeakSet[EventStream] = weakref.WeakSet()
        self.closed = False
        self._session = session
        self._stream_session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._guard: AsyncGenerator[None, None] | None = None
        self._guarded: list[aiohttp.ClientSession] = []

    def http(self, streams_pool: bool = False) -> aiohttp.ClientSession:
        if self.closed:
            raise ClientClosedError("this client is closed")
        session = self._session
        if session is not None and session is self.user_session:
            return session
        loop = asyncio.get_running_loop()
        if session is None or session.closed or self._loop is not loop:
            # Created inside the running loop; a new loop (asyncio.run twice) gets a new one.
            old_loop = self._loop
            if old_loop is not None and old_loop.is_closed():
                for old in (session, self._stream_session):
                    if old is not None:
                        _close_now(old)  # its loop ended without finalizing the guard
            session = aiohttp.ClientSession(
                headers=self.headers,
                connector=aiohttp.TCPConnector(limit=self.max_connections, ttl_dns_cache=300),
            )
            if hasattr(session, "_retry_connection"):
                # aiohttp would resend an idempotent request after a dropped connection,
                # out of sight; _send does it itself, so it knows a DELETE was resent.
                session._retry_connection = False
            self._session = session
            self._loop = loop
            self._stream_session = None
            # Replacing the old guard finalizes it: its sessions close on their own loop.
            self._guarded = [session]
            self._guard = _guard(self._guarded)
        if streams_pool:
            # Streams hold their connection for their whole life: a pool of their own, so
            # that open streams never make plain calls wait for a connection.
            streams = self._stream_session
            if streams is None or streams.closed:
                streams = self._stream_session = aiohttp.ClientSession(
                    headers=self.headers,
                    connector=aiohttp.TCPConnector(
                        limit=self.max_stream_connections or 0, ttl_dns_cache=300
                    ),
                    cookie_jar=session.cookie_jar,  # one client: one set of cookies
                )
                self._guarded[:] = [*(h for h in self._guarded if not h.closed), streams]
            return streams
        return session

    async def close(self, owner: AsyncMix | None = None) -> None:
        """End the streams ``owner`` opened; with no owner, every stream and the pool."""
        if owner is None:
            self.closed = True
        error = ClientClosedError("the client was closed")
        for stream in list(self.streams):
            if owner is None or stream._client is owner:
                stream._shutdown(error)
        if owner is not None:
            return  # a with_options copy: the pool belongs to the original client
        session, self._session = self._session, None
        streams, self._stream_session = self._stream_session, None
        guard, self._guard = self._guard, None
        for http in (streams, session):
            if http is not None and http is not self.user_session and not http.closed:
                await http.close()
        if guard is not None:
            await guard.aclose()

    def __del__(self) -> None:
        # Dropped without close(): the guard closes the sessions on their loop if that still
        # runs; a loop already closed (without shutdown_asyncgens) cannot, so do it here.
        loop = self.__dict__.get("_loop")
        if loop is not None and loop.is_closed():
            for key in ("_session", "_stream_session"):
                http = self.__dict__.get(key)
                if http is not None and http is not self.__dict__.get("user_session"):
                    _close_now(http)


# The request pipeline -----------------------------------------------------


def _cancelling() -> bool:
    """Whether the current task itself is being cancelled (not just a future it awaited)."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)  # Python 3.11+
    return task is None or cancelling is None or cancelling() > 0


def _closed(method: str, url: str) -> ClientClosedError:
    return ClientClosedError(f"{method} {url}: the client was closed", method=method, url=url)


async def _send(
    client: AsyncMix,
    op: _Op[Any],
    path: str,
    opts: RequestOptions,
    *,
    query: str = "",
    body: bytes | None = None,
    upload: _Upload | None = None,
    stream: bool = False,
    extra_headers: Mapping[str, str] | None = None,
    streams_pool: bool = False,
) -> tuple[aiohttp.ClientResponse, bytes]:
    """The one request pipeline: options, headers, the attempts and the waits between them
    (the decision: :func:`_retry_delay`). Returns the response: read (``stream=False``) or
    open."""
    policy = client._policy
    timeout = client._transfer_timeout if op.transfer else client._timeout
    base = client.server_url
    if opts:
        opts = _options(opts, op)
        if "extra_body" in opts:
            body = _merge_body(body, opts["extra_body"], op, upload)
    headers: Mapping[str, str] | None = client._json_headers if body is not None else None
    if opts:
        if "max_retries" in opts or "retry_config" in opts:
            policy = _make_policy(
                opts.get("max_retries", client._max_retries),
                opts.get("retry_config", client._retry_config),
            )
        if "timeout" in opts:
            timeout = _as_timeout(opts["timeout"], op.transfer)
        if "headers" in opts:
            headers = {**(headers or {}), **opts["headers"]}
        if "server_url" in opts:
            base = opts["server_url"]
        if "extra_query" in opts:
            more = _query(opts["extra_query"])
            query = f"{query}&{more}" if query and more else query or more
    if client._pool.user_session is not None or client._parent is not None:
        # The pool's session does not carry this client's default headers.
        headers = {
            **(client._json_headers if body is not None else client._headers),
            **(headers or {}),
        }
    if upload is not None:
        headers = {**(headers or {}), "Content-Type": upload.content_type}
        if upload.size is not None:
            headers["Content-Length"] = str(upload.size)
    if extra_headers:
        headers = {**(headers or {}), **extra_headers}
    if opts and "extra_headers" in opts:
        headers = {**(headers or {}), **opts["extra_headers"]}
    url_text = base + path + ("?" + query if query else "")
    url = URL(url_text, encoded=True)
    method = op.method
    if client._closed:
        raise ClientClosedError("this client is closed")
    session = client._pool.http(streams_pool)
    debug = client._logger.isEnabledFor(logging.DEBUG)
    attempt = 0
    # Resend once at once after a dropped connection, as aiohttp does unless told not to.
    resend = op.idempotent and getattr(session, "_retry_connection", True) is False
    resent = False
    started = time.monotonic()
    # A total limit covers the whole call: every attempt and every wait between them.
    deadline = None if timeout is None or timeout.total is None else started + timeout.total
    attempt_timeout = timeout
    while True:
        if deadline is not None and (attempt or resent) and timeout is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise APITimeoutError(
                    f"{method} {url_text}: timed out", method=method, url=url_text
                )
            attempt_timeout = _with_total(timeout, left)
        if debug:
            client._logger.debug(
                "-> %s %s headers=%s body=%s",
                method,
                url_text,
                _redact_headers(headers or {}),
                _redact_body(body) if upload is None else f"<multipart {upload.filename!r}>",
            )
        data: Any = body if upload is None else upload.body()
        try:
            resp = await session.request(
                method,
                url,
                data=data,
                headers=headers,
                # None: your session's own timeout (aiohttp reads None as "no timeout")
                timeout=attempt_timeout if attempt_timeout is not None else session.timeout,
                # The API has no redirects: a 3xx is an error, and nothing (least of
                # all the credentials) goes where it points.
                allow_redirects=False,
                # no body: no aiohttp-invented "Content-Type: application/octet-stream"
                skip_auto_headers=op.skip_headers if data is None else None,
            )
        except asyncio.CancelledError:
            # Closing the pool cancels the calls waiting for one of its connections.
            if not client._is_closed() or _cancelling():
                raise
            raise _closed(method, url_text) from None
        except (*_TRANSPORT_ERRORS, RuntimeError) as exc:
            if client._is_closed():  # aiohttp: "Session is closed", or its connections cut
                raise _closed(method, url_text) from exc
            if upload is not None and upload.failure is not None:
                raise upload.failure from None  # bad chunk or progress callback: no retry
            if isinstance(exc, RuntimeError):
                raise
            if (
                resend
                and isinstance(exc, _DISCONNECTS)
                and not isinstance(exc, aiohttp.ClientConnectorError)
                and (upload is None or upload.replayable)
            ):
                resend = False
                resent = True
                continue
            failure: BaseException | None = exc
        else:
            status = resp.status
            ok = 200 <= status < 300
            if ok and stream:
                if debug:
                    client._logger.debug("<- %s %s %d (streaming)", method, url_text, status)
                return resp, b""
            failure = None
            try:
                raw = await resp.read()
            except _TRANSPORT_ERRORS as exc:
                raw = b""  # an error status stands without its body; a 2xx needs its body
                failure = exc if ok else None
            finally:
                resp.release()
        if failure is None:  # an answer came: its status decides
            if debug:
                client._logger.debug("<- %s %s %d %s", method, url_text, status, _redact_body(raw))
            if ok:
                return resp, raw
            if status == 404 and (attempt or resent) and method == "DELETE":
                # The first answer was lost, yet the thing is gone: the DELETE got done.
                return resp, b"{}"
            delay = _retry_delay(
                policy, op, upload, attempt, started, deadline, status, resp.headers
            )
            if delay is None:
                raise _status_error(method, url_text, status, resp.headers, raw, resp)
            reason: object = f"HTTP {status}"
        else:  # connecting, sending, or reading the body failed
            if client._is_closed():
                raise _closed(method, url_text) from failure
            error, unsent = _connection_error(failure, method, url_text)
            delay = _retry_delay(policy, op, upload, attempt, started, deadline, unsent=unsent)
            if delay is None:
                if debug:
                    client._logger.debug("!! %s %s: %s", method, url_text, error)
                raise error from failure
            reason = error
        # The one place a call goes round again (the decision: _retry_delay).
        if debug:
            client._logger.debug("retry %d in %.2fs after %s", attempt + 1, delay, reason)
        await asyncio.sleep(delay)
        attempt += 1


async def _call(
    client: AsyncMix,
    op: _Op[T],
    opts: RequestOptions,
    *path_values: str,
    query: str = "",
    body: bytes | None = None,
    upload: _Upload | None = None,
) -> T:
    """Call ``op`` with its path parameters (in the template's order) and decode."""
    path = op.url(*path_values)
    resp, raw = await _send(client, op, path, opts, query=query, body=body, upload=upload)
    try:
        return op.decode(resp.status, raw)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ResponseValidationError(
            f"{op.method} {resp.url} -> {resp.status}: unexpected response body: {exc}",
            cause=exc,
            body=raw,
            status_code=resp.status,
            headers=resp.headers,
            method=op.method,
            url=str(resp.url),
            raw_response=resp,
        ) from exc


# Uploads and downloads -----------------------------------------------------

_UPLOAD_CHUNK: Final = 256 * 1024


class _ReadsBytes(Protocol):
    """A binary file: ``read(size)`` returns bytes (``BinaryIO``, ``IO[bytes]``, ...)."""

    def read(self, size: int, /) -> bytes: ...


FileInput: TypeAlias = Union[
    str,
    "os.PathLike[str]",
    bytes,
    bytearray,
    memoryview,
    _ReadsBytes,
    AsyncIterable[bytes],
    Iterable[bytes],
]
"""What :meth:`AsyncMix.upload_session_file` accepts: a path, bytes, a file opened in
binary mode (``BinaryIO``, ``IO[bytes]``, ``SpooledTemporaryFile[bytes]``, ``BytesIO``...),
or an async or plain iterator of bytes. Text files (``TextIO``) are refused."""

ProgressCallback: TypeAlias = Callable[[int, int | None], object]
"""``progress(done, total)``: bytes moved so far and the total when known (else ``None``)."""


class _Escaped(Exception):
    """A ``KeyboardInterrupt`` or ``SystemExit`` raised by a callback of the blocking
    :class:`Mix`, carried across its loop thread (where it would stop the loop) to the
    caller, who gets the original."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__(repr(exc))
        self.exc = exc


class _SyncLoopFlag(threading.local):
    flag = False
    """Set on a blocking ``Mix``'s loop thread."""


_in_sync_loop = _SyncLoopFlag()


def _escape(exc: BaseException) -> BaseException:
    """What to raise for ``exc`` from a user's callback on the running loop."""
    if _in_sync_loop.flag and not isinstance(exc, (Exception, asyncio.CancelledError)):
        return _Escaped(exc)
    return exc


def _call_progress(progress: ProgressCallback, done: int, total: int | None) -> None:
    try:
        progress(done, total)
    except BaseException as exc:
        escaped = _escape(exc)
        if escaped is exc:
            raise
        raise escaped from None


def _check_progress(progress: object) -> None:
    if progress is None:
        return
    if not callable(progress):
        raise InvalidInputError(f"progress must be callable, not {type(progress).__name__}")
    if inspect.iscoroutinefunction(progress):
        raise InvalidInputError("progress must be a plain function, not an async one")


_END: Final = object()


async def _in_threads(items: Iterator[Any]) -> AsyncIterator[Any]:
    """A plain iterator as an async one: each ``next`` runs in the default executor."""
    loop = asyncio.get_running_loop()
    while (item := await loop.run_in_executor(None, next, items, _END)) is not _END:
        yield item


class _Upload:
    """A multipart/form-data body with one part named ``file``, streamed in chunks."""

    def __init__(
        self,
        file: Any,
        filename: str | None,
        content_type: str | None,
        progress: ProgressCallback | None = None,
    ) -> None:
        self.path: str | None = None
        self.fileobj: Any = None
        self.data: bytes | memoryview | None = None
        self.aiter: AsyncIterator[Any] | None = None
        self.first: bytes | None = None
        """A stream's first chunk, pulled (and checked) before anything is sent."""
        self.failure: Exception | None = None
        """What went wrong inside the body (a chunk of text, the progress callback)."""
        self.progress = progress
        self.start = 0
        size: int | None = None
        name = filename
        _check_progress(progress)
        if isinstance(file, Mapping):  # the original SDK's {"file_name": ..., "content": ...}
            name = name or file.get("file_name")
            content_type = content_type or file.get("content_type")
            file = file.get("content")
        if isinstance(file, (str, os.PathLike)):
            path = os.fspath(file)
            if not isinstance(path, str):
                raise InvalidInputError("upload_session_file: a path must be text, not bytes")
            if not os.path.exists(path):
                raise InvalidInputError(f"upload_session_file: no such file: {path!r}")
            if not os.path.isfile(path):
                raise InvalidInputError(f"upload_session_file: not a regular file: {path!r}")
            self.path = path
            size = os.path.getsize(path)
            name = name or os.path.basename(path)
        elif isinstance(file, (bytes, bytearray, memoryview)):
            self.data = file if isinstance(file, bytes) else memoryview(file).cast("B")
            size = len(self.data)
        elif isinstance(file, io.TextIOBase):
            raise InvalidInputError(
                "upload_session_file: the file is open in text mode; open it in binary mode ('rb')"
            )
        elif hasattr(file, "read"):
            self.fileobj = file
            if name is None and isinstance(getattr(file, "name", None), str):
                name = os.path.basename(file.name)
            seekable = getattr(file, "seekable", None)
            try:
                if seekable is not None and seekable():
                    self.start = file.tell()
                    end = file.seek(0, io.SEEK_END)
                    file.seek(self.start)
                    size = end - self.start
            except ValueError as exc:  # a closed file
                raise InvalidInputError(
                    f"upload_session_file: cannot read the file: {exc}"
                ) from exc
        elif isinstance(file, AsyncIterable):
            self.aiter = aiter(file)
        elif isinstance(file, Iterable) and not isinstance(file, (str, Mapping)):
            self.aiter = _in_threads(iter(file))
        else:
            raise InvalidInputError(
                "upload_session_file: file must be a path, bytes, a binary file or an "
                f"iterator of bytes, not {type(file).__name__}"
            )
        if name is None:
            raise InvalidInputError("upload_session_file: pass filename= for this kind of file")
        self.filename = _check_file_name(name)
        ctype = content_type or mimetypes.guess_type(self.filename)[0] or "application/octet-stream"
        self.boundary = f"mixclient{os.urandom(12).hex()}"
        escaped = self.filename.replace("\\", "\\\\").replace('"', '\\"')
        self.head = (
            f"--{self.boundary}\r\n"
            f'Content-Disposition: form-data; name="file"; filename="{escaped}"\r\n'
            f"Content-Type: {ctype}\r\n\r\n"
        ).encode()
        self.tail = f"\r\n--{self.boundary}--\r\n".encode()
        self.data_size = size
        self.size = None if size is None else len(self.head) + size + len(self.tail)
        self.replayable = self.aiter is None and (self.fileobj is None or size is not None)
        self.used = False

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    async def prime(self) -> None:
        """Read a stream's first chunk now, so text instead of bytes fails before sending."""
        loop = asyncio.get_running_loop()
        if self.fileobj is not None:
            try:
                chunk = await loop.run_in_executor(None, self.fileobj.read, _UPLOAD_CHUNK)
            except ValueError as exc:  # a closed file, a file opened for writing only
                raise InvalidInputError(
                    f"upload_session_file: cannot read the file: {exc}"
                ) from exc
            first = self._check(chunk)
            if self.size is not None:  # seekable: every attempt reads from the start
                await loop.run_in_executor(None, self.fileobj.seek, self.start)
            else:
                self.first = first
        elif self.aiter is not None:
            try:
                self.first = self._check(await anext(self.aiter))
            except StopAsyncIteration:
                self.first = b""

    def _check(self, chunk: object) -> bytes:
        if isinstance(chunk, bytes):
            return chunk
        if isinstance(chunk, (bytearray, memoryview)):
            return bytes(chunk)
        if inspect.isawaitable(chunk):
            if inspect.iscoroutine(chunk):
                chunk.close()  # never awaited: no warning
            raise InvalidInputError(
                "upload_session_file: this file's read() is async; pass an async iterator "
                "of bytes instead"
            )
        if self.fileobj is not None:
            raise InvalidInputError(
                "upload_session_file: the file must be opened in binary mode ('rb'); its "
                f"read() returned {type(chunk).__name__}"
            )
        raise InvalidInputError(
            f"upload_session_file: the iterator must yield bytes, not {type(chunk).__name__}"
        )

    def body(self) -> AsyncIterator[bytes]:
        if self.used and not self.replayable:
            raise InvalidInputError("upload_session_file: this file stream was already consumed")
        self.used = True
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        progress, total, done = self.progress, self.data_size, 0
        try:
            if progress is not None:
                _call_progress(progress, 0, total)
            yield self.head
            async for chunk in self._data():
                yield chunk
                done += len(chunk)
                if progress is not None:
                    _call_progress(progress, done, total)
            yield self.tail
        except Exception as exc:
            # aiohttp reports any failure of the body as a connection error; keep the
            # real one for the caller.
            self.failure = exc
            raise

    async def _data(self) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        first, self.first = self.first, None
        if self.data is not None:
            yield self.data if isinstance(self.data, bytes) else bytes(self.data)
        elif self.path is not None:
            f = await loop.run_in_executor(None, open, self.path, "rb")
            try:
                while chunk := await loop.run_in_executor(None, f.read, _UPLOAD_CHUNK):
                    yield chunk
            finally:
                f.close()
        elif self.fileobj is not None:
            f = self.fileobj
            if first:
                yield first
            elif first is None and self.size is not None:
                await loop.run_in_executor(None, f.seek, self.start)
            if first != b"":
                while chunk := self._check(await loop.run_in_executor(None, f.read, _UPLOAD_CHUNK)):
                    yield chunk
        elif self.aiter is not None:
            if first:
                yield first
            async for item in self.aiter:
                if chunk := self._check(item):
                    yield chunk


_ANY_CONTENT: Final = {"Accept": "*/*"}
_YIELD_EVERY: Final = 4 << 20
_THUMB: Final = re.compile(r"\d+|w\d+|h\d+")


def _body_length(resp: aiohttp.ClientResponse) -> int | None:
    """How many bytes the body will have, when the response says (and is not compressed)."""
    if resp.headers.get("Content-Encoding", "identity").lower() not in ("", "identity"):
        return None
    return resp.content_length


def _body_error(
    exc: BaseException, resp: aiohttp.ClientResponse, received: int, total: int | None
) -> APIConnectionError:
    url = str(resp.url)
    method = resp.method
    if total is not None and received < total and isinstance(exc, aiohttp.ClientPayloadError):
        return APIConnectionError(
            f"{method} {url}: the response ended after {received} of the {total} bytes "
            "its Content-Length announced",
            method=method,
            url=url,
        )
    error, _ = _connection_error(exc, method, url)
    return error


def _local_name(filename: str) -> str:
    """Where ``download_session_file`` puts ``filename`` inside a directory."""
    name = re.split(r"[/\\]", _check_str(filename, "filename"))[-1]
    if name in ("", ".", ".."):
        raise InvalidInputError(
            f"download_session_file: {filename!r} has no file name to save under; "
            "pass the full destination path"
        )
    return name


def _open_temp(target: str) -> tuple[str, io.BufferedWriter]:
    """A new file beside ``target`` (its link's target), with ``target``'s permissions."""
    real = os.path.realpath(target) if os.path.islink(target) else target
    folder, base = os.path.split(real)
    while True:
        tmp = os.path.join(folder, f".{base[:40]}.{os.urandom(6).hex()}.part")
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
            fd = os.open(tmp, flags, 0o666)  # the umask applies, as with open(..., "wb")
        except FileExistsError:
            continue
        break
    try:
        with contextlib.suppress(OSError):
            os.chmod(fd if os.chmod in os.supports_fd else tmp, os.stat(real).st_mode & 0o7777)
        return tmp, open(fd, "wb")
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise


def _finish_temp(f: io.BufferedWriter, tmp: str, target: str) -> None:
    f.close()
    real = os.path.realpath(target) if os.path.islink(target) else target
    os.replace(tmp, real)


def _discard_temp(f: io.BufferedWriter, tmp: str) -> None:
    with contextlib.suppress(OSError):
        f.close()
    with contextlib.suppress(OSError):
        os.unlink(tmp)


_NO_HEADERS: Final[Mapping[str, str]] = {}


class DownloadedFile(int):
    """What :meth:`AsyncMix.download_session_file` returns: the number of bytes written
    (an ``int``, as before), which also says where they went and what the server said."""

    path: str
    """The file written (``dest``, or ``dest/<name>`` when ``dest`` is a directory)."""
    content_type: str | None
    content_length: int | None
    """The announced size; ``None`` when the server did not say (or compressed the body)."""
    headers: Mapping[str, str]
    """The response headers (case-insensitive)."""

    def __new__(
        cls,
        size: int,
        *,
        path: str = "",
        content_type: str | None = None,
        content_length: int | None = None,
        headers: Mapping[str, str] = _NO_HEADERS,
    ) -> DownloadedFile:
        self = super().__new__(cls, size)
        self.path = path
        self.content_type = content_type
        self.content_length = content_length
        self.headers = headers
        return self

    @property
    def size(self) -> int:
        """The number of bytes written."""
        return int(self)


class FileDownload:
    """A file being downloaded: an async context manager and async iterator of chunks.

    Once the response has arrived (``async with``, or the first chunk), it carries
    ``content_type``, ``content_length`` (``None`` when unknown) and ``headers``.
    """

    def __init__(
        self,
        client: AsyncMix,
        path: str,
        query: str,
        chunk_size: int,
        opts: RequestOptions,
        progress: ProgressCallback | None = None,
    ) -> None:
        self._client = client
        self._path = path
        self._query = query
        self._chunk_size = chunk_size
        self._opts = opts
        self._progress = progress
        self._resp: aiohttp.ClientResponse | None = None
        self._done = False
        self.received = 0
        """Bytes of the body read so far."""
        self.content_type: str | None = None
        self.content_length: int | None = None
        """The body's size as announced; ``None`` when unknown (or compressed)."""
        self.headers: Mapping[str, str] = _NO_HEADERS
        """The response headers (case-insensitive); empty until the response arrived."""

    async def _open(self) -> aiohttp.ClientResponse:
        if self._resp is None:
            resp, _ = await _send(
                self._client,
                _get_session_file,
                self._path,
                self._opts,
                query=self._query,
                stream=True,
                extra_headers=_ANY_CONTENT,
            )
            self._resp = resp
            self.content_type = resp.content_type
            self.content_length = _body_length(resp)
            self.headers = resp.headers
            await self._report()
        return self._resp

    async def _report(self) -> None:
        if self._progress is not None:
            try:
                _call_progress(self._progress, self.received, self.content_length)
            except BaseException:
                await self.aclose()
                raise

    async def __aenter__(self) -> Self:
        await self._open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        resp = getattr(self, "_resp", None)
        if resp is not None:
            resp.close()

    async def aclose(self) -> None:
        self._done = True
        if self._resp is not None:
            self._resp.close()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        if self._done:
            raise StopAsyncIteration
        resp = await self._open()
        try:
            chunk = await resp.content.read(self._chunk_size)
        except _TRANSPORT_ERRORS as exc:
            await self.aclose()
            raise _body_error(exc, resp, self.received, self.content_length) from exc
        except BaseException:
            await self.aclose()
            raise
        if not chunk:
            await self.aclose()
            raise StopAsyncIteration
        self.received += len(chunk)
        await self._report()
        return chunk


def _file_path(id: str, filename: str, thumb: str | None, time: float | None) -> tuple[str, str]:
    path = _get_session_file.url(id, filename)
    if thumb is not None and (not isinstance(thumb, str) or not _THUMB.fullmatch(thumb)):
        raise InvalidInputError(f"thumb must look like '100', 'w100' or 'h100', not {thumb!r}")
    if time is not None and (
        isinstance(time, bool) or not isinstance(time, (int, float)) or not 0 <= time <= 86400
    ):
        raise InvalidInputError(f"time must be a number of seconds from 0 to 86400, not {time!r}")
    return path, _query({"thumb": thumb, "time": time})


async def _read_file(chunks: FileDownload) -> bytes:
    """The whole file (:meth:`AsyncMix.get_session_file`).

    No allocation up front at the announced size (a server may announce 1 PiB): BytesIO
    grows in place as chunks arrive and hands its buffer over at the end.
    """
    buf = io.BytesIO()
    since_yield = 0
    async with chunks:
        async for chunk in chunks:
            buf.write(chunk)
            since_yield += len(chunk)
            if since_yield >= _YIELD_EVERY:
                # A fast server keeps the buffer full, so reading never waits: let the
                # loop's other tasks run now and then.
                since_yield = 0
                await asyncio.sleep(0)
    return buf.getvalue()


async def _save_file(chunks: FileDownload, target: str) -> DownloadedFile:
    """Write ``chunks`` to a temporary file beside ``target``, renamed over it once complete
    (:meth:`AsyncMix.download_session_file`)."""
    loop = asyncio.get_running_loop()
    tmp, f = await loop.run_in_executor(None, _open_temp, target)
    written = 0
    try:
        async for chunk in chunks:
            await loop.run_in_executor(None, f.write, chunk)
            written += len(chunk)
        await loop.run_in_executor(None, _finish_temp, f, tmp, target)
    except BaseException:
        _discard_temp(f, tmp)
        raise
    return DownloadedFile(
        written,
        path=target,
        content_type=chunks.content_type,
        content_length=chunks.content_length,
        headers=chunks.headers,
    )


# ---------------------------------------------------------------------------
# 4. Streaming: SSE decoder, typed events, EventStream
# ---------------------------------------------------------------------------
# Server-Sent Events: SSEDecoder turns bytes into frames (WHATWG rules, linear, events
# up to max_event_size), decode_event turns a frame into a typed event, EventStream keeps
# a session's stream open across drops.


class ServerSentEvent(msgspec.Struct, frozen=True, gc=False):
    """One dispatched SSE frame.

    ``data`` is kept as ``bytes`` (the data lines joined with ``b"\\n"``) rather
    than ``str``: the payload is JSON, and msgspec decodes JSON straight from
    bytes, so the text is never decoded twice.  Use ``frame.text`` for a ``str``.

    ``id`` is the stream's last event id at dispatch time (it persists across
    events, per the SSE rules); ``None`` when no id has been set.  ``retry`` is
    the reconnection delay (milliseconds) carried by this frame's own lines, if
    any; :attr:`SSEDecoder.retry` holds the latest value for the whole stream.
    """

    event: str = "message"
    data: bytes = b""
    id: str | None = None
    retry: int | None = None

    @property
    def text(self) -> str:
        """``data`` decoded as UTF-8 (invalid bytes replaced)."""
        return self.data.decode("utf-8", "replace")


_SSE_BOM = b"\xef\xbb\xbf"
DEFAULT_MAX_EVENT_SIZE: Final = 64 << 20
"""Largest SSE event (or line) a stream buffers: 64 MiB."""


# Decoded event names; a stream uses a handful, so each is decoded once.
_SSE_EVENT_NAMES: dict[bytes, str] = {}
_SSE_EVENT_CACHE_MAX = 256


def _sse_event_name(value: bytes) -> str:
    name = _SSE_EVENT_NAMES.get(value)
    if name is None:
        name = value.decode("utf-8", "replace")
        if len(_SSE_EVENT_NAMES) < _SSE_EVENT_CACHE_MAX:
            _SSE_EVENT_NAMES[value] = name
    return name


class SSEDecoder:
    """Incremental SSE parser: ``feed(chunk)`` returns the frames it completes.

    Follows the WHATWG event-stream rules: lines end in CR, LF or CRLF (also
    when the CR and LF arrive in different chunks); one leading UTF-8 BOM is
    dropped; ``:`` starts a comment; ``data`` lines are joined with LF; an
    ``id`` containing NUL is ignored and the last id persists across events;
    ``retry`` must be ASCII digits; a blank line dispatches the event unless
    no data line was seen.  ``last_event_id`` changes when an event is
    dispatched (the blank line), never while a frame is half received; an
    empty ``id:`` resets it to ``None``.

    An event whose data (with the line still being received) grows beyond
    ``max_event_size`` bytes (default :data:`DEFAULT_MAX_EVENT_SIZE`, 64 MiB)
    raises :class:`EventTooLargeError` instead of buffering more.

    Work is linear in the bytes fed, whatever the chunking: each chunk is
    scanned once (CR/LF are normalised to LF with ``bytes.replace``, then
    ``split``), and an unfinished line is kept in a ``bytearray`` (amortised
    O(1) appends, buffered bytes are never re-scanned).

    Attributes:
        last_event_id: the last event id seen (persists across events), or
            ``None`` if none was set or an empty ``id:`` reset it.
        retry: the latest valid ``retry:`` value in milliseconds, or ``None``.
    """

    __slots__ = (
        "_bom_buf",
        "_counted",
        "_cr",
        "_data",
        "_event",
        "_frame_retry",
        "_id",
        "_max",
        "_partial",
        "_size",
        "_start",
        "last_event_id",
        "retry",
    )

    def __init__(
        self, last_event_id: str | None = None, *, max_event_size: int = DEFAULT_MAX_EVENT_SIZE
    ) -> None:
        self.last_event_id: str | None = last_event_id or None
        self._id = self.last_event_id  # the id buffer: becomes last_event_id at dispatch
        self._max = _check_int(max_event_size, "max_event_size", 1)
        self._size = 0  # bytes in _data (its first _counted lines, with their LFs)
        self._counted = 0
        self.retry: int | None = None
        self._start = True  # still looking for a BOM at stream start
        self._bom_buf = b""  # first bytes of the stream while they may be a BOM
        self._cr = False  # previous chunk ended in CR: drop a leading LF
        self._partial = bytearray()  # unfinished line
        self._data: list[bytes] = []  # data lines of the event being built
        self._event: str | None = None  # event type buffer
        self._frame_retry: int | None = None  # retry seen since the last dispatch

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Parse ``chunk`` and return the frames it completes (often none)."""
        if self._start:
            chunk = self._strip_bom(chunk)
        if self._cr and chunk:
            self._cr = False
            if chunk[0] == 10:  # the LF of a CRLF split across chunks
                chunk = chunk[1:]
        if 13 in chunk:
            self._cr = chunk[-1] == 13
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        elif 10 not in chunk:
            self._partial += chunk
            if len(self._partial) + self._size > self._max:
                self._too_large()
            return []
        out = self._lines(chunk.split(b"\n"))
        if len(chunk) > self._max:  # a whole event within one (huge) chunk
            for frame in out:
                if len(frame.data) > self._max:
                    self._too_large(len(frame.data))
        return out

    def _too_large(self, size: int = 0) -> NoReturn:
        size = size or len(self._partial) + self._size
        self._partial = bytearray()
        self._data = []
        self._size = self._counted = 0
        raise EventTooLargeError(
            f"SSE event larger than max_event_size ({self._max} bytes): {size} bytes buffered",
            limit=self._max,
        )

    def _strip_bom(self, chunk: bytes) -> bytes:
        buf = self._bom_buf + chunk
        if len(buf) < 3 and _SSE_BOM.startswith(buf):
            self._bom_buf = buf  # may still become a BOM: wait for more bytes
            return b""
        self._start = False
        self._bom_buf = b""
        return buf[3:] if buf.startswith(_SSE_BOM) else buf

    def _lines(self, lines: list[bytes]) -> list[ServerSentEvent]:
        """Process complete lines; the last item is the unfinished tail."""
        tail = lines.pop()
        partial = self._partial
        if partial and lines:
            partial += lines[0]
            lines[0] = bytes(partial)
            partial.clear()
        partial += tail
        out: list[ServerSentEvent] = []
        data = start = self._data
        event = self._event
        for line in lines:
            if not line:  # blank line: dispatch
                self.last_event_id = self._id
                if data:
                    out.append(
                        ServerSentEvent(
                            event or "message",
                            data[0] if len(data) == 1 else b"\n".join(data),
                            self._id,
                            self._frame_retry,
                        )
                    )
                    data = self._data = []
                self._frame_retry = None
                event = None
                continue
            first = line[0]
            # Shortcuts for the spellings servers write.
            if first == 100 and line[:6] == b"data: ":
                data.append(line[6:])
                continue
            if first == 101 and line[:7] == b"event: ":
                event = _sse_event_name(line[7:])
                continue
            if first == 105 and line[:4] == b"id: ":
                if 0 not in line:
                    self._id = line[4:].decode("utf-8", "replace") or None
                continue
            if first == 58:  # ':' comment
                continue
            colon = line.find(b":")
            if colon < 0:
                field = line
                value = b""
            else:
                field = line[:colon]
                value = (
                    line[colon + 2 :] if line[colon + 1 : colon + 2] == b" " else line[colon + 1 :]
                )
            if field == b"data":
                data.append(value)
            elif field == b"event":
                event = _sse_event_name(value)
            elif field == b"id":
                if 0 not in value:
                    self._id = value.decode("utf-8", "replace") or None
            elif field == b"retry" and value.isdigit():  # bytes.isdigit: ASCII only
                with contextlib.suppress(ValueError):  # more digits than int() takes
                    self.retry = self._frame_retry = int(value)
        self._event = event
        # Size of the event being built: counted per chunk, each data line once.
        if data:
            if data is start:
                counted = self._counted
                size = self._size
            else:  # a new event began in this chunk
                counted = size = 0
            lines_now = len(data)
            if lines_now == counted + 1:
                size += len(data[-1]) + 1  # with the LF joining it to the next
            elif lines_now > counted:
                size += sum(map(len, data[counted:])) + lines_now - counted
            self._counted = lines_now
            self._size = size
            if size > self._max:
                self._too_large()
        elif self._size:
            self._counted = self._size = 0
        if partial and len(partial) + self._size > self._max:
            self._too_large()
        return out


# ---------------------------------------------------------------------------
# Typed event payloads (the ``data`` object of each SSE event in the spec)
#
# Every field is optional: servers omit things.  Strings the spec requires
# default to "", booleans to False, everything else to None.  Enum-like
# strings stay ``str`` so an unknown value never fails; unknown fields are
# ignored.
# ---------------------------------------------------------------------------


class _EventData(msgspec.Struct, frozen=True, gc=False, rename="camel"):
    """Base of every event payload (camelCase on the wire)."""


class ConnectedData(_EventData, frozen=True):
    session_id: str = ""


class HeartbeatData(_EventData, frozen=True):
    type: str = ""


class UserMessageCreatedData(_EventData, frozen=True):
    type: str = ""
    message_id: str = ""
    content: str = ""
    parent_tool_call_id: str | None = None


class ThinkingData(_EventData, frozen=True):
    type: str = ""
    content: str = ""
    assistant_message_id: str | None = None
    parent_tool_call_id: str | None = None


class ContentData(_EventData, frozen=True):
    type: str = ""
    content: str = ""
    assistant_message_id: str | None = None
    parent_tool_call_id: str | None = None


class ToolUseStartData(_EventData, frozen=True):
    type: str = ""
    id: str = ""  # tool call id
    name: str = ""  # tool name
    assistant_message_id: str | None = None
    parent_tool_call_id: str | None = None


class ToolUseParameterDeltaData(_EventData, frozen=True):
    type: str = ""
    tool_call_id: str = ""
    input: str = ""  # partial JSON text
    assistant_message_id: str | None = None
    parent_tool_call_id: str | None = None


class ToolUseParameterStreamingCompleteData(_EventData, frozen=True):
    type: str = ""
    id: str = ""  # tool call id
    name: str = ""  # tool name
    input: str = ""  # complete JSON text of the tool input
    assistant_message_id: str | None = None
    parent_tool_call_id: str | None = None


class ToolExecutionStartData(_EventData, frozen=True):
    type: str = ""
    tool_name: str = ""  # may be ""
    tool_call_id: str = ""
    progress: str = ""
    parent_tool_call_id: str | None = None


class ToolExecutionCompleteData(_EventData, frozen=True):
    type: str = ""
    tool_name: str = ""  # may be ""
    tool_call_id: str = ""
    progress: str = ""
    success: bool = False
    parent_tool_call_id: str | None = None


class PermissionData(_EventData, frozen=True):
    type: str = ""
    id: str = ""  # permission request id
    session_id: str = ""
    tool_name: str = ""
    description: str = ""
    action: str = ""
    path: str | None = None
    params: Any = None  # the tool's parameters: usually an object, kept whatever JSON it is
    parent_tool_call_id: str | None = None


class NotificationData(_EventData, frozen=True):
    type: str = ""
    id: str = ""  # notification id
    session_id: str = ""
    notification_type: str = ""
    title: str = ""
    message: str = ""
    response_type: str = ""
    timeout: int | None = None  # seconds
    created_at: int | None = None  # Unix seconds
    choices: list[str] | None = None
    parent_tool_call_id: str | None = None


class SessionCreatedData(_EventData, frozen=True):
    type: str = ""
    session_id: str = ""
    title: str = ""
    created_at: int | None = None  # Unix seconds


class SessionDeletedData(_EventData, frozen=True):
    type: str = ""
    session_id: str = ""


class ErrorData(_EventData, frozen=True):
    error: str = ""
    type: str | None = None
    attempt: int | None = None
    max_attempts: int | None = None
    retry_after: int | None = None  # milliseconds
    parent_tool_call_id: str | None = None


class CompleteData(_EventData, frozen=True):
    type: str = ""
    done: bool = False
    content: str | None = None
    message_id: str | None = None
    reasoning: str | None = None
    # Milliseconds per the spec; some servers send (possibly fractional) seconds.
    reasoning_duration: int | float | None = None
    parent_tool_call_id: str | None = None


# ---------------------------------------------------------------------------
# Typed events
# ---------------------------------------------------------------------------


class BaseEvent(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Common base of every decoded event.

    ``event`` is the SSE event name, ``id`` the SSE event id and ``data`` the
    decoded payload.
    """

    id: str | None = None
    data: Any = None  # narrowed by each subclass

    @property
    def session_id(self) -> str | None:
        """The ``sessionId`` the payload names, if any (else ``None``)."""
        value = getattr(self.data, "session_id", None)
        return value if isinstance(value, str) and value else None

    @property
    def parent_tool_call_id(self) -> str | None:
        """Set when a sub-agent produced the event (``None`` for the main agent)."""
        value = getattr(self.data, "parent_tool_call_id", None)
        return value if isinstance(value, str) and value else None


class ConnectedEvent(BaseEvent, frozen=True, kw_only=True):
    event: ClassVar[str] = "connected"
    data: ConnectedData


class HeartbeatEvent(BaseEvent, frozen=True, kw_only=True):
    event: ClassVar[str] = "heartbeat"
    data: HeartbeatData


class UserMessageCreatedEvent(BaseEvent, frozen=True, kw_only=True):
    event: ClassVar[str] = "user_message_created"
    data: UserMessageCreatedData


class ThinkingEvent(BaseEvent, frozen=True, kw_only=True):
    event: ClassVar[str] = "thinking"
    data: ThinkingData


class ContentEvent(BaseEvent, frozen=True, kw_only=True):
    event: ClassVar[str] = "content"
    data: ContentData


class ToolUseStartEvent(BaseEvent, frozen=True, kw_only=True):
    event: ClassVar[str] = "tool_use_start"
    data: ToolUseStartData


class ToolUseParameterDeltaEvent(BaseEvent, frozen=True, kw_only=True):
    event: ClassVar[str] = "tool_use_parameter_delta"
    data: ToolUseParameterDeltaData


class ToolUseParameterStreamingCompleteEvent(BaseEvent, frozen=True, kw_only=True):
    event: ClassVar[str] = "tool_use_parameter_streaming_complete"
    data: ToolUseParameterStreamingCompleteData


class ToolExecutionStartEvent(BaseEvent, frozen=True, kw_only=True):
    event: ClassVar[str] = "tool_execution_start"
    data: ToolExecutionStartData


class ToolExecutionCompleteEvent(BaseEvent, frozen=True, kw_only=True):
    event: ClassVar[str] = "tool_execution_complete"
    data: ToolExecutionCompleteData


class PermissionEvent(BaseEvent, frozen=True, kw_only=True):
    event: ClassVar[str] = "permission"
    data: PermissionData


class NotificationEvent(BaseEvent, frozen=True, kw_only=True):
    event: ClassVar[str] = "notification"
    data: NotificationData


class SessionCreatedEvent(BaseEvent, frozen=True, kw_only=True):
    event: ClassVar[str] = "session_created"
    data: SessionCreatedData


class SessionDeletedEvent(BaseEvent, frozen=True, kw_only=True):
    event: ClassVar[str] = "session_deleted"
    data: SessionDeletedData


class ErrorEvent(BaseEvent, frozen=True, kw_only=True):
    event: ClassVar[str] = "error"
    data: ErrorData


class CompleteEvent(BaseEvent, frozen=True, kw_only=True):
    event: ClassVar[str] = "complete"
    data: CompleteData


class UnknownEvent(BaseEvent, frozen=True, kw_only=True):
    """An event with a name this client does not know (``rate_limit_error``,
    ``tool``, ...), or whose data is not JSON or does not fit its schema.

    ``data`` is the parsed JSON when the data is valid JSON, else the text.
    """

    event: str
    data: Any = None

    @property
    def session_id(self) -> str | None:
        value = self.data.get("sessionId") if isinstance(self.data, dict) else None
        return value if isinstance(value, str) and value else None

    @property
    def parent_tool_call_id(self) -> str | None:
        value = self.data.get("parentToolCallId") if isinstance(self.data, dict) else None
        return value if isinstance(value, str) and value else None


MixEvent: TypeAlias = (
    ConnectedEvent
    | HeartbeatEvent
    | UserMessageCreatedEvent
    | ThinkingEvent
    | ContentEvent
    | ToolUseStartEvent
    | ToolUseParameterDeltaEvent
    | ToolUseParameterStreamingCompleteEvent
    | ToolExecutionStartEvent
    | ToolExecutionCompleteEvent
    | PermissionEvent
    | NotificationEvent
    | SessionCreatedEvent
    | SessionDeletedEvent
    | ErrorEvent
    | CompleteEvent
    | UnknownEvent
)

_SSE_EVENT_CLASSES: Final[dict[str, type[BaseEvent]]] = {
    cls.event: cls for cls in get_args(MixEvent) if cls is not UnknownEvent
}
"""Event name -> its class in :data:`MixEvent`."""
# event name -> (payload decoder, event class); each built on first use, then reused.
_SSE_EVENT_DECODERS: dict[str, tuple[msgspec.json.Decoder[Any], type[BaseEvent]]] = {}


def _sse_entry(name: str) -> tuple[msgspec.json.Decoder[Any], type[BaseEvent]] | None:
    """The decoder of event ``name``: the type of its class's ``data`` field."""
    cls = _SSE_EVENT_CLASSES.get(name)
    if cls is None:
        return None  # an unknown name: one dict miss, however often it comes
    data_type = get_type_hints(cls)["data"]
    entry = _SSE_EVENT_DECODERS[name] = (msgspec.json.Decoder(data_type, strict=False), cls)
    return entry


_SSE_ANY_DECODER: msgspec.json.Decoder[Any] = msgspec.json.Decoder()


def _sse_unknown(frame: ServerSentEvent) -> UnknownEvent:
    data: Any
    try:
        data = _SSE_ANY_DECODER.decode(frame.data)
    except msgspec.DecodeError:
        data = frame.data.decode("utf-8", "replace")
    return UnknownEvent(event=frame.event, data=data, id=frame.id)


def decode_event(frame: ServerSentEvent) -> MixEvent:
    """Decode a frame into its typed event; never raises.

    The event is chosen by the frame's ``event:`` name (not by ``data.type``).
    Unknown names, data that is not JSON and data that does not fit the
    event's schema give an :class:`UnknownEvent`.
    """
    entry = _SSE_EVENT_DECODERS.get(frame.event) or _sse_entry(frame.event)
    if entry is None:
        return _sse_unknown(frame)
    decoder, cls = entry
    try:
        data = decoder.decode(frame.data)
    except msgspec.DecodeError:  # includes ValidationError
        return _sse_unknown(frame)
    return cls(data=data, id=frame.id)  # type: ignore[return-value]


# ---------------------------------------------------------------------------
# Tool input accumulation
# ---------------------------------------------------------------------------


def parse_tool_input(raw: str) -> Any:
    """Parse a tool call's JSON input; blank gives ``{}``, invalid JSON the raw text."""
    if not raw.strip():
        return {}
    try:
        return _SSE_ANY_DECODER.decode(raw)
    except msgspec.DecodeError:
        return raw


class ToolInputAccumulator:
    """Joins ``tool_use_parameter_delta`` input pieces per tool call id.

    ``feed(event)`` accepts any event and uses the delta and
    streaming-complete ones; the complete event's full ``input``, when not
    empty, replaces the joined pieces.  Memory and time are linear.
    """

    __slots__ = ("_pieces",)

    def __init__(self) -> None:
        self._pieces: dict[str, list[str]] = {}

    def add(self, tool_call_id: str, piece: str) -> None:
        """Append one input piece for ``tool_call_id``."""
        self._pieces.setdefault(tool_call_id, []).append(piece)

    def feed(self, event: MixEvent) -> None:
        """Record the input carried by ``event``, if it carries any."""
        if isinstance(event, ToolUseParameterDeltaEvent):
            self.add(event.data.tool_call_id, event.data.input)
        elif isinstance(event, ToolUseParameterStreamingCompleteEvent):
            if event.data.input:
                self._pieces[event.data.id] = [event.data.input]
            else:
                self._pieces.setdefault(event.data.id, [])

    def __contains__(self, tool_call_id: object) -> bool:
        return tool_call_id in self._pieces

    @property
    def tool_call_ids(self) -> list[str]:
        """Ids with recorded input, in first-seen order."""
        return list(self._pieces)

    def raw(self, tool_call_id: str) -> str:
        """The input text joined so far ("" if none)."""
        pieces = self._pieces.get(tool_call_id)
        if not pieces:
            return ""
        if len(pieces) > 1:
            pieces[:] = ["".join(pieces)]
        return pieces[0]

    def parsed(self, tool_call_id: str) -> Any:
        """The input parsed as JSON (see :func:`parse_tool_input`)."""
        return parse_tool_input(self.raw(tool_call_id))

    def pop(self, tool_call_id: str) -> Any:
        """Like :meth:`parsed`, then forget the tool call."""
        value = self.parsed(tool_call_id)
        self._pieces.pop(tool_call_id, None)
        return value


class ReconnectedData(msgspec.Struct, frozen=True, kw_only=True):
    attempts: int = 0
    """Connection attempts this reconnect took."""
    last_event_id: str | None = None
    """The id sent as ``Last-Event-ID`` (the server may not replay from it)."""
    reason: str = ""


class Reconnected(BaseEvent, frozen=True, kw_only=True):
    """Not a server event: the stream was lost and reopened, so events may be missing.

    Recover what was missed from :meth:`AsyncMix.get_session_messages`.
    """

    event: ClassVar[str] = "reconnected"
    data: ReconnectedData


StreamEvent = Union[MixEvent, Reconnected]  # noqa: UP007 (a runtime alias on 3.10)
"""What :class:`EventStream` yields."""

_BROADCAST_NAMES: Final = frozenset({"session_created", "session_deleted"})
DEFAULT_IDLE_TIMEOUT: Final = 90.0
"""Twice the server's 45 s heartbeat."""


def _buffered(content: aiohttp.StreamReader) -> bytes:
    """Bytes aiohttp received but did not hand out before it recorded a read error."""
    read_nowait = getattr(content, "_read_nowait", None)  # readany raises before these
    if read_nowait is None:
        return b""
    try:
        data = read_nowait(-1)
    except Exception:
        return b""
    return data if isinstance(data, bytes) else b""


_RECONNECT_FLOOR: Final = 0.1
"""No reconnect attempt starts sooner than this after a failed one (``retry: 0``)."""
_RECONNECT_BASE: Final = 0.5
_RECONNECT_CAP: Final = 8.0
_IMMEDIATE_EVERY: Final = 1.0
"""At most one immediate reopen per this many seconds (a server that drops at once)."""


def _stream_timeout(
    value: Timeout | _NotGiven, idle_timeout: float | None
) -> aiohttp.ClientTimeout:
    """A stream's timeout: never a total; ``timeout=`` bounds connecting and silences."""
    if isinstance(value, _NotGiven):
        return aiohttp.ClientTimeout(total=None, connect=10, sock_read=idle_timeout)
    if isinstance(value, aiohttp.ClientTimeout):
        if value.total is not None:
            raise InvalidInputError(
                "a stream has no total timeout (it would cut a healthy stream): use connect="
                " and sock_read= of aiohttp.ClientTimeout, or idle_timeout="
            )
        if value.sock_read is None and idle_timeout is not None:
            return aiohttp.ClientTimeout(
                total=None,
                connect=value.connect,
                sock_connect=value.sock_connect,
                sock_read=idle_timeout,
            )
        return value
    if value is None:
        return aiohttp.ClientTimeout(total=None, sock_read=idle_timeout)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise InvalidInputError(f"timeout must be a positive number of seconds, not {value!r}")
    seconds = float(value)
    idle = seconds if idle_timeout is None else min(seconds, idle_timeout)
    return aiohttp.ClientTimeout(total=None, connect=seconds, sock_read=idle)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class EventStream:
    """The Server-Sent-Events stream of one session (``GET /stream?sessionId=...``).

    An async context manager and async iterator of typed events::

        async with mix.stream_events(session_id) as events:
            async for event in events:
                if isinstance(event, ContentEvent):
                    print(event.data.content, end="")

    When the connection drops (or nothing, not even a heartbeat, arrives for
    ``idle_timeout`` seconds) it reconnects, sending ``Last-Event-ID``, and yields a
    :class:`Reconnected` marker before the first event of the new connection: the server
    does not replay, so events may have been lost. After a connection that delivered
    events, the first reopen is immediate (at most one immediate reopen a second); attempts
    that fail (an error status, no connection, or a 200 that delivers no event) back off
    with jitter from 0.5 s doubling up to 8 s, never more than the server's ``retry:`` and
    never less than 0.1 s. After ``max_reconnects`` failed attempts in a row it raises
    :class:`APIConnectionError`. A 200 that is not ``text/event-stream`` raises
    :class:`ResponseValidationError`. ``session_created``/``session_deleted`` of other
    sessions (broadcast to every stream) are dropped unless ``include_other_sessions=True``.

    :meth:`aclose` (or leaving the ``async with``) closes the connection at once, also
    from another task: a consumer waiting for the next event stops (``StopAsyncIteration``)
    and nothing more is yielded. Closing the client raises :class:`ClientClosedError` in
    that consumer instead.
    """

    def __init__(
        self,
        client: AsyncMix,
        session_id: str,
        *,
        last_event_id: str | None = None,
        reconnect: bool = True,
        include_other_sessions: bool = False,
        idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
        max_reconnects: int = 5,
        max_event_size: int | None = None,
        opts: RequestOptions | None = None,
    ) -> None:
        _check_str(session_id, "session_id")
        if last_event_id is not None:
            _check_str(last_event_id, "last_event_id", empty=True)
        _check_bool(reconnect, "reconnect")
        _check_bool(include_other_sessions, "include_other_sessions")
        _check_number(idle_timeout, "idle_timeout", optional=True)
        _check_int(max_reconnects, "max_reconnects")
        if max_event_size is None:
            max_event_size = client._max_event_size
        self._max_event_size = _check_int(max_event_size, "max_event_size", 1)
        self.session_id = session_id
        self._path = _stream_events.path
        self._query = "sessionId=" + quote(session_id, safe="")
        self._client = client
        self.reconnect = reconnect
        self.include_other_sessions = include_other_sessions
        self.max_reconnects = max_reconnects
        self._opts: RequestOptions = dict(opts or {})  # type: ignore[assignment]
        self._opts["timeout"] = _stream_timeout(
            self._opts.pop("timeout", _NOT_GIVEN),
            idle_timeout,
        )
        self._resp: aiohttp.ClientResponse | None = None
        self._decoder = SSEDecoder(last_event_id, max_event_size=self._max_event_size)
        self._pending: list[StreamEvent] = []  # decoded, not yet handed out from _next
        self._next = 0
        self._closed = False  # ended: hand out what is pending, then stop
        self._shut = False  # closed by aclose() or the client: hand out nothing more
        self._close_error: MixError | None = None  # raised once after the client closed
        self._waiter: asyncio.Future[None] | None = None  # the reconnect wait
        self._connected_here = False
        self._last_error = False
        self._delivered = False  # this connection dispatched at least one event
        self._is_retry = False  # this connection was opened by a reconnect
        self._failures = 0  # reconnect attempts in a row that delivered nothing
        self._attempts = 0  # attempts since the last connection that delivered
        self._reason = ""
        self._immediate_at = -_IMMEDIATE_EVERY  # loop time of the last immediate reopen
        self._marker = False  # yield Reconnected before the next event
        self._sent_id: str | None = None  # Last-Event-ID sent when this connection opened
        self._failure: BaseException | None = None  # read error held back behind buffered bytes
        self._reconnecting = False  # between a drop and the next connection
        self.reconnects = 0
        """How many times the stream was reopened."""
        client._pool.streams.add(self)

    @property
    def last_event_id(self) -> str | None:
        """The id of the last event dispatched (sent as ``Last-Event-ID`` on reconnect)."""
        return self._decoder.last_event_id

    async def __aenter__(self) -> Self:
        try:
            await self._open(first=True)
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        # Iterated without ``async with`` and dropped (a ``break``): close the connection.
        resp = getattr(self, "_resp", None)
        if resp is not None:
            resp.close()

    async def aclose(self) -> None:
        """Close the connection; iteration ends, also for a consumer waiting in another task."""
        self._shutdown(None)

    def _shutdown(self, error: MixError | None) -> None:
        if not self._shut and error is not None and not self._closed:
            self._close_error = error
        self._shut = self._closed = True
        self._pending = []
        self._next = 0
        waiter = self._waiter
        if waiter is not None:
            _wake(waiter)
        resp, self._resp = self._resp, None
        if resp is not None:
            resp.close()  # a reader waiting in readany() wakes with a connection error
        self._client._pool.streams.discard(self)

    def _end(self) -> NoReturn:
        error, self._close_error = self._close_error, None
        if error is not None:
            raise error
        raise StopAsyncIteration

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> StreamEvent:
        while True:
            index = self._next  # (aclose() empties _pending and sets _closed)
            if index < len(self._pending):
                self._next = index + 1
                return self._pending[index]
            if self._closed:
                self._end()
            resp = self._resp
            if resp is None:
                if self._reconnecting:  # a reconnect was cancelled midway: go on with it
                    await self._reopen(False, None)
                else:
                    await self._open(first=True)
                continue
            failure, self._failure = self._failure, None
            if failure is not None:
                await self._lost(failure)
                continue
            try:
                chunk = await resp.content.readany()
            except _TRANSPORT_ERRORS as exc:
                if self._shut:
                    continue
                # aiohttp raises a read error (a drop, the idle timeout) before handing
                # out bytes it already received, so a slow reader would lose the last
                # events: decode those first and handle the error after them.
                chunk = _buffered(resp.content)
                if not chunk:
                    await self._lost(exc)
                    continue
                self._failure = exc
            if not chunk:
                if not self._shut:
                    await self._lost(None)
                continue
            try:
                frames = self._decoder.feed(chunk)
            except EventTooLargeError:
                self._shutdown(None)
                raise
            if not frames:
                continue
            # One pass per chunk, no per-event bookkeeping beyond decoding.
            events: list[StreamEvent] = []
            if not self._delivered:
                self._delivered = True
                self._failures = 0
                if self._marker:
                    self._marker = False
                    self.reconnects += 1
                    events.append(
                        Reconnected(
                            data=ReconnectedData(
                                attempts=self._attempts,
                                last_event_id=self._sent_id,
                                reason=self._reason,
                            )
                        )
                    )
                    self._reason = ""
                self._attempts = 0
            own = self.session_id
            keep_all = self.include_other_sessions
            for frame in frames:
                event = decode_event(frame)
                if not keep_all and frame.event in _BROADCAST_NAMES and event.session_id != own:
                    continue  # another session's lifecycle event, broadcast to every stream
                events.append(event)
            self._pending = events
            self._next = 0
            if not self._connected_here:
                self._connected_here = any(frame.event == "connected" for frame in frames)
            self._last_error = frames[-1].event == "error"

    async def _open(self, *, first: bool) -> None:
        if self._close_error is not None:
            self._end()
        if self._shut and not first:
            return
        self._shut = self._closed = False
        self._client._pool.streams.add(self)
        extra = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        last_id = self._decoder.last_event_id
        if last_id:
            extra["Last-Event-ID"] = last_id
        opts = self._opts
        if not first:
            opts = {**opts, "max_retries": 0}
        try:
            resp, _ = await _send(
                self._client,
                _stream_events,
                self._path,
                opts,
                query=self._query,
                stream=True,
                extra_headers=extra,
                streams_pool=True,
            )
        except ClientClosedError:
            self._close_error = None
            self._shutdown(None)
            raise
        if self._shut:  # closed while connecting
            resp.close()
            return
        mime = resp.headers.get("Content-Type")
        if mime is not None and resp.content_type != "text/event-stream":
            body = b""
            with contextlib.suppress(*_TRANSPORT_ERRORS):  # the start of the page, if it comes
                body = await asyncio.wait_for(resp.content.read(2048), 1.0)
            resp.close()
            self._shutdown(None)
            url = str(resp.url)
            raise ResponseValidationError(
                f"GET {url} -> {resp.status}: expected an event stream, got {mime!r}"
                " (a proxy or a web page answering instead of the Mix server?)",
                cause=ValueError(f"Content-Type {mime!r} is not text/event-stream"),
                body=body,
                status_code=resp.status,
                headers=resp.headers,
                method="GET",
                url=url,
                raw_response=resp,
            )
        self._resp = resp
        self._failure = None
        self._sent_id = last_id
        retry = self._decoder.retry
        self._decoder = SSEDecoder(last_id, max_event_size=self._max_event_size)
        self._decoder.retry = retry
        self._connected_here = False
        self._last_error = False
        self._delivered = False
        self._is_retry = not first

    def _delay(self, failures: int) -> float:
        """Wait before attempt number ``failures + 1`` of a reconnect (failures >= 1)."""
        cap = _RECONNECT_CAP
        retry = self._decoder.retry
        if retry is not None:
            cap = min(cap, retry / 1000)
        delay: float = min(_RECONNECT_BASE * 2.0 ** min(failures - 1, 16), cap)
        return max(delay * (0.5 + 0.5 * random.random()), _RECONNECT_FLOOR)

    async def _sleep(self, delay: float) -> None:
        """Sleep ``delay`` seconds unless :meth:`aclose` ends the wait first."""
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        sleeper = asyncio.ensure_future(asyncio.sleep(delay))
        sleeper.add_done_callback(lambda _: _wake(waiter))
        try:
            await waiter
        finally:
            self._waiter = None
            sleeper.cancel()

    async def _lost(self, exc: BaseException | None) -> None:
        resp, self._resp = self._resp, None
        if resp is not None:
            resp.close()
        if self._shut:
            return
        url = f"{self._client.server_url}/stream?{self._query}"
        if self._last_error and not self._connected_here:
            # e.g. an unknown session: the server sends one error event and closes.
            self._closed = True
            return
        if not self.reconnect:
            self._closed = True
            if exc is None:
                return
            error, _ = _connection_error(exc, "GET", url)
            raise error from exc
        reason = "connection closed" if exc is None else f"{type(exc).__name__}: {exc}"
        loop = asyncio.get_running_loop()
        immediate = False
        if self._delivered:
            self._reason = reason
            immediate = loop.time() - self._immediate_at >= _IMMEDIATE_EVERY
        else:
            self._reason = self._reason or reason
            if self._is_retry:
                self._failures += 1  # a 200 that delivered nothing: a failed attempt
        self._delivered = False
        self._reconnecting = True
        await self._reopen(immediate, exc)

    async def _reopen(self, immediate: bool, last: BaseException | None) -> None:
        """Reconnect: attempts with backoff until one connects (or too many failed)."""
        loop = asyncio.get_running_loop()
        url = f"{self._client.server_url}/stream?{self._query}"
        while True:
            if self._shut:  # closed by aclose() during an attempt
                self._reconnecting = False
                return
            if self._failures >= self.max_reconnects:
                self._closed = True
                self._reconnecting = False
                raise APIConnectionError(
                    f"GET {url}: stream lost ({self._reason or 'connection closed'}); "
                    f"{self._failures} reconnect attempts failed",
                    method="GET",
                    url=url,
                ) from last
            if immediate:
                immediate = False
                self._immediate_at = loop.time()
            else:
                await self._sleep(self._delay(max(self._failures, 1)))
                if self._shut:  # closed by aclose() while waiting
                    return
            self._attempts += 1
            try:
                await self._open(first=False)
            except APIStatusError as error:
                if error.status_code < 500 and error.status_code not in (408, 429):
                    self._closed = True
                    self._reconnecting = False
                    raise
                last = error
                self._failures += 1
                continue
            except APIConnectionError as error:
                if isinstance(error, ClientClosedError):
                    self._reconnecting = False
                    raise
                last = error
                self._failures += 1
                continue
            break
        self._reconnecting = False
        if self._shut:
            return
        self._marker = True


# ---------------------------------------------------------------------------
# 5. Turns: one message's events and result (query, send_and_wait)
# ---------------------------------------------------------------------------
#
# The rows the server stored are the truth; the stream is the fast path. For each session
# with turns in flight, a client keeps one ledger (_Runs): one event stream read by one
# task, and the turns in the order their messages were sent (the server starts runs in
# that order). A run start (user_message_created) goes to the first waiting turn whose
# text it carries; the events that follow go to that turn until the run's end. When the
# stream's evidence is missing or ambiguous (a reconnect, a start that skipped a turn,
# events of a run nobody saw start, a silence), one check reads the export and settles
# every waiting turn of the session from the stored rows: which run is whose, and which
# runs ended. A run is claimed by at most one turn.


class TurnRecoveredData(msgspec.Struct, frozen=True, kw_only=True):
    finish_reason: str = ""
    """The stored ``finishReason`` of the run's last message: ``end_turn``, ``max_tokens``,
    ``canceled``, ``error``, ``permission_denied``, ... (``unknown`` when a later run began
    without one)."""
    content: str = ""
    """The run's answer as stored (main agent, all its assistant messages)."""
    message_id: str | None = None
    """The run's last assistant message."""
    user_message_id: str | None = None
    """The run's user message."""
    reasoning: str | None = None


class TurnRecovered(BaseEvent, frozen=True, kw_only=True):
    """Not a server event: the last event of a turn whose end the stream did not show.

    When the stream lost the run's end (a drop, events dropped while the reader lagged, a
    silence), the turn reads ``GET /api/sessions/{id}/export``; once the run's last message
    there has a final ``finishReason``, :meth:`AsyncMix.query` yields this marker and ends
    (or raises :class:`AgentError` when the run failed or was cancelled).
    """

    event: ClassVar[str] = "turn_recovered"
    data: TurnRecoveredData


TurnEvent = Union[MixEvent, Reconnected, TurnRecovered]  # noqa: UP007 (a runtime alias on 3.10)
"""What :meth:`AsyncMix.query` yields."""


class TurnToolCall(msgspec.Struct, kw_only=True):
    """A tool call seen during a turn."""

    id: str
    name: str = ""
    input: Any = None
    """The input decoded from the streamed JSON (the raw text if it is not JSON)."""
    raw_input: str = ""
    result: str | None = None
    is_error: bool = False
    finished: bool = False
    parent_tool_call_id: str | None = None
    """Set for calls made by a sub-agent."""


class Turn(msgspec.Struct, kw_only=True):
    """Everything one :meth:`AsyncMix.send_and_wait` turn produced."""

    session_id: str
    text: str = ""
    """The assistant's full answer (main agent only)."""
    thinking: str = ""
    tool_calls: list[TurnToolCall] = []
    permissions: list[PermissionEvent] = []
    notifications: list[NotificationEvent] = []
    errors: list[ErrorEvent] = []
    """Non-fatal error events (retry notices, sub-agent errors)."""
    final: CompleteEvent | None = None
    """The closing ``complete`` event (``None`` when the end was recovered, see ``recovered``).
    For a slash command, a ``complete`` built from the reply (``id`` is ``None``)."""
    reconnects: int = 0
    """How often the stream was reopened; the text was then recovered from the server."""
    recovered: TurnRecovered | None = None
    """Set when the stream lost the run's end and it was read from the server instead."""
    user_message_id: str | None = None
    """The id of this turn's user message (its run's start)."""
    event_count: int = 0
    """How many of the turn's own events arrived."""

    @property
    def events(self) -> int:
        """Deprecated name of :attr:`event_count` (read-only)."""
        import warnings

        warnings.warn("Turn.events is now Turn.event_count", DeprecationWarning, stacklevel=2)
        return self.event_count


_FAILED_FINISH: Final = frozenset({"canceled", "cancelled", "error", "permission_denied"})
_OPEN_FINISH: Final = frozenset({"", "tool_use"})  # the run goes on after a tool_use step
_PLAN_OPEN: Final = "<system-reminder>"
_PLAN_CLOSE: Final = "</system-reminder>"
_CHECK_FIRST: Final = 1.0
"""Seconds of silence (no event of a waiting turn's run) before the stored rows are checked."""
_CHECK_CAP: Final = 8.0
"""The interval between checks doubles while nothing changes, up to this."""
_CHECK_WAITING: Final = 15.0
"""The first check of a run that waits for a permission or an answer to a notification."""
_ORPHANS_MAX: Final = 1000
"""Events of runs nobody saw start, kept until the next check attributes them."""
_FLOORS_MAX: Final = 10_000


def _raise_if_failed(end: TurnRecovered) -> None:
    if end.data.finish_reason in _FAILED_FINISH:
        raise AgentError(
            f"agent run ended ({end.data.finish_reason}) while the stream did not show it",
            event=end,
        )


def _is_fatal(event: ErrorEvent) -> bool:
    """A main-agent error that ends the run (not a retry notice)."""
    data = event.data
    if data.parent_tool_call_id:
        return False
    return not (data.attempt and data.max_attempts and data.attempt < data.max_attempts)


def _is_end(event: StreamEvent) -> bool:
    """The main agent's ``complete``, or an error that ends its run."""
    if isinstance(event, CompleteEvent):
        return not event.data.parent_tool_call_id
    return isinstance(event, ErrorEvent) and _is_fatal(event)


def _is_own_text(stored: str, text: str, plan: bool) -> bool:
    """Whether a stored (or announced) user message is ``text`` as sent: equal but for
    surrounding whitespace, or, in plan mode, followed by the server's reminder."""
    stored, text = stored.strip(), text.strip()
    if stored == text:
        return True
    if not plan or not stored.startswith(text) or not stored.endswith(_PLAN_CLOSE):
        return False
    return stored[len(text) :].lstrip().startswith(_PLAN_OPEN)


def _event_ids(event: StreamEvent) -> tuple[str | None, ...]:
    """The stored ids an event names: its assistant message, tool call, parent tool call."""
    data = event.data
    return (
        getattr(data, "assistant_message_id", None) or getattr(data, "message_id", None),
        getattr(data, "tool_call_id", None) or getattr(data, "id", None),
        getattr(data, "parent_tool_call_id", None),
    )


class _Row(NamedTuple):
    """A stored message, from the export or the messages list."""

    id: str
    role: str
    content: str
    reasoning: str | None
    finish_reason: str | None
    tool_calls: list[ToolCall] | list[ExportToolCall]


def _export_rows(messages: list[ExportMessage]) -> list[_Row]:
    return [
        _Row(m.id, m.role, m.content, m.reasoning, m.finish_reason, m.tool_calls or [])
        for m in messages
    ]


def _list_rows(messages: list[BackendMessage]) -> list[_Row]:
    return [
        _Row(
            m.id,
            m.role or "user",
            m.user_input if m.role in ("user", "") else (m.assistant_response or ""),
            m.reasoning,
            None,
            m.tool_calls or [],
        )
        for m in messages
    ]


def _stored_runs(
    rows: list[_Row], starts: set[str], wanted: Callable[[str], bool]
) -> list[list[_Row]]:
    """Split stored rows into runs. A user row starts a run unless a session callback
    injected it: after a tool row, not announced as a start, and not a waiting turn's text."""
    runs: list[list[_Row]] = []
    after_tool = False
    for row in rows:
        if row.role == "user":
            if not (after_tool and row.id not in starts and not wanted(row.content)):
                runs.append([row])
                after_tool = False
                continue
        else:
            after_tool = row.role == "tool"
        if runs:
            runs[-1].append(row)
    return runs


def _run_end(run: list[_Row], last: bool) -> TurnRecovered | None:
    """The run's end as stored, or ``None`` while it goes on (only the last run can)."""
    answers = [row for row in run if row.role == "assistant"]
    reason = (answers[-1].finish_reason or "") if answers else ""
    if reason in _OPEN_FINISH:
        if last:
            return None
        reason = reason or "unknown"
    reasoning = "".join(row.reasoning for row in answers if row.reasoning)
    return TurnRecovered(
        data=TurnRecoveredData(
            finish_reason=reason,
            content="".join(row.content for row in answers),
            message_id=answers[-1].id if answers else None,
            user_message_id=run[0].id,
            reasoning=reasoning or None,
        )
    )


def _run_ids(run: list[_Row]) -> set[str]:
    ids = {row.id for row in run}
    ids.update(call.id for row in run for call in row.tool_calls)
    return ids


class _Slot:
    """One turn in its session's ledger: what it sent, which run is its, its events."""

    __slots__ = (
        "closed",
        "done",
        "events",
        "floor",
        "gap",
        "plan",
        "rows",
        "sent",
        "text",
        "user_message_id",
        "waiting",
    )

    def __init__(self, text: str, plan: bool, floor: str | None) -> None:
        self.text = text
        self.plan = plan
        self.floor = floor  # a user row stored before this turn's message was sent
        self.sent = False  # the server accepted the message
        self.user_message_id: str | None = None  # the start of this turn's run, once known
        self.events: asyncio.Queue[TurnEvent | BaseException | None] = asyncio.Queue()
        self.done = False  # its run's end was handed over
        self.closed = False  # the turn is over for its consumer
        self.gap = False  # events of its run may be missing: complete it from stored rows
        self.waiting = False  # its run waits for a permission or an answer
        self.rows: list[_Row] | None = None  # its ended run's rows, when a check read them

    def put(self, item: TurnEvent | BaseException) -> None:
        if not self.closed and not self.done:
            self.events.put_nowait(item)
            if isinstance(item, (BaseException, TurnRecovered)) or (
                not isinstance(item, Reconnected) and _is_end(item)
            ):
                self.done = True


class _Runs:
    """The runs of one session as one client sees them (see the section's comment)."""

    def __init__(self, mix: AsyncMix, session_id: str) -> None:
        self.mix = mix
        self.session_id = session_id
        self.members = 0  # turns using this ledger
        self.slots: list[_Slot] = []  # in send order, until their run ends (or they leave)
        self.owner: _Slot | None = None  # whose run the stream shows going on
        self.foreign = False  # the run going on is not this client's
        self.starts: set[str] = set()  # run starts announced on the stream
        self.claimed: set[str] = set()  # run starts claimed by this client's turns
        self.orphans: list[StreamEvent] = []  # events of a run nobody saw start
        self.no_export = False  # an older server: runs cannot be checked
        self.send_lock = asyncio.Lock()
        loop = asyncio.get_running_loop()
        self.connected: asyncio.Future[ConnectedEvent] = loop.create_future()
        self.urgent = asyncio.Event()  # the stream's evidence is missing: check at once
        self.active_at = loop.time()  # the last event of a run on the stream
        self.reopened_at = -math.inf  # the last reconnect
        self.stream = mix.stream_events(session_id)
        self.tasks = [asyncio.ensure_future(self._read()), asyncio.ensure_future(self._watch())]
        # A row stored before the first message is sent: runs before it are not ours.
        self.baseline: asyncio.Future[None] | None = None
        if session_id not in mix._floors:
            self.baseline = asyncio.ensure_future(self._baseline())
            self.tasks.append(self.baseline)

    async def _baseline(self) -> None:
        with contextlib.suppress(MixError):
            messages = await self.mix.get_session_messages(self.session_id)
            if self.session_id not in self.mix._floors:  # else a newer one came meanwhile
                users = [m.id for m in messages if m.role in ("user", "")]
                self._floor(users[-1] if users else "")

    # -- turns come and go -------------------------------------------------

    def join(self, text: str, plan: bool) -> _Slot:
        slot = _Slot(text, plan, self.mix._floors.get(self.session_id))
        self.slots.append(slot)
        return slot

    def leave(self, slot: _Slot | None) -> None:
        """A turn is over for its consumer. A turn whose run may still start stays as a
        placeholder, so that nobody else claims that run; the last one out closes."""
        self.members -= 1
        if slot is not None:
            slot.closed = True
            if slot.done or not slot.sent or slot.user_message_id is not None:
                with contextlib.suppress(ValueError):
                    self.slots.remove(slot)
        if self.members <= 0:
            self.close(None)

    def close(self, error: BaseException | None) -> None:
        """Stop reading: every turn still waiting gets ``error``."""
        if self.mix._ledgers.get(self.session_id) is self:
            del self.mix._ledgers[self.session_id]
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()
        self.stream._shutdown(None)
        error = error or ClientClosedError("the turn's event stream was closed")
        if not self.connected.done():
            self.connected.set_exception(error)
            self.connected.exception()  # retrieved: a turn that left may never read it
        for slot in self.slots:
            slot.put(error)
        self.slots = []

    def _floor(self, row_id: str) -> None:
        floors = self.mix._floors
        floors.pop(self.session_id, None)
        floors[self.session_id] = row_id
        if len(floors) > _FLOORS_MAX:
            del floors[next(iter(floors))]

    def _finish(self, slot: _Slot) -> None:
        with contextlib.suppress(ValueError):
            self.slots.remove(slot)

    # -- the stream --------------------------------------------------------

    async def _read(self) -> None:
        try:
            async with self.stream as events:
                async for event in events:
                    if not self.connected.done():
                        if isinstance(event, ConnectedEvent):
                            self.connected.set_result(event)
                        elif isinstance(event, ErrorEvent):
                            self.close(await self._refused(event))
                            return
                        continue
                    self._dispatch(event)
            self.close(APIConnectionError(f"event stream of session {self.session_id!r} ended"))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.close(exc)

    async def _refused(self, event: ErrorEvent) -> MixError:
        """The stream refused the session: the typed error of the session's own route."""
        try:
            await self.mix.get_session(self.session_id)
        except MixError as exc:
            return exc
        return AgentError(f"stream error: {event.data.error}", event=event)

    def _dispatch(self, event: StreamEvent) -> None:
        loop_time = asyncio.get_running_loop().time
        if isinstance(event, Reconnected):
            # Events were lost: whose run goes on is unknown until the stored rows say.
            self.owner, self.foreign = None, False
            self.reopened_at = loop_time()
            for slot in self.slots:
                slot.gap = True
                slot.put(event)
            self.urgent.set()
            return
        if isinstance(
            event, (HeartbeatEvent, ConnectedEvent, SessionCreatedEvent, SessionDeletedEvent)
        ):
            if isinstance(event, HeartbeatEvent):
                for slot in self.slots:
                    slot.put(event)
            return
        self.active_at = loop_time()
        if isinstance(event, UserMessageCreatedEvent) and not event.data.parent_tool_call_id:
            self._start(event)
            return
        owner = self.owner
        if owner is not None:
            owner.waiting = isinstance(event, (PermissionEvent, NotificationEvent))
            owner.put(event)
            if _is_end(event):
                self.owner = None
                self._finish(owner)
        elif self.foreign:
            if _is_end(event):
                self.foreign = False
        elif self.no_export:
            # An older server: no run marks to trust, no export to check. The oldest
            # waiting turn takes what comes.
            head = next((s for s in self.slots if s.sent and not s.done), None)
            if head is not None:
                head.put(event)
                if _is_end(event):
                    self._finish(head)
        elif self.slots:
            if len(self.orphans) >= _ORPHANS_MAX:
                del self.orphans[0]
            self.orphans.append(event)
            if not isinstance(event, UnknownEvent):
                self.urgent.set()

    def _start(self, event: UserMessageCreatedEvent) -> None:
        mid = event.data.message_id
        self.starts.add(mid)
        self._floor(mid)
        if self.owner is not None:
            self.owner.gap = True  # its end was lost: the next run started
            self.urgent.set()
        content = event.data.content
        skipped = False
        for slot in self.slots:
            if slot.user_message_id is not None or slot.done:
                continue
            if _is_own_text(content, slot.text, slot.plan):
                slot.user_message_id = mid
                self.claimed.add(mid)
                self.owner, self.foreign = slot, False
                slot.put(event)
                if skipped:
                    self.urgent.set()
                return
            skipped = skipped or slot.sent
        self.owner, self.foreign = None, True

    # -- checks against the stored rows -----------------------------------

    def _next_check(self, interval: float, checked_at: float) -> float | None:
        """Loop time of the next check of a silent run (``None``: no turn waits)."""
        pending = [s for s in self.slots if s.sent and not s.done]
        if not pending:
            return None
        first = _CHECK_WAITING if any(s.waiting for s in pending) else _CHECK_FIRST
        return max(self.active_at + first, checked_at + interval)

    async def _watch(self) -> None:
        """Check the stored rows at once when the stream's evidence is missing, and when a
        waiting turn's run is silent (the interval doubling while nothing changes)."""
        loop = asyncio.get_running_loop()
        interval, checked_at = _CHECK_FIRST, -math.inf
        while not self.no_export:
            at = self._next_check(interval, checked_at)
            if not self.urgent.is_set():
                # With no turn waiting yet, look again in a while (a message may be sent).
                timeout = _CHECK_FIRST if at is None else max(at - loop.time(), 0.0)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.urgent.wait(), timeout)
            if self.urgent.is_set():
                self.urgent.clear()
                interval = _CHECK_FIRST
            else:
                at = self._next_check(interval, checked_at)
                if at is None or at > loop.time():
                    continue  # the run showed itself meanwhile
            active, checked_at = self.active_at, loop.time()
            await self._check()
            quiet = self.active_at == active
            interval = min(interval * 2, _CHECK_CAP) if quiet else _CHECK_FIRST

    async def _check(self) -> None:
        try:
            export = await self.mix.export_session(self.session_id)
        except NotFoundError:
            self.no_export = True  # an older server: nothing to check against
            orphans, self.orphans = self.orphans, []
            for event in orphans:
                self._dispatch(event)
            return
        except (APIConnectionError, APIStatusError) as exc:
            if isinstance(exc, APIStatusError) and (
                exc.status_code < 500 and exc.status_code not in (408, 429)
            ):
                self.close(exc)
            return  # a passing failure: checked again at the next interval
        self._settle(_export_rows(export.messages))

    def _settle(self, rows: list[_Row]) -> None:
        """Give each waiting turn its run as stored, and end the turns whose run ended."""
        waiting = [s for s in self.slots if s.sent and not s.done]

        def wanted(text: str) -> bool:
            return any(
                s.user_message_id is None and _is_own_text(text, s.text, s.plan) for s in waiting
            )

        runs = _stored_runs(rows, self.starts, wanted)
        taken = set(self.claimed) | {s.user_message_id for s in waiting if s.user_message_id}
        if runs:
            self._floor(runs[-1][0].id)
            last = runs[-1]
            if self.owner is None and _run_end(last, True) is None and last[0].id not in taken:
                self.foreign = True  # the run going on is nobody's here (unless settled below)
        index = {run[0].id: i for i, run in enumerate(runs)}
        run_of = {row.id: i for i, run in enumerate(runs) for row in run}
        after = -1  # runs start in send order: each turn's run follows the previous one's
        orphans, self.orphans = self.orphans, []
        for slot in waiting:
            if slot.user_message_id is not None:
                found = index.get(slot.user_message_id)
                if found is not None:
                    after = max(after, found)
                    self._settled(slot, runs[found], found == len(runs) - 1, orphans)
                continue
            floor = -1 if not slot.floor else run_of.get(slot.floor)
            if floor is None:
                continue  # the floor row is gone (rewound): nothing safe to match
            matches = [
                i
                for i in range(max(after, floor) + 1, len(runs))
                if runs[i][0].id not in taken
                and runs[i][0].id not in self.starts
                and _is_own_text(runs[i][0].content, slot.text, slot.plan)
            ]
            if not matches:
                continue  # not started yet (queued), as far as the server stored
            same = [
                s
                for s in waiting
                if s.user_message_id is None
                and _is_own_text(slot.text, s.text, s.plan or slot.plan)
            ]
            if slot.floor is None and len(matches) > len(same):
                slot.put(
                    AmbiguousRunError(
                        f"session {self.session_id!r} stores {len(matches)} runs of the text"
                        " this turn sent and the stream did not show which one is its own"
                    )
                )
                self._finish(slot)
                continue
            found = matches[0]
            run = runs[found]
            after = found
            slot.user_message_id = run[0].id
            taken.add(run[0].id)
            self.claimed.add(run[0].id)
            slot.gap = True
            self._settled(slot, run, found == len(runs) - 1, orphans)

    def _settled(
        self, slot: _Slot, run: list[_Row], last: bool, orphans: list[StreamEvent]
    ) -> None:
        """Hand a turn what the stream lost of its run, then its end (or the stream)."""
        ids = _run_ids(run)
        mine = [e for e in orphans if any(i in ids for i in _event_ids(e) if i)]
        if last:
            mine += [e for e in orphans if not any(_event_ids(e))]
        for event in mine:
            if not slot.done:
                slot.put(event)
        if slot.done:
            self._finish(slot)
            return
        end = _run_end(run, last)
        if end is None:
            if self.owner is None:
                self.owner, self.foreign = slot, False  # its run goes on: the stream shows it
            return
        quiet = asyncio.get_running_loop().time() - self.active_at
        live = self.active_at > self.reopened_at and quiet < _CHECK_FIRST
        if last and live and self.owner in (None, slot):
            # The stored rows run ahead of a live stream: its end is on the way (if lost,
            # the next check hands it over).
            self.owner, self.foreign = slot, False
            return
        if self.owner is slot:
            self.owner = None
        slot.rows = run  # read at its end: what the turn is completed from
        slot.put(end)
        self._finish(slot)


async def _in_daemon_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn`` in a daemon thread of its own: a callback still blocked when the turn's
    deadline passes, or at exit, keeps nobody waiting."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if future.done():
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(_escape(value))

    def run() -> None:
        outcome: tuple[bool, Any]
        try:
            outcome = (True, fn(*args))
        except BaseException as exc:
            outcome = (False, exc)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            loop.call_soon_threadsafe(settle, *outcome)

    threading.Thread(target=run, name="mix-client-callback", daemon=True).start()
    return await future


async def _maybe_await(callback: Callable[[Any], Any] | None, value: Any) -> None:
    if callback is None:
        return
    try:
        if _in_sync_loop.flag and not inspect.iscoroutinefunction(callback):
            # Under the blocking Mix, a plain callback runs in a thread of its own, so that
            # it can itself make blocking Mix calls (grant a permission, upload a file).
            result = await _in_daemon_thread(callback, value)
        else:
            result = callback(value)
        if inspect.isawaitable(result):
            await result
    except BaseException as exc:
        escaped = _escape(exc)
        if escaped is exc:
            raise
        raise escaped from None


class TurnStream:
    """The events of one turn (see :meth:`AsyncMix.query`): an async context manager and
    async iterator of :data:`TurnEvent`.

    Yields ``connected``, then only the turn's own run, from its ``user_message_created``
    on. Ends after that run's main-agent ``complete`` (sub-agents' completes carry a
    ``parent_tool_call_id`` and do not end it), or with a :class:`TurnRecovered` marker when
    the stream lost the end and it was read from the stored rows; an ``error`` event of the
    main agent, or a recovered failed or cancelled run, raises :class:`AgentError`.

    Cancelling one ``__anext__`` (a per-event ``wait_for``, a handled Ctrl-C) loses
    nothing: the next call goes on where it was. :meth:`aclose` may be called from another
    task: a consumer waiting for the next event stops (``StopAsyncIteration``).
    """

    def __init__(
        self,
        mix: AsyncMix,
        session_id: str,
        text: str,
        body: dict[str, Any],
        timeout: float | None,
        cancel_on_exit: bool,
    ) -> None:
        self._mix = mix
        self.session_id = session_id
        self._text = text
        self._body = body
        self._timeout = timeout
        self._cancel_on_exit = cancel_on_exit
        self._deadline: float | None = None
        self._starting: asyncio.Task[ConnectedEvent | SendMessageResponse] | None = None
        self._runs: _Runs | None = None
        self._slot: _Slot | None = None
        self._handed = 0  # 0: nothing yet, 1: connected, 2: the message was sent
        self._ending: BaseException | None = None  # raised by the next __anext__
        self._closed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __aiter__(self) -> Self:
        return self

    def _expired(self) -> APITimeoutError:
        return APITimeoutError(
            f"turn in session {self.session_id!r} did not finish within {self._timeout} s"
        )

    async def _within(self, aw: Awaitable[T]) -> T:
        """Await ``aw`` within what is left of the turn's deadline."""
        if self._deadline is None:
            return await aw
        remaining = self._deadline - asyncio.get_running_loop().time()
        try:
            return await asyncio.wait_for(aw, max(remaining, 0.0))
        except asyncio.TimeoutError:
            await self.aclose()
            raise self._expired() from None

    async def _connect(self) -> ConnectedEvent:
        """Join the session's ledger and wait for its stream."""
        mix, sid = self._mix, self.session_id
        runs = mix._ledgers.get(sid)
        if runs is None:
            runs = mix._ledgers[sid] = _Runs(mix, sid)
        runs.members += 1
        self._runs = runs
        return await asyncio.shield(runs.connected)

    async def _send(self) -> SendMessageResponse:
        """Send the message, in the ledger's order."""
        mix, sid, runs = self._mix, self.session_id, self._runs
        assert runs is not None
        if runs.baseline is not None:
            await asyncio.shield(runs.baseline)
        async with runs.send_lock:  # the server starts runs in the order it accepts them
            slot = self._slot = runs.join(self._text, bool(self._body.get("plan_mode")))
            try:
                reply = await mix.send_message(sid, **self._body)
            except BaseException:
                with contextlib.suppress(ValueError):  # refused, or never known to arrive
                    runs.slots.remove(slot)
                raise
            slot.sent = True
        if reply.status == "completed":
            slot.done = True  # a slash command: answered in the reply, no run
            with contextlib.suppress(ValueError):
                runs.slots.remove(slot)
        return reply

    async def __anext__(self) -> TurnEvent:
        if self._ending is not None:
            ending, self._ending = self._ending, StopAsyncIteration()
            raise ending
        if self._closed:
            raise StopAsyncIteration
        if self._starting is None:
            if self._timeout is not None:
                self._deadline = asyncio.get_running_loop().time() + self._timeout
            self._starting = asyncio.ensure_future(self._connect())
        elif self._handed == 1:
            self._handed = 2
            self._starting = asyncio.ensure_future(self._send())
        # A task of its own: cancelling this __anext__ does not abort the send.
        if not self._starting.done():
            await self._within(asyncio.shield(self._starting))
        try:
            started = self._starting.result()
        except BaseException:
            await self.aclose()
            raise
        if self._handed == 0:
            self._handed = 1
            assert isinstance(started, ConnectedEvent)
            return started  # nothing is sent until the consumer asks for more
        reply = started
        assert isinstance(reply, SendMessageResponse)
        if reply.status == "completed":
            message = reply.message
            self._ending = StopAsyncIteration()
            return CompleteEvent(
                data=CompleteData(
                    type="complete",
                    done=True,
                    content=(message.assistant_response or "") if message else "",
                    message_id=message.id if message else None,
                )
            )
        slot = self._slot
        assert slot is not None
        item = await self._within(slot.events.get())
        if item is None:
            raise StopAsyncIteration  # closed by aclose() (another task)
        if isinstance(item, BaseException):
            await self.aclose()
            raise item
        if isinstance(item, TurnRecovered):
            self._ending = StopAsyncIteration()
            with contextlib.suppress(AgentError):
                _raise_if_failed(item)
                return item
            self._ending = AgentError(
                f"agent run ended ({item.data.finish_reason}) while the stream did not show it",
                event=item,
            )
        elif isinstance(item, ErrorEvent) and _is_end(item):
            self._ending = AgentError(f"agent error: {item.data.error}", event=item)
        elif not isinstance(item, Reconnected) and _is_end(item):
            self._ending = StopAsyncIteration()
        return item

    async def aclose(self) -> None:
        """Leave the turn (from any task); with ``cancel_on_exit``, an unfinished run is
        cancelled on the server."""
        if self._closed:
            return
        self._closed = True
        starting, slot, runs = self._starting, self._slot, self._runs
        if starting is not None and not starting.done():
            starting.cancel()
            await asyncio.wait((starting,))
        if starting is not None and starting.done() and not starting.cancelled():
            starting.exception()  # retrieved: raised by __anext__ or moot
        if runs is None:
            return
        unfinished = slot is not None and slot.sent and not slot.done
        if slot is not None:
            slot.events.put_nowait(None)  # wakes a consumer waiting in another task
        runs.leave(slot)
        if self._cancel_on_exit and unfinished:
            with contextlib.suppress(MixError):
                await asyncio.shield(
                    self._mix.cancel_session_processing(self.session_id, max_retries=0)
                )

    async def _stored_run(self) -> list[_Row] | None:
        """The turn's run as stored: the rows read when its end was recovered, else its
        rows in ``GET /api/sessions/{id}/messages``."""
        slot, runs = self._slot, self._runs
        if slot is None or runs is None:
            return None
        if slot.rows is not None and slot.done:
            return slot.rows
        messages = await self._within(self._mix.get_session_messages(self.session_id))
        rows = _list_rows(messages)
        stored = _stored_runs(rows, runs.starts, lambda _: False)
        mid = slot.user_message_id
        if mid is not None and any(row.id == mid for row in rows):
            return next((run for run in stored if run[0].id == mid), None)
        # A server that does not announce runs, or whose rows do not carry the announced
        # id: the last run of this text.
        own = (
            run for run in reversed(stored) if _is_own_text(run[0].content, self._text, slot.plan)
        )
        return next(own, None)


class _TurnHooks(NamedTuple):
    """The callbacks of :meth:`AsyncMix.send_and_wait`, in its order."""

    on_thinking: Callable[[str], Any] | None
    on_content: Callable[[str], Any] | None
    on_tool: Callable[[TurnToolCall], Any] | None
    on_tool_result: Callable[[TurnToolCall], Any] | None
    on_permission: Callable[[PermissionEvent], Any] | None
    on_notification: Callable[[NotificationEvent], Any] | None
    on_error: Callable[[ErrorEvent], Any] | None
    on_complete: Callable[[Turn], Any] | None
    on_event: Callable[[TurnEvent], Any] | None


def _fill_from_rows(turn: Turn, run: list[_Row]) -> None:
    """Complete a turn from its run's stored rows: answer, reasoning, tool results."""
    answer = "".join(row.content for row in run if row.role == "assistant")
    if answer:
        turn.text = answer
    reasoning = "".join(row.reasoning for row in run if row.role == "assistant" and row.reasoning)
    if reasoning:
        turn.thinking = reasoning
    known = {call.id: call for call in turn.tool_calls}
    for row in run:
        for stored in row.tool_calls:
            call = known.get(stored.id)
            if call is None:
                call = known[stored.id] = TurnToolCall(id=stored.id, name=stored.name)
                turn.tool_calls.append(call)
                call.raw_input = stored.input
                call.input = parse_tool_input(stored.input)
            if stored.result is not None:
                call.result = stored.result
            call.is_error = bool(stored.is_error) or call.is_error
            call.finished = stored.finished or call.finished


async def _collect_turn(events: TurnStream, hooks: _TurnHooks) -> Turn:
    """Fold a turn's events (:meth:`AsyncMix.query`) into a :class:`Turn`, calling the
    callbacks as they come (:meth:`AsyncMix.send_and_wait`)."""
    turn = Turn(session_id=events.session_id)
    text_parts: list[str] = []
    thinking_parts: list[str] = []
    calls: dict[str, TurnToolCall] = {}
    inputs = ToolInputAccumulator()
    async with events:
        try:
            async for event in events:
                turn.event_count += 1
                await _maybe_await(hooks.on_event, event)
                if isinstance(event, ContentEvent):
                    if not event.data.parent_tool_call_id:
                        text_parts.append(event.data.content)
                        await _maybe_await(hooks.on_content, event.data.content)
                elif isinstance(event, ThinkingEvent):
                    if not event.data.parent_tool_call_id:
                        thinking_parts.append(event.data.content)
                        await _maybe_await(hooks.on_thinking, event.data.content)
                elif isinstance(event, ToolUseStartEvent):
                    call = calls.setdefault(event.data.id, TurnToolCall(id=event.data.id))
                    call.name = event.data.name or call.name
                    call.parent_tool_call_id = event.data.parent_tool_call_id
                elif isinstance(event, ToolUseParameterDeltaEvent):
                    inputs.feed(event)
                elif isinstance(event, ToolUseParameterStreamingCompleteEvent):
                    inputs.feed(event)
                    call = calls.setdefault(event.data.id, TurnToolCall(id=event.data.id))
                    call.name = event.data.name or call.name
                    call.parent_tool_call_id = event.data.parent_tool_call_id
                    call.raw_input = inputs.raw(call.id)
                    call.input = inputs.parsed(call.id)
                    await _maybe_await(hooks.on_tool, call)
                elif isinstance(event, ToolExecutionCompleteEvent):
                    call = calls.setdefault(
                        event.data.tool_call_id, TurnToolCall(id=event.data.tool_call_id)
                    )
                    call.name = call.name or event.data.tool_name
                    call.finished = True
                    call.is_error = not event.data.success
                    call.result = event.data.progress
                    await _maybe_await(hooks.on_tool_result, call)
                elif isinstance(event, PermissionEvent):
                    turn.permissions.append(event)
                    await _maybe_await(hooks.on_permission, event)
                elif isinstance(event, NotificationEvent):
                    turn.notifications.append(event)
                    await _maybe_await(hooks.on_notification, event)
                elif isinstance(event, ErrorEvent):
                    if not _is_fatal(event):
                        turn.errors.append(event)
                    await _maybe_await(hooks.on_error, event)
                elif isinstance(event, CompleteEvent):
                    if not event.data.parent_tool_call_id:
                        turn.final = event
                elif isinstance(event, Reconnected):
                    turn.reconnects += 1
                elif isinstance(event, TurnRecovered):
                    turn.recovered = event
        finally:
            turn.text = "".join(text_parts)
            turn.thinking = "".join(thinking_parts)
            turn.tool_calls = list(calls.values())
        slot = events._slot
        turn.user_message_id = slot.user_message_id if slot is not None else None
        final_content = turn.final.data.content if turn.final is not None else None
        if turn.recovered is not None or calls or (slot is not None and slot.gap):
            # The stream carries progress lines, not tool results; the stored rows have them.
            run = await events._stored_run()
            if run is not None:
                _fill_from_rows(turn, run)
        elif final_content and final_content != turn.text:
            turn.text = final_content
    await _maybe_await(hooks.on_complete, turn)
    return turn


# ---------------------------------------------------------------------------
# 6. Client: AsyncMix (options, the endpoints)
# ---------------------------------------------------------------------------


class AsyncMix:
    """Async client for the Mix REST API. One method per endpoint.

    ``server_url`` defaults to ``$MIX_SERVER_URL``, then ``http://localhost:8088``.
    ``timeout``, ``max_retries`` and ``retry_config`` set the defaults every call can
    override with the same keywords. ``session`` is your own ``aiohttp.ClientSession``
    (its settings are kept and it is never closed by this client). ``headers`` are sent
    with every request. ``logger`` receives debug lines (credentials redacted); set
    ``MIX_DEBUG=true`` to print them without configuring logging.

    Connections: event streams hold a connection for their whole life, so they get their
    own pool, and open streams never make plain calls wait. ``max_connections`` (default
    100) bounds the connections of plain calls, uploads and downloads;
    ``max_stream_connections`` (default ``None``: no limit) bounds open streams. With
    ``session=`` both share that session's connector and its limit (neither option
    applies). ``max_event_size`` (default 64 MiB) is the largest SSE event a stream
    buffers (:class:`EventTooLargeError` beyond).

    Use it as ``async with AsyncMix() as mix:`` or call :meth:`aclose` when done.
    """

    _parent: AsyncMix | None = None
    """Set on :meth:`with_options` copies: the client whose connection pool they use."""

    def __init__(
        self,
        server_url: str | None = None,
        *,
        timeout: Timeout | _NotGiven = _NOT_GIVEN,
        max_retries: int | None = None,
        retry_config: RetryConfig | None = None,
        headers: Mapping[str, str] | None = None,
        session: aiohttp.ClientSession | None = None,
        logger: logging.Logger | None = None,
        max_connections: int | None = None,
        max_stream_connections: int | None = None,
        max_event_size: int = DEFAULT_MAX_EVENT_SIZE,
    ) -> None:
        self._pool = _Pool(session, max_connections, max_stream_connections)
        self._max_event_size = _check_int(max_event_size, "max_event_size", 1)
        url = server_url or os.environ.get("MIX_SERVER_URL") or DEFAULT_SERVER_URL
        self.server_url: str = _check_server_url(url)
        self._policy = _make_policy(max_retries, retry_config)
        self._max_retries = max_retries
        self._retry_config = retry_config
        if isinstance(timeout, _NotGiven):
            # A session you pass in keeps its own timeouts.
            self._timeout: aiohttp.ClientTimeout | None = None if session else DEFAULT_TIMEOUT
            self._transfer_timeout: aiohttp.ClientTimeout | None = (
                None if session else TRANSFER_TIMEOUT
            )
        else:
            self._timeout = _as_timeout(timeout)
            self._transfer_timeout = _as_timeout(timeout, transfer=True)
        self._headers: dict[str, str] = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if headers is not None:
            self._headers.update(_check_headers(headers))
        self._json_headers = {**self._headers, "Content-Type": "application/json"}
        self._pool.headers = self._headers
        if logger is not None and not isinstance(logger, (logging.Logger, logging.LoggerAdapter)):
            raise _bad_value("logger", "a logging.Logger", logger)
        if session is not None and not isinstance(session, aiohttp.ClientSession):
            raise _bad_value("session", "an aiohttp.ClientSession", session)
        self._logger = logger or _log
        if _env_flag("MIX_DEBUG"):
            if logger is None:
                _enable_debug_logging()
            else:
                logger.setLevel(logging.DEBUG)
        self._closed = False
        self._ledgers: dict[str, _Runs] = {}  # session id -> its turns in flight
        self._floors: dict[str, str] = {}  # session id -> a user row stored before now

    # Lifecycle ---------------------------------------------------------------

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the client: its open streams end and calls in flight or started later
        raise :class:`ClientClosedError`. Closes the HTTP sessions this client created
        (never one you passed in). On a :meth:`with_options` copy, only that copy and the
        streams it opened are closed; closing the original closes every copy too.
        """
        self._closed = True
        await self._pool.close(None if self._parent is None else self)

    def _is_closed(self) -> bool:
        return self._closed or self._pool.closed

    def with_options(
        self,
        *,
        timeout: Timeout | _NotGiven = _NOT_GIVEN,
        max_retries: int | None = None,
        retry_config: RetryConfig | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> AsyncMix:
        """A client sharing this one's connection pool with other defaults."""
        clone = object.__new__(AsyncMix)
        clone.__dict__.update(self.__dict__)
        clone._parent = self._parent or self
        if max_retries is not None or retry_config is not None:
            # Each option overrides only itself: the other keeps this client's value.
            if max_retries is not None:
                clone._max_retries = max_retries
            if retry_config is not None:
                clone._retry_config = retry_config
            clone._policy = _make_policy(clone._max_retries, clone._retry_config)
        if not isinstance(timeout, _NotGiven):
            clone._timeout = _as_timeout(timeout)
            clone._transfer_timeout = _as_timeout(timeout, transfer=True)
        if headers is not None:
            extra = _check_headers(headers)
            clone._headers = {**self._headers, **extra}
            clone._json_headers = {**self._json_headers, **extra}
        return clone

    # Authentication ----------------------------------------------------------

    async def store_api_key(
        self, *, api_key: str, provider: Provider, **opts: Unpack[RequestOptions]
    ) -> StoreApiKeyResponse:
        """Store an API key for a provider (``POST /api/auth/api-key``)."""
        body = _body(_StoreApiKeyBody(provider=provider, api_key=api_key))
        return await _call(self, _store_api_key, opts, body=body)

    async def set_api_key(
        self, *, api_key: str, **opts: Unpack[RequestOptions]
    ) -> SetApiKeyResponse:
        """Set the API key on servers of API version 0.2 (``POST /api/auth/apikey``)."""
        body = _body(_SetApiKeyBody(api_key=api_key))
        return await _call(self, _set_api_key, opts, body=body)

    async def initiate_oauth_login(self, **opts: Unpack[RequestOptions]) -> OAuthLoginResponse:
        """Start OAuth login on servers of API version 0.2 (``POST /api/auth/login``)."""
        return await _call(self, _initiate_oauth_login, opts)

    async def handle_oauth_callback(
        self, *, provider: str, code: str, state: str, **opts: Unpack[RequestOptions]
    ) -> OAuthCallbackResponse:
        """Exchange an OAuth code for a token (``POST /api/auth/oauth-callback``)."""
        body = _body(_OAuthCallbackBody(provider=provider, code=code, state=state))
        return await _call(self, _handle_oauth_callback, opts, body=body)

    async def start_oauth_flow(
        self, provider: str, **opts: Unpack[RequestOptions]
    ) -> OAuthFlowResponse:
        """Start an OAuth flow; open ``auth_url`` in a browser (``POST /api/auth/oauth/{provider}``)."""
        return await _call(self, _start_oauth_flow, opts, provider)

    async def get_auth_status(self, **opts: Unpack[RequestOptions]) -> AuthStatusResponse:
        """Authentication status of every provider (``GET /api/auth/status``)."""
        return await _call(self, _get_auth_status, opts)

    async def validate_preferred_provider(
        self, **opts: Unpack[RequestOptions]
    ) -> ValidateProviderResponse:
        """Whether the preferred provider is authenticated (``GET /api/auth/validate``)."""
        return await _call(self, _validate_preferred_provider, opts)

    async def delete_credentials(
        self, provider: str, **opts: Unpack[RequestOptions]
    ) -> DeleteCredentialsResponse:
        """Delete a provider's API key and OAuth tokens (``DELETE /api/auth/{provider}``)."""
        return await _call(self, _delete_credentials, opts, provider)

    async def get_oauth_health(self, **opts: Unpack[RequestOptions]) -> OAuthHealthResponse:
        """Health of the stored OAuth tokens (``GET /health/auth``)."""
        return await _call(self, _get_oauth_health, opts)

    async def refresh_oauth_tokens(self, **opts: Unpack[RequestOptions]) -> RefreshTokensResponse:
        """Refresh expired OAuth tokens now (``POST /internal/auth/refresh-tokens``)."""
        return await _call(self, _refresh_oauth_tokens, opts)

    # System --------------------------------------------------------------------

    async def health_check(self, **opts: Unpack[RequestOptions]) -> HealthResponse:
        """Server health (``GET /health``)."""
        return await _call(self, _health_check, opts)

    async def get_system_info(self, **opts: Unpack[RequestOptions]) -> SystemInfo:
        """Storage configuration (``GET /api/system/info``)."""
        return await _call(self, _get_system_info, opts)

    async def list_commands(self, **opts: Unpack[RequestOptions]) -> list[Command]:
        """Slash commands (``GET /api/commands``)."""
        return await _call(self, _list_commands, opts)

    async def get_command(self, name: str, **opts: Unpack[RequestOptions]) -> Command:
        """One slash command (``GET /api/commands/{name}``)."""
        return await _call(self, _get_command, opts, name)

    async def list_mcp_servers(self, **opts: Unpack[RequestOptions]) -> list[McpServer]:
        """MCP servers and their tools (``GET /api/mcp``)."""
        return await _call(self, _list_mcp_servers, opts)

    async def list_llm_tools(self, **opts: Unpack[RequestOptions]) -> LLMToolsResponse:
        """Tools the agent can call (``GET /api/tools``)."""
        return await _call(self, _list_llm_tools, opts)

    async def get_tool_credentials_status(
        self, **opts: Unpack[RequestOptions]
    ) -> ToolsStatusResponse:
        """Credential status of external tool integrations (``GET /api/tools/credentials-status``)."""
        return await _call(self, _get_tool_credentials_status, opts)

    async def get_tools_status(self, **opts: Unpack[RequestOptions]) -> ToolsStatusResponse:
        """Tool status by category (``GET /api/tools/status``; older servers)."""
        return await _call(self, _get_tools_status, opts)

    # Preferences ---------------------------------------------------------------

    async def get_preferences(self, **opts: Unpack[RequestOptions]) -> PreferencesResponse:
        """Preferences and available providers (``GET /api/preferences``)."""
        return await _call(self, _get_preferences, opts)

    async def update_preferences(
        self,
        *,
        main_agent_max_tokens: int | UnsetType | None = UNSET,
        main_agent_model: str | UnsetType | None = UNSET,
        main_agent_reasoning_effort: str | UnsetType | None = UNSET,
        preferred_provider: str | UnsetType | None = UNSET,
        sub_agent_max_tokens: int | UnsetType | None = UNSET,
        sub_agent_model: str | UnsetType | None = UNSET,
        sub_agent_reasoning_effort: str | UnsetType | None = UNSET,
        **opts: Unpack[RequestOptions],
    ) -> UserPreferences:
        """Change some preferences (``POST /api/preferences``).

        Only the fields you pass are sent; the others stay as they are. ``None`` is sent as
        ``null``.
        """
        body = _body(
            _PreferencesBody(
                main_agent_max_tokens=main_agent_max_tokens,
                main_agent_model=main_agent_model,
                main_agent_reasoning_effort=main_agent_reasoning_effort,
                preferred_provider=preferred_provider,
                sub_agent_max_tokens=sub_agent_max_tokens,
                sub_agent_model=sub_agent_model,
                sub_agent_reasoning_effort=sub_agent_reasoning_effort,
            )
        )
        return await _call(self, _update_preferences, opts, body=body)

    async def get_available_providers(
        self, **opts: Unpack[RequestOptions]
    ) -> dict[str, ProviderInfo]:
        """Providers and their models (``GET /api/preferences/providers``)."""
        return await _call(self, _get_available_providers, opts)

    async def reset_preferences(self, **opts: Unpack[RequestOptions]) -> UserPreferences:
        """Reset preferences to defaults (``POST /api/preferences/reset``)."""
        return await _call(self, _reset_preferences, opts)

    # Sessions ------------------------------------------------------------------

    async def list_sessions(
        self, *, include_subagents: bool = False, **opts: Unpack[RequestOptions]
    ) -> list[SessionData]:
        """All sessions; sub-agent sessions only when asked (``GET /api/sessions``)."""
        _check_bool(include_subagents, "include_subagents")
        query = "includeSubagents=true" if include_subagents else "includeSubagents=false"
        return await _call(self, _list_sessions, opts, query=query)

    async def create_session(
        self,
        *,
        title: str,
        browser_mode: BrowserMode,
        callbacks: Sequence[Callback | CallbackDict | Mapping[str, Any]] | UnsetType = UNSET,
        cdp_url: str | UnsetType = UNSET,
        custom_system_prompt: str | UnsetType = UNSET,
        prompt_mode: PromptMode | UnsetType = UNSET,
        session_type: Literal["main"] | UnsetType = UNSET,
        subagent_type: str | UnsetType = UNSET,
        **opts: Unpack[RequestOptions],
    ) -> SessionData:
        """Create a session (``POST /api/sessions``)."""
        body = _body(
            _CreateSessionBody(
                title=title,
                browser_mode=browser_mode,
                callbacks=UNSET if callbacks is UNSET else _callbacks(callbacks),
                cdp_url=cdp_url,
                custom_system_prompt=custom_system_prompt,
                prompt_mode=prompt_mode,
                session_type=session_type,
                subagent_type=subagent_type,
            )
        )
        return await _call(self, _create_session, opts, body=body)

    async def get_session(self, id: str, **opts: Unpack[RequestOptions]) -> SessionData:
        """One session (``GET /api/sessions/{id}``)."""
        return await _call(self, _get_session, opts, id)

    async def delete_session(self, id: str, **opts: Unpack[RequestOptions]) -> None:
        """Delete a session and its data (``DELETE /api/sessions/{id}``)."""
        await _call(self, _delete_session, opts, id)

    async def update_session_callbacks(
        self,
        id: str,
        *,
        callbacks: Sequence[Callback | CallbackDict | Mapping[str, Any]],
        **opts: Unpack[RequestOptions],
    ) -> SessionData:
        """Replace a session's callbacks; ``[]`` clears them (``PATCH /api/sessions/{id}/callbacks``)."""
        body = _body(_CallbacksBody(callbacks=_callbacks(callbacks)))
        return await _call(self, _update_session_callbacks, opts, id, body=body)

    async def cancel_session_processing(
        self, id: str, **opts: Unpack[RequestOptions]
    ) -> CancelResult:
        """Cancel the agent's current run (``POST /api/sessions/{id}/cancel``)."""
        return await _call(self, _cancel_session_processing, opts, id)

    async def export_session(self, id: str, **opts: Unpack[RequestOptions]) -> ExportSession:
        """The full transcript (``GET /api/sessions/{id}/export``)."""
        return await _call(self, _export_session, opts, id)

    async def fork_session(
        self,
        id: str,
        *,
        message_index: int,
        title: str | UnsetType = UNSET,
        **opts: Unpack[RequestOptions],
    ) -> SessionData:
        """Copy a session up to a message, on servers that have the route (``POST /api/sessions/{id}/fork``)."""
        _check_int(message_index, "message_index", 1)
        body = _body(_ForkBody(message_index=message_index, title=title))
        return await _call(self, _fork_session, opts, id, body=body)

    async def rewind_session(
        self,
        id: str,
        *,
        message_id: str,
        cleanup_media: bool = True,
        **opts: Unpack[RequestOptions],
    ) -> SessionData:
        """Delete the messages after ``message_id`` (``POST /api/sessions/{id}/rewind``)."""
        body = _body(_RewindBody(message_id=message_id, cleanup_media=cleanup_media))
        return await _call(self, _rewind_session, opts, id, body=body)

    # Messages --------------------------------------------------------------------

    async def get_session_messages(
        self, id: str, **opts: Unpack[RequestOptions]
    ) -> list[BackendMessage]:
        """A session's messages (``GET /api/sessions/{id}/messages``)."""
        return await _call(self, _get_session_messages, opts, id)

    async def send_message(
        self,
        id: str,
        *,
        text: str,
        plan_mode: bool = False,
        thinking_level: ThinkingLevel | UnsetType | None = UNSET,
        max_steps: int | UnsetType = UNSET,
        **opts: Unpack[RequestOptions],
    ) -> SendMessageResponse:
        """Send a message (``POST /api/sessions/{id}/messages``).

        Returns at once (202): the agent's work arrives on :meth:`stream_events`. Open the
        stream first, or use :meth:`query` / :meth:`send_and_wait`, which do it for you.
        """
        _check_str(text, "text")
        if not isinstance(max_steps, UnsetType):
            _check_int(max_steps, "max_steps", 1)
        body = _body(
            _SendMessageBody(
                text=text, plan_mode=plan_mode, thinking_level=thinking_level, max_steps=max_steps
            )
        )
        return await _call(self, _send_message, opts, id, body=body)

    async def get_message_history(
        self, *, limit: int = 50, offset: int = 0, **opts: Unpack[RequestOptions]
    ) -> list[BackendMessage]:
        """Messages across all sessions, newest first (``GET /api/messages/history``)."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise InvalidInputError(f"limit must be an integer from 1 to 1000, not {limit!r}")
        _check_int(offset, "offset")
        query = f"limit={limit}&offset={offset}"
        return await _call(self, _get_message_history, opts, query=query)

    # Permissions and notifications -------------------------------------------------

    async def grant_permission(self, id: str, **opts: Unpack[RequestOptions]) -> PermissionResult:
        """Grant a permission the agent asked for (``POST /api/permissions/{id}/grant``)."""
        return await _call(self, _grant_permission, opts, id)

    async def deny_permission(self, id: str, **opts: Unpack[RequestOptions]) -> PermissionResult:
        """Deny a permission the agent asked for (``POST /api/permissions/{id}/deny``)."""
        return await _call(self, _deny_permission, opts, id)

    async def respond_to_notification(
        self,
        id: str,
        *,
        type: NotificationResponseType,
        value: str | UnsetType = UNSET,
        **opts: Unpack[RequestOptions],
    ) -> None:
        """Answer a notification (``POST /api/notifications/{id}/respond``)."""
        body = _body(_NotificationReplyBody(type=type, value=value))
        await _call(self, _respond_to_notification, opts, id, body=body)

    # Files -------------------------------------------------------------------------

    async def list_session_files(self, id: str, **opts: Unpack[RequestOptions]) -> list[FileInfo]:
        """Files in a session's storage (``GET /api/sessions/{id}/files``)."""
        return await _call(self, _list_session_files, opts, id)

    async def upload_session_file(
        self,
        id: str,
        file: FileInput | Mapping[str, Any],
        *,
        filename: str | None = None,
        content_type: str | None = None,
        progress: ProgressCallback | None = None,
        **opts: Unpack[RequestOptions],
    ) -> FileInfo:
        """Upload a file (``POST /api/sessions/{id}/files/upload``), streamed in chunks.

        ``file`` is a path, bytes, a file opened in binary mode, or an async or plain
        iterator of bytes. ``filename`` defaults to the path's or file's name; bytes and
        iterators need it. A path, bytes or a seekable file may be retried; other streams
        never are. A stream's first chunk is read before the request starts, so a text
        file or an iterator of ``str`` raises :class:`InvalidInputError` with nothing sent.
        ``progress(done, total)`` is called on the event loop as the file's bytes go out.
        """
        _upload_session_file.url(id)  # a bad id fails before the file is touched
        upload = _Upload(file, filename, content_type, progress)
        if opts:
            opts = _options(opts, _upload_session_file)  # before a stream is touched
        await upload.prime()
        return await _call(self, _upload_session_file, opts, id, upload=upload)

    async def delete_session_file(
        self, id: str, filename: str, **opts: Unpack[RequestOptions]
    ) -> None:
        """Delete a file (``DELETE /api/sessions/{id}/files/{filename}``)."""
        await _call(self, _delete_session_file, opts, id, filename)

    async def get_session_file(
        self,
        id: str,
        filename: str,
        *,
        thumb: str | None = None,
        time: float | None = None,
        progress: ProgressCallback | None = None,
        **opts: Unpack[RequestOptions],
    ) -> bytes:
        """A file's bytes, or a thumbnail of it (``GET /api/sessions/{id}/files/{filename}``).

        Memory follows the bytes that arrive, whatever ``Content-Length`` claims. For
        large files, or the response's headers, use :meth:`download_session_file` or
        :meth:`iter_session_file`. ``progress(done, total)`` is called as bytes arrive.
        """
        path, query = _file_path(id, filename, thumb, time)
        _check_progress(progress)
        return await _read_file(FileDownload(self, path, query, _YIELD_EVERY, opts, progress))

    def iter_session_file(
        self,
        id: str,
        filename: str,
        *,
        thumb: str | None = None,
        time: float | None = None,
        chunk_size: int = 1 << 20,
        progress: ProgressCallback | None = None,
        **opts: Unpack[RequestOptions],
    ) -> FileDownload:
        """Stream a file in chunks with constant memory.

        ``async with mix.iter_session_file(sid, "a.mp4") as chunks: async for c in chunks: ...``

        Once open (``async with``, or after the first chunk), the download carries
        ``content_type``, ``content_length`` (``None`` when unknown) and ``headers``.
        """
        path, query = _file_path(id, filename, thumb, time)
        _check_int(chunk_size, "chunk_size", 1)
        _check_progress(progress)
        opts = _options(opts, "iter_session_file")
        return FileDownload(self, path, query, chunk_size, opts, progress)

    async def download_session_file(
        self,
        id: str,
        filename: str,
        dest: str | os.PathLike[str],
        *,
        thumb: str | None = None,
        time: float | None = None,
        progress: ProgressCallback | None = None,
        **opts: Unpack[RequestOptions],
    ) -> DownloadedFile:
        """Save a file to ``dest`` with constant memory.

        Returns the number of bytes written, as a :class:`DownloadedFile` (an ``int`` that
        also carries ``path``, ``content_type``, ``content_length`` and ``headers``). The
        bytes go to a temporary file beside ``dest``, renamed over it once complete: if
        the transfer fails, an existing ``dest`` is untouched and nothing is left behind.
        A directory as ``dest`` receives the file under the last part of ``filename``.
        """
        if opts:
            opts = _options(opts, "download_session_file")  # errors name this method
        target = os.fspath(dest)
        if os.path.isdir(target):  # noqa: ASYNC240 (a stat; cheap)
            target = os.path.join(target, _local_name(filename))
        async with self.iter_session_file(
            id, filename, thumb=thumb, time=time, progress=progress, **opts
        ) as chunks:
            return await _save_file(chunks, target)

    # Streaming ---------------------------------------------------------------------

    def stream_events(
        self,
        session_id: str,
        *,
        last_event_id: str | None = None,
        reconnect: bool = True,
        include_other_sessions: bool = False,
        idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
        max_reconnects: int = 5,
        max_event_size: int | None = None,
        **opts: Unpack[RequestOptions],
    ) -> EventStream:
        """The session's event stream (``GET /stream``); see :class:`EventStream`.

        ``async with mix.stream_events(sid) as events: async for event in events: ...``

        ``timeout=`` (seconds) bounds connecting and each silence (with ``idle_timeout``,
        the smaller wins), never the stream's lifetime; an ``aiohttp.ClientTimeout`` with a
        ``total`` is refused. ``max_event_size`` (bytes) overrides the client's limit.
        """
        opts = _options(opts, "stream_events")
        return EventStream(
            self,
            session_id,
            last_event_id=last_event_id,
            reconnect=reconnect,
            include_other_sessions=include_other_sessions,
            idle_timeout=idle_timeout,
            max_reconnects=max_reconnects,
            max_event_size=max_event_size,
            opts=opts,
        )

    def query(
        self,
        session_id: str,
        text: str,
        /,
        *,
        plan_mode: bool = False,
        thinking_level: ThinkingLevel | UnsetType | None = UNSET,
        max_steps: int | UnsetType = UNSET,
        timeout: float | None = None,
        cancel_on_exit: bool = False,
    ) -> TurnStream:
        """Send ``text`` and yield the turn's events until the agent is done.

        Opens the stream, waits for ``connected`` (the server drops events sent before a
        stream is registered), then sends the message. The turn owns its run: it starts at
        the ``user_message_created`` event carrying this text; events of an earlier or
        concurrent run on the session never fill or end it. Ends after the run's main-agent
        ``complete``; its ``error`` raises :class:`AgentError`. After a reconnect the turn
        checks the session's export until the run's end is known, so a ``complete`` lost in
        the gap ends it with a :class:`TurnRecovered` marker (a failed or cancelled run
        raises :class:`AgentError`). A slash command (``/help``) is answered at once: one
        :class:`CompleteEvent` built from the reply (``id`` ``None``), then the end.
        ``timeout`` is a turn deadline, not an HTTP timeout: it bounds the whole turn
        (opening the stream, sending, the run, the checks) with :class:`APITimeoutError`. With ``cancel_on_exit=True``, leaving early
        (``break``, an exception, cancellation, the timeout) also cancels the agent's run.

        ``async with mix.query(sid, "hi") as events: async for event in events: ...``
        """
        _check_str(session_id, "session_id")
        _check_str(text, "text")
        _check_bool(plan_mode, "plan_mode")
        if thinking_level is not None and not isinstance(thinking_level, UnsetType):
            _check_str(thinking_level, "thinking_level")
        if not isinstance(max_steps, UnsetType):
            _check_int(max_steps, "max_steps", 1)
        _check_number(timeout, "timeout", optional=True)
        _check_bool(cancel_on_exit, "cancel_on_exit")
        body: dict[str, Any] = {"text": text, "plan_mode": plan_mode}
        if not isinstance(thinking_level, UnsetType):
            body["thinking_level"] = thinking_level
        if not isinstance(max_steps, UnsetType):
            body["max_steps"] = max_steps
        return TurnStream(self, session_id, text, body, timeout, cancel_on_exit)

    async def send_and_wait(
        self,
        session_id: str,
        text: str,
        /,
        *,
        plan_mode: bool = False,
        thinking_level: ThinkingLevel | UnsetType | None = UNSET,
        max_steps: int | UnsetType = UNSET,
        timeout: float | None = None,
        cancel_on_exit: bool = False,
        on_thinking: Callable[[str], Any] | None = None,
        on_content: Callable[[str], Any] | None = None,
        on_tool: Callable[[TurnToolCall], Any] | None = None,
        on_tool_result: Callable[[TurnToolCall], Any] | None = None,
        on_permission: Callable[[PermissionEvent], Any] | None = None,
        on_notification: Callable[[NotificationEvent], Any] | None = None,
        on_error: Callable[[ErrorEvent], Any] | None = None,
        on_complete: Callable[[Turn], Any] | None = None,
        on_event: Callable[[TurnEvent], Any] | None = None,
    ) -> Turn:
        """Run one turn and return it whole: text, thinking, tool calls, requests seen.

        Callbacks (plain functions or coroutines) see the turn as it happens: deltas of
        thinking and content, each tool call once its input is known and again with its
        result, permission and notification requests (grant or answer them from the
        callback), errors, and the finished :class:`Turn`. The turn follows the rules of
        :meth:`query` (its own run only, recovery after a drop, slash commands, ``timeout``
        over everything). After a reconnect, or when tools ran, the text and tool results
        are completed from the stored messages, so nothing is lost.
        """
        events = self.query(
            session_id,
            text,
            plan_mode=plan_mode,
            thinking_level=thinking_level,
            max_steps=max_steps,
            timeout=timeout,
            cancel_on_exit=cancel_on_exit,
        )
        hooks = _TurnHooks(
            on_thinking,
            on_content,
            on_tool,
            on_tool_result,
            on_permission,
            on_notification,
            on_error,
            on_complete,
            on_event,
        )
        if timeout is None:
            return await _collect_turn(events, hooks)
        try:  # the deadline covers the callbacks too
            return await asyncio.wait_for(_collect_turn(events, hooks), timeout)
        except asyncio.TimeoutError:
            raise events._expired() from None


# ---------------------------------------------------------------------------
# 7. Blocking facade: Mix runs AsyncMix on a private loop thread
# ---------------------------------------------------------------------------


_CLOSE_GRACE: Final = 5.0
"""Seconds ``Mix.close()`` waits for cancelled calls and for closing the connections."""


class _LoopThread:
    """A private event loop in a daemon thread that runs the async client for :class:`Mix`."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopped = False
        self._calls: set[concurrent.futures.Future[Any]] = set()
        self._streams: weakref.WeakSet[SyncStream[Any]] = weakref.WeakSet()
        self._closing: set[asyncio.Task[Any]] = set()

    def _start(self) -> asyncio.AbstractEventLoop:
        """Start the loop thread (with ``_lock`` held)."""
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            _in_sync_loop.flag = True
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            try:
                loop.run_forever()
                # Async generators left open (a dropped turn) get finalized on this loop.
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                asyncio.set_event_loop(None)
                loop.close()

        thread = threading.Thread(target=run, name="mix-client-loop", daemon=True)
        thread.start()
        ready.wait()
        self._thread = thread
        self._loop = loop
        return loop

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        with self._lock:
            # Checked under the lock: a call racing close() never starts a new loop thread.
            if self._stopped:
                coro.close()
                raise ClientClosedError("this client is closed")
            if self._thread is not None and threading.current_thread() is self._thread:
                coro.close()
                raise MixError(
                    "a blocking Mix call was made from inside its own callback; use AsyncMix there"
                )
            loop = self._loop or self._start()
            future = asyncio.run_coroutine_threadsafe(coro, loop)
            self._calls.add(future)
        try:
            return future.result()
        except _Escaped as escaped:  # a KeyboardInterrupt or SystemExit of a callback
            raise escaped.exc from None
        except concurrent.futures.CancelledError:
            if self._stopped:
                raise ClientClosedError("the client was closed during the call") from None
            raise
        except BaseException:
            future.cancel()
            raise
        finally:
            self._calls.discard(future)

    def close_soon(self, stream: Any) -> None:
        """Close ``stream`` on the loop thread, without waiting (``__del__``: any thread)."""
        loop = self._loop
        if loop is None:
            return

        def start() -> None:
            task = loop.create_task(stream.aclose())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

        with contextlib.suppress(RuntimeError):  # the loop is closed: so is its connection
            loop.call_soon_threadsafe(start)

    def stop(self, final: Callable[[], Coroutine[Any, Any, Any]] | None = None) -> None:
        """Refuse new calls, end the ones in flight, run ``final``, stop the loop thread.

        Calls in flight are cancelled: their callers get :class:`ClientClosedError` (or the
        result, when it was already there). Bounded: never waits much more than
        ``2 * _CLOSE_GRACE``.
        """
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        streams = list(self._streams)

        async def shutdown() -> None:
            current = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not current]
            for task in tasks:
                if task not in self._closing:  # dropped streams closing: let them finish
                    task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=_CLOSE_GRACE)
            closing = [s._stream.aclose() for s in streams if not s._closed]
            for s in streams:
                s._closed = True
            if final is not None:
                closing.append(final())
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    asyncio.gather(*closing, return_exceptions=True), _CLOSE_GRACE
                )

        def begin() -> None:
            loop.create_task(shutdown()).add_done_callback(lambda _: loop.stop())

        loop.call_soon_threadsafe(begin)
        if thread is not threading.current_thread():
            thread.join(timeout=3 * _CLOSE_GRACE)


class SyncStream(Generic[T]):
    """A blocking iterator over an async stream; close it (or use ``with``) when leaving early.

    One dropped without closing (a ``break`` outside ``with``) is closed on the client's
    loop thread when it is garbage-collected; ``Mix.close()`` closes the ones still open.
    """

    def __init__(self, runner: _LoopThread, stream: Any) -> None:
        self._runner = runner
        self._stream = stream
        self._entered = False
        self._closed = False
        runner._streams.add(self)

    def __enter__(self) -> SyncStream[T]:
        enter = getattr(self._stream, "__aenter__", None)
        if enter is not None and not self._entered:
            self._runner.run(enter())
        self._entered = True
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> SyncStream[T]:
        return self

    def __next__(self) -> T:
        try:
            item: T = self._runner.run(self._stream.__anext__())
        except StopAsyncIteration:
            self.close()
            raise StopIteration from None
        return item

    def close(self) -> None:
        """Close the stream's connection (a no-op once closed, or once the client is)."""
        if self._closed:
            return
        self._closed = True
        aclose = getattr(self._stream, "aclose", None)
        if aclose is not None and not self._runner._stopped:
            with contextlib.suppress(MixError):  # the client closed meanwhile: so did this
                self._runner.run(aclose())

    def __del__(self) -> None:
        # Dropped open (a ``break`` without ``with``): the connection belongs to the loop
        # thread, so close it there, never from whatever thread collects this object.
        if getattr(self, "_closed", True):
            return
        self._closed = True
        if getattr(self._stream, "aclose", None) is not None:
            self._runner.close_soon(self._stream)


class SyncFileDownload(SyncStream[bytes]):
    """:meth:`Mix.iter_session_file`: a blocking iterator of chunks, with the download's
    ``content_type``, ``content_length`` and ``headers`` once open (``with``, or after
    the first chunk)."""

    _stream: FileDownload

    def __enter__(self) -> SyncFileDownload:
        super().__enter__()
        return self

    @property
    def content_type(self) -> str | None:
        return self._stream.content_type

    @property
    def content_length(self) -> int | None:
        return self._stream.content_length

    @property
    def headers(self) -> Mapping[str, str]:
        return self._stream.headers

    @property
    def received(self) -> int:
        return self._stream.received


class _SyncBase:
    """A blocking ``Mix`` method made from an ``AsyncMix`` one: its name, doc, signature
    (without ``self``) and type hints, and a call that names ``Mix`` in argument errors."""

    _returns: tuple[str, str] | None = None
    """The return annotation, when not the async method's: (signature, type hints)."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self._fn = fn
        self.__doc__ = fn.__doc__
        self.__name__ = fn.__name__
        # typing.get_type_hints(Mix.method) resolves these (in fn's module).
        self.__wrapped__ = fn
        self.__annotations__ = dict(fn.__annotations__)
        if self._returns is not None:
            self.__annotations__["return"] = self._returns[1]

    @functools.cached_property
    def _signature(self) -> inspect.Signature:
        # On first use, not at import: 40-odd signatures cost about a millisecond.
        sig = inspect.signature(self._fn)
        sig = sig.replace(parameters=list(sig.parameters.values())[1:])
        return sig if self._returns is None else sig.replace(return_annotation=self._returns[0])

    def _bind(self, client: AsyncMix, then: Callable[[Any], Any]) -> Callable[..., Any]:
        fn = self._fn

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                result = fn(client, *args, **kwargs)
            except TypeError as exc:  # a missing or extra argument: name Mix, not AsyncMix
                text = str(exc)
                raise (
                    TypeError(text.replace("AsyncMix.", "Mix.", 1)) if "AsyncMix." in text else exc
                ) from None
            return then(result)

        call.__signature__ = self._signature  # type: ignore[attr-defined]
        call.__annotations__ = self.__annotations__
        return call


class _SyncMethod(_SyncBase, Generic[P, R]):
    """Turns an ``AsyncMix`` coroutine method into a blocking ``Mix`` method."""

    def __init__(self, fn: Callable[Concatenate[AsyncMix, P], Coroutine[Any, Any, R]]) -> None:
        super().__init__(fn)

    @overload
    def __get__(self, obj: None, owner: type[Any]) -> _SyncMethod[P, R]: ...
    @overload
    def __get__(self, obj: Mix, owner: type[Any]) -> Callable[P, R]: ...
    def __get__(self, obj: Mix | None, owner: type[Any]) -> _SyncMethod[P, R] | Callable[P, R]:
        return self if obj is None else self._bind(obj._client, obj.run_sync)


class _SyncIterMethod(_SyncBase, Generic[P, T]):
    """Turns an ``AsyncMix`` method returning an async stream into one returning a blocking iterator."""

    _wrap: Callable[[_LoopThread, Any], Any] = SyncStream
    _returns = ("SyncStream", "SyncStream[Any]")

    def __init__(self, fn: Callable[Concatenate[AsyncMix, P], AsyncIterator[T]]) -> None:
        super().__init__(fn)

    @overload
    def __get__(self, obj: None, owner: type[Any]) -> _SyncIterMethod[P, T]: ...
    @overload
    def __get__(self, obj: Mix, owner: type[Any]) -> Callable[P, SyncStream[T]]: ...
    def __get__(
        self, obj: Mix | None, owner: type[Any]
    ) -> _SyncIterMethod[P, T] | Callable[P, SyncStream[T]]:
        if obj is None:
            return self
        return self._bind(obj._client, functools.partial(type(self)._wrap, obj._runner))


class _SyncDownloadMethod(_SyncIterMethod[P, bytes]):
    """``AsyncMix.iter_session_file`` as a blocking method returning a :class:`SyncFileDownload`."""

    _wrap = SyncFileDownload
    _returns = ("SyncFileDownload", "SyncFileDownload")

    @overload
    def __get__(self, obj: None, owner: type[Any]) -> _SyncDownloadMethod[P]: ...
    @overload
    def __get__(self, obj: Mix, owner: type[Any]) -> Callable[P, SyncFileDownload]: ...
    def __get__(
        self, obj: Mix | None, owner: type[Any]
    ) -> _SyncDownloadMethod[P] | Callable[P, SyncFileDownload]:
        return super().__get__(obj, owner)  # type: ignore[return-value]


async def _close_sync_client(client: AsyncMix, session: aiohttp.ClientSession | None) -> None:
    try:
        await client.aclose()
    finally:
        if session is not None and not session.closed:
            await session.close()


class Mix:
    """The blocking client: every :class:`AsyncMix` method, without ``await``.

    It runs an :class:`AsyncMix` on a private event loop in a background thread, so it
    works in scripts, from several threads at once, and inside a running event loop (a
    notebook cell). Streams (:meth:`stream_events`, :meth:`query`,
    :meth:`iter_session_file`) are plain iterators; use them in ``with`` to close early.

    ``with Mix() as mix: print(mix.health_check().status)``

    Arguments are those of :class:`AsyncMix`, except that an aiohttp session must belong
    to the private loop: pass ``session_factory`` (called there; :meth:`close` closes the
    session it makes) instead of ``session``.

    :meth:`close` (or leaving ``with``) ends the calls other threads have in flight (they
    raise :class:`MixError`), closes the open streams and connections and stops the thread.
    A ``Mix`` dropped without ``close()`` is closed when it is garbage-collected, or at exit.
    """

    def __init__(
        self,
        server_url: str | None = None,
        *,
        timeout: Timeout | _NotGiven = _NOT_GIVEN,
        max_retries: int | None = None,
        retry_config: RetryConfig | None = None,
        headers: Mapping[str, str] | None = None,
        session_factory: Callable[[], aiohttp.ClientSession] | None = None,
        logger: logging.Logger | None = None,
        max_connections: int | None = None,
        max_stream_connections: int | None = None,
        max_event_size: int = DEFAULT_MAX_EVENT_SIZE,
        session: None = None,
    ) -> None:
        if session is not None:
            raise InvalidInputError(
                "Mix runs its own event loop in a background thread, so it cannot use an "
                "aiohttp session made elsewhere: pass session_factory=lambda: "
                "aiohttp.ClientSession(...) instead (called on that loop; Mix.close() closes it)"
            )
        if session_factory is not None and not callable(session_factory):
            raise TypeError(
                f"session_factory must be a callable returning an aiohttp.ClientSession, "
                f"not {type(session_factory).__name__}"
            )
        self._runner = runner = _LoopThread()

        async def make() -> tuple[AsyncMix, aiohttp.ClientSession | None]:
            made = session_factory() if session_factory is not None else None
            if made is not None and not isinstance(made, aiohttp.ClientSession):
                if inspect.isawaitable(made) and hasattr(made, "close"):
                    made.close()
                raise TypeError(
                    f"session_factory must return an aiohttp.ClientSession, "
                    f"not {type(made).__name__}"
                )
            try:
                client = AsyncMix(
                    server_url,
                    timeout=timeout,
                    max_retries=max_retries,
                    retry_config=retry_config,
                    headers=headers,
                    session=made,
                    logger=logger,
                    max_connections=max_connections,
                    max_stream_connections=max_stream_connections,
                    max_event_size=max_event_size,
                )
            except BaseException:
                if made is not None:
                    await made.close()
                raise
            return client, made

        try:
            self._client, owned = runner.run(make())
        except BaseException:
            runner.stop()
            raise
        self.server_url = self._client.server_url
        # Holds the runner, the client and the session, never ``self``: it can run at GC.
        self._finalizer = weakref.finalize(
            self, runner.stop, functools.partial(_close_sync_client, self._client, owned)
        )

    @property
    def async_client(self) -> AsyncMix:
        """The underlying async client (use it only on this object's loop: see :meth:`run_sync`)."""
        return self._client

    def run_sync(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on this client's background loop and return its result (blocking).

        Every blocking method is built on it: ``mix.get_session(sid)`` is
        ``mix.run_sync(mix.async_client.get_session(sid))``. Use it to run your own
        coroutine that uses :attr:`async_client` (several calls at once with
        ``asyncio.gather``, say) from blocking code, a thread or a notebook cell.
        """
        if not isinstance(coro, Coroutine):
            raise _bad_value("run_sync()'s argument", "a coroutine", coro)
        return self._runner.run(coro)

    def close(self) -> None:
        """End calls in flight, close streams and connections, stop the background loop."""
        self._finalizer()

    def __enter__(self) -> Mix:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    store_api_key = _SyncMethod(AsyncMix.store_api_key)
    set_api_key = _SyncMethod(AsyncMix.set_api_key)
    initiate_oauth_login = _SyncMethod(AsyncMix.initiate_oauth_login)
    handle_oauth_callback = _SyncMethod(AsyncMix.handle_oauth_callback)
    start_oauth_flow = _SyncMethod(AsyncMix.start_oauth_flow)
    get_auth_status = _SyncMethod(AsyncMix.get_auth_status)
    validate_preferred_provider = _SyncMethod(AsyncMix.validate_preferred_provider)
    delete_credentials = _SyncMethod(AsyncMix.delete_credentials)
    get_oauth_health = _SyncMethod(AsyncMix.get_oauth_health)
    refresh_oauth_tokens = _SyncMethod(AsyncMix.refresh_oauth_tokens)
    health_check = _SyncMethod(AsyncMix.health_check)
    get_system_info = _SyncMethod(AsyncMix.get_system_info)
    list_commands = _SyncMethod(AsyncMix.list_commands)
    get_command = _SyncMethod(AsyncMix.get_command)
    list_mcp_servers = _SyncMethod(AsyncMix.list_mcp_servers)
    list_llm_tools = _SyncMethod(AsyncMix.list_llm_tools)
    get_tool_credentials_status = _SyncMethod(AsyncMix.get_tool_credentials_status)
    get_tools_status = _SyncMethod(AsyncMix.get_tools_status)
    get_preferences = _SyncMethod(AsyncMix.get_preferences)
    update_preferences = _SyncMethod(AsyncMix.update_preferences)
    get_available_providers = _SyncMethod(AsyncMix.get_available_providers)
    reset_preferences = _SyncMethod(AsyncMix.reset_preferences)
    list_sessions = _SyncMethod(AsyncMix.list_sessions)
    create_session = _SyncMethod(AsyncMix.create_session)
    get_session = _SyncMethod(AsyncMix.get_session)
    delete_session = _SyncMethod(AsyncMix.delete_session)
    update_session_callbacks = _SyncMethod(AsyncMix.update_session_callbacks)
    cancel_session_processing = _SyncMethod(AsyncMix.cancel_session_processing)
    export_session = _SyncMethod(AsyncMix.export_session)
    fork_session = _SyncMethod(AsyncMix.fork_session)
    rewind_session = _SyncMethod(AsyncMix.rewind_session)
    get_session_messages = _SyncMethod(AsyncMix.get_session_messages)
    send_message = _SyncMethod(AsyncMix.send_message)
    get_message_history = _SyncMethod(AsyncMix.get_message_history)
    grant_permission = _SyncMethod(AsyncMix.grant_permission)
    deny_permission = _SyncMethod(AsyncMix.deny_permission)
    respond_to_notification = _SyncMethod(AsyncMix.respond_to_notification)
    list_session_files = _SyncMethod(AsyncMix.list_session_files)
    upload_session_file = _SyncMethod(AsyncMix.upload_session_file)
    delete_session_file = _SyncMethod(AsyncMix.delete_session_file)
    get_session_file = _SyncMethod(AsyncMix.get_session_file)
    download_session_file = _SyncMethod(AsyncMix.download_session_file)
    iter_session_file = _SyncDownloadMethod(AsyncMix.iter_session_file)
    stream_events = _SyncIterMethod(AsyncMix.stream_events)
    query = _SyncIterMethod(AsyncMix.query)
    send_and_wait = _SyncMethod(AsyncMix.send_and_wait)


# ---------------------------------------------------------------------------
# 8. CLI: python -m mix_client
# ---------------------------------------------------------------------------


async def _cli(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="mix_client", description="Talk to a Mix server.")
    parser.add_argument(
        "--server-url", default=None, help="default: $MIX_SERVER_URL or http://localhost:8088"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("health", help="check the server")
    sub.add_parser("sessions", help="list sessions")
    ask = sub.add_parser("ask", help="send a message and stream the answer")
    ask.add_argument("text")
    ask.add_argument("--session", help="session id (default: a new session)")
    args = parser.parse_args(argv)
    async with AsyncMix(args.server_url) as mix:
        if args.command == "health":
            print(msgspec.json.encode(await mix.health_check()).decode())
        elif args.command == "sessions":
            for session in await mix.list_sessions():
                print(f"{session.id}\t{session.title}")
        else:
            session_id = args.session
            if session_id is None:
                session_id = (
                    await mix.create_session(
                        title="mix_client", browser_mode="local-browser-service"
                    )
                ).id
                print(f"session {session_id}", file=sys.stderr)
            streamed: list[str] = []

            def show(delta: str) -> None:
                streamed.append(delta)
                print(delta, end="", flush=True)

            def tool(call: TurnToolCall) -> None:
                print(f"\n[tool] {call.name}", file=sys.stderr)

            turn = await mix.send_and_wait(session_id, args.text, on_content=show, on_tool=tool)
            # A slash command's answer, or an end recovered after a drop, is not (all) on
            # the stream: print what the turn holds beyond what was shown.
            shown = "".join(streamed)
            if turn.text != shown:
                print(turn.text[len(shown) :] if turn.text.startswith(shown) else "\n" + turn.text)
            else:
                print()
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(asyncio.run(_cli(sys.argv[1:])))
    except MixError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
