#!/usr/bin/env python3
# /// script
# requires-python = ">=3.10"
# dependencies = ["aiohttp", "msgspec"]
# ///
"""Concurrent sessions: several conversations at once from one AsyncMix.

    python3 examples/concurrent_sessions.py

One client (one connection pool) drives three sessions with `asyncio.gather`; each
session runs two turns in order. Uses $MIX_SERVER_URL, or the built-in fake when no Mix
server answers. (Not named concurrent.py: that would shadow the stdlib's `concurrent`.)
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

# mix_client.py and mix_fake.py live in the repository root, one folder up.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import mix_server  # finds a server, or starts the fake

from mix_client import AsyncMix

TOPICS = ["the moon", "volcanoes", "honey bees"]


async def conversation(mix: AsyncMix, topic: str) -> int:
    """Two turns, one after the other, in a session of its own; returns the turn count."""
    session = await mix.create_session(title=f"about {topic}", browser_mode="local-browser-service")
    try:
        questions = [f"Tell me one fact about {topic}.", "And another one?"]
        for question in questions:
            turn = await mix.send_and_wait(session.id, question, timeout=300)
            print(f"[{topic}] You: {question}\n[{topic}] Agent: {turn.text}")
        return len(questions)
    finally:
        await mix.delete_session(session.id)


async def main() -> None:
    async with mix_server() as server, AsyncMix(server.url) as mix:
        started = time.monotonic()
        # The sessions' turns run at the same time, so their lines interleave.
        turns = await asyncio.gather(*(conversation(mix, topic) for topic in TOPICS))
        elapsed = time.monotonic() - started
        print(f"{len(TOPICS)} sessions, {sum(turns)} turns in {elapsed:.1f} s; sessions deleted")


if __name__ == "__main__":
    asyncio.run(main())
