#!/usr/bin/env python3
# /// script
# requires-python = ">=3.10"
# dependencies = ["aiohttp", "msgspec"]
# ///
"""Quickstart: one conversation with a Mix agent, streamed to the terminal.

    python3 examples/quickstart.py          # or: uv run --script examples/quickstart.py

It talks to $MIX_SERVER_URL (default http://localhost:8088). When no Mix server answers
there, it starts the built-in fake (mix_fake.py) in-process, so it runs anywhere.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import tempfile
from pathlib import Path

# mix_client.py and mix_fake.py live in the repository root, one folder up.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import mix_server  # finds a server, or starts the fake

from mix_client import (
    AsyncMix,
    CompleteEvent,
    ContentEvent,
    MixError,
    PermissionEvent,
    ThinkingEvent,
    ToolExecutionCompleteEvent,
    ToolUseParameterStreamingCompleteEvent,
)


class Spinner:
    """An animated "thinking..." on a terminal; nothing at all when the output is piped."""

    FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"

    def __init__(self) -> None:
        self.enabled = sys.stdout.isatty()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.enabled and self._task is None:
            self._draw(self.FRAMES[0])
            self._task = asyncio.create_task(self._spin())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
            self._draw("", erase=True)

    async def _spin(self) -> None:
        for frame in itertools.islice(itertools.cycle(self.FRAMES), 1, None):
            await asyncio.sleep(0.08)
            self._draw(frame)

    @staticmethod
    def _draw(frame: str, erase: bool = False) -> None:
        sys.stdout.write("\r\033[K" if erase else f"\r{frame} thinking...")
        sys.stdout.flush()


async def main() -> None:
    async with mix_server() as server, AsyncMix(server.url) as mix:
        # 1. Is the server there?
        health = await mix.health_check()
        print(f"Server {server.url}: {health.status} (version {health.version})")

        # 2. A session is one conversation with the agent, with its own files.
        session = await mix.create_session(title="quickstart", browser_mode="local-browser-service")
        print(f"Created session {session.id}")
        try:
            # 3. Give the agent a file to work with (a path, an open file or bytes).
            with tempfile.TemporaryDirectory() as tmp:
                info = await mix.upload_session_file(session.id, write_notes(tmp))
            print(f"Uploaded {info.name} ({info.size} bytes)")

            # 4. Ask about it. `query` opens the event stream, sends the message and yields
            #    what the agent does until it is done.
            question = "What does notes.txt say? Answer in one sentence."
            if server.fake is not None:
                question += " [tool]"  # makes the fake agent call a tool, as a real one would
            print(f"You: {question}")
            await ask(mix, session.id, question)

            # 5. The session's files, and the whole conversation as the server stored it.
            for file in await mix.list_session_files(session.id):
                print(f"File in the session: {file.name} ({file.size} bytes)")
            export = await mix.export_session(session.id)
            print(f"Exported the session: {len(export.messages)} messages")
        finally:
            # 6. Clean up: deleting a session deletes its messages and files too.
            await mix.delete_session(session.id)
            print(f"Deleted session {session.id}")


def write_notes(folder: str) -> Path:
    path = Path(folder, "notes.txt")
    path.write_text("Buy milk.\nCall Ada about the Mix demo on Friday.\n")
    return path


async def ask(mix: AsyncMix, session_id: str, question: str) -> None:
    """Stream one turn to the terminal: a spinner, a line per tool call, the answer."""
    spinner = Spinner()
    answering = False  # in the middle of printing the answer's text?
    spinner.start()
    async with mix.query(session_id, question, timeout=300) as events:
        async for event in events:
            if event.parent_tool_call_id:
                continue  # a sub-agent's work: only the main agent is shown here
            if isinstance(event, ThinkingEvent) and not answering:
                spinner.start()
            elif isinstance(event, ToolUseParameterStreamingCompleteEvent):
                spinner.stop()
                if answering:
                    print()
                    answering = False
                print(f"  [tool] {event.data.name} {event.data.input}")
            elif isinstance(event, ToolExecutionCompleteEvent):
                spinner.start()  # the agent goes on with the tool's result
            elif isinstance(event, PermissionEvent):
                # The agent asks before it changes something: this demo says no
                # (examples/permissions.py shows how to grant).
                spinner.stop()
                await mix.deny_permission(event.data.id)
                print(f"  [permission denied] {event.data.description}")
            elif isinstance(event, ContentEvent):
                spinner.stop()
                if not answering:
                    print("Agent: ", end="")
                    answering = True
                print(event.data.content, end="", flush=True)
            elif isinstance(event, CompleteEvent):
                spinner.stop()
    spinner.stop()
    if answering:
        print()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except MixError as error:  # the root of every error mix_client raises
        sys.exit(f"error: {error}")
