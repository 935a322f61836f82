#!/usr/bin/env python3
# /// script
# requires-python = ">=3.10"
# dependencies = ["aiohttp", "msgspec"]
# ///
"""Files: upload, list, thumbnail, download to disk, stream in chunks, delete.

    python3 examples/files.py

Uses $MIX_SERVER_URL, or the built-in fake when no Mix server answers.
"""

from __future__ import annotations

import asyncio
import base64
import sys
import tempfile
from pathlib import Path

# mix_client.py and mix_fake.py live in the repository root, one folder up.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import mix_server  # finds a server, or starts the fake

from mix_client import AsyncMix

# A 1x1 PNG: thumbnails are made of images and videos only.
PIXEL_PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGPwmvAIAALkAb2JlVB1AAAAAElFTkSuQmCC"
)


def write_report(folder: str) -> Path:
    path = Path(folder, "report.txt")
    path.write_text("".join(f"line {n}: all is well\n" for n in range(1, 201)))
    return path


def same_content(a: Path, b: Path) -> bool:
    return a.read_bytes() == b.read_bytes()


async def main() -> None:
    async with mix_server() as server, AsyncMix(server.url) as mix:
        session = await mix.create_session(title="files", browser_mode="local-browser-service")
        sid = session.id
        with tempfile.TemporaryDirectory() as tmp:
            report = write_report(tmp)
            try:
                # Upload from a path (streamed from disk), or from bytes with a file name.
                for info in (
                    await mix.upload_session_file(sid, report),
                    await mix.upload_session_file(sid, PIXEL_PNG, filename="pixel.png"),
                ):
                    print(f"Uploaded {info.name} ({info.size} bytes)")

                print("Files:", ", ".join(f.name for f in await mix.list_session_files(sid)))

                # A thumbnail: "w100" is 100 px wide ("h100": high, "100": the longer side).
                thumb = await mix.get_session_file(sid, "pixel.png", thumb="w100")
                print(f"Thumbnail of pixel.png (w100): {len(thumb)} bytes")

                # Download to disk in constant memory.
                copy = Path(tmp, "downloaded-report.txt")
                written = await mix.download_session_file(sid, "report.txt", copy)
                same = same_content(copy, report)
                print(f"Downloaded report.txt to {copy.name}: {written} bytes, identical: {same}")

                # Or process a file chunk by chunk as it arrives.
                chunks = size = 0
                async with mix.iter_session_file(sid, "report.txt", chunk_size=1024) as stream:
                    async for chunk in stream:
                        chunks += 1
                        size += len(chunk)
                print(f"Streamed report.txt: {size} bytes in {chunks} chunks")

                await mix.delete_session_file(sid, "report.txt")
                print("Deleted report.txt")
                print("Files:", ", ".join(f.name for f in await mix.list_session_files(sid)))
            finally:
                await mix.delete_session(sid)
                print(f"Deleted session {sid}")


if __name__ == "__main__":
    asyncio.run(main())
