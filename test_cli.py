"""The command line (``python mix_client.py ...``) against mix_fake on loopback."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from mix_fake import MixFake

CLIENT = Path(__file__).with_name("mix_client.py")


async def cli(fake: MixFake, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(CLIENT),
        "--server-url",
        fake.url,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_ask_prints_the_streamed_answer(fake: MixFake) -> None:
    sid = fake.add_session()
    fake.script_reply(sid, "forty-two, streamed")
    code, out, err = await cli(fake, "ask", "--session", sid, "the question")
    assert code == 0, err
    assert out == "forty-two, streamed\n"


async def test_ask_prints_a_slash_command_answer(fake: MixFake) -> None:
    # The answer is in the POST reply, not on the stream.
    sid = fake.add_session()
    code, out, err = await cli(fake, "ask", "--session", sid, "/help")
    assert code == 0, err
    assert out.startswith("Available commands") and "/clear" in out


async def test_ask_prints_an_answer_recovered_after_a_drop(fake: MixFake) -> None:
    sid = fake.add_session()
    fake.script_reply(sid, "kept although the end was lost")
    fake.cut_stream_before("content", session_id=sid)
    code, out, err = await cli(fake, "ask", "--session", sid, "the question")
    assert code == 0, err
    assert out.strip() == "kept although the end was lost"


async def test_health_and_error_exit(fake: MixFake) -> None:
    code, out, _ = await cli(fake, "health")
    assert code == 0 and '"status"' in out
    code, _, err = await cli(fake, "ask", "--session", "no-such-session", "hi")
    assert code == 1 and err.startswith("error: ")
