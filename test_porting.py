"""Porting code from the official SDK (mix-python-sdk 0.8.1), per-call options and input checks.

Every test talks to ``mix_fake.MixFake`` over real loopback HTTP. Blocking-facade tests
serve the fake from its own thread and event loop (the test's thread blocks in the call).
Tests that promise "nothing was sent" check the fake's request log.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import textwrap
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

import mix_client
from mix_client import (
    APITimeoutError,
    AsyncMix,
    BackoffStrategy,
    Callback,
    InternalServerError,
    InvalidInputError,
    Mix,
    RetryConfig,
)
from mix_fake import FakeThread, MixFake

ROOT = Path(__file__).resolve().parent
T = TypeVar("T")


# ---------------------------------------------------------------------------
# Servers
# ---------------------------------------------------------------------------


@pytest.fixture
def thread_fake() -> Iterator[FakeThread]:
    with FakeThread() as server:
        yield server


def paths(server: MixFake) -> list[str]:
    return [f"{r.method} {r.path}" for r in server.requests]


# ---------------------------------------------------------------------------
# 1. Path parameters by keyword, with the spec's names (issue 10.1)
# ---------------------------------------------------------------------------


async def test_path_parameters_accept_the_official_keyword_form(fake: MixFake) -> None:
    async with AsyncMix(fake.url) as mix:
        session = await mix.create_session(title="t", browser_mode="local-browser-service")
        sid = session.id
        assert (await mix.get_session(id=sid)).id == sid
        assert (await mix.get_session(sid)).id == sid
        info = await mix.upload_session_file(
            id=sid, file={"file_name": "a.txt", "content": b"hello"}
        )
        assert info.name == "a.txt"
        assert [f.name for f in await mix.list_session_files(id=sid)] == ["a.txt"]
        assert await mix.get_session_file(id=sid, filename="a.txt") == b"hello"
        async with mix.iter_session_file(id=sid, filename="a.txt") as chunks:
            assert b"".join([c async for c in chunks]) == b"hello"
        await mix.delete_session_file(id=sid, filename="a.txt")
        assert (await mix.get_command(name="help")).name == "help"
        assert (await mix.delete_credentials(provider="openai")).provider == "openai"
        assert (await mix.start_oauth_flow(provider="anthropic")).auth_url
        assert await mix.get_session_messages(id=sid) == []
        async with mix.stream_events(session_id=sid, reconnect=False) as events:
            assert (await anext(aiter(events))).event == "connected"
        await mix.delete_session(id=sid)
    assert "DELETE /api/sessions/" + sid in paths(fake)


def test_blocking_path_parameters_by_keyword(thread_fake: FakeThread, tmp_path: Path) -> None:
    with Mix(thread_fake.url) as mix:
        sid = mix.create_session(title="t", browser_mode="local-browser-service").id
        assert mix.get_session(id=sid).id == sid
        mix.upload_session_file(id=sid, file={"file_name": "b.txt", "content": b"abc"})
        assert mix.get_session_file(id=sid, filename="b.txt") == b"abc"
        dest = tmp_path / "b.txt"
        assert mix.download_session_file(id=sid, filename="b.txt", dest=dest) == 3
        assert dest.read_bytes() == b"abc"
        with mix.iter_session_file(id=sid, filename="b.txt") as chunks:
            assert b"".join(chunks) == b"abc"
        assert mix.get_command(name="help").name == "help"


def test_missing_path_argument_names_mix_not_asyncmix(thread_fake: FakeThread) -> None:
    with Mix(thread_fake.url) as mix:
        with pytest.raises(TypeError) as info:
            mix.get_session()  # type: ignore[call-arg]
        assert str(info.value).startswith("Mix.get_session()")
        assert "'id'" in str(info.value)
        with pytest.raises(TypeError, match=r"^Mix\.iter_session_file\(\).*'filename'"):
            mix.iter_session_file("sid")  # type: ignore[call-arg]
        with pytest.raises(TypeError, match=r"^Mix\.get_session\(\) got multiple values"):
            mix.get_session("a", id="b")  # type: ignore[misc]
    assert thread_fake.fake.requests == []


def test_mypy_sees_keyword_path_arguments_on_both_clients(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        textwrap.dedent(
            """
            from mix_client import AsyncMix, Mix, SessionData

            async def a(mix: AsyncMix) -> SessionData:
                await mix.get_session_file(id="s", filename="f")
                return await mix.get_session(id="s")

            def b(mix: Mix) -> SessionData:
                mix.delete_credentials(provider="openai")
                return mix.get_session(id="s", max_retries=1)

            def bad(mix: Mix, amix: AsyncMix) -> None:
                mix.get_session(ids="s")
                amix.get_command(nme="x")
            """
        )
    )
    env = {**os.environ, "MYPYPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(sample)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    errors = [line for line in proc.stdout.splitlines() if ": error:" in line]
    lines = sorted({int(line.split(":")[1]) for line in errors})
    assert lines == [13, 14], proc.stdout


# ---------------------------------------------------------------------------
# 2. Per-call options: unknown keywords, the official names (issue 10.2)
# ---------------------------------------------------------------------------


async def test_unknown_keyword_raises_type_error_with_closest_name(fake: MixFake) -> None:
    async with AsyncMix(fake.url) as mix:
        with pytest.raises(TypeError, match=r"get_session\(\).*'max_retry'.*'max_retries'"):
            await mix.get_session("s", max_retry=0)  # type: ignore[call-arg]
        with pytest.raises(TypeError, match=r"get_message_history\(\).*'limt'.*'limit'"):
            await mix.get_message_history(limt=5)  # type: ignore[call-arg]
        with pytest.raises(TypeError, match=r"list_llm_tools\(\).*'bogus'"):
            await mix.list_llm_tools(bogus=1)  # type: ignore[call-arg]
        with pytest.raises(TypeError, match=r"stream_events\(\).*'retry'.*'retries'"):
            mix.stream_events("s", retry=1)  # type: ignore[call-arg]
        with pytest.raises(TypeError, match=r"iter_session_file\(\).*'timout'.*'timeout'"):
            mix.iter_session_file("s", "f", timout=1)  # type: ignore[call-arg]
    assert fake.requests == []


def test_blocking_unknown_keyword_raises_type_error(thread_fake: FakeThread) -> None:
    with (
        Mix(thread_fake.url) as mix,
        pytest.raises(TypeError, match=r"'http_header'.*'http_headers'"),
    ):
        mix.health_check(http_header={"a": "b"})  # type: ignore[call-arg]
    assert thread_fake.fake.requests == []


async def test_official_retries_keyword_is_honoured(fake: MixFake) -> None:
    # Three failures: more than the default two retries. The per-call backoff config
    # retries until its max_elapsed_time (5 s) instead.
    fake.fail_next("getSession", times=3, status=503)
    async with AsyncMix(fake.url) as mix:
        sid = (await mix.create_session(title="t", browser_mode="local-browser-service")).id
        got = await mix.get_session(
            id=sid, retries=RetryConfig("backoff", BackoffStrategy(1, 5, 1.1, 5000), False)
        )
        assert got.id == sid
        fake.fail_next("getSession", times=1, status=503)
        with pytest.raises(InternalServerError):
            await mix.get_session(sid, retries=RetryConfig("none", None, False))
    assert paths(fake).count(f"GET /api/sessions/{sid}") == 5


def test_official_retry_config_on_the_blocking_client(thread_fake: FakeThread) -> None:
    # Three failures: more than the default two retries; the backoff config retries
    # until its max_elapsed_time (5 s) instead.
    thread_fake.fake.fail_next("healthCheck", times=3, status=503)
    config = RetryConfig("backoff", BackoffStrategy(1, 50, 1.1, 5000), False)
    with Mix(thread_fake.url, retry_config=config) as mix:
        assert mix.health_check().status
    with Mix(thread_fake.url) as mix:
        thread_fake.fake.fail_next("healthCheck", times=3, status=503)
        assert mix.health_check(retries=config).status
    assert paths(thread_fake.fake).count("GET /health") == 8


async def test_timeout_ms_http_headers_and_server_url_per_call(fake: MixFake) -> None:
    other = MixFake()
    await other.start()
    try:
        async with AsyncMix(fake.url, max_retries=0) as mix:
            fake.delay_next("healthCheck", 5.0)
            with pytest.raises(APITimeoutError):
                await asyncio.wait_for(mix.health_check(timeout_ms=100), 10)
            await mix.health_check(http_headers={"X-Trace": "abc"})
            assert fake.requests[-1].headers["X-Trace"] == "abc"
            await mix.health_check(server_url=other.url + "/")
            assert paths(other) == ["GET /health"]
            assert paths(fake) == ["GET /health", "GET /health"]
    finally:
        await other.stop()


async def test_bad_option_values_are_refused_before_sending(fake: MixFake) -> None:
    async with AsyncMix(fake.url) as mix:
        for bad in (
            {"timeout_ms": "100"},
            {"timeout_ms": 0},
            {"retries": "backoff"},
            {"server_url": "ftp://x"},
            {"extra_query": {"a": [1]}},
            {"extra_body": ["x"]},
            {"timeout": "5"},
        ):
            with pytest.raises(InvalidInputError):
                await mix.health_check(**bad)  # type: ignore[arg-type]
    assert fake.requests == []


def test_readme_documents_every_per_call_option() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    for name in mix_client.RequestOptions.__annotations__:
        assert f"`{name}=" in section, name


# ---------------------------------------------------------------------------
# 3. Nested inputs as dicts (issue 10.4)
# ---------------------------------------------------------------------------


async def test_callbacks_as_dicts_with_python_or_wire_names(fake: MixFake) -> None:
    async with AsyncMix(fake.url) as mix:
        session = await mix.create_session(
            title="t",
            browser_mode="local-browser-service",
            callbacks=[
                {"type": "bash_script", "tool_name": "*", "bash_command": "echo hi"},
                {"type": "sub_agent", "toolName": "Write", "subAgentPrompt": "review"},
            ],
        )
        sent = json.loads(fake.requests[-1].body)
        assert sent["callbacks"] == [
            {"toolName": "*", "type": "bash_script", "bashCommand": "echo hi"},
            {"toolName": "Write", "type": "sub_agent", "subAgentPrompt": "review"},
        ]
        assert session.callbacks is not None
        assert [c.tool_name for c in session.callbacks] == ["*", "Write"]
        updated = await mix.update_session_callbacks(
            id=session.id,
            callbacks=(
                {"type": "send_message", "tool_name": "Bash", "message_content": "go"},
                Callback(tool_name="Read", type="bash_script", bash_command="true"),
            ),
        )
        assert updated.callbacks is not None
        assert [c.type for c in updated.callbacks] == ["send_message", "bash_script"]


def test_blocking_callbacks_as_dicts(thread_fake: FakeThread) -> None:
    with Mix(thread_fake.url) as mix:
        session = mix.create_session(
            title="t",
            browser_mode="local-browser-service",
            callbacks=[{"type": "bash_script", "tool_name": "*", "bash_command": "ls"}],
        )
        assert session.callbacks is not None and session.callbacks[0].bash_command == "ls"


async def test_bad_callback_dicts_are_refused_naming_the_key(fake: MixFake) -> None:
    async with AsyncMix(fake.url) as mix:
        sid = fake.add_session()
        cases: list[tuple[Any, str]] = [
            (
                [{"type": "bash_script", "tool_nme": "*"}],
                r"callbacks\[0\].*'tool_nme'.*'tool_name'",
            ),
            ([{"type": "bash_script", "tool_name": 5}], r"callbacks\[0\].*tool_name"),
            (
                [{"type": "bash_script", "tool_name": "*", "bash_timeout": "5"}],
                r"callbacks\[0\].*bash_timeout",
            ),
            ([{"type": "x", "tool_name": "*", "toolName": "*"}], r"twice"),
            (["bash"], r"callbacks\[0\] must be a Callback or a dict"),
            ({"type": "bash_script"}, r"callbacks must be a list"),
        ]
        for callbacks, pattern in cases:
            with pytest.raises(InvalidInputError, match=pattern):
                await mix.update_session_callbacks(sid, callbacks=callbacks)
            with pytest.raises(InvalidInputError, match=pattern):
                await mix.create_session(
                    title="t", browser_mode="local-browser-service", callbacks=callbacks
                )
        with pytest.raises(InvalidInputError, match=r"tool_name"):
            await mix.update_session_callbacks(
                sid,
                callbacks=[Callback(tool_name=1, type="bash_script")],  # type: ignore[arg-type]
            )
    assert fake.requests == []


# ---------------------------------------------------------------------------
# 4. run_sync (issue 10.5)
# ---------------------------------------------------------------------------


def test_run_sync_runs_a_coroutine_on_the_mix_loop(thread_fake: FakeThread) -> None:
    with Mix(thread_fake.url) as mix:
        sid = mix.create_session(title="t", browser_mode="local-browser-service").id

        async def work(client: AsyncMix) -> tuple[str, list[str]]:
            got = await asyncio.gather(*(client.get_session(sid) for _ in range(5)))
            return threading.current_thread().name, [s.id for s in got]

        thread_name, ids = mix.run_sync(work(mix.async_client))
        assert ids == [sid] * 5
        assert thread_name != threading.current_thread().name
        assert thread_name == "mix-client-loop"  # the blocking client's own loop thread
        with pytest.raises(InvalidInputError, match="coroutine"):
            mix.run_sync(work)  # type: ignore[arg-type]


def test_blocking_methods_are_built_on_run_sync(thread_fake: FakeThread) -> None:
    with Mix(thread_fake.url) as mix:
        seen: list[str] = []
        original = mix.run_sync

        def spy(coro: Coroutine[Any, Any, T]) -> T:
            seen.append(coro.__qualname__)
            return original(coro)

        mix.run_sync = spy  # type: ignore[method-assign]
        mix.health_check()
        mix.list_sessions(include_subagents=True)
        assert seen == ["AsyncMix.health_check", "AsyncMix.list_sessions"]


# ---------------------------------------------------------------------------
# 5. extra_body, extra_query, extra_headers (issue 10.12)
# ---------------------------------------------------------------------------


async def test_extra_body_query_and_headers_reach_the_wire(fake: MixFake) -> None:
    async with AsyncMix(fake.url) as mix:
        sid = fake.add_session()
        await mix.send_message(sid, text="hi", extra_body={"text": "over", "plan_mode": True})
        assert json.loads(fake.requests[-1].body) == {"text": "over", "plan_mode": True}
        await mix.list_sessions(extra_query={"new param": "a b&c", "flag": True, "n": 3})
        req = fake.requests[-1]
        assert req.query == {
            "includeSubagents": "false",
            "new param": "a b&c",
            "flag": "true",
            "n": "3",
        }
        await mix.get_session(sid, extra_headers={"X-New": "1", "Accept": "text/plain"})
        headers = fake.requests[-1].headers
        assert headers["X-New"] == "1" and headers["Accept"] == "text/plain"
        # A POST without a body gets one made of extra_body.
        await mix.reset_preferences(extra_body={"scope": "all"})
        assert fake.requests[-1].body == b'{"scope":"all"}'
        assert fake.requests[-1].headers["Content-Type"] == "application/json"


async def test_extra_body_is_refused_where_there_is_no_json_body(fake: MixFake) -> None:
    async with AsyncMix(fake.url) as mix:
        with pytest.raises(InvalidInputError, match=r"get_session\(\) sends no JSON body"):
            await mix.get_session("s", extra_body={"a": 1})
        with pytest.raises(InvalidInputError, match="no JSON body"):
            await mix.upload_session_file("s", b"x", filename="a", extra_body={"a": 1})
        with pytest.raises(InvalidInputError, match="extra_body cannot be sent"):
            await mix.send_message("s", text="x", extra_body={"a": object()})
    assert fake.requests == []


def test_blocking_extra_options(thread_fake: FakeThread) -> None:
    with Mix(thread_fake.url) as mix:
        mix.health_check(extra_query={"v": "2"}, extra_headers={"X-A": "b"})
    req = thread_fake.fake.requests[-1]
    assert req.query == {"v": "2"} and req.headers["X-A"] == "b"


# ---------------------------------------------------------------------------
# 6. Bad input never escapes raw nor goes out (issue 9.14)
# ---------------------------------------------------------------------------


async def test_bad_input_is_refused_before_any_request(fake: MixFake) -> None:
    async with AsyncMix(fake.url) as mix:
        sid = fake.add_session()
        cases: list[tuple[Any, str]] = [
            (lambda: mix.get_session("a\ud800b"), r"id must be valid Unicode"),
            (lambda: mix.send_message(sid, text="x\udfff"), r"text must be valid Unicode"),
            (lambda: mix.get_command("\ud800"), r"name must be valid Unicode"),
            (
                lambda: mix.upload_session_file(sid, b"x", filename="a\udcff.txt"),
                r"filename must be valid Unicode",
            ),
            (lambda: mix.get_session_file(sid, "\ud800"), r"filename must be valid Unicode"),
            (lambda: mix.get_session(sid, max_retries="3"), r"max_retries must be an integer"),
            (lambda: mix.get_session(sid, max_retries=-1), r"max_retries"),
            (lambda: mix.get_session(sid, headers={"X": None}), r"headers\['X'\] must be"),
            (lambda: mix.get_session(sid, headers={"X": "a\r\nB: c"}), r"one line"),
            (lambda: mix.get_session(sid, headers={"X Y": "a"}), r"header name"),
            (
                lambda: mix.create_session(title=object(), browser_mode="local-browser-service"),
                r"title must be a JSON value",
            ),
            (
                lambda: mix.create_session(title=5, browser_mode="local-browser-service"),
                r"`title`",
            ),
            (lambda: mix.list_sessions(include_subagents="no"), r"include_subagents"),
            (lambda: mix.send_message(sid, text="x", plan_mode="no"), r"plan_mode"),
            (lambda: mix.rewind_session(sid, message_id="m", cleanup_media=1), r"cleanup_media"),
            (lambda: mix.update_preferences(main_agent_max_tokens=1.5), r"main_agent_max_tokens"),
            (lambda: mix.store_api_key(api_key=b"k", provider="openai"), r"api_key"),
        ]
        for make, pattern in cases:
            with pytest.raises(InvalidInputError, match=pattern):
                await make()
        for kwargs in (
            {"max_reconnects": "x"},
            {"idle_timeout": "5"},
            {"reconnect": "yes"},
            {"last_event_id": 5},
        ):
            with pytest.raises(InvalidInputError):
                mix.stream_events(sid, **kwargs)
        with pytest.raises(InvalidInputError, match="session_id"):
            mix.stream_events("\ud800")
        for kwargs in ({"plan_mode": "no"}, {"timeout": "1"}, {"max_steps": 0}):
            with pytest.raises(InvalidInputError):
                mix.query(sid, "hi", **kwargs)
        with pytest.raises(InvalidInputError, match="text must be valid Unicode"):
            mix.query(sid, "\ud800")
        with pytest.raises(InvalidInputError, match="text must be valid Unicode"):
            await mix.send_and_wait(sid, "\ud800")
    assert fake.requests == []


def test_bad_client_settings_are_refused(thread_fake: FakeThread) -> None:
    url = thread_fake.url
    for kwargs, pattern in (
        ({"max_retries": "3"}, "max_retries must be an integer"),
        ({"headers": {"X": None}}, r"headers\['X'\]"),
        ({"retry_config": "backoff"}, "retry_config must be a RetryConfig"),
        (
            {"retry_config": RetryConfig("backoff", BackoffStrategy("1", 5, 2.0, 0))},  # type: ignore[arg-type]
            "BackoffStrategy.initial_interval",
        ),
        ({"retry_config": RetryConfig("sometimes")}, "strategy"),  # type: ignore[arg-type]
    ):
        with pytest.raises(InvalidInputError, match=pattern):
            AsyncMix(url, **kwargs)
        with pytest.raises(InvalidInputError, match=pattern):
            Mix(url, **kwargs)
    with pytest.raises(InvalidInputError, match="server_url"):
        AsyncMix("http://x\ud800")
    with pytest.raises(InvalidInputError, match="logger"):
        AsyncMix(url, logger="mix")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="session"):
        AsyncMix(url, session="http")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="chunk_size"):
        AsyncMix(url).iter_session_file("s", "f", chunk_size="big")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="headers"):
        AsyncMix(url).with_options(headers={"X": 1})  # type: ignore[dict-item]
    with pytest.raises(InvalidInputError, match="max_retries"):
        AsyncMix(url).with_options(max_retries=True)
    assert thread_fake.fake.requests == []


def test_blocking_bad_input_is_refused(thread_fake: FakeThread) -> None:
    with Mix(thread_fake.url) as mix:
        with pytest.raises(InvalidInputError):
            mix.get_session("\ud800")
        with pytest.raises(InvalidInputError):
            mix.list_sessions(include_subagents="no")  # type: ignore[arg-type]
        with (
            pytest.raises(InvalidInputError),
            mix.stream_events("s", max_reconnects="x"),  # type: ignore[arg-type]
        ):
            pass
    assert thread_fake.fake.requests == []


# ---------------------------------------------------------------------------
# 7. README: every sample runs as printed (issue 10, README)
# ---------------------------------------------------------------------------

SAMPLE = re.compile(r"<!-- sample: ([\w-]+) -->\n```python\n(.*?)\n```\n", re.DOTALL)
README_SAMPLES = dict(SAMPLE.findall((ROOT / "README.md").read_text()))


def run_sample(name: str, url: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    child = {k: v for k, v in os.environ.items() if not k.startswith("MIX_")}
    child.update(env, MIX_SERVER_URL=url, PYTHONPATH=str(ROOT))
    script = cwd / f"{name}.py"
    script.write_text(README_SAMPLES[name])
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=cwd,
        env=child,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def test_readme_has_every_official_sample() -> None:
    assert set(README_SAMPLES) == {
        "sync",
        "async",
        "upload",
        "retries-per-call",
        "retries-global",
        "server-url",
        "custom-session",
        "resources",
        "debugging",
        "middleware",
        "run-sync",
    }
    migrating = (ROOT / "README.md").read_text().split("## Migrating from mix-python-sdk")[1]
    for heading in (
        "Synchronous and asynchronous",
        "File upload",
        "Retries",
        "Error handling",
        "Server selection",
        "Custom HTTP client",
        "Resource management",
        "Debugging",
    ):
        assert f"\n### {heading}\n" in migrating.split("\n## ")[0], heading


@pytest.mark.parametrize("name", ["sync", "async", "retries-per-call", "retries-global"])
def test_readme_store_api_key_samples(name: str, thread_fake: FakeThread, tmp_path: Path) -> None:
    # One 503 first: the samples with a RetryConfig retry it, the others by default.
    thread_fake.fake.fail_next("storeApiKey", times=1, status=503)
    proc = run_sample(name, thread_fake.url, tmp_path)
    assert proc.stderr == ""
    assert re.fullmatch(
        r"StoreApiKeyResponse\(message='API key stored successfully for openrouter', "
        r"provider='openrouter', status='success'\)\n",
        proc.stdout,
    ), proc.stdout
    assert paths(thread_fake.fake) == ["POST /api/auth/api-key"] * 2


def test_readme_upload_sample(thread_fake: FakeThread, tmp_path: Path) -> None:
    (tmp_path / "example.file").write_bytes(b"example bytes")
    proc = run_sample("upload", thread_fake.url, tmp_path)
    assert proc.stderr == ""
    assert proc.stdout.startswith("FileInfo(name='example.file', size=13")
    upload = thread_fake.fake.requests[-1].path
    sid = upload.removeprefix("/api/sessions/").removesuffix("/files/upload")
    assert upload == f"/api/sessions/{sid}/files/upload"
    with Mix(thread_fake.url) as mix:
        assert mix.get_session_file(id=sid, filename="example.file") == b"example bytes"


def test_readme_server_url_sample(thread_fake: FakeThread, tmp_path: Path) -> None:
    proc = run_sample("server-url", thread_fake.url, tmp_path)
    assert proc.stderr == ""
    assert proc.stdout.splitlines()[1] == "ok"
    assert paths(thread_fake.fake) == ["POST /api/auth/api-key", "GET /health"]


def test_readme_custom_session_and_middleware_samples(
    thread_fake: FakeThread, tmp_path: Path
) -> None:
    proc = run_sample("custom-session", thread_fake.url, tmp_path)
    assert proc.stderr == "" and proc.stdout.startswith("HealthResponse(status='ok'")
    assert thread_fake.fake.requests[-1].headers["x-custom-header"] == "someValue"
    proc = run_sample("middleware", thread_fake.url, tmp_path)
    assert proc.stderr == ""
    assert proc.stdout == "GET /health 200\nok\n"
    assert thread_fake.fake.requests[-1].headers["Client-Level-Header"] == "added by client"


def test_readme_resources_and_run_sync_samples(thread_fake: FakeThread, tmp_path: Path) -> None:
    proc = run_sample("resources", thread_fake.url, tmp_path)
    assert proc.stderr == "" and proc.stdout == "ok\nok\n"
    proc = run_sample("run-sync", thread_fake.url, tmp_path)
    assert proc.stderr == "" and proc.stdout == "['s0', 's1', 's2']\n"


def test_readme_debugging_sample_and_mix_debug(thread_fake: FakeThread, tmp_path: Path) -> None:
    proc = run_sample("debugging", thread_fake.url, tmp_path)
    assert re.search(r"-> GET http://127\.0\.0\.1:\d+/health", proc.stderr), proc.stderr
    assert re.search(r"<- GET http://127\.0\.0\.1:\d+/health 200", proc.stderr)
    # MIX_DEBUG=true: the same lines without configuring logging, key redacted.
    proc = run_sample("sync", thread_fake.url, tmp_path, MIX_DEBUG="true")
    assert "-> POST" in proc.stderr and "/api/auth/api-key" in proc.stderr
    assert '"api_key":"***"' in proc.stderr and "<value>" not in proc.stderr


def test_readme_samples_type_check(tmp_path: Path) -> None:
    for name, code in README_SAMPLES.items():
        (tmp_path / f"{name.replace('-', '_')}.py").write_text(code + "\n")
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "MYPYPATH": str(ROOT)},
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout
