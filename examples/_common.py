"""Shared by the examples: find a Mix server, or start the built-in fake.

Every example talks to ``$MIX_SERVER_URL`` (default ``http://localhost:8088``). When no Mix
server answers there within a second, it starts ``mix_fake.MixFake`` (an in-memory Mix
server) in-process instead, and its first line of output says so. That way the examples
run on any machine; point ``MIX_SERVER_URL`` at a real server to talk to a real agent.

The example importing this module has already put the repository root on ``sys.path``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import AsyncIterator, Iterator
from typing import NamedTuple

from mix_client import DEFAULT_SERVER_URL, AsyncMix, MixError
from mix_fake import MixFake

# The fake answers at once; a short pause between its events makes the streamed reply
# look (a little) like a real agent at work.
FAKE_EVENT_DELAY = 0.05


class Server(NamedTuple):
    url: str
    fake: MixFake | None
    """The built-in fake when no real server answered, else ``None``."""


async def answers(url: str) -> bool:
    """Does a Mix server answer ``GET /health`` at ``url``? One try, one second."""
    try:
        async with AsyncMix(url, max_retries=0, timeout=1) as mix:
            await mix.health_check()
    except MixError:  # refused, timed out, not a Mix server, not even a valid URL...
        return False
    return True


def _say_fallback(url: str, fake_url: str) -> None:
    print(f"No Mix server at {url} — using the built-in fake (mix_fake) at {fake_url}", flush=True)


@contextlib.asynccontextmanager
async def mix_server() -> AsyncIterator[Server]:
    """For async code: the server at $MIX_SERVER_URL, or a fake on the running event loop."""
    url = os.environ.get("MIX_SERVER_URL") or DEFAULT_SERVER_URL
    if await answers(url):
        yield Server(url, None)
        return
    fake = MixFake(event_delay=FAKE_EVENT_DELAY)
    fake_url = await fake.start()
    _say_fallback(url, fake_url)
    try:
        yield Server(fake_url, fake)
    finally:
        await fake.stop()


@contextlib.contextmanager
def blocking_mix_server() -> Iterator[Server]:
    """For blocking code: the same, with the fake on an event loop in a background thread."""
    url = os.environ.get("MIX_SERVER_URL") or DEFAULT_SERVER_URL
    if asyncio.run(answers(url)):
        yield Server(url, None)
        return
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="mix-fake", daemon=True)
    thread.start()
    fake = MixFake(event_delay=FAKE_EVENT_DELAY)
    try:
        fake_url = asyncio.run_coroutine_threadsafe(fake.start(), loop).result()
        _say_fallback(url, fake_url)
        try:
            yield Server(fake_url, fake)
        finally:
            asyncio.run_coroutine_threadsafe(fake.stop(), loop).result(timeout=10)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
