from __future__ import annotations

import contextlib
import json
import random
import re
import signal
import sys
from collections.abc import Iterable, Iterator
from typing import Any

import msgspec
import pytest

from mix_client import (
    BaseEvent,
    CompleteData,
    CompleteEvent,
    ConnectedData,
    ConnectedEvent,
    ContentData,
    ContentEvent,
    ErrorData,
    ErrorEvent,
    HeartbeatData,
    HeartbeatEvent,
    NotificationData,
    NotificationEvent,
    PermissionData,
    PermissionEvent,
    ServerSentEvent,
    SessionCreatedData,
    SessionCreatedEvent,
    SessionDeletedData,
    SessionDeletedEvent,
    SSEDecoder,
    ThinkingData,
    ThinkingEvent,
    ToolExecutionCompleteData,
    ToolExecutionCompleteEvent,
    ToolExecutionStartData,
    ToolExecutionStartEvent,
    ToolInputAccumulator,
    ToolUseParameterDeltaData,
    ToolUseParameterDeltaEvent,
    ToolUseParameterStreamingCompleteData,
    ToolUseParameterStreamingCompleteEvent,
    ToolUseStartData,
    ToolUseStartEvent,
    UnknownEvent,
    UserMessageCreatedData,
    UserMessageCreatedEvent,
    decode_event,
    parse_tool_input,
)

Frame = tuple[str, bytes, "str | None", "int | None"]

# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def mix_frame(event_id: int, event: str, payload: dict[str, Any]) -> bytes:
    """A frame exactly as the Mix server writes it (compact one-line JSON)."""
    data = json.dumps(payload, separators=(",", ":")).encode()
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event_id, event.encode(), data)


SID = "sess_01HZX"

MIX_STREAM = b"".join(
    [
        b"retry: 3000\n",
        mix_frame(1, "connected", {"sessionId": SID}),
        mix_frame(
            2,
            "user_message_created",
            {"type": "user_message_created", "messageId": "m1", "content": "hi <b>"},
        ),
        mix_frame(
            3, "thinking", {"type": "thinking", "content": "Let me", "assistantMessageId": "a1"}
        ),
        b": keep-alive comment\n",
        mix_frame(
            4, "content", {"type": "content", "content": "Hello, ", "assistantMessageId": "a1"}
        ),
        mix_frame(
            5,
            "content",
            {"type": "content", "content": "w\u00f6rld \u2603", "assistantMessageId": "a1"},
        ),
        mix_frame(6, "tool_use_start", {"type": "tool_use_start", "id": "t1", "name": "Bash"}),
        mix_frame(
            7,
            "tool_use_parameter_delta",
            {"type": "tool_use_parameter_delta", "toolCallId": "t1", "input": '{"comm'},
        ),
        mix_frame(
            8,
            "tool_use_parameter_delta",
            {"type": "tool_use_parameter_delta", "toolCallId": "t1", "input": 'and":"ls"}'},
        ),
        mix_frame(
            9,
            "tool_execution_complete",
            {
                "type": "tool_execution_complete",
                "toolName": "",
                "toolCallId": "t1",
                "progress": "done",
                "success": True,
            },
        ),
        mix_frame(10, "heartbeat", {"type": "ping"}),
        mix_frame(11, "complete", {"type": "complete", "done": True, "messageId": "a1"}),
    ]
)


def frames_of(frames: Iterable[ServerSentEvent]) -> list[Frame]:
    return [(f.event, f.data, f.id, f.retry) for f in frames]


def run(chunks: Iterable[bytes], decoder: SSEDecoder | None = None) -> list[Frame]:
    d = decoder if decoder is not None else SSEDecoder()
    out: list[ServerSentEvent] = []
    for chunk in chunks:
        out.extend(d.feed(chunk))
    return frames_of(out)


def reference(stream: bytes) -> list[Frame]:
    """A deliberately naive whole-stream parser written from the WHATWG text."""
    if stream.startswith(b"\xef\xbb\xbf"):
        stream = stream[3:]
    lines = re.split(rb"\r\n|\r|\n", stream)[:-1]  # the last piece is unterminated
    out: list[Frame] = []
    data = b""
    event = ""
    last_id = ""
    retry: int | None = None
    for line in lines:
        if line == b"":
            if data == b"":
                event = ""
                retry = None
                continue
            if data.endswith(b"\n"):
                data = data[:-1]
            out.append((event or "message", data, last_id or None, retry))
            data, event, retry = b"", "", None
            continue
        if line.startswith(b":"):
            continue
        if b":" in line:
            field, _, value = line.partition(b":")
            if value.startswith(b" "):
                value = value[1:]
        else:
            field, value = line, b""
        if field == b"event":
            event = value.decode("utf-8", "replace")
        elif field == b"data":
            data += value + b"\n"
        elif field == b"id":
            if b"\x00" not in value:
                last_id = value.decode("utf-8", "replace")
        elif field == b"retry" and value and all(48 <= c <= 57 for c in value):
            retry = int(value)
    return out


