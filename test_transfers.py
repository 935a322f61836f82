"""File transfers: memory, safe downloads, text uploads, types, metadata, progress, names.

Transport behaviour is checked on loopback against ``conftest.Scripted`` (MixFake with
scripted replies, recording raw paths and routes): on its own thread (the ``server``
fixture) and, where a server must misbehave (a lying ``Content-Length``, a body cut off, a
request that must never arrive), on the test's loop with one handler answering everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import types
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from conftest import Handler, Reply, Scripted, reset_peak_rss, status_kib
from mix_client import (
    APIConnectionError,
    AsyncMix,
    BadRequestError,
    DownloadedFile,
    InvalidInputError,
    Mix,
    MixError,
    NotFoundError,
    SyncFileDownload,
)
from mix_fake import MixFake

HERE = Path(__file__).resolve().parent
WAIT = 30.0  # generous bound for anything that should happen at once


# ---------------------------------------------------------------------------
# Byte-level misbehaviour: a MixFake whose every request one handler answers
# ---------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def answering(handler: Handler) -> AsyncIterator[Scripted]:
    """A ``Scripted`` server on this loop whose every request ``handler`` answers
    (``requests`` records what arrived)."""
    async with Scripted() as srv:
        srv.on("/*", handler, read_body=False)
        yield srv


def announce(length: int, body: bytes, *, hang: asyncio.Event | None = None) -> Handler:
    """Answer 200 with ``Content-Length: length`` but send only ``body``, then close."""

    async def respond(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.content_length = length
        await resp.prepare(request)
        await resp.write(body)
        if hang is not None:
            await hang.wait()
        assert request.transport is not None
        request.transport.close()  # the body ends short, at a closed connection
        return resp

    return respond


# ---------------------------------------------------------------------------
# issue 9 #10: memory follows the bytes that arrive, not Content-Length
# ---------------------------------------------------------------------------


async def test_get_session_file_does_not_allocate_a_lying_content_length() -> None:
    """5 bytes announced as 2 GiB: no 2 GiB of memory, and a clear error at the short end."""
    claimed = 2 << 30
    async with answering(announce(claimed, b"hello")) as srv, AsyncMix(srv.url) as mix:
        rss_before = status_kib("VmRSS")
        reset_peak_rss()
        with pytest.raises(APIConnectionError) as info:
            await asyncio.wait_for(mix.get_session_file("s1", "f.bin", max_retries=0), WAIT)
        peak = status_kib("VmHWM")
    growth_mib = (peak - rss_before) / 1024
    assert growth_mib < 64, f"peak RSS grew by {growth_mib:.1f} MiB"
    assert f"ended after 5 of the {claimed} bytes" in str(info.value)


async def test_get_session_file_petabyte_content_length_is_no_memory_error() -> None:
    claimed = 1 << 50
    async with answering(announce(claimed, b"hello")) as srv, AsyncMix(srv.url) as mix:
        with pytest.raises(APIConnectionError) as info:
            await asyncio.wait_for(mix.get_session_file("s1", "f.bin", max_retries=0), WAIT)
    assert f"ended after 5 of the {claimed} bytes" in str(info.value)


async def test_stalled_short_body_ends_at_the_read_timeout() -> None:
    """A server that announces more and then goes quiet: the no-progress timeout, no hang."""
    hang = asyncio.Event()
    async with (
        answering(announce(1 << 30, b"hello", hang=hang)) as srv,
        AsyncMix(srv.url) as mix,
    ):
        with pytest.raises(MixError):
            await asyncio.wait_for(
                mix.get_session_file(
                    "s1", "f.bin", max_retries=0, timeout=aiohttp.ClientTimeout(sock_read=0.5)
                ),
                WAIT,
            )
        hang.set()


async def test_iter_session_file_short_body_is_a_clear_error() -> None:
    async with answering(announce(1000, b"x" * 10)) as srv, AsyncMix(srv.url) as mix:
        got = b""
        with pytest.raises(APIConnectionError) as info:
            async with mix.iter_session_file("s1", "f.bin", max_retries=0) as chunks:
                assert chunks.content_length == 1000
                async for chunk in chunks:
                    got += chunk
    assert got == b"x" * 10
    assert "ended after 10 of the 1000 bytes" in str(info.value)


async def test_get_session_file_exact_content_and_growth(server: Scripted) -> None:
    """An honest 64 MiB body: exact bytes, held about once (no second copy at the end)."""
    size = 64 << 20
    data = bytes(range(256)) * (size // 256)

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.content_length = size
        await resp.prepare(request)
        view = memoryview(data)
        for i in range(0, size, 1 << 20):
            await resp.write(view[i : i + (1 << 20)])
        await resp.write_eof()
        return resp

    server.on("/*", handler, read_body=False)
    async with AsyncMix(server.url) as mix:
        assert len(await mix.get_session_file("s1", "warm.bin")) == size  # warm up
        rss_before = status_kib("VmRSS")
        reset_peak_rss()
        got = await mix.get_session_file("s1", "f.bin")
        peak = status_kib("VmHWM")
    assert got == data
    growth_mib = (peak - rss_before) / 1024
    assert growth_mib < 64 * 1.5, f"peak RSS grew by {growth_mib:.1f} MiB for 64 MiB"


# ---------------------------------------------------------------------------
# issue 9 #11: downloads write a temporary file and rename it
# ---------------------------------------------------------------------------


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


async def test_download_failure_leaves_existing_file_untouched(tmp_path: Path) -> None:
    dest = tmp_path / "report.pdf"
    dest.write_bytes(b"the old, good version")
    async with answering(announce(100_000, b"n" * 5000)) as srv, AsyncMix(srv.url) as mix:
        with pytest.raises(APIConnectionError):
            await asyncio.wait_for(
                mix.download_session_file("s1", "report.pdf", dest, max_retries=0), WAIT
            )
    assert dest.read_bytes() == b"the old, good version"
    assert _listing(tmp_path) == ["report.pdf"]  # no temporary file left behind


async def test_download_cancelled_midway_leaves_existing_file_untouched(tmp_path: Path) -> None:
    dest = tmp_path / "video.mp4"
    dest.write_bytes(b"old")
    hang = asyncio.Event()
    started = asyncio.Event()

    def progress(done: int, total: int | None) -> None:
        if done:
            started.set()

    async with (
        answering(announce(1 << 20, b"n" * 4096, hang=hang)) as srv,
        AsyncMix(srv.url) as mix,
    ):
        task = asyncio.create_task(
            mix.download_session_file("s1", "video.mp4", dest, progress=progress)
        )
        await asyncio.wait_for(started.wait(), WAIT)
        assert len(_listing(tmp_path)) == 2  # the temporary file, beside the destination
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, WAIT)
        hang.set()
    assert dest.read_bytes() == b"old"
    assert _listing(tmp_path) == ["video.mp4"]


async def test_download_error_status_creates_nothing(
    server: Scripted, client: AsyncMix, tmp_path: Path
) -> None:
    dest = tmp_path / "kept.txt"
    dest.write_bytes(b"keep me")
    server.reply(Reply(404, {"error": {"code": 404, "message": "gone"}}))
    with pytest.raises(NotFoundError):
        await client.download_session_file("s1", "kept.txt", dest)
    assert dest.read_bytes() == b"keep me"
    assert _listing(tmp_path) == ["kept.txt"]


async def test_download_replaces_existing_file_keeping_its_mode(
    server: Scripted, client: AsyncMix, tmp_path: Path
) -> None:
    dest = tmp_path / "data.bin"
    dest.write_bytes(b"old content that is longer than the new one")
    dest.chmod(0o640)
    server.on("/*", Reply(200, body=b"new", content_type="application/x-thing"))
    result = await client.download_session_file("s1", "data.bin", dest)
    assert dest.read_bytes() == b"new"
    assert stat.S_IMODE(dest.stat().st_mode) == 0o640
    assert _listing(tmp_path) == ["data.bin"]
    assert result == 3


async def test_new_download_gets_default_permissions(
    server: Scripted, client: AsyncMix, tmp_path: Path
) -> None:
    """Not the 0600 of a temporary file: what ``open(path, "wb")`` would have given."""
    server.on("/*", Reply(200, body=b"abc"))
    dest = tmp_path / "fresh.txt"
    await client.download_session_file("s1", "fresh.txt", dest)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o666 & ~umask


async def test_download_through_a_symlink_writes_its_target(
    server: Scripted, client: AsyncMix, tmp_path: Path
) -> None:
    real = tmp_path / "real.txt"
    real.write_bytes(b"old")
    link = tmp_path / "link.txt"
    link.symlink_to(real)
    server.on("/*", Reply(200, body=b"new"))
    await client.download_session_file("s1", "x.txt", link)
    assert link.is_symlink()
    assert real.read_bytes() == b"new"


async def test_download_into_directory_uses_last_part_of_name(
    server: Scripted, client: AsyncMix, tmp_path: Path
) -> None:
    server.on("/*", Reply(200, body=b"deep"))
    result = await client.download_session_file("s1", "sub/dir.txt", tmp_path)
    assert (tmp_path / "dir.txt").read_bytes() == b"deep"
    assert result.path == str(tmp_path / "dir.txt")
    assert server.requests[0].raw_path == "/api/sessions/s1/files/sub%2Fdir.txt"
    # a name that ends in no file name cannot pick a place to save: nothing is sent
    with pytest.raises(InvalidInputError):
        await client.download_session_file("s1", "sub/..", tmp_path)
    assert len(server.requests) == 1


# ---------------------------------------------------------------------------
# issue 9 #12: text instead of bytes is refused before anything is sent
# ---------------------------------------------------------------------------


async def _never(request: web.Request) -> web.StreamResponse:
    raise AssertionError("no request should arrive")


async def _text_chunks() -> AsyncIterator[str]:
    yield "text, not bytes"


def _sync_text_chunks() -> Iterator[str]:
    yield "text, not bytes"


class _DuckTextReader:
    """Has ``read`` but returns str (like a codecs reader)."""

    name = "duck.txt"

    def read(self, size: int = -1) -> str:
        return "text"


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda p: (open(p), {}), id="open-text-mode"),  # noqa: SIM115
        pytest.param(lambda p: (open(p, "r+", encoding="utf-8"), {}), id="open-r+"),  # noqa: SIM115
        pytest.param(lambda p: (io.StringIO("abc"), {"filename": "s.txt"}), id="StringIO"),
        pytest.param(
            lambda p: (tempfile.SpooledTemporaryFile(mode="w+"), {"filename": "t.txt"}),  # noqa: SIM115
            id="spooled-text",
        ),
        pytest.param(lambda p: (_DuckTextReader(), {}), id="duck-read-returns-str"),
        pytest.param(lambda p: (_text_chunks(), {"filename": "a.txt"}), id="async-iter-str"),
        pytest.param(lambda p: (_sync_text_chunks(), {"filename": "a.txt"}), id="sync-iter-str"),
        pytest.param(lambda p: (["a", "b"], {"filename": "a.txt"}), id="list-of-str"),
    ],
)
async def test_text_upload_is_refused_before_sending(tmp_path: Path, make: Any) -> None:
    path = tmp_path / "t.txt"
    path.write_text("some text")
    file, kwargs = make(path)
    async with answering(_never) as srv, AsyncMix(srv.url) as mix:
        try:
            with pytest.raises(InvalidInputError, match=r"binary mode|must yield bytes"):
                await asyncio.wait_for(mix.upload_session_file("s1", file, **kwargs), WAIT)
        finally:
            if hasattr(file, "close"):
                file.close()
    assert srv.requests == []  # nothing was sent


async def test_text_chunk_later_in_a_stream_is_invalid_input_not_connection_error() -> None:
    """The first chunk was bytes, so the request started; the bad one still says why."""
    received = asyncio.Event()

    async def respond(request: web.Request) -> web.StreamResponse:
        received.set()
        await asyncio.Event().wait()  # holds the request until the server stops
        return web.Response()

    async def chunks() -> AsyncIterator[Any]:
        yield b"bytes first"
        await asyncio.wait_for(received.wait(), WAIT)
        yield "then text"

    async with answering(respond) as srv, AsyncMix(srv.url) as mix:
        with pytest.raises(InvalidInputError, match="must yield bytes, not str"):
            await asyncio.wait_for(
                mix.upload_session_file("s1", chunks(), filename="a.bin", max_retries=3), WAIT
            )
        assert len(srv.requests) == 1  # one request, not resent


async def test_upload_from_sync_iterator_and_unseekable_reader(
    server: Scripted, client: AsyncMix
) -> None:
    """The first chunk, read ahead to check its type, is sent once and in order."""
    bodies: list[bytes] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        reader = await request.multipart()
        part = await reader.next()
        assert isinstance(part, aiohttp.BodyPartReader)
        data = bytes(await part.read())
        bodies.append(data)
        return web.json_response({"name": part.filename, "size": len(data)}, status=201)

    server.on("/*", handler, read_body=False)

    def gen() -> Iterator[bytes]:
        for i in range(4):
            yield bytes([65 + i]) * 150_000

    class Pipe:
        """A reader without seek (a pipe, a socket)."""

        def __init__(self, data: bytes) -> None:
            self._f = io.BytesIO(data)

        def read(self, size: int = -1) -> bytes:
            return self._f.read(size)

    expected = b"".join(gen())
    await client.upload_session_file("s1", gen(), filename="g.bin")
    await client.upload_session_file("s1", Pipe(expected), filename="p.bin")
    await client.upload_session_file("s1", iter([b"", b"x", bytearray(b"y")]), filename="e.bin")
    with io.BytesIO(b"0123456789") as f:
        f.seek(3)  # a seekable file is sent from where it stands
        await client.upload_session_file("s1", f, filename="o.bin")
    assert bodies == [expected, expected, b"xy", b"3456789"]


def test_blocking_upload_of_a_generator(server: Scripted, tmp_path: Path) -> None:
    parts: list[bytes] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        reader = await request.multipart()
        part = await reader.next()
        assert isinstance(part, aiohttp.BodyPartReader)
        parts.append(bytes(await part.read()))
        return web.json_response({"name": part.filename, "size": len(parts[-1])}, status=201)

    server.on("/*", handler, read_body=False)
    with Mix(server.url) as mix:
        info = mix.upload_session_file("s1", (b"ab" for _ in range(3)), filename="g.bin")
        assert info.size == 6
        path = tmp_path / "t.txt"
        path.write_text("text")
        with path.open() as f, pytest.raises(InvalidInputError):
            mix.upload_session_file("s1", f)
    assert parts == [b"ababab"]


# ---------------------------------------------------------------------------
# issue 9 #15 (FileInput): honest types for a mypy --strict user
# ---------------------------------------------------------------------------

TYPED_USAGE = """
from __future__ import annotations

