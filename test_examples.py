"""Run the examples as a user would (``python examples/X.py``) and check what they print.

Every example falls back to the built-in fake when no Mix server answers at
``$MIX_SERVER_URL``; the tests point that variable at an unused loopback port so the
fallback always triggers (never at a real server), except one that serves a ``MixFake``
from the test itself. Two tests run ``uv run --script``: they need PyPI (aiohttp, msgspec)
and fail, not skip, when it cannot be reached.
"""

from __future__ import annotations

import asyncio
import os
import pty
import re
import select
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from mix_client import AsyncMix
from mix_fake import MixFake

ROOT = Path(__file__).resolve().parent
EXAMPLES = ROOT / "examples"
UV = Path(sys.executable).parent / "uv"
UV_TIMEOUT = 180.0
FALLBACK = re.compile(
    r"No Mix server at (?P<wanted>\S+) — using the built-in fake \(mix_fake\)"
    r" at (?P<fake>http://127\.0\.0\.1:\d+)"
)
SESSION_ID = r"session-\d+-[0-9a-f]+"


def unused_url() -> str:
    """A loopback URL where nothing listens (connections are refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def child_env(server_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIX_")}
    for name in ("PYTHONPATH", "VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT"):
        env.pop(name, None)
    env["MIX_SERVER_URL"] = server_url
    return env


def run_example(name: str, server_url: str) -> list[str]:
    """Run ``examples/<name>`` to the end; checks exit code 0 and a silent stderr."""
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        cwd=ROOT,
        env=child_env(server_url),
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=60,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert proc.stderr == ""
    assert "\r" not in proc.stdout and "\x1b" not in proc.stdout  # no spinner when piped
    return proc.stdout.splitlines()


def check_fallback(line: str, wanted: str) -> str:
    """The fallback notice: names the URL that did not answer; returns the fake's URL."""
    match = FALLBACK.fullmatch(line)
    assert match, line
    assert match["wanted"] == wanted
    return match["fake"]


def match_lines(lines: list[str], patterns: list[str]) -> list[re.Match[str]]:
    """Every line fully matches its regex, in order, and there is nothing else."""
    assert len(lines) == len(patterns), "\n".join(lines)
    matches = []
    for line, pattern in zip(lines, patterns, strict=True):
        match = re.fullmatch(pattern, line)
        assert match, f"{line!r} does not match {pattern!r}"
        matches.append(match)
    return matches


QUICKSTART_QUESTION = "What does notes.txt say? Answer in one sentence."


def quickstart_patterns(server_url: str, on_fake: bool) -> list[str]:
    question = QUICKSTART_QUESTION + (" [tool]" if on_fake else "")
    tool = [re.escape('  [tool] bash {"command": "echo hello", "description": "Print a greeting"}')]
    return [
        re.escape(f"Server {server_url}: ok (version 1.0.0)"),
        f"Created session (?P<sid>{SESSION_ID})",
        re.escape("Uploaded notes.txt (49 bytes)"),
        re.escape(f"You: {question}"),
        *(tool if on_fake else []),
        re.escape(f"Agent: Echo: {question}"),
        re.escape("File in the session: notes.txt (49 bytes)"),
        # user, assistant (tool_use), tool, assistant (end_turn) when a tool ran
        re.escape(f"Exported the session: {4 if on_fake else 2} messages"),
        f"Deleted session {SESSION_ID}",
    ]


# ---------------------------------------------------------------------------
# quickstart.py
# ---------------------------------------------------------------------------


def test_quickstart_falls_back_to_the_fake() -> None:
    wanted = unused_url()
    lines = run_example("quickstart.py", wanted)
    fake_url = check_fallback(lines[0], wanted)
    matches = match_lines(lines[1:], quickstart_patterns(fake_url, on_fake=True))
    assert lines[-1] == f"Deleted session {matches[1]['sid']}"