def with_line_ends(stream: bytes, eol: bytes) -> bytes:
    return stream.replace(b"\n", eol)


def one_byte(data: bytes) -> Iterator[bytes]:
    for i in range(len(data)):
        yield data[i : i + 1]


def chunked(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


@contextlib.contextmanager
def hang_guard(seconds: int) -> Iterator[None]:
    """Turn a hang (e.g. quadratic work) into a failure; not a timing assertion:
    the limit is far above what a linear decoder needs."""
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def fail(signum: int, frame: object) -> None:
        raise AssertionError(f"decoder still running after {seconds}s: not linear?")

    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# ---------------------------------------------------------------------------
# Raw decoder: the recorded Mix stream
# ---------------------------------------------------------------------------

EXPECTED = run([MIX_STREAM])


def test_recorded_stream_whole() -> None:
    assert [(e, i) for e, _, i, _ in EXPECTED] == [
        ("connected", "1"),
        ("user_message_created", "2"),
        ("thinking", "3"),
        ("content", "4"),
        ("content", "5"),
        ("tool_use_start", "6"),
        ("tool_use_parameter_delta", "7"),
        ("tool_use_parameter_delta", "8"),
        ("tool_execution_complete", "9"),
        ("heartbeat", "10"),
        ("complete", "11"),
    ]
    assert EXPECTED[0] == ("connected", b'{"sessionId":"sess_01HZX"}', "1", 3000)
    assert all(r is None for _, _, _, r in EXPECTED[1:])
    assert json.loads(EXPECTED[4][1])["content"] == "w\u00f6rld \u2603"
    assert reference(MIX_STREAM) == EXPECTED


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_recorded_stream_split_at_every_byte(eol: bytes) -> None:
    stream = with_line_ends(MIX_STREAM, eol)
    assert run([stream]) == EXPECTED
    for i in range(len(stream) + 1):
        assert run([stream[:i], stream[i:]]) == EXPECTED, f"split at {i}"


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_recorded_stream_one_byte_chunks(eol: bytes) -> None:
    stream = with_line_ends(MIX_STREAM, eol)
    assert run(one_byte(stream)) == EXPECTED
    # One chunk per frame, as the Mix server writes them, on one decoder.
    frames = [f + b"\n\n" for f in stream.split(eol + eol) if f]
    assert run(frames) == EXPECTED


def test_recorded_stream_three_way_splits_with_empty_chunks() -> None:
    stream = with_line_ends(MIX_STREAM[:400], b"\r\n")
    want = reference(stream)
    assert len(want) >= 3
    for i in range(0, len(stream) + 1, 3):
        for j in range(i, min(len(stream), i + 40) + 1):
            assert run([stream[:i], b"", stream[i:j], b"", stream[j:]]) == want, (i, j)


def test_random_streams_match_reference() -> None:
    rng = random.Random(20240601)
    pieces = [
        b"data: x",
        b"data:y",
        b"data",
        b"data:",
        b"data:  two spaces",
        b"event: content",
        b"event:",
        b"event",
        b"id: 7",
        b"id:",
        b"id: a\x00b",
        b"id:\x00",
        b"retry: 15",
        b"retry: 1x",
        b"retry:",
        b": comment",
        b":",
        b"unknown: field",
        b"",
        b"",
        b"",
        b'data: {"k": "\xc3\xa9"}',
        b"\xef\xbb\xbfdata: not a bom",
    ]
    for _ in range(300):
        eols = [b"\n", b"\r", b"\r\n"]
        parts = [rng.choice(pieces) + rng.choice(eols) for _ in range(rng.randint(1, 25))]
        stream = (b"\xef\xbb\xbf" if rng.random() < 0.3 else b"") + b"".join(parts)
        if rng.random() < 0.3:
            stream += b"data: unterminated"
        want = reference(stream)
        assert run([stream]) == want, stream
        assert run(one_byte(stream)) == want, stream
        cuts = sorted(rng.sample(range(len(stream) + 1), min(6, len(stream) + 1)))
        chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        assert run(chunks) == want, (stream, cuts)


# ---------------------------------------------------------------------------
# Raw decoder: individual rules
# ---------------------------------------------------------------------------


def test_cr_then_lf_in_next_chunk_is_one_line_end() -> None:
    d = SSEDecoder()
    assert d.feed(b"data: a\r") == []
    assert d.feed(b"\ndata: b\r") == []
    assert d.feed(b"") == []  # an empty chunk between CR and LF changes nothing
    assert frames_of(d.feed(b"\n\r\n")) == [("message", b"a\nb", None, None)]


def test_cr_then_cr_is_two_line_ends() -> None:
    d = SSEDecoder()
    assert d.feed(b"data: a\r") == []
    assert frames_of(d.feed(b"\r")) == [("message", b"a", None, None)]
    # A LF now is a separate (blank) line, not part of a CRLF: nothing to dispatch.
    assert d.feed(b"\n") == []
    assert frames_of(d.feed(b"data: b\n\n")) == [("message", b"b", None, None)]


def test_lf_after_completed_crlf_is_a_blank_line() -> None:
    assert run([b"data: a\r\n", b"\n"]) == [("message", b"a", None, None)]
    assert run([b"data: a\r", b"\n", b"\n"]) == [("message", b"a", None, None)]
    assert run([b"data: a\r", b"\n\n"]) == [("message", b"a", None, None)]


def test_multi_line_data_joined_with_lf() -> None:
    stream = b"data: a\ndata:\ndata:  b\ndata\ndata:c\n\n"
    assert run([stream]) == [("message", b"a\n\n b\n\nc", None, None)]


def test_only_one_leading_space_removed_and_colons_in_value_kept() -> None:
    assert run([b"event:x:y\ndata:: z\n\n"]) == [("x:y", b": z", None, None)]
    assert run([b"data:   \n\n"]) == [("message", b"  ", None, None)]


def test_comments_ignored() -> None:
    stream = b": hello\n:\ndata: a\n: between\ndata: b\n:\n\n"
    assert run([stream]) == [("message", b"a\nb", None, None)]
    assert run([b": only a comment\n\n"]) == []


def test_bom_at_start_stripped_once() -> None:
    bom = b"\xef\xbb\xbf"
    assert run([bom + b"data: x\n\n"]) == [("message", b"x", None, None)]
    assert run(one_byte(bom + b"data: x\n\n")) == [("message", b"x", None, None)]
    assert run([b"\xef", b"\xbb", b"", b"\xbfdata: x\n\n"]) == [("message", b"x", None, None)]
    # A second BOM makes the first field name "\ufeffdata": unknown, ignored.
    assert run([bom + bom + b"data: x\n\ndata: y\n\n"]) == [("message", b"y", None, None)]
    # Not at the stream start: not stripped.
    assert run([b"data: x\n\n" + bom + b"data: y\n\n"]) == [("message", b"x", None, None)]
    # Short first chunks that are not a BOM are kept.
    assert run([b"d", b"ata: 1\n\n"]) == [("message", b"1", None, None)]
    assert run([b"\xef\xbbdata: 1\n\n"]) == []  # field "\xef\xbbdata" is unknown


def test_bom_inside_data_kept() -> None:
    assert run([b"data: \xef\xbb\xbfx\n\n"]) == [("message", b"\xef\xbb\xbfx", None, None)]


@pytest.mark.parametrize(
    ("line", "want"),
    [
        (b"retry: 3000", 3000),
        (b"retry:0", 0),
        (b"retry: 007", 7),
        (b"retry: 30a0", None),
        (b"retry: -1", None),
        (b"retry: +1", None),
        (b"retry: 1.5", None),
        (b"retry: 1\xff", None),
        (b"retry: ", None),
        (b"retry", None),
        (b"retry:  12", None),  # the second space is part of the value
        ("retry: \uff13".encode(), None),  # full-width digit is not ASCII
        (b"retry: " + b"9" * 10000, None),  # too long for int(): ignored, no error
    ],
)
def test_retry(line: bytes, want: int | None) -> None:
    d = SSEDecoder()
    frames = frames_of(d.feed(line + b"\ndata: x\n\n"))
    assert frames == [("message", b"x", None, want)]
    assert d.retry == want


def test_invalid_retry_keeps_previous_value_and_retry_is_per_frame() -> None:
    d = SSEDecoder()
    d.feed(b"retry: 500\n\n")  # no data: nothing dispatched, but retry applies
    assert d.retry == 500
    assert frames_of(d.feed(b"retry: nope\ndata: x\n\n")) == [("message", b"x", None, None)]
    assert d.retry == 500
    assert frames_of(d.feed(b"retry: 20\ndata: y\n\ndata: z\n\n")) == [
        ("message", b"y", None, 20),
        ("message", b"z", None, None),
    ]
    assert d.retry == 20


@pytest.mark.parametrize(
    ("stream", "ids"),
    [
        (
            b"id: 1\ndata: a\n\nid: 2\x00x\ndata: b\n\nid\x00: 3\ndata: c\n\nid:4\x00\ndata: d\n\n",
            "1111",
        ),
        # An empty id resets; id 6 is set by an event that was never dispatched.
        (b"id: 5\ndata: a\n\ndata: b\n\nid\ndata: c\n\nid: 6\n\ndata: d\n\n", "55-6"),
    ],
    ids=["with_nul_ignored", "persists_and_can_be_reset"],
)
def test_id(stream: bytes, ids: str) -> None:
    d = SSEDecoder()
    expected = [None if i == "-" else i for i in ids]
    assert run([stream], d) == [
        ("message", data, i, None)
        for data, i in zip([b"a", b"b", b"c", b"d"], expected, strict=True)
    ]
    assert d.last_event_id == expected[-1]


def test_id_with_nul_ignored_by_one_frame_chunks_and_initial_id() -> None:
    d = SSEDecoder(last_event_id="1")
    # Also through the one-frame-per-chunk shortcut.
    assert frames_of(d.feed(b"id: 9\x00\nevent: content\ndata: {}\n\n")) == [
        ("content", b"{}", "1", None)
    ]
    assert SSEDecoder(last_event_id="41").feed(b"data: x\n\n")[0].id == "41"
    assert SSEDecoder().last_event_id is None


def test_empty_data_not_dispatched_but_event_type_resets() -> None:
    assert run([b"event: foo\n\ndata: x\n\n"]) == [("message", b"x", None, None)]
    assert run([b"event: foo\nid: 1\n\n\n\n"]) == []
    assert run([b"data\n\n"]) == [("message", b"", None, None)]
    assert run([b"data:\ndata:\n\n"]) == [("message", b"\n", None, None)]


def test_event_names() -> None:
    assert run([b"event:\ndata: x\n\n"]) == [("message", b"x", None, None)]
    assert run([b"event\ndata: x\n\n"]) == [("message", b"x", None, None)]
    assert run([b"event: a\nevent: b\ndata: x\n\n"]) == [("b", b"x", None, None)]
    assert run([b"Event: a\nDATA: y\ndata: x\n\n"]) == [("message", b"x", None, None)]
    assert run([b"event: brand_new\ndata: x\n\n"]) == [("brand_new", b"x", None, None)]


def test_unknown_fields_ignored() -> None:
    assert run([b"foo: bar\nfoo\ndata: x\nidx: 3\n ata: z\n\n"]) == [("message", b"x", None, None)]


def test_incomplete_event_not_dispatched() -> None:
    d = SSEDecoder()
    assert d.feed(b"data: x\n") == []
    assert d.feed(b"data: y") == []
    assert frames_of(d.feed(b"\n\n")) == [("message", b"x\ny", None, None)]


def test_pending_state_before_a_standard_frame_chunk() -> None:
    # The one-frame shortcut must not run while a line, data or an event type is pending.
    frame = b"id: 1\nevent: content\ndata: x\n\n"
    assert run([b"data: a", frame]) == [("content", b"aid: 1\nx", None, None)]
    assert run([b"data: a\n", frame]) == [("content", b"a\nx", "1", None)]
    assert run([b"retry: 5\n", frame]) == [("content", b"x", "1", 5)]
    assert run([b"data: a\r", frame]) == [("content", b"a\nx", "1", None)]
    assert run([b"\xef\xbb", b"\xbf" + frame]) == [("content", b"x", "1", None)]


def test_many_frames_in_one_chunk_and_frame_variants() -> None:
    stream = b"".join(mix_frame(i, "content", {"content": str(i)}) for i in range(1, 301))
    got = run(chunked(stream, 4096))
    assert [i for _, _, i, _ in got] == [str(i) for i in range(1, 301)]
    assert got == reference(stream)
    # Frames without id, non-UTF-8 id, and an empty id through the shortcut.
    assert run([b"event: content\ndata: 1\n\n"]) == [("content", b"1", None, None)]
    assert (
        run([b"id: \xff\nevent: content\ndata: 1\n\n"] * 2)
        == [
            ("content", b"1", "\ufffd", None),
        ]
        * 2
    )
    assert run([b"id: 3\ndata: 1\n\n", b"id: \nevent: content\ndata: 2\n\n"]) == [
        ("message", b"1", "3", None),
        ("content", b"2", None, None),
    ]


def test_frame_is_frozen_and_text() -> None:
    frame = SSEDecoder().feed("data: caf\u00e9\n\n".encode())[0]
    assert frame.text == "caf\u00e9"
    with pytest.raises(AttributeError):
        frame.event = "x"  # type: ignore[misc]


# ---------------------------------------------------------------------------
# Raw decoder: large events and linearity
# ---------------------------------------------------------------------------

BIG = 4 * 1024 * 1024


def big_content_frame(size: int) -> tuple[bytes, str]:
    text = "".join(chr(97 + i % 26) for i in range(997)) * (size // 997 + 1)
    text = text[:size]
    return mix_frame(42, "content", {"type": "content", "content": text}), text


@pytest.mark.parametrize("chunk_size", [1024, 64 * 1024, 7])
def test_4mib_event(chunk_size: int) -> None:
    frame, text = big_content_frame(BIG)
    stream = mix_frame(1, "connected", {"sessionId": SID}) + frame + mix_frame(43, "heartbeat", {})
    d = SSEDecoder()
    frames: list[ServerSentEvent] = []
    with hang_guard(120):
        for chunk in chunked(stream, chunk_size):
            frames.extend(d.feed(chunk))
    assert [f.event for f in frames] == ["connected", "content", "heartbeat"]
    ev = decode_event(frames[1])
    assert isinstance(ev, ContentEvent)
    assert ev.id == "42"
    assert ev.data.content == text


def test_4mib_line_in_one_byte_chunks() -> None:
    # A decoder that re-scans or re-copies buffered bytes needs ~10**13 steps here.
    payload = b"x" * BIG
    stream = b"data: " + payload + b"\r\n\r\n"
    d = SSEDecoder()
    feed = d.feed
    out: list[ServerSentEvent] = []
    with hang_guard(120):
        for i in range(len(stream)):
            out += feed(stream[i : i + 1])
    assert len(out) == 1
    assert out[0].data == payload


def _count_calls(chunks: list[bytes]) -> int:
    """Python and C function calls made while feeding ``chunks``."""
    d = SSEDecoder()
    calls = 0

    def profiler(frame: object, event: str, arg: object) -> None:
        nonlocal calls
        if event in ("call", "c_call"):
            calls += 1

    sys.setprofile(profiler)
    try:
        for chunk in chunks:
            d.feed(chunk)
    finally:
        sys.setprofile(None)
    return calls


def test_work_per_chunk_is_constant() -> None:
    # Work counted, not timed: the number of calls per fed chunk must not grow
    # with the size of what is already buffered.
    for unit in (b"x", b"data: abc\n", b"data: abc\r"):
        small = [unit] * 2000
        large = [unit] * 8000
        c_small = _count_calls(small)
        c_large = _count_calls(large)
        assert c_large <= 4 * c_small + 50, (unit, c_small, c_large)
        assert c_large <= 12 * len(large), (unit, c_large)


# ---------------------------------------------------------------------------
# Typed events
# ---------------------------------------------------------------------------


def typed(event: str, payload: Any, event_id: str | None = "7") -> Any:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return decode_event(ServerSentEvent(event, data, event_id))


FULL_PAYLOADS: dict[
    str, tuple[type[BaseEvent], type[msgspec.Struct], dict[str, Any], dict[str, Any]]
]
FULL_PAYLOADS = {
    "connected": (ConnectedEvent, ConnectedData, {"sessionId": "s1"}, {"session_id": "s1"}),
    "heartbeat": (HeartbeatEvent, HeartbeatData, {"type": "ping"}, {"type": "ping"}),
    "user_message_created": (
        UserMessageCreatedEvent,
        UserMessageCreatedData,
        {
            "type": "user_message_created",
            "messageId": "m1",
            "content": "hi",
            "parentToolCallId": "p1",
        },
        {
            "type": "user_message_created",
            "message_id": "m1",
            "content": "hi",
            "parent_tool_call_id": "p1",
        },
    ),
    "thinking": (
        ThinkingEvent,
        ThinkingData,
        {
            "type": "thinking",
            "content": "hmm",
            "assistantMessageId": "a1",
            "parentToolCallId": "p1",
        },
        {
            "type": "thinking",
            "content": "hmm",
            "assistant_message_id": "a1",
            "parent_tool_call_id": "p1",
        },
    ),
    "content": (
        ContentEvent,
        ContentData,
        {"type": "content", "content": "Hi", "assistantMessageId": "a2", "parentToolCallId": "p2"},
        {
            "type": "content",
            "content": "Hi",
            "assistant_message_id": "a2",
            "parent_tool_call_id": "p2",
        },
    ),
    "tool_use_start": (
        ToolUseStartEvent,
        ToolUseStartData,
        {
            "type": "tool_use_start",
            "id": "t1",
            "name": "Bash",
            "assistantMessageId": "a3",
            "parentToolCallId": "p3",
        },
        {
            "type": "tool_use_start",
            "id": "t1",
            "name": "Bash",
            "assistant_message_id": "a3",
            "parent_tool_call_id": "p3",
        },
    ),
    "tool_use_parameter_delta": (
        ToolUseParameterDeltaEvent,
        ToolUseParameterDeltaData,
        {
            "type": "tool_use_parameter_delta",
            "toolCallId": "t1",
            "input": '{"a',
            "assistantMessageId": "a4",
            "parentToolCallId": "p4",
        },
        {
            "type": "tool_use_parameter_delta",
            "tool_call_id": "t1",
            "input": '{"a',
            "assistant_message_id": "a4",
            "parent_tool_call_id": "p4",
        },
    ),
    "tool_use_parameter_streaming_complete": (
        ToolUseParameterStreamingCompleteEvent,
        ToolUseParameterStreamingCompleteData,
        {
            "type": "tool_use_parameter_streaming_complete",
            "id": "t1",
            "name": "brave_search",
            "input": '{"q":"x"}',
            "assistantMessageId": "a5",
            "parentToolCallId": "p5",
        },
        {
            "type": "tool_use_parameter_streaming_complete",
            "id": "t1",
            "name": "brave_search",
            "input": '{"q":"x"}',
            "assistant_message_id": "a5",
            "parent_tool_call_id": "p5",
        },
    ),
    "tool_execution_start": (
        ToolExecutionStartEvent,
        ToolExecutionStartData,
        {
            "type": "tool_execution_start",
            "toolName": "Grep",
            "toolCallId": "t2",
            "progress": "running",
            "parentToolCallId": "p6",
        },
        {
            "type": "tool_execution_start",
            "tool_name": "Grep",
            "tool_call_id": "t2",
            "progress": "running",
            "parent_tool_call_id": "p6",
        },
    ),
    "tool_execution_complete": (
        ToolExecutionCompleteEvent,
        ToolExecutionCompleteData,
        {
            "type": "tool_execution_complete",
            "toolName": "Grep",
            "toolCallId": "t2",
            "progress": "ok",
            "success": True,
            "parentToolCallId": "p7",
        },
        {
            "type": "tool_execution_complete",
            "tool_name": "Grep",
            "tool_call_id": "t2",
            "progress": "ok",
            "success": True,
            "parent_tool_call_id": "p7",
        },
    ),
    "permission": (
        PermissionEvent,
        PermissionData,
        {
            "type": "permission",
            "id": "perm1",
            "sessionId": "s2",
            "toolName": "Write",
            "description": "Write a file",
            "action": "write",
            "path": "/tmp/a.txt",
            "params": {"content": "x", "n": [1, 2]},
            "parentToolCallId": "p8",
        },
        {
            "type": "permission",
            "id": "perm1",
            "session_id": "s2",
            "tool_name": "Write",
            "description": "Write a file",
            "action": "write",
            "path": "/tmp/a.txt",
            "params": {"content": "x", "n": [1, 2]},
            "parent_tool_call_id": "p8",
        },
    ),
    "notification": (
        NotificationEvent,
        NotificationData,
        {
            "type": "notification",
            "id": "n1",
            "sessionId": "s3",
            "notificationType": "question",
            "title": "Pick",
            "message": "Which?",
            "responseType": "choice",
            "timeout": 30,
            "createdAt": 1717000000,
            "choices": ["a", "b"],
            "parentToolCallId": "p9",
        },
        {
            "type": "notification",
            "id": "n1",
            "session_id": "s3",
            "notification_type": "question",
            "title": "Pick",
            "message": "Which?",
            "response_type": "choice",
            "timeout": 30,
            "created_at": 1717000000,
            "choices": ["a", "b"],
            "parent_tool_call_id": "p9",
        },
    ),
    "session_created": (
        SessionCreatedEvent,
        SessionCreatedData,
        {"type": "session_created", "sessionId": "s4", "title": "T", "createdAt": 1717000001},
        {"type": "session_created", "session_id": "s4", "title": "T", "created_at": 1717000001},
    ),
    "session_deleted": (
        SessionDeletedEvent,
        SessionDeletedData,
        {"type": "session_deleted", "sessionId": "s5"},
        {"type": "session_deleted", "session_id": "s5"},
    ),
    "error": (
        ErrorEvent,
        ErrorData,
        {
            "error": "overloaded",
            "type": "api_error",
            "attempt": 2,
            "maxAttempts": 5,
            "retryAfter": 1500,
            "parentToolCallId": "p10",
        },
        {
            "error": "overloaded",
            "type": "api_error",
            "attempt": 2,
            "max_attempts": 5,
            "retry_after": 1500,
            "parent_tool_call_id": "p10",
        },
    ),
    "complete": (
        CompleteEvent,
        CompleteData,
        {
            "type": "complete",
            "done": True,
            "content": "Final",
            "messageId": "a9",
            "reasoning": "because",
            "reasoningDuration": 1234,
            "parentToolCallId": "p11",
        },
        {
            "type": "complete",
            "done": True,
            "content": "Final",
            "message_id": "a9",
            "reasoning": "because",
            "reasoning_duration": 1234,
            "parent_tool_call_id": "p11",
        },
    ),
}


def test_all_sixteen_events_covered() -> None:
    assert len(FULL_PAYLOADS) == 16
    for name, (event_cls, data_cls, wire, attrs) in FULL_PAYLOADS.items():
        assert event_cls.event == name  # type: ignore[attr-defined]
        # Every field of the Struct is exercised, with its wire name.
        fields = msgspec.structs.fields(data_cls)
        assert {f.name for f in fields} == set(attrs), name
        assert {f.encode_name for f in fields} == set(wire), name


@pytest.mark.parametrize("name", sorted(FULL_PAYLOADS))
def test_full_payload_decodes_every_field(name: str) -> None:
    event_cls, data_cls, wire, attrs = FULL_PAYLOADS[name]
    ev = typed(name, wire)
    assert type(ev) is event_cls
    assert ev.event == name  # type: ignore[attr-defined]
    assert ev.id == "7"
    assert type(ev.data) is data_cls
    for attr, value in attrs.items():
        assert getattr(ev.data, attr) == value, (name, attr)
    # Through the raw decoder too, as a server frame.
    frames = SSEDecoder().feed(mix_frame(7, name, wire))
    assert decode_event(frames[0]) == ev


@pytest.mark.parametrize("name", sorted(FULL_PAYLOADS))
def test_empty_payload_uses_defaults(name: str) -> None:
    event_cls, data_cls, _, attrs = FULL_PAYLOADS[name]
    ev = typed(name, {}, event_id=None)
    assert type(ev) is event_cls
    assert ev.id is None
    assert ev.data == data_cls()
    for attr in attrs:
        assert getattr(ev.data, attr) in (None, "", False), (name, attr)
    assert ev.session_id is None
    assert ev.parent_tool_call_id is None


def test_session_id_helper() -> None:
    with_sid = {"connected", "permission", "notification", "session_created", "session_deleted"}
    for name, (_, _, wire, attrs) in FULL_PAYLOADS.items():
        ev = typed(name, wire)
        if name in with_sid:
            assert ev.session_id == attrs["session_id"], name
        else:
            assert ev.session_id is None, name
        assert ev.parent_tool_call_id == attrs.get("parent_tool_call_id"), name
    assert typed("content", {"content": "x", "parentToolCallId": ""}).parent_tool_call_id is None
    assert (
        typed("rate_limit_error", {"sessionId": "s9", "parentToolCallId": "p"}).session_id == "s9"
    )
    assert (
        typed("rate_limit_error", {"sessionId": "s9", "parentToolCallId": "p"}).parent_tool_call_id
        == "p"
    )
    assert typed("rate_limit_error", [1]).session_id is None
    assert typed("rate_limit_error", {"sessionId": 3}).session_id is None


@pytest.mark.parametrize(
    "name", ["rate_limit_error", "tool", "tool_parameter_delta", "message", ""]
)
def test_unknown_event_names(name: str) -> None:
    payload = {"error": "slow down", "retryAfter": 3, "nested": {"a": [1, None]}}
    ev = typed(name, payload)
    assert type(ev) is UnknownEvent
    assert ev.event == name
    assert ev.id == "7"
    assert ev.data == payload


@pytest.mark.parametrize(
    "data",
    [b"not json", b"{", b"", b'{"content": "x"} trailing', b"\xff\xfe", b'{"a":1}\n{"b":2}'],
)
def test_invalid_json_gives_unknown_event(data: bytes) -> None:
    ev = typed("content", data)
    assert type(ev) is UnknownEvent
    assert ev.event == "content"
    assert ev.id == "7"
    assert ev.data == data.decode("utf-8", "replace")


@pytest.mark.parametrize(
    ("name", "payload"),
    [
        ("content", {"content": 5}),
        ("content", []),
        ("content", "text"),
        ("heartbeat", None),
        ("tool_execution_complete", {"success": "maybe"}),
        ("notification", {"choices": "a"}),
        ("permission", {"toolName": 5}),
    ],
)
def test_schema_mismatch_gives_unknown_event_with_parsed_data(name: str, payload: Any) -> None:
    ev = typed(name, payload)
    assert type(ev) is UnknownEvent
    assert ev.event == name
    assert ev.data == payload


@pytest.mark.parametrize("params", [{"path": "/tmp"}, [1, 2], "rm -rf", 3, None])
def test_permission_params_of_any_json_shape_stay_typed(params: Any) -> None:
    ev = typed("permission", {"id": "p1", "toolName": "bash", "params": params})
    assert isinstance(ev, PermissionEvent)
    assert (ev.data.id, ev.data.tool_name, ev.data.params) == ("p1", "bash", params)


def test_unknown_enum_values_kept_as_strings() -> None:
    ev = typed(
        "notification",
        {"notificationType": "celebration", "responseType": "dance", "type": "new_kind"},
    )
    assert isinstance(ev, NotificationEvent)
    assert ev.data.notification_type == "celebration"
    assert ev.data.response_type == "dance"
    assert ev.data.type == "new_kind"
    ev2 = typed("tool_execution_start", {"toolName": "", "toolCallId": "t"})
    assert isinstance(ev2, ToolExecutionStartEvent)
    assert ev2.data.tool_name == ""
    ev3 = typed("tool_use_start", {"name": "custom_server_tool", "id": "t"})
    assert isinstance(ev3, ToolUseStartEvent)
    assert ev3.data.name == "custom_server_tool"


def test_unknown_extra_fields_ignored() -> None:
    ev = typed("content", {"content": "x", "brandNew": {"deep": [1]}, "sessionId": "s", "id": 1})
    assert isinstance(ev, ContentEvent)
    assert ev.data == ContentData(content="x")


def test_lenient_numbers() -> None:
    ev = typed("complete", {"done": True, "reasoningDuration": 1.5})
    assert isinstance(ev, CompleteEvent)
    assert ev.data.reasoning_duration == 1.5
    ev2 = typed("notification", {"timeout": "30", "createdAt": 5})
    assert isinstance(ev2, NotificationEvent)
    assert ev2.data.timeout == 30
    ev3 = typed("complete", {"done": True, "reasoningDuration": 2000})
    assert isinstance(ev3, CompleteEvent)
    assert ev3.data.reasoning_duration == 2000
    assert type(ev3.data.reasoning_duration) is int


def test_escaped_html_characters_decode() -> None:
    ev = typed("content", b'{"content":"\\u003cb\\u003e \\u0026"}')
    assert isinstance(ev, ContentEvent)
    assert ev.data.content == "<b> &"


def test_decode_event_never_raises() -> None:
    rng = random.Random(7)
    names = [*FULL_PAYLOADS, "rate_limit_error", "x"]
    for _ in range(2000):
        data = bytes(rng.randrange(256) for _ in range(rng.randint(0, 12)))
        if rng.random() < 0.5:
            data = b'{"content":' + data + b"}"
        ev = decode_event(ServerSentEvent(rng.choice(names), data, None))
        assert isinstance(ev, BaseEvent)


def test_typed_events_are_frozen() -> None:
    ev = typed("content", {"content": "x"})
    with pytest.raises(AttributeError):
        ev.id = "8"
    with pytest.raises(AttributeError):
        ev.data.content = "y"


def test_decoding_a_recorded_stream() -> None:
    d = SSEDecoder()
    events = [decode_event(f) for f in d.feed(MIX_STREAM)]
    assert [type(e).__name__ for e in events] == [
        "ConnectedEvent",
        "UserMessageCreatedEvent",
        "ThinkingEvent",
        "ContentEvent",
        "ContentEvent",
        "ToolUseStartEvent",
        "ToolUseParameterDeltaEvent",
        "ToolUseParameterDeltaEvent",
        "ToolExecutionCompleteEvent",
        "HeartbeatEvent",
        "CompleteEvent",
    ]
    text = "".join(e.data.content for e in events if isinstance(e, ContentEvent))
    assert text == "Hello, w\u00f6rld \u2603"
    assert events[0].session_id == SID
    acc = ToolInputAccumulator()
    for e in events:
        acc.feed(e)
    assert acc.parsed("t1") == {"command": "ls"}


# ---------------------------------------------------------------------------
# Tool input accumulation
# ---------------------------------------------------------------------------


def delta(tool_call_id: str, piece: str) -> ToolUseParameterDeltaEvent:
    return ToolUseParameterDeltaEvent(
        data=ToolUseParameterDeltaData(tool_call_id=tool_call_id, input=piece)
    )


def test_accumulator_joins_interleaved_pieces() -> None:
    acc = ToolInputAccumulator()
    for ev in [delta("a", '{"x"'), delta("b", "[1,"), delta("a", ": 1}"), delta("b", "2]")]:
        acc.feed(ev)
    acc.feed(ContentEvent(data=ContentData(content="ignored")))
    assert acc.tool_call_ids == ["a", "b"]
    assert "a" in acc
    assert "zzz" not in acc
    assert acc.raw("a") == '{"x": 1}'
    assert acc.parsed("a") == {"x": 1}
    assert acc.pop("b") == [1, 2]
    assert "b" not in acc
    assert acc.raw("b") == ""
    assert acc.parsed("b") == {}


def test_accumulator_complete_event_overrides() -> None:
    acc = ToolInputAccumulator()
    acc.feed(delta("t", '{"partial'))
    acc.feed(
        ToolUseParameterStreamingCompleteEvent(
            data=ToolUseParameterStreamingCompleteData(
                id="t", name="Bash", input='{"command":"pwd"}'
            )
        )
    )
    assert acc.parsed("t") == {"command": "pwd"}
    # An empty complete input keeps the joined pieces.
    acc.feed(delta("u", '{"k":'))
    acc.feed(delta("u", "2}"))
    acc.feed(
        ToolUseParameterStreamingCompleteEvent(data=ToolUseParameterStreamingCompleteData(id="u"))
    )
    assert acc.parsed("u") == {"k": 2}
    acc.feed(
        ToolUseParameterStreamingCompleteEvent(data=ToolUseParameterStreamingCompleteData(id="v"))
    )
    assert "v" in acc
    assert acc.parsed("v") == {}


def test_accumulator_many_pieces_and_invalid_json() -> None:
    acc = ToolInputAccumulator()
    for ch in json.dumps({"text": "y" * 5000}):
        acc.add("t", ch)
    assert acc.parsed("t") == {"text": "y" * 5000}
    acc.add("t", "garbage")
    assert acc.parsed("t") == '{"text": "' + "y" * 5000 + '"}garbage'
    acc.add("bad", '{"unterminated": ')
    assert acc.pop("bad") == '{"unterminated": '


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ('{"a": 1}', {"a": 1}),
        ("", {}),
        ("  \n", {}),
        ("[1]", [1]),
        ("nope", "nope"),
        ('{"a": ', '{"a": '),
    ],
)
def test_parse_tool_input(raw: str, want: Any) -> None:
    assert parse_tool_input(raw) == want
