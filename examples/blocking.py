#!/usr/bin/env python3
# /// script
# requires-python = ">=3.10"
# dependencies = ["aiohttp", "msgspec"]
# ///
"""Blocking use: the `Mix` facade in a plain script, no async/await anywhere.

    python3 examples/blocking.py

`Mix` has every method of `AsyncMix`, blocking; its streams are ordinary iterators.
Uses $MIX_SERVER_URL, or the built-in fake when no Mix server answers.
"""

from __future__ import annotations

import sys
from pathlib import Path

# mix_client.py and mix_fake.py live in the repository root, one folder up.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import blocking_mix_server  # finds a server, or starts the fake

from mix_client import CompleteEvent, ContentEvent, Mix, ToolUseStartEvent


def main() -> None:
    with blocking_mix_server() as server, Mix(server.url) as mix:
        print(f"Server {mix.server_url}: {mix.health_check().status}")
        session = mix.create_session(title="blocking", browser_mode="local-browser-service")
        print(f"Created session {session.id}")
        try:
            # One call, one whole turn.
            print("You: Hello from a plain script!")
            turn = mix.send_and_wait(session.id, "Hello from a plain script!", timeout=300)
            print(f"Agent: {turn.text}")

            # Or the events as they come, from an ordinary for loop. The `with` closes the
            # stream if you leave the loop early.
            question = "List the files in your working directory."
            if server.fake is not None:
                question += " [tool]"  # makes the fake agent call a tool
            print(f"You: {question}")
            started = False
            with mix.query(session.id, question, timeout=300) as events:
                for event in events:
                    if isinstance(event, ToolUseStartEvent):
                        print(f"  [tool] {event.data.name}")
                    elif isinstance(event, ContentEvent) and not event.parent_tool_call_id:
                        if not started:
                            print("Agent: ", end="")
                            started = True
                        print(event.data.content, end="", flush=True)
                    elif isinstance(event, CompleteEvent) and not event.parent_tool_call_id:
                        print()

            messages = mix.get_session_messages(session.id)
            print(f"The session holds {len(messages)} messages")
        finally:
            mix.delete_session(session.id)
            print(f"Deleted session {session.id}")


if __name__ == "__main__":
    main()