async def test_quickstart_uses_the_server_that_answers() -> None:
    """A server answers at $MIX_SERVER_URL: no fallback, and everything happens there."""
    fake = MixFake()
    url = await fake.start()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(EXAMPLES / "quickstart.py"),
            cwd=ROOT,
            env=child_env(url),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        async with AsyncMix(url) as mix:
            left = await mix.list_sessions(include_subagents=True)
    finally:
        await fake.stop()
    text = out.decode()
    assert proc.returncode == 0, f"{text}\n{err.decode()}"
    assert err == b""
    assert "No Mix server" not in text and "mix_fake" not in text
    lines = text.splitlines()
    # The script takes this server for a real one: it asks without the fake's "[tool]".
    matches = match_lines(lines, quickstart_patterns(url, on_fake=False))
    assert lines[-1] == f"Deleted session {matches[1]['sid']}"
    assert left == []  # deleted on the server
    hits = {op: n for op, n in fake.hits.items() if op not in ("listSessions",)}
    assert hits == {
        "healthCheck": 2,  # the probe, then step 1
        "createSession": 1,
        "uploadSessionFile": 1,
        "streamEvents": 1,
        "getSessionMessages": 1,  # where the session's history ended before the turn
        "sendMessage": 1,
        "listSessionFiles": 1,
        "exportSession": 1,
        "deleteSession": 1,
    }
    sent = [r.body for r in fake.requests if r.method == "POST" and r.path.endswith("/messages")]
    assert sent == [f'{{"text":"{QUICKSTART_QUESTION}"}}'.encode()]


def on_screen(line: str) -> str:
    """What a terminal shows of one line written with "\\r" and "erase to end of line"."""
    shown = ""
    for piece in line.split("\r"):
        if piece.startswith("\x1b[K"):
            piece, shown = piece[3:], ""
        assert "\x1b" not in piece, line
        shown = piece + shown[len(piece) :]
    return shown


def test_quickstart_spinner_on_a_terminal() -> None:
    """On a TTY a spinner runs while the agent thinks and is erased before any output."""
    wanted = unused_url()
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "quickstart.py")],
        cwd=ROOT,
        env=child_env(wanted),
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=subprocess.PIPE,
    )
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        assert proc.wait(timeout=10) == 0
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
        assert proc.stderr is not None
        stderr = proc.stderr.read()
        proc.stderr.close()
    assert stderr == b""
    raw = b"".join(chunks).decode().replace("\r\n", "\n")
    assert "\r⠋ thinking..." in raw
    # Erased ("\r" + clear to end of line) right before the tool line and the answer.
    assert '\r\x1b[K  [tool] bash {"command": "echo hello"' in raw
    assert f"\r\x1b[KAgent: Echo: {QUICKSTART_QUESTION} [tool]\n" in raw
    # What the terminal shows in the end is the plain output, without a trace of the spinner.
    lines = [on_screen(line) for line in raw.split("\n")]
    assert lines.pop() == ""
    fake_url = check_fallback(lines[0], wanted)
    match_lines(lines[1:], quickstart_patterns(fake_url, on_fake=True))


def uv_run_script(script: str) -> list[str]:
    """``uv run --script`` with this interpreter, without the user's uv configuration."""
    return [str(UV), "run", "--no-config", "--python", sys.executable, "--script", script]


