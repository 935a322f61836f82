"""Names that say what they are (issue 11): the parts of the public surface renamed or
documented by the restructuring."""

from __future__ import annotations

import ast
import inspect
import json
import textwrap
from typing import Any

import msgspec
import pytest

import mix_client
from mix_client import Turn


def test_turn_counts_its_events_as_event_count() -> None:
    turn = Turn(session_id="s", event_count=3)
    assert turn.event_count == 3
    assert msgspec.to_builtins(turn)["event_count"] == 3


def test_turn_events_is_a_deprecated_read_only_alias() -> None:
    turn = Turn(session_id="s", event_count=2)
    with pytest.warns(DeprecationWarning, match="event_count"):
        assert turn.events == 2
    with pytest.raises(AttributeError):
        turn.events = 5  # type: ignore[misc]
    assert turn.event_count == 2


@pytest.mark.parametrize(
    ("cls", "wire"),
    [
        (
            mix_client.CompleteData,
            {
                "type": "complete",
                "done": True,
                "messageId": "m",
                "reasoningDuration": 1.5,
                "parentToolCallId": "p",
            },
        ),
        (
            mix_client.NotificationData,
            {
                "sessionId": "s",
                "notificationType": "ask",
                "responseType": "choice",
                "createdAt": 1,
                "parentToolCallId": "p",
            },
        ),
        (mix_client.ErrorData, {"error": "x", "maxAttempts": 3, "retryAfter": 10}),
        (mix_client.ToolExecutionStartData, {"toolName": "bash", "toolCallId": "t"}),
    ],
)
def test_event_payloads_read_and_write_the_wire_names(cls: type[Any], wire: dict[str, Any]) -> None:
    value = msgspec.json.decode(json.dumps(wire).encode(), type=cls)
    assert {k: v for k, v in msgspec.to_builtins(value).items() if k in wire} == wire


def test_async_mix_methods_are_each_a_few_lines() -> None:
    # The pool, the transfers and the turn runner live in the sections before AsyncMix;
    # what stays is options and one short method per endpoint (docstrings aside).
    tree = ast.parse(textwrap.dedent(inspect.getsource(mix_client.AsyncMix)))
    lengths = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                body = body[1:]
            lengths[node.name] = (body[-1].end_lineno or 0) - body[0].lineno + 1 if body else 0
    assert len(lengths) > 40
    too_long = {name: n for name, n in lengths.items() if n > 35}
    assert not too_long
