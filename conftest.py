"""Fixtures shared by the test files (a test file's own fixture of the same name wins)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import mix_client
from _ops import UPLOAD_DIR
from mix_fake import MixFake


@pytest.fixture
async def fake() -> AsyncIterator[MixFake]:
    """A MixFake on the test's loop."""
    server = MixFake()
    async with server:
        yield server


@pytest.fixture
def upload_dir(tmp_path: Path) -> Iterator[Path]:
    """Where the operations table (_ops.CALLS) puts its upload and download files."""
    UPLOAD_DIR[:] = [tmp_path]
    yield tmp_path
    UPLOAD_DIR.clear()


class _SleepSpy:
    """Stands in for the ``asyncio`` module inside mix_client; records sleeps."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    async def sleep(self, delay: float, result: Any = None) -> Any:
        self.delays.append(delay)
        await asyncio.sleep(0)
        return result


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The delays mix_client sleeps, recorded; each sleep only yields to the loop once."""
    spy = _SleepSpy()
    monkeypatch.setattr(mix_client, "asyncio", spy)
    return spy.delays