def test_quickstart_runs_with_uv_run_script() -> None:
    """The PEP 723 header is enough: ``uv run --script`` installs aiohttp and msgspec."""
    wanted = unused_url()
    proc = subprocess.run(
        uv_run_script("examples/quickstart.py"),
        cwd=ROOT,
        env=child_env(wanted),
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=UV_TIMEOUT,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    lines = proc.stdout.splitlines()
    fake_url = check_fallback(lines[0], wanted)
    match_lines(lines[1:], quickstart_patterns(fake_url, on_fake=True))


# ---------------------------------------------------------------------------
# The other examples
# ---------------------------------------------------------------------------


def test_permissions_example() -> None:
    wanted = unused_url()
    lines = run_example("permissions.py", wanted)
    check_fallback(lines[0], wanted)
    grant = "Write 'hello' to notes.txt. [permission]"
    deny = "Now overwrite notes.txt with 'bye'. [permission]"
    asked = "  permission asked: write wants to write /tmp/mix/notes.txt -> "
    assert lines[1:] == [
        f"You: {grant}",
        asked + "granted",
        "  tool write: ok (File written: /tmp/mix/notes.txt)",
        f"Agent: Echo: {grant}",
        f"You: {deny}",
        asked + "denied",
        "  tool write: failed (Tool write execution failed: permission denied)",
        "Agent stopped: agent error: Permission denied",
        lines[-1],
    ]
    assert re.fullmatch(f"Deleted session {SESSION_ID}", lines[-1])


def test_files_example() -> None:
    wanted = unused_url()
    lines = run_example("files.py", wanted)
    check_fallback(lines[0], wanted)
    matches = match_lines(
        lines[1:],
        [
            re.escape("Uploaded report.txt (4292 bytes)"),
            re.escape("Uploaded pixel.png (69 bytes)"),
            re.escape("Files: pixel.png, report.txt"),
            re.escape("Thumbnail of pixel.png (w100): 69 bytes"),
            re.escape(
                "Downloaded report.txt to downloaded-report.txt: 4292 bytes, identical: True"
            ),
            r"Streamed report.txt: 4292 bytes in (?P<chunks>\d+) chunks",
            re.escape("Deleted report.txt"),
            re.escape("Files: pixel.png"),
            f"Deleted session {SESSION_ID}",
        ],
    )
    assert int(matches[5]["chunks"]) >= 5  # chunks of at most 1024 bytes


def test_concurrent_sessions_example() -> None:
    wanted = unused_url()
    lines = run_example("concurrent_sessions.py", wanted)
    check_fallback(lines[0], wanted)
    assert re.fullmatch(r"3 sessions, 6 turns in \d+\.\d s; sessions deleted", lines[-1])
    body = lines[1:-1]
    topics = ["the moon", "volcanoes", "honey bees"]
    assert len(body) == 12
    for topic in topics:
        mine = [line for line in body if line.startswith(f"[{topic}] ")]
        first = f"Tell me one fact about {topic}."
        assert mine == [
            f"[{topic}] You: {first}",
            f"[{topic}] Agent: Echo: {first}",
            f"[{topic}] You: And another one?",
            f"[{topic}] Agent: Echo: And another one?",
        ]


def test_blocking_example() -> None:
    wanted = unused_url()
    lines = run_example("blocking.py", wanted)
    fake_url = check_fallback(lines[0], wanted)
    question = "List the files in your working directory. [tool]"
    matches = match_lines(
        lines[1:],
        [
            re.escape(f"Server {fake_url}: ok"),
            f"Created session (?P<sid>{SESSION_ID})",
            re.escape("You: Hello from a plain script!"),
            re.escape("Agent: Echo: Hello from a plain script!"),
            re.escape(f"You: {question}"),
            re.escape("  [tool] bash"),
            re.escape(f"Agent: Echo: {question}"),
            re.escape("The session holds 6 messages"),
            f"Deleted session {SESSION_ID}",
        ],
    )
    assert lines[-1] == f"Deleted session {matches[1]['sid']}"


# ---------------------------------------------------------------------------
# Vendoring: mix_client.py alone beside a PEP 723 script
# ---------------------------------------------------------------------------

VENDORED_SCRIPT = """\
# /// script
# requires-python = ">=3.10"
# dependencies = ["aiohttp", "msgspec"]
# ///
import aiohttp

import mix_client
from mix_client import Mix

with Mix() as mix:  # $MIX_SERVER_URL
    health = mix.health_check()
print("mix_client:", mix_client.__file__)
print("aiohttp:", aiohttp.__file__)
print("health:", health.status, health.version)
"""


async def test_vendored_mix_client_runs_with_uv_run_script(tmp_path: Path) -> None:
    folder = tmp_path / "project"
    folder.mkdir()
    shutil.copy(ROOT / "mix_client.py", folder / "mix_client.py")
    (folder / "script.py").write_text(VENDORED_SCRIPT)
    assert sorted(p.name for p in folder.iterdir()) == ["mix_client.py", "script.py"]
    async with MixFake() as url:
        proc = await asyncio.create_subprocess_exec(
            *uv_run_script("script.py"),
            cwd=folder,
            env=child_env(url),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), UV_TIMEOUT)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            raise
    text = out.decode()
    assert proc.returncode == 0, f"exit {proc.returncode}\n{text}\n{err.decode()}"
    lines = text.splitlines()
    assert lines[0] == f"mix_client: {folder / 'mix_client.py'}"
    # aiohttp comes from the environment uv made for the script, not from this test's.
    assert lines[1].startswith("aiohttp: ")
    assert sys.prefix not in lines[1] and aiohttp.__file__ not in lines[1]
    assert lines[2:] == ["health: ok 1.0.0"]
