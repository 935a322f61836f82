"""Fixtures shared by the test files (a test file's own fixture of the same name wins)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

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