import gzip
import io
import tempfile
from collections.abc import AsyncIterator, Iterator
from typing import IO, BinaryIO, TextIO

from mix_client import AsyncMix, DownloadedFile, FileInput, Mix, SyncFileDownload


async def chunks() -> AsyncIterator[bytes]:
    yield b"x"


def sync_chunks() -> Iterator[bytes]:
    yield b"x"


async def texts() -> AsyncIterator[str]:
    yield "x"


async def uploads(mix: AsyncMix, b: BinaryIO, i: IO[bytes], t: TextIO) -> None:
    spooled: tempfile.SpooledTemporaryFile[bytes] = tempfile.SpooledTemporaryFile()
    await mix.upload_session_file("s", b)
    await mix.upload_session_file("s", i)
    await mix.upload_session_file("s", spooled, filename="x")
    await mix.upload_session_file("s", io.BytesIO(b"x"), filename="x")
    await mix.upload_session_file("s", open("p", "rb"))
    await mix.upload_session_file("s", gzip.open("p.gz"), filename="x")
    await mix.upload_session_file("s", chunks(), filename="x")
    await mix.upload_session_file("s", sync_chunks(), filename="x")
    await mix.upload_session_file("s", "path.txt", progress=lambda done, total: None)
    f: FileInput = b
    await mix.upload_session_file("s", f, filename="x")
    # Text is refused by the type checker (each ignore must be needed: --strict warns
    # about unused ones).
    await mix.upload_session_file("s", t)  # type: ignore[arg-type]
    await mix.upload_session_file("s", open("p"))  # type: ignore[arg-type]
    await mix.upload_session_file("s", io.StringIO("x"), filename="x")  # type: ignore[arg-type]
    await mix.upload_session_file("s", texts(), filename="x")  # type: ignore[arg-type]


