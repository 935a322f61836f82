#!/usr/bin/env python3
# /// script
# requires-python = ">=3.10"
# dependencies = ["aiohttp", "msgspec"]
# ///
"""Permissions: the agent asks before it writes; grant or deny each request.

    python3 examples/permissions.py

Two turns: the first grants from a `send_and_wait` callback, the second denies from a
`query` loop. Uses $MIX_SERVER_URL, or the built-in fake when no Mix server answers.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

# mix_client.py and mix_fake.py live in the repository root, one folder up.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import mix_server  # finds a server, or starts the fake

from mix_client import (
    AgentError,
    AsyncMix,
    PermissionEvent,
    ToolExecutionCompleteEvent,
)


async def main() -> None:
    async with mix_server() as server, AsyncMix(server.url) as mix:
        session = await mix.create_session(
            title="permissions", browser_mode="local-browser-service"
        )
        # On the fake, "[permission]" makes the agent call Write, which needs a permission.
        tag = " [permission]" if server.fake is not None else ""
        try:
            await grant_with_callback(mix, session.id, "Write 'hello' to notes.txt." + tag)
            await deny_in_query(mix, session.id, "Now overwrite notes.txt with 'bye'." + tag)
        finally:
            await mix.delete_session(session.id)
            print(f"Deleted session {session.id}")


async def grant_with_callback(mix: AsyncMix, session_id: str, text: str) -> None:
    print(f"You: {text}")

    # A callback may be a plain function or a coroutine function (then it is awaited).
    async def on_permission(event: PermissionEvent) -> None:
        print(f"  permission asked: {event.data.description} -> granted")
        await mix.grant_permission(event.data.id)

    turn = await mix.send_and_wait(session_id, text, on_permission=on_permission, timeout=300)
    # The Turn has every tool call with its result, read back from the stored message.
    for call in turn.tool_calls:
        outcome = "failed" if call.is_error else "ok"
        print(f"  tool {call.name}: {outcome} ({call.result})")
    print(f"Agent: {turn.text}")


async def deny_in_query(mix: AsyncMix, session_id: str, text: str) -> None:
    print(f"You: {text}")
    try:
        async with mix.query(session_id, text, timeout=300) as events:
            async for event in events:
                if isinstance(event, PermissionEvent):
                    print(f"  permission asked: {event.data.description} -> denied")
                    await mix.deny_permission(event.data.id)
                elif isinstance(event, ToolExecutionCompleteEvent):
                    outcome = "ok" if event.data.success else "failed"
                    print(f"  tool {event.data.tool_name}: {outcome} ({event.data.progress})")
    except AgentError as exc:
        # The server stops a run whose permission was denied: it ends with an error.
        print(f"Agent stopped: {exc}")


if __name__ == "__main__":
    asyncio.run(main())