async def downloads(mix: AsyncMix) -> None:
    async with mix.iter_session_file("s", "f", progress=lambda d, t: None) as chunks:
        ctype: str | None = chunks.content_type
        length: int | None = chunks.content_length
        etag: str | None = chunks.headers.get("ETag")
        async for chunk in chunks:
            data: bytes = chunk
    saved: DownloadedFile = await mix.download_session_file("s", "f", "dest")
    n: int = saved
    where: str = saved.path


def blocking(mix: Mix, b: BinaryIO) -> None:
    mix.upload_session_file("s", b, progress=lambda done, total: None)
    with mix.iter_session_file("s", "f") as stream:
        download: SyncFileDownload = stream
        length: int | None = download.content_length
        for chunk in download:
            data: bytes = chunk
    n: int = mix.download_session_file("s", "f", "dest", progress=print)
"""


def test_file_input_types_for_mypy_strict_users(tmp_path: Path) -> None:
    (tmp_path / "usage.py").write_text(TYPED_USAGE)
    env = {**os.environ, "MYPYPATH": str(HERE)}
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "usage.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------------------
# issue 10 #6: download metadata
# ---------------------------------------------------------------------------


def _file_reply(body: bytes, **headers: str) -> Reply:
    return Reply(200, body=body, content_type="image/png", headers=headers)


async def test_iter_session_file_carries_metadata(server: Scripted, client: AsyncMix) -> None:
    server.on("/*", _file_reply(b"\x89PNG" * 100, ETag='"v1"', **{"X-Checksum": "abc"}))
    async with client.iter_session_file("s1", "a.png", chunk_size=64) as chunks:
        assert chunks.content_type == "image/png"
        assert chunks.content_length == 400
        assert chunks.headers["etag"] == '"v1"'  # case-insensitive
        assert chunks.headers["X-Checksum"] == "abc"
        data = b"".join([c async for c in chunks])
    assert data == b"\x89PNG" * 100
    assert chunks.received == 400


async def test_content_length_is_none_when_unknown(server: Scripted, client: AsyncMix) -> None:
    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await resp.prepare(request)  # no Content-Length: chunked
        await resp.write(b"abc")
        await resp.write(b"def")
        await resp.write_eof()
        return resp

    server.reply(chunked)
    async with client.iter_session_file("s1", "a.txt") as chunks:
        assert chunks.content_length is None
        assert chunks.content_type == "text/plain"
        assert b"".join([c async for c in chunks]) == b"abcdef"


async def test_compressed_body_has_no_content_length(server: Scripted, client: AsyncMix) -> None:
    """``Content-Length`` of a gzip body counts compressed bytes, not what we read."""
    import gzip

    raw = b"a" * 10_000
    packed = gzip.compress(raw)
    server.on("/*", Reply(200, body=packed, headers={"Content-Encoding": "gzip"}))
    calls: list[tuple[int, int | None]] = []
    assert await client.get_session_file("s1", "a.txt", progress=lambda *a: calls.append(a)) == raw
    assert calls[-1] == (10_000, None)
    async with client.iter_session_file("s1", "a.txt") as chunks:
        assert chunks.content_length is None
        assert chunks.headers["Content-Length"] == str(len(packed))
        assert b"".join([c async for c in chunks]) == raw


async def test_download_session_file_returns_path_and_metadata(
    server: Scripted, client: AsyncMix, tmp_path: Path
) -> None:
    server.on("/*", _file_reply(b"12345", ETag='"e"'))
    result = await client.download_session_file("s1", "a.png", tmp_path / "out.png")
    assert isinstance(result, DownloadedFile)
    assert isinstance(result, int)
    assert result == 5 and result.size == 5 and result + 1 == 6  # still the byte count
    assert result.path == str(tmp_path / "out.png")
    assert result.content_type == "image/png"
    assert result.content_length == 5
    assert result.headers["etag"] == '"e"'
    assert str(result) == "5"


async def test_unreadable_files_are_invalid_input(tmp_path: Path) -> None:
    path = tmp_path / "w.bin"
    async with answering(_never) as srv, AsyncMix(srv.url) as mix:
        with (  # opened for writing only
            path.open("wb") as f,
            pytest.raises(InvalidInputError, match="cannot read"),
        ):
            await mix.upload_session_file("s1", f)
        with pytest.raises(InvalidInputError, match="cannot read"):
            await mix.upload_session_file("s1", f)  # closed
    assert srv.requests == []  # nothing was sent


async def test_async_reader_gets_a_clear_error(tmp_path: Path) -> None:
    class AsyncReader:  # aiofiles-like: read() is a coroutine
        async def read(self, size: int = -1) -> bytes:
            return b"x"

    async with answering(_never) as srv, AsyncMix(srv.url) as mix:
        with pytest.raises(InvalidInputError, match="read\\(\\) is async"):
            await mix.upload_session_file("s1", AsyncReader(), filename="a.bin")
    assert srv.requests == []  # nothing was sent


def test_blocking_iter_session_file_carries_metadata(server: Scripted, tmp_path: Path) -> None:
    server.on("/*", _file_reply(b"x" * 1000, **{"X-Checksum": "abc"}))
    with Mix(server.url) as mix:
        with mix.iter_session_file("s1", "a.png", chunk_size=100) as chunks:
            assert isinstance(chunks, SyncFileDownload)
            assert chunks.content_type == "image/png"
            assert chunks.content_length == 1000
            assert chunks.headers["x-checksum"] == "abc"
            assert b"".join(chunks) == b"x" * 1000
        # without ``with``: the metadata is there from the first chunk on
        stream = mix.iter_session_file("s1", "a.png", chunk_size=100)
        assert stream.content_length is None
        first = next(stream)
        assert len(first) == 100 and stream.content_length == 1000
        stream.close()
        result = mix.download_session_file("s1", "a.png", tmp_path / "a.png")
        assert result == 1000 and result.content_type == "image/png"


# ---------------------------------------------------------------------------
# issue 10 #7: progress
# ---------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int | None]] = []
        self.threads: set[str] = set()

    def __call__(self, done: int, total: int | None) -> None:
        self.calls.append((done, total))
        self.threads.add(threading.current_thread().name)

    def check(self, total: int | None, size: int) -> None:
        assert self.calls[0] == (0, total)
        assert self.calls[-1] == (size, total)
        dones = [d for d, _ in self.calls]
        assert dones == sorted(dones)
        assert all(t == total for _, t in self.calls)
        assert len(self.calls) >= 2  # the start and at least one chunk


@pytest.fixture
def echo_upload(server: Scripted) -> Scripted:
    async def handler(request: web.Request) -> web.StreamResponse:
        reader = await request.multipart()
        part = await reader.next()
        assert isinstance(part, aiohttp.BodyPartReader)
        data = await part.read()
        return web.json_response({"name": part.filename, "size": len(data)}, status=201)

    server.on("/*", handler, read_body=False)
    return server


async def test_upload_progress_from_path(
    echo_upload: Scripted, client: AsyncMix, tmp_path: Path
) -> None:
    size = 3 * (256 << 10) + 17
    path = tmp_path / "big.bin"
    path.write_bytes(b"z" * size)
    rec = Recorder()
    info = await client.upload_session_file("s1", path, progress=rec)
    assert info.size == size
    rec.check(size, size)
    assert rec.threads == {threading.current_thread().name}  # the event loop's thread


async def test_upload_progress_unknown_total(echo_upload: Scripted, client: AsyncMix) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"q" * 1000

    rec = Recorder()
    await client.upload_session_file("s1", chunks(), filename="c.bin", progress=rec)
    rec.check(None, 3000)


async def test_download_progress(server: Scripted, client: AsyncMix, tmp_path: Path) -> None:
    body = b"d" * 300_000
    server.on("/*", Reply(200, body=body, content_type="application/octet-stream"))

    rec = Recorder()
    assert await client.get_session_file("s1", "d.bin", progress=rec) == body
    assert rec.calls[0] == (0, len(body)) and rec.calls[-1] == (len(body), len(body))

    rec = Recorder()
    await client.download_session_file("s1", "d.bin", tmp_path / "d.bin", progress=rec)
    rec.check(len(body), len(body))

    rec = Recorder()
    async with client.iter_session_file("s1", "d.bin", chunk_size=100_000, progress=rec) as chunks:
        async for _ in chunks:
            pass
    rec.check(300_000, 300_000)
    steps = [b - a for (a, _), (b, _) in zip(rec.calls, rec.calls[1:], strict=False)]
    assert all(0 < step <= 100_000 for step in steps)


def test_blocking_progress_runs_on_the_loop_thread(echo_upload: Scripted, tmp_path: Path) -> None:
    path = tmp_path / "u.bin"
    path.write_bytes(b"u" * 600_000)
    up = Recorder()
    with Mix(echo_upload.url) as mix:
        mix.upload_session_file("s1", path, progress=up)
    up.check(600_000, 600_000)
    assert up.threads == {"mix-client-loop"}


def test_blocking_download_progress(server: Scripted, tmp_path: Path) -> None:
    server.on("/*", Reply(200, body=b"d" * 500_000))
    down = Recorder()
    with Mix(server.url) as mix:
        mix.download_session_file("s1", "d.bin", tmp_path / "d.bin", progress=down)
    down.check(500_000, 500_000)
    assert down.threads == {"mix-client-loop"}


class FakeTqdm:
    """Stands in for ``tqdm.tqdm`` (not a dependency) in the README's snippet."""

    made: list[FakeTqdm] = []  # noqa: RUF012

    def __init__(self, **kwargs: Any) -> None:
        self.total: int | None = None
        self.n = 0
        self.shown: list[tuple[int, int | None]] = []
        FakeTqdm.made.append(self)

    def __enter__(self) -> FakeTqdm:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def refresh(self) -> None:
        self.shown.append((self.n, self.total))


def _readme_block(containing: str) -> str:
    text = (HERE / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.DOTALL)
    (block,) = [b for b in blocks if containing in b]
    return str(block)


async def test_readme_tqdm_snippet_runs(
    server: Scripted,
    client: AsyncMix,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server.on("/*", Reply(200, body=b"t" * 100_000))
    monkeypatch.setitem(sys.modules, "tqdm", types.SimpleNamespace(tqdm=FakeTqdm))
    monkeypatch.chdir(tmp_path)
    FakeTqdm.made.clear()
    code = "async def snippet(mix, sid):\n" + textwrap.indent(
        _readme_block("from tqdm import tqdm"), "    "
    )
    namespace: dict[str, Any] = {}
    exec(code, namespace)
    await namespace["snippet"](client, "s1")
    (bar,) = FakeTqdm.made
    assert bar.shown[0] == (0, 100_000)
    assert bar.shown[-1] == (100_000, 100_000)
    assert (tmp_path / "video.mp4").read_bytes() == b"t" * 100_000


class Stop(Exception):
    pass


async def test_progress_callback_error_aborts_upload_unretried(
    echo_upload: Scripted, client: AsyncMix
) -> None:
    def progress(done: int, total: int | None) -> None:
        if done > 0:
            raise Stop

    with pytest.raises(Stop):
        await client.upload_session_file(
            "s1", b"b" * 1000, filename="b.bin", progress=progress, max_retries=3
        )
    assert len(echo_upload.requests) <= 1


async def test_progress_callback_error_aborts_download(
    server: Scripted, client: AsyncMix, tmp_path: Path
) -> None:
    server.on("/*", Reply(200, body=b"b" * 1000))
    dest = tmp_path / "keep.bin"
    dest.write_bytes(b"old")

    def progress(done: int, total: int | None) -> None:
        if done > 0:
            raise Stop

    with pytest.raises(Stop):
        await client.download_session_file("s1", "keep.bin", dest, progress=progress)
    assert dest.read_bytes() == b"old"
    assert _listing(tmp_path) == ["keep.bin"]
    with pytest.raises(Stop):
        await client.get_session_file("s1", "keep.bin", progress=progress)


async def test_option_errors_name_the_method_called(
    server: Scripted, client: AsyncMix, tmp_path: Path
) -> None:
    with pytest.raises(TypeError, match=r"^download_session_file\(\).*max_retry"):
        await client.download_session_file("s1", "f", tmp_path / "f", max_retry=0)  # type: ignore[call-arg]
    assert server.requests == []
    assert _listing(tmp_path) == []


async def test_progress_must_be_callable(server: Scripted, client: AsyncMix) -> None:
    with pytest.raises(InvalidInputError):
        await client.upload_session_file("s1", b"x", filename="x", progress=5)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        await client.get_session_file("s1", "x", progress="no")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        client.iter_session_file("s1", "x", progress=1)  # type: ignore[arg-type]

    async def async_progress(done: int, total: int | None) -> None:
        pass

    with pytest.raises(InvalidInputError, match="plain function"):
        await client.download_session_file("s1", "x", "x", progress=async_progress)
    with pytest.raises(InvalidInputError, match="plain function"):
        await client.upload_session_file("s1", b"x", filename="x", progress=async_progress)
    assert server.requests == []


# ---------------------------------------------------------------------------
# issue 10 #11: file names are the server's business, dot segments excepted
# ---------------------------------------------------------------------------

NAMES = [
    ("sub/dir.txt", "sub%2Fdir.txt"),
    ("v1..2.txt", "v1..2.txt"),
    ("back\\slash.txt", "back%5Cslash.txt"),
    ("../escape.txt", "..%2Fescape.txt"),
    ("a/../b", "a%2F..%2Fb"),
    ("..hidden", "..hidden"),
    ("...", "..."),
    ("nul\x00.txt", "nul%00.txt"),
]


@pytest.mark.parametrize(("name", "encoded"), NAMES)
async def test_file_names_reach_the_file_route_as_one_segment(
    server: Scripted, client: AsyncMix, name: str, encoded: str
) -> None:
    server.on("/*", Reply(204))
    await client.delete_session_file("s1", name)
    server.on("/*", Reply(200, body=b"x"))
    await client.get_session_file("s1", name)
    async with client.iter_session_file("s1", name) as chunks:
        async for _ in chunks:
            pass
    assert len(server.requests) == 3
    for rec in server.requests:
        assert rec.raw_path == f"/api/sessions/s1/files/{encoded}"
        assert rec.route == "/api/sessions/{id}/files/{filename}"
        assert rec.match == {"id": "s1", "filename": name}
    assert [r.method for r in server.requests] == ["DELETE", "GET", "GET"]


@pytest.mark.parametrize("name", ["sub/dir.txt", "v1..2.txt", "back\\slash.txt", "../x.txt"])
async def test_upload_names_are_sent_as_given(
    server: Scripted, client: AsyncMix, name: str
) -> None:
    seen: list[str | None] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        reader = await request.multipart()
        part = await reader.next()
        assert isinstance(part, aiohttp.BodyPartReader)
        seen.append(part.filename)
        await part.read()
        return web.json_response({"name": part.filename, "size": 1}, status=201)

    server.on("/*", handler, read_body=False)
    await client.upload_session_file("s1", b"x", filename=name)
    assert seen == [name]


async def test_server_that_refuses_a_name_answers_bad_request() -> None:
    """mix_fake, like a server without sub-folders, refuses ``sub/dir.txt`` with 400."""
    async with MixFake() as url, AsyncMix(url) as mix:
        sid = (await mix.create_session(title="t", browser_mode="local-browser-service")).id
        with pytest.raises(BadRequestError):
            await mix.upload_session_file(sid, b"x", filename="sub/dir.txt")
        with pytest.raises(BadRequestError):
            await mix.get_session_file(sid, "sub/dir.txt")
        with pytest.raises(BadRequestError):
            await mix.delete_session_file(sid, "../x.txt")
        # mix_fake is stricter than the real server here: "v1..2.txt" gets a 400 too
        with pytest.raises(BadRequestError):
            await mix.get_session_file(sid, "v1..2.txt")
        await mix.upload_session_file(sid, b"ok", filename="v1.2.txt")
        assert await mix.get_session_file(sid, "v1.2.txt") == b"ok"


DOT_CALLS = [
    pytest.param(lambda c, t: c.get_session_file("s1", ".."), id="get-file-.."),
    pytest.param(lambda c, t: c.get_session_file("s1", "."), id="get-file-."),
    pytest.param(lambda c, t: c.delete_session_file("s1", ".."), id="delete-file-.."),
    pytest.param(lambda c, t: c.delete_session_file("s1", "."), id="delete-file-."),
    pytest.param(lambda c, t: c.download_session_file("s1", "..", t / "x"), id="download-.."),
    pytest.param(lambda c, t: c.upload_session_file("s1", b"x", filename=".."), id="upload-.."),
    pytest.param(lambda c, t: c.upload_session_file("s1", b"x", filename="."), id="upload-."),
    pytest.param(lambda c, t: c.delete_session(".."), id="delete-session-.."),
    pytest.param(lambda c, t: c.delete_session("."), id="delete-session-."),
    pytest.param(lambda c, t: c.get_session(".."), id="get-session-.."),
    pytest.param(lambda c, t: c.list_session_files(".."), id="list-files-session-.."),
    pytest.param(lambda c, t: c.delete_session_file("..", "a.txt"), id="file-in-session-.."),
    pytest.param(lambda c, t: c.upload_session_file(".", b"x", filename="a"), id="upload-to-."),
]


@pytest.mark.parametrize("call", DOT_CALLS)
async def test_dot_segments_are_refused_before_sending(
    server: Scripted, client: AsyncMix, tmp_path: Path, call: Any
) -> None:
    """A raw ``..`` would be normalised away: ``DELETE .../files/..`` hits the session."""
    with pytest.raises(InvalidInputError):
        await call(client, tmp_path)
    assert server.requests == []


async def test_dot_segments_in_iter_session_file_are_refused(
    server: Scripted, client: AsyncMix
) -> None:
    for name in (".", ".."):
        with pytest.raises(InvalidInputError):
            client.iter_session_file("s1", name)
    assert server.requests == []


async def test_empty_and_wrong_type_names_are_refused(server: Scripted, client: AsyncMix) -> None:
    for bad in ("", 5, None, b"a.txt"):
        with pytest.raises(InvalidInputError):
            await client.get_session_file("s1", bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidInputError):
            await client.upload_session_file("s1", b"x", filename=bad)  # type: ignore[arg-type]
    # a MIME header cannot carry a line break: refused for uploads only
    with pytest.raises(InvalidInputError):
        await client.upload_session_file("s1", b"x", filename="a\r\nX-Evil: 1")
    assert server.requests == []


def test_unencoded_dot_segments_would_reach_another_route(server: Scripted) -> None:
    """Why ``..`` is refused: sent as is, it is normalised to the session's own URL."""

    async def raw_delete() -> int:
        async with aiohttp.ClientSession() as http:
            url = f"{server.url}/api/sessions/s1/files/.."
            async with http.delete(url) as resp:
                return resp.status

    server.on("/*", Reply(204))
    with contextlib.suppress(aiohttp.ClientError):
        asyncio.run(raw_delete())
    # the file route is left: the request goes to the session's own URL
    assert [(r.method, r.raw_path) for r in server.requests] == [("DELETE", "/api/sessions/s1/")]
