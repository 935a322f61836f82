"""Benchmark mix_client against a bare aiohttp+msgspec floor and the official SDK.

Usage::

    python bench/run.py                 # full run (a few minutes)
    python bench/run.py --quick         # tiny sizes, a few seconds (CI smoke test)
    python bench/run.py --only sse      # one metric group (or a contender name)
    python bench/run.py --json out.json

The server (bench/server.py) runs in its own process pinned to one CPU; this
process (and every child it starts) is pinned to another, so
``time.process_time()`` here is the client's CPU only.  Contenders are measured
in interleaved rounds whose order alternates; the table shows medians over the
rounds.  See bench/README.md for what each number means.

Exit status: 0 whenever everything ran, targets met or not; non-zero on a crash.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import msgspec

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MiB = 1 << 20
TITLE = "bench session"
BROWSER = "local-browser-service"
_decode = msgspec.json.decode


# --------------------------------------------------------------------------- config


@dataclass
class Config:
    quick: bool
    rounds: int
    plain_n: int  # sequential calls per round for health/get/create
    list_n: int  # sequential list_sessions(1000) calls per round
    messages_n: int  # sequential get_session_messages(200) calls per round
    conc_batches: int  # batches of 100 concurrent calls per round
    sse_events: int  # events in the SSE rate stream
    sse_mib: int  # MiB streamed per event size for CPU/MiB
    transfer_mib: int  # upload/download size
    transfer_rounds: int
    import_samples: int
    blocks: int  # the sequential calls of a round are split into this many turns
    sessions: int = 1000
    messages: int = 200

    @classmethod
    def make(cls, quick: bool) -> Config:
        if quick:
            return cls(True, 1, 30, 2, 2, 1, 2_000, 2, 4, 1, 1, 1)
        return cls(False, 5, 1500, 30, 40, 20, 100_000, 64, 256, 3, 7, 10)


# --------------------------------------------------------------------------- helpers


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def proc_status_kib(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise KeyError(field_name)


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False if not permitted."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class StallTicker:
    """Measures the largest gap between 1 ms ticks of the event loop.

    ``worst`` is the wall-clock gap (what a latency-sensitive task would see; it also
    catches the scheduler running someone else).  ``worst_cpu`` is the CPU time the
    loop's thread spent within one gap: the part of a stall caused by code running on
    the loop, immune to preemption by other processes.
    """

    def __init__(self) -> None:
        self.worst = 0.0
        self.worst_cpu = 0.0
        self._stop = False
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        last = time.perf_counter()
        last_cpu = time.thread_time()
        while not self._stop:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            cpu = time.thread_time()
            self.worst = max(self.worst, now - last)
            self.worst_cpu = max(self.worst_cpu, cpu - last_cpu)
            last, last_cpu = now, cpu

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> float:
        self._stop = True
        if self._task is not None:
            await self._task
        return self.worst


def pin_cpus() -> tuple[str, int | None]:
    """Pin this process to one CPU and return (description, CPU for the server)."""
    if not hasattr(os, "sched_getaffinity"):
        return "no CPU pinning (os.sched_setaffinity unavailable)", None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return f"no CPU pinning (only CPU {cpus} available); client and server share it", None
    client_cpu, server_cpu = cpus[0], cpus[1]
    os.sched_setaffinity(0, {client_cpu})
    return f"client pinned to CPU {client_cpu}, server pinned to CPU {server_cpu}", server_cpu


def raise_priority(enabled: bool) -> str:
    """Nice -10 for this process and its children (the server): other work on the
    machine then gets the CPUs only when the benchmark leaves them idle."""
    if not enabled:
        return "normal priority (--no-nice)"
    try:
        os.setpriority(os.PRIO_PROCESS, 0, -10)
    except (OSError, AttributeError) as exc:
        return f"normal priority (could not renice: {exc.__class__.__name__})"
    return "nice -10 (client, server and children)"


def cpu_steal() -> tuple[int, int]:
    """(steal, total) jiffies from /proc/stat; (0, 0) where unavailable."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


def load_text() -> str:
    try:
        return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except OSError:
        return "load average n/a"


# --------------------------------------------------------------------------- server


class Server:
    def __init__(self, cfg: Config, cpu: int | None) -> None:
        cmd = [
            sys.executable,
            str(HERE / "server.py"),
            "--port",
            "0",
            "--sessions",
            str(cfg.sessions),
            "--messages",
            str(cfg.messages),
        ]
        if cpu is not None:
            cmd += ["--cpu", str(cpu)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("READY "):
            self.proc.kill()
            raise RuntimeError(f"server did not start: {line!r}")
        self.port = int(line.split()[1])
        self.url = f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def sse_session_id(n: int, size: int) -> str:
    # The server reads the stream shape from the session id (clients only send sessionId).
    return f"sse_{n}_{size}"


# --------------------------------------------------------------------------- contenders
#
# Each contender exposes the same operations.  Async ones return coroutines; the sync
# ones (mix_client.Mix and the SDK's blocking methods) are called outside the loop.


class Floor:
    """Bare aiohttp.ClientSession.request + msgspec.json.decode to dicts."""

    name = "floor"
    is_async = True

    def __init__(self, url: str, sid: str) -> None:
        self.url = url
        self.sid = sid
        self.s: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        self.s = aiohttp.ClientSession()

    async def close(self) -> None:
        if self.s is not None:
            await self.s.close()

    async def _call(
        self, method: str, path: str, body: bytes | None = None, headers: Any = None
    ) -> Any:
        assert self.s is not None
        async with self.s.request(method, self.url + path, data=body, headers=headers) as r:
            data = await r.read()
            if r.status >= 400:
                raise RuntimeError(f"{method} {path}: HTTP {r.status}")
            return _decode(data)

    def health(self) -> Awaitable[Any]:
        return self._call("GET", "/health")

    def get_session(self) -> Awaitable[Any]:
        return self._call("GET", "/api/sessions/" + quote(self.sid, safe=""))

    def create_session(self) -> Awaitable[Any]:
        body = msgspec.json.encode({"title": TITLE, "browserMode": BROWSER})
        return self._call("POST", "/api/sessions", body, {"Content-Type": "application/json"})

    def list_sessions(self) -> Awaitable[Any]:
        return self._call("GET", "/api/sessions?includeSubagents=false")

    def messages(self) -> Awaitable[Any]:
        return self._call("GET", "/api/sessions/" + quote(self.sid, safe="") + "/messages")

    async def sse(self, sid: str) -> int:
        """Plain loop over iter_any(), split on blank lines, decode data to dicts."""
        assert self.s is not None
        count = 0
        async with self.s.get(self.url + "/stream", params={"sessionId": sid}) as r:
            buf = bytearray()
            async for chunk in r.content.iter_any():
                scan = max(len(buf) - 1, 0)
                buf += chunk
                start = 0
                while True:
                    i = buf.find(b"\n\n", scan)
                    if i < 0:
                        break
                    event = b"message"
                    data = b""
                    for line in bytes(buf[start:i]).split(b"\n"):
                        if line.startswith(b"data:"):
                            data = line[5:]
                        elif line.startswith(b"event:"):
                            event = line[6:].strip()
                    _decode(data)
                    count += 1
                    start = scan = i + 2
                    if event == b"complete":
                        return count
                if start:
                    del buf[:start]
        return count

    async def upload(self, path: str, name: str) -> int:
        assert self.s is not None
        with open(path, "rb") as f:  # noqa: ASYNC230 - the plain way; aiohttp reads it in a thread
            form = aiohttp.FormData()
            form.add_field("file", f, filename=name, content_type="application/octet-stream")
            async with self.s.post(
                f"{self.url}/api/sessions/{quote(self.sid, safe='')}/files/upload", data=form
            ) as r:
                info = _decode(await r.read())
        return int(info["size"])

    async def download_file(self, name: str, dest: str) -> int:
        assert self.s is not None
        n = 0
        url = f"{self.url}/api/sessions/{quote(self.sid, safe='')}/files/{quote(name, safe='')}"
        async with self.s.get(url) as r:
            r.raise_for_status()
            with open(dest, "wb") as f:  # noqa: ASYNC230 - the plain way
                async for chunk in r.content.iter_chunked(1 << 16):
                    f.write(chunk)
                    n += len(chunk)
        return n

    async def download_bytes(self, name: str) -> bytes:
        assert self.s is not None
        url = f"{self.url}/api/sessions/{quote(self.sid, safe='')}/files/{quote(name, safe='')}"
        async with self.s.get(url) as r:
            r.raise_for_status()
            return await r.read()


async def count_to_complete(events: Any) -> int:
    """How many events a stream yields up to and including the first ``complete``."""
    count = 0
    async for ev in events:
        count += 1
        if ev.event == "complete":
            break
    return count


class Contender:
    """A client under test: the server's URL, the session it calls, the client (``m``)."""

    def __init__(self, url: str, sid: str) -> None:
        self.url = url
        self.sid = sid
        self.m: Any = None


class MixCalls(Contender):
    """The plain calls of mix_client's two clients: the same methods, awaitables on
    ``AsyncMix`` and results on ``Mix``."""

    def health(self) -> Any:
        return self.m.health_check()

    def get_session(self) -> Any:
        return self.m.get_session(self.sid)

    def create_session(self) -> Any:
        return self.m.create_session(title=TITLE, browser_mode=BROWSER)

    def list_sessions(self) -> Any:
        return self.m.list_sessions()

    def messages(self) -> Any:
        return self.m.get_session_messages(self.sid)


class MixAsync(MixCalls):
    """mix_client.AsyncMix."""

    name = "mix_client"
    is_async = True

    async def open(self) -> None:
        import mix_client

        self.m = mix_client.AsyncMix(self.url)
        await self.m.__aenter__()

    async def close(self) -> None:
        if self.m is not None:
            await self.m.__aexit__(None, None, None)

    async def sse(self, sid: str) -> int:
        async with self.m.stream_events(sid, reconnect=False) as events:
            return await count_to_complete(events)

    async def upload(self, path: str, name: str) -> int:
        info = await self.m.upload_session_file(self.sid, path, filename=name)
        return int(info.size)

    async def download_file(self, name: str, dest: str) -> int:
        return int(await self.m.download_session_file(self.sid, name, dest))

    async def download_bytes(self, name: str) -> bytes:
        return await self.m.get_session_file(self.sid, name)  # type: ignore[no-any-return]


class MixSync(MixCalls):
    """mix_client.Mix, the blocking facade."""

    name = "mix_client.sync"
    is_async = False

    def open(self) -> None:
        import mix_client

        self.m = mix_client.Mix(self.url)

    def close(self) -> None:
        if self.m is not None:
            self.m.close()


class SdkSync(Contender):
    """mix_python_sdk.Mix, blocking methods (httpx.Client + pydantic)."""

    name = "sdk.sync"
    is_async = False

    def open(self) -> None:
        import mix_python_sdk

        self.m = mix_python_sdk.Mix(server_url=self.url)

    def close(self) -> None:
        self.m = None

    def health(self) -> Any:
        return self.m.system.get_health()

    def get_session(self) -> Any:
        return self.m.sessions.get(id=self.sid)

    def create_session(self) -> Any:
        return self.m.sessions.create(title=TITLE, browser_mode=BROWSER)

    def list_sessions(self) -> Any:
        return self.m.sessions.list()

    def messages(self) -> Any:
        return self.m.messages.list_session(id=self.sid)


class SdkAsync(Contender):
    """mix_python_sdk.Mix, *_async methods (httpx.AsyncClient + pydantic)."""

    name = "sdk.async"
    is_async = True

    async def open(self) -> None:
        import mix_python_sdk

        self.m = mix_python_sdk.Mix(server_url=self.url)

    async def close(self) -> None:
        if self.m is not None:
            await self.m.sdk_configuration.async_client.aclose()
        self.m = None

    def health(self) -> Awaitable[Any]:
        return self.m.system.get_health_async()  # type: ignore[no-any-return]

    def get_session(self) -> Awaitable[Any]:
        return self.m.sessions.get_async(id=self.sid)  # type: ignore[no-any-return]

    def create_session(self) -> Awaitable[Any]:
        return self.m.sessions.create_async(title=TITLE, browser_mode=BROWSER)  # type: ignore[no-any-return]

    def list_sessions(self) -> Awaitable[Any]:
        return self.m.sessions.list_async()  # type: ignore[no-any-return]

    def messages(self) -> Awaitable[Any]:
        return self.m.messages.list_session_async(id=self.sid)  # type: ignore[no-any-return]

    async def sse(self, sid: str) -> int:
        res = await self.m.streaming.stream_events_async(session_id=sid)
        async with res.result as events:
            return await count_to_complete(events)

    async def upload(self, path: str, name: str) -> int:
        with open(path, "rb") as f:  # noqa: ASYNC230 - the SDK takes an open file
            info = await self.m.files.upload_session_file_async(
                id=self.sid,
                file={"file_name": name, "content": f, "content_type": "application/octet-stream"},
            )
        return int(info.size)

    async def download_file(self, name: str, dest: str) -> int:
        n = 0
        res = await self.m.files.get_session_file_async(id=self.sid, filename=name)
        try:
            with open(dest, "wb") as f:  # noqa: ASYNC230 - the SDK hands back an httpx response
                async for chunk in res.aiter_bytes():
                    f.write(chunk)
                    n += len(chunk)
        finally:
            await res.aclose()
        return n

    async def download_bytes(self, name: str) -> bytes:
        res = await self.m.files.get_session_file_async(id=self.sid, filename=name)
        try:
            return await res.aread()  # type: ignore[no-any-return]
        finally:
            await res.aclose()


CONTENDERS: dict[str, type] = {c.name: c for c in (Floor, MixAsync, MixSync, SdkSync, SdkAsync)}
COLUMNS = ["floor", "mix_client", "mix_client.sync", "sdk.sync", "sdk.async"]


def importable(module: str) -> str | None:
    """None if the module imports, else the reason it does not."""
    try:
        __import__(module)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


# --------------------------------------------------------------------------- measurement


@dataclass
class Results:
    # metric -> contender -> list of per-round values
    data: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)

    def add(self, metric: str, contender: str, value: float) -> None:
        self.data.setdefault(metric, {}).setdefault(contender, []).append(value)

    def get(self, metric: str, contender: str) -> float:
        return median(self.data.get(metric, {}).get(contender, []))


PLAIN_OPS = ("health", "get_session", "create_session")
LIST_OPS = ("list_sessions", "messages")


class Bench:
    def __init__(self, cfg: Config, url: str, sid: str, contenders: list[str]) -> None:
        self.cfg = cfg
        self.url = url
        self.sid = sid
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.clients: dict[str, Any] = {}
        self.res = Results()
        for name in contenders:
            self.clients[name] = CONTENDERS[name](url, sid)

    # -- lifecycle
    def open(self) -> None:
        for name, c in list(self.clients.items()):
            try:
                if c.is_async:
                    self.loop.run_until_complete(c.open())
                    self.loop.run_until_complete(c.health())
                else:
                    c.open()
                    c.health()
            except Exception as exc:
                if not name.startswith("sdk"):
                    raise
                self.skip(name, exc)

    def skip(self, name: str, exc: BaseException) -> None:
        msg = f"{type(exc).__name__}: {exc}"
        self.res.errors[name] = msg
        self.res.notes.append(f"{name} skipped: {msg.splitlines()[0][:200]}")
        self.clients.pop(name, None)

    def close(self) -> None:
        for c in self.clients.values():
            with contextlib.suppress(Exception):
                if c.is_async:
                    self.loop.run_until_complete(c.close())
                else:
                    c.close()
        self.loop.run_until_complete(asyncio.sleep(0.05))
        self.loop.close()

    def order(self, r: int, names: list[str]) -> list[str]:
        names = [n for n in names if n in self.clients]
        return names if r % 2 == 0 else names[::-1]

    def guarded(self, name: str, fn: Callable[[], None]) -> None:
        """Run one measurement; a failure of the official SDK is noted, not fatal."""
        try:
            fn()
        except Exception as exc:
            if not name.startswith("sdk"):
                raise
            traceback.print_exc()
            self.skip(name, exc)

    def warm(self, name: str) -> None:
        c = self.clients[name]
        for op in (*PLAIN_OPS, *LIST_OPS):
            if c.is_async:
                self.loop.run_until_complete(getattr(c, op)())
            else:
                getattr(c, op)()

    # -- sequential calls: client CPU µs/call and wall µs/call
    def _calls(self, name: str, op: str, n: int) -> tuple[float, float]:
        """n sequential calls of one operation: (CPU s, wall s)."""
        c = self.clients[name]
        fn = getattr(c, op)
        if c.is_async:

            async def loop() -> tuple[float, float]:
                c0, t0 = time.process_time(), time.perf_counter()
                for _ in range(n):
                    await fn()
                return time.process_time() - c0, time.perf_counter() - t0

            return self.loop.run_until_complete(loop())
        c0, t0 = time.process_time(), time.perf_counter()
        for _ in range(n):
            fn()
        return time.process_time() - c0, time.perf_counter() - t0

    def seq(self, op: str, n: int, r: int) -> None:
        """Sequential calls; the contenders take turns in blocks so they share conditions."""
        blocks = self.cfg.blocks
        acc: dict[str, list[float]] = {}
        for b in range(blocks):
            gc.collect()
            for name in self.order(r + b, COLUMNS):
                k = n
                if name.startswith("sdk"):
                    # the official SDK is 5-50x slower per call: fewer calls keep the run short
                    k = int(n * (0.2 if op in PLAIN_OPS else 0.3))
                k = max(1, k // blocks)

                def one(name: str = name, k: int = k) -> None:
                    cpu, wall = self._calls(name, op, k)
                    a = acc.setdefault(name, [0.0, 0.0, 0])
                    a[0] += cpu
                    a[1] += wall
                    a[2] += k

                self.guarded(name, one)
        for name, (cpu, wall, k) in acc.items():
            if name in self.clients:
                self.res.add(f"{op}.cpu_us", name, cpu / k * 1e6)
                self.res.add(f"{op}.wall_us", name, wall / k * 1e6)

    # -- 100 concurrent calls from one client
    def concurrent(self, batches: int, r: int) -> None:
        names = ["floor", "mix_client", "sdk.async"]
        acc: dict[str, list[float]] = {}

        async def batch(c: Any) -> tuple[float, float]:
            c0, t0 = time.process_time(), time.perf_counter()
            await asyncio.gather(*(c.get_session() for _ in range(100)))
            return time.process_time() - c0, time.perf_counter() - t0

        for name in self.order(r, names):  # open 100 connections each
            self.guarded(
                name,
                lambda name=name: self.loop.run_until_complete(batch(self.clients[name])) and None,
            )
        for b in range(batches):
            gc.collect()
            for name in self.order(r + b, names):
                if name.startswith("sdk") and b >= max(1, batches // 10):
                    continue  # ~130 calls/s: a couple of batches are enough

                def one(name: str = name) -> None:
                    cpu, wall = self.loop.run_until_complete(batch(self.clients[name]))
                    a = acc.setdefault(name, [0.0, 0.0, 0])
                    a[0] += cpu
                    a[1] += wall
                    a[2] += 100

                self.guarded(name, one)
        for name, (cpu, wall, k) in acc.items():
            if name in self.clients:
                self.res.add("concurrent.calls_s", name, k / wall)
                self.res.add("concurrent.cpu_us", name, cpu / k * 1e6)

    # -- SSE
    def sse_events(self, name: str) -> int:
        n = self.cfg.sse_events
        if name.startswith("sdk"):
            # its SSE parser runs ~250 events/s here; a short stream says as much
            n = min(n, max(100, n // 100, 1000 if not self.cfg.quick else 100))
        return n

    def sse_rate(self, name: str) -> None:
        n = self.sse_events(name)
        got, cpu, wall = self.sse_run(name, n, 64)
        self.res.add("sse.events_s", name, got / wall)
        self.res.add("sse.cpu_us_event", name, cpu / got * 1e6)

    def sse_run(self, name: str, n: int, size: int) -> tuple[int, float, float]:
        """Stream ``n`` events of ``size`` bytes with contender ``name``: (events, CPU s, wall s)."""
        c = self.clients[name]
        sid = sse_session_id(n, size)
        gc.collect()

        async def run() -> tuple[int, float, float]:
            c0, t0 = time.process_time(), time.perf_counter()
            got = await c.sse(sid)
            return got, time.process_time() - c0, time.perf_counter() - t0

        got, cpu, wall = self.loop.run_until_complete(run())
        if got != n + 2:
            raise RuntimeError(f"{name}: SSE delivered {got} events, expected {n + 2}")
        return got, cpu, wall

    def sse_sizes(self, name: str) -> list[tuple[int, int]]:
        """(events, size) streams: both sizes, alternating, half the MiB each."""
        total = self.cfg.sse_mib * MiB
        parts = 2 if total >= 4 * MiB else 1
        if name.startswith("sdk"):
            total, parts = MiB, 1
        each = total // parts
        return [(max(1, each // size), size) for _ in range(parts) for size in (16 << 10, MiB)]

    def sse_mib(self, name: str) -> None:
        acc: dict[str, list[float]] = {}
        for n, size in self.sse_sizes(name):
            _, cpu, wall = self.sse_run(name, n, size)
            a = acc.setdefault("16k" if size < MiB else "1m", [0.0, 0.0, 0.0])
            a[0] += cpu
            a[1] += wall
            a[2] += n * size / MiB
        for tag, (cpu, wall, mib) in acc.items():
            self.res.add(f"sse_{tag}.cpu_ms_mib", name, cpu / mib * 1e3)
            self.res.add(f"sse_{tag}.mib_s", name, mib / wall)

    def warm_sse(self) -> None:
        """Have the server build every stream once, outside the measurements."""
        floor = self.clients["floor"]
        shapes = {sse_session_id(self.sse_events(n), 64) for n in self.clients}
        for name in self.clients:
            shapes |= {sse_session_id(n, s) for n, s in self.sse_sizes(name)}
        for sid in sorted(shapes):
            self.loop.run_until_complete(floor.sse(sid))


# --------------------------------------------------------------------------- children
#
# Transfers and import timing run in fresh child processes so that memory freed by
# one measurement cannot hide the peak of the next, and imports start cold.


def child_transfer(args: argparse.Namespace) -> dict[str, Any]:
    cls = CONTENDERS[args.contender]
    c = cls(args.url, args.sid)
    out: dict[str, Any] = {}

    async def main() -> None:
        await c.open()
        await c.health()
        idle = StallTicker()  # what the machine alone does to a 1 ms ticker
        idle.start()
        await asyncio.sleep(0.5)
        out["stall_idle_ms"] = (await idle.stop()) * 1e3
        gc.collect()
        out["peak_reset"] = reset_peak_rss()
        base = proc_status_kib("VmRSS") if out["peak_reset"] else proc_status_kib("VmHWM")
        ticker = StallTicker()
        ticker.start()
        c0, t0 = time.process_time(), time.perf_counter()
        keep: Any = None
        if args.child == "upload":
            n = await c.upload(args.path, "bench upload.bin")
        elif args.child == "download_file":
            n = await c.download_file(args.name, args.path)
        else:
            keep = await c.download_bytes(args.name)
            n = len(keep)
        cpu, wall = time.process_time() - c0, time.perf_counter() - t0
        out["stall_ms"] = (await ticker.stop()) * 1e3
        out["stall_cpu_ms"] = ticker.worst_cpu * 1e3
        out["rss_growth_mib"] = (proc_status_kib("VmHWM") - base) / 1024
        out["bytes"] = n
        out["mib_s"] = n / MiB / wall
        out["cpu_ms_mib"] = cpu * 1e3 / (n / MiB)
        del keep
        await c.close()

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.run_until_complete(asyncio.sleep(0.05))
        loop.close()
    return out


IMPORT_SNIPPETS = {
    "floor": """
import asyncio, aiohttp, msgspec
async def main():
    async with aiohttp.ClientSession() as s:
        async with s.get(URL + "/health") as r:
            msgspec.json.decode(await r.read())
asyncio.run(main())
""",
    "mix_client": """
import asyncio, mix_client
async def main():
    async with mix_client.AsyncMix(URL) as mix:
        await mix.health_check()
asyncio.run(main())
""",
    "sdk": """
import mix_python_sdk
mix_python_sdk.Mix(server_url=URL).system.get_health()
""",
}


IMPORT_PRELUDE = """
import json, sys, time
t0, c0 = time.perf_counter(), time.process_time()
URL = sys.argv[1]
"""
IMPORT_CODA = """
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
print(json.dumps({"wall_ms": wall * 1e3, "cpu_ms": cpu * 1e3}))
"""


# ``import mix_client`` alone, over aiohttp + msgspec already imported: what the module
# itself costs (its imports of the standard library included).
IMPORT_ADDED = (
    """
import json, sys, time
import aiohttp, msgspec
t0, c0 = time.perf_counter(), time.process_time()
import mix_client
"""
    + IMPORT_CODA
)


def import_sample(
    name: str, url: str, pycache: str | None, code: str | None = None
) -> dict[str, Any]:
    """Time import + client + first call in a fresh interpreter (interpreter start excluded).

    With ``pycache`` (a directory) byte-code is cached there for every module, as an
    installed package would have it; with None, PYTHONDONTWRITEBYTECODE=1 and no prefix:
    installed packages use their own .pyc while mix_client.py, copied to a folder of its
    own (a ``__pycache__`` beside the original would be read), is compiled from source.
    """
    code = code or IMPORT_PRELUDE + IMPORT_SNIPPETS[name] + IMPORT_CODA
    env = dict(os.environ)
    if pycache is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = pycache
    else:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env.pop("PYTHONPYCACHEPREFIX", None)
    with tempfile.TemporaryDirectory(prefix="mixbench_src_") as src:
        cwd = str(ROOT)
        if pycache is None:
            shutil.copy(ROOT / "mix_client.py", src)
            cwd = src
        p = subprocess.run(
            [sys.executable, "-c", code, url],
            capture_output=True,
            text=True,
            cwd=cwd,
            env=env,
            timeout=120,
        )
    if p.returncode != 0:
        raise RuntimeError(f"import sample for {name} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def run_child(argv: list[str]) -> dict[str, Any]:
    p = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), *argv],
        capture_output=True,
        text=True,
        cwd=str(ROOT),
        timeout=600,
    )
    if p.returncode != 0:
        raise RuntimeError(f"child {argv[:4]} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- table


@dataclass
class Row:
    label: str
    metric: str
    unit: str
    target: str = ""
    check: Callable[[Results], bool | None] | None = None
    fmt: str = "{:,.1f}"
    lower_is_better: bool = True


def ratio(res: Results, metric: str, a: str = "mix_client", b: str = "floor") -> float:
    x, y = res.get(metric, a), res.get(metric, b)
    return x / y if y else float("nan")


def _le(value: float, limit: float) -> bool | None:
    return None if value != value else value <= limit


def _ge(value: float, limit: float) -> bool | None:
    return None if value != value else value >= limit


def rows_for(cfg: Config) -> list[Row]:
    size = cfg.transfer_mib
    rows = []
    for op, label in (
        ("health", "health_check"),
        ("get_session", "get_session"),
        ("create_session", "create_session (201)"),
    ):
        rows.append(
            Row(
                f"{label} CPU/call",
                f"{op}.cpu_us",
                "µs",
                "<= 1.3x floor",
                lambda r, m=f"{op}.cpu_us": _le(ratio(r, m), 1.3),
            )
        )
    rows.append(
        Row(
            f"list_sessions({cfg.sessions}) CPU/call",
            "list_sessions.cpu_us",
            "µs",
            "<= 1.0x floor",
            lambda r: _le(ratio(r, "list_sessions.cpu_us"), 1.0),
        )
    )
    rows.append(
        Row(
            f"get_session_messages({cfg.messages}) CPU/call",
            "messages.cpu_us",
            "µs",
            "<= 1.0x floor",
            lambda r: _le(ratio(r, "messages.cpu_us"), 1.0),
        )
    )
    for op, label in (
        ("health", "health_check"),
        ("get_session", "get_session"),
        ("create_session", "create_session"),
        ("list_sessions", "list_sessions"),
        ("messages", "get_session_messages"),
    ):
        rows.append(Row(f"{label} wall/call (sequential)", f"{op}.wall_us", "µs"))
    rows.append(
        Row(
            "100 concurrent get_session",
            "concurrent.calls_s",
            "calls/s",
            ">= 0.9x floor",
            lambda r: _ge(ratio(r, "concurrent.calls_s"), 0.9),
            "{:,.0f}",
            False,
        )
    )
    rows.append(Row("100 concurrent CPU/call", "concurrent.cpu_us", "µs"))
    rows.append(
        Row(
            f"SSE {cfg.sse_events:,} x 64 B events",
            "sse.events_s",
            "events/s",
            ">= 300k events/s",
            lambda r: _ge(r.get("sse.events_s", "mix_client"), 300_000),
            "{:,.0f}",
            False,
        )
    )
    rows.append(Row("SSE CPU/event", "sse.cpu_us_event", "µs"))
    rows.append(Row("SSE 16 KiB events CPU/MiB", "sse_16k.cpu_ms_mib", "ms"))
    rows.append(
        Row(
            "SSE 1 MiB events CPU/MiB",
            "sse_1m.cpu_ms_mib",
            "ms",
            "flat: <= 1.25x the 16 KiB row",
            lambda r: _le(
                r.get("sse_1m.cpu_ms_mib", "mix_client")
                / r.get("sse_16k.cpu_ms_mib", "mix_client"),
                1.25,
            ),
        )
    )
    rows.append(
        Row(
            f"upload {size} MiB peak RSS growth",
            "upload.rss_growth_mib",
            "MiB",
            "<= 8 MiB",
            lambda r: _le(r.get("upload.rss_growth_mib", "mix_client"), 8),
        )
    )
    rows.append(
        Row(
            f"upload {size} MiB max loop stall",
            "upload.stall_ms",
            "ms",
            "<= 5 ms",
            lambda r: _le(r.get("upload.stall_ms", "mix_client"), 5),
        )
    )
    rows.append(Row("  same ticker, idle 0.5 s before (baseline)", "upload.stall_idle_ms", "ms"))
    rows.append(Row("  most loop-thread CPU inside one gap", "upload.stall_cpu_ms", "ms"))
    rows.append(
        Row(f"upload {size} MiB throughput", "upload.mib_s", "MiB/s", lower_is_better=False)
    )
    rows.append(
        Row(
            f"download {size} MiB to file RSS growth",
            "download_file.rss_growth_mib",
            "MiB",
            "<= 8 MiB",
            lambda r: _le(r.get("download_file.rss_growth_mib", "mix_client"), 8),
        )
    )
    rows.append(Row(f"download {size} MiB to file max loop stall", "download_file.stall_ms", "ms"))
    rows.append(
        Row(
            f"download {size} MiB to file throughput",
            "download_file.mib_s",
            "MiB/s",
            lower_is_better=False,
        )
    )
    rows.append(
        Row(
            f"download {size} MiB to bytes RSS growth",
            "download_bytes.rss_growth_mib",
            "MiB",
            f"<= 1.1x size ({1.1 * size:.0f} MiB)",
            lambda r: _le(r.get("download_bytes.rss_growth_mib", "mix_client"), 1.1 * size),
        )
    )
    rows.append(
        Row(f"download {size} MiB to bytes max loop stall", "download_bytes.stall_ms", "ms")
    )
    rows.append(
        Row(
            "import + first call (fresh process)",
            "import.wall_ms",
            "ms",
            "<= 1.1x floor",
            lambda r: _le(ratio(r, "import.wall_ms"), 1.1),
        )
    )
    rows.append(Row("import + first call CPU", "import.cpu_ms", "ms"))
    rows.append(Row("import + first call, mix_client.py not cached", "import_nopyc.wall_ms", "ms"))
    rows.append(
        Row(
            "import mix_client over aiohttp + msgspec, byte-code cached",
            "import_added.wall_ms",
            "ms",
            "< 10 ms",
            lambda r: None if (v := r.get("import_added.wall_ms", "mix_client")) != v else v < 10,
        )
    )
    rows.append(
        Row(
            "import mix_client over aiohttp + msgspec, not cached",
            "import_added_nopyc.wall_ms",
            "ms",
        )
    )
    return rows


def fmt_value(row: Row, v: float) -> str:
    return "-" if v != v else row.fmt.format(v)


def build_table(cfg: Config, res: Results) -> tuple[str, list[dict[str, Any]]]:
    header = [
        "metric",
        "unit",
        "floor",
        "mix_client",
        "ratio",
        "target",
        "status",
        "mix sync",
        "sdk sync",
        "sdk async",
    ]
    lines: list[list[str]] = []
    records: list[dict[str, Any]] = []
    for row in rows_for(cfg):
        if row.metric not in res.data:
            continue
        vals = {c: res.get(row.metric, c) for c in COLUMNS}
        if row.metric == "import.wall_ms" or row.metric == "import.cpu_ms":
            vals["sdk.sync"] = res.get(row.metric, "sdk")
        rat = ratio(res, row.metric)
        status = ""
        if row.check is not None:
            ok = row.check(res)
            status = "n/a" if ok is None else ("PASS" if ok else "FAIL")

        def cell(c: str, vals: dict[str, float] = vals, row: Row = row) -> str:
            v = vals[c]
            if v != v:
                return "-"
            s = fmt_value(row, v)
            f = vals["floor"]
            if c != "floor" and c != "mix_client" and f == f and f:
                s += f" ({v / f:.2f}x)"
            return s

        lines.append(
            [
                row.label,
                row.unit,
                cell("floor"),
                cell("mix_client"),
                "-" if rat != rat else f"{rat:.2f}x",
                row.target,
                status,
                cell("mix_client.sync"),
                cell("sdk.sync"),
                cell("sdk.async"),
            ]
        )
        records.append(
            {
                "label": row.label,
                "metric": row.metric,
                "unit": row.unit,
                "values": {k: (None if v != v else v) for k, v in vals.items()},
                "ratio_to_floor": None if rat != rat else rat,
                "target": row.target,
                "status": status,
            }
        )
    widths = [
        max(len(h), *(len(r[i]) for r in lines)) if lines else len(h) for i, h in enumerate(header)
    ]
    out = []
    sep = "-+-".join("-" * w for w in widths)
    out.append(" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    out.append(sep)
    for r in lines:
        cells = [r[0].ljust(widths[0]), r[1].ljust(widths[1])]
        cells += [c.rjust(w) for c, w in zip(r[2:5], widths[2:5], strict=True)]
        cells += [c.ljust(w) for c, w in zip(r[5:7], widths[5:7], strict=True)]
        cells += [c.rjust(w) for c, w in zip(r[7:], widths[7:], strict=True)]
        out.append(" | ".join(cells))
    return "\n".join(out), records


# --------------------------------------------------------------------------- main

GROUPS = ("plain", "lists", "concurrent", "sse", "sse_mib", "upload", "download", "import")


def parse_only(only: str | None) -> tuple[set[str], set[str] | None]:
    if not only:
        return set(GROUPS), None
    groups: set[str] = set()
    who: set[str] = set()
    for item in (x.strip() for x in only.split(",")):
        if item in GROUPS:
            groups.add(item)
        elif item in CONTENDERS or item == "sdk":
            who |= {item} if item != "sdk" else {"sdk.sync", "sdk.async"}
        else:
            raise SystemExit(
                f"--only: unknown name {item!r} (groups: {', '.join(GROUPS)}; contenders: {', '.join(CONTENDERS)}, sdk)"
            )
    return groups or set(GROUPS), (who | {"floor"}) if who else None


@contextlib.contextmanager
def temp_file(size_mib: int) -> Iterator[str]:
    fd, path = tempfile.mkstemp(prefix="mixbench_up_", suffix=".bin", dir="/tmp")
    try:
        block = os.urandom(MiB)
        with os.fdopen(fd, "wb") as f:
            for _ in range(size_mib):
                f.write(block)
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="mix_client benchmark")
    ap.add_argument("--quick", action="store_true", help="tiny sizes; a smoke test")
    ap.add_argument("--json", metavar="PATH", help="write all results as JSON")
    ap.add_argument(
        "--only",
        metavar="NAME",
        help=f"comma list of groups ({', '.join(GROUPS)}) and/or contenders",
    )
    ap.add_argument("--rounds", type=int, help="override the number of rounds")
    ap.add_argument("--no-nice", action="store_true", help="do not raise the priority")
    # child-process modes (internal)
    ap.add_argument(
        "--child",
        choices=["upload", "download_file", "download_bytes", "import"],
        help=argparse.SUPPRESS,
    )
    ap.add_argument("--contender", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--sid", help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    ap.add_argument("--name", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        print(json.dumps(child_transfer(args)))
        return 0

    cfg = Config.make(args.quick)
    if args.rounds:
        cfg.rounds = args.rounds
    groups, who = parse_only(args.only)
    pinning, server_cpu = pin_cpus()
    pinning += "; " + raise_priority(not args.no_nice)
    load_before = load_text()
    steal_before = cpu_steal()
    t_start = time.perf_counter()

    wanted = [c for c in COLUMNS if who is None or c in who]
    notes: list[str] = []
    missing_mix = importable("mix_client")
    if missing_mix is not None:
        notes.append(f"mix_client not importable: {missing_mix}")
        wanted = [c for c in wanted if not c.startswith("mix_client")]
    else:
        import mix_client

        if not hasattr(mix_client, "Mix"):
            notes.append("mix_client.Mix (blocking facade) not found; its column is skipped")
            wanted = [c for c in wanted if c != "mix_client.sync"]
    missing_sdk = importable("mix_python_sdk")
    if missing_sdk is not None:
        notes.append(f"official SDK (mix_python_sdk) not importable, skipped: {missing_sdk}")
        wanted = [c for c in wanted if not c.startswith("sdk")]

    server = Server(cfg, server_cpu)
    log(f"{pinning}; client pid {os.getpid()}, server pid {server.proc.pid} at {server.url}")
    try:
        with urllib.request.urlopen(server.url + "/api/sessions") as r:
            sessions = _decode(r.read())
        sid = sessions[1]["id"]
        bench = Bench(cfg, server.url, sid, wanted)
        res = bench.res
        res.notes.extend(notes)
        if cfg.quick:
            res.notes.append(
                "--quick: tiny sizes, one round; the official SDK is left out of the SSE CPU/MiB, "
                "transfer and import rows. Not for conclusions."
            )
        try:
            bench.open()
            if groups & {"sse", "sse_mib"}:
                bench.warm_sse()
            for name in list(bench.clients):  # warm every code path once
                bench.guarded(name, lambda name=name: bench.warm(name))
            for r in range(cfg.rounds):
                log(f"round {r + 1}/{cfg.rounds} ({time.perf_counter() - t_start:.0f} s)")
                if "plain" in groups:
                    for op in PLAIN_OPS:
                        bench.seq(op, cfg.plain_n, r)
                if "lists" in groups:
                    bench.seq("list_sessions", cfg.list_n, r)
                    bench.seq("messages", cfg.messages_n, r)
                if "concurrent" in groups:
                    bench.concurrent(cfg.conc_batches, r)
                # the official SDK streams so slowly that two rounds of it are plenty
                sse_who = ["floor", "mix_client"] + (["sdk.async"] if r < 2 else [])
                mib_who = sse_who if not cfg.quick else ["floor", "mix_client"]
                if "sse" in groups:
                    for name in bench.order(r, sse_who):
                        bench.guarded(name, lambda name=name: bench.sse_rate(name))
                if "sse_mib" in groups:
                    for name in bench.order(r, mib_who):
                        bench.guarded(name, lambda name=name: bench.sse_mib(name))
        finally:
            bench.close()

        # --quick leaves the official SDK out of the slow parts (child processes, 1 MiB SSE)
        transfer_who = [
            c
            for c in ("floor", "mix_client") + (() if cfg.quick else ("sdk.async",))
            if c in wanted and c not in res.errors
        ]
        if groups & {"upload", "download"}:
            size = cfg.transfer_mib
            with temp_file(size) as up_path:
                kinds = (["upload"] if "upload" in groups else []) + (
                    ["download_file", "download_bytes"] if "download" in groups else []
                )
                for r in range(min(cfg.transfer_rounds, cfg.rounds) if not cfg.quick else 1):
                    log(f"transfers round {r + 1} ({time.perf_counter() - t_start:.0f} s)")
                    for kind in kinds:
                        for name in transfer_who if r % 2 == 0 else transfer_who[::-1]:
                            dest = f"/tmp/mixbench_dl_{os.getpid()}_{name}.bin"
                            argv2 = [
                                "--child",
                                kind,
                                "--contender",
                                name,
                                "--url",
                                server.url,
                                "--sid",
                                sid,
                            ]
                            argv2 += ["--path", up_path if kind == "upload" else dest]
                            argv2 += ["--name", f"blob_{size * MiB}.bin"]
                            try:
                                out = run_child(argv2)
                            except Exception as exc:
                                if not name.startswith("sdk"):
                                    raise
                                res.notes.append(
                                    f"{name} {kind} failed: {str(exc).splitlines()[-1][:200]}"
                                )
                                continue
                            finally:
                                with contextlib.suppress(OSError):
                                    os.unlink(dest)
                            if out["bytes"] != size * MiB:
                                raise RuntimeError(
                                    f"{name} {kind}: moved {out['bytes']} bytes, expected {size * MiB}"
                                )
                            if not out.get("peak_reset"):
                                res.notes.append(
                                    "could not reset VmHWM (/proc/self/clear_refs); RSS growth is vs the earlier peak"
                                )
                            for k in (
                                "rss_growth_mib",
                                "stall_ms",
                                "stall_idle_ms",
                                "stall_cpu_ms",
                                "mib_s",
                                "cpu_ms_mib",
                            ):
                                res.add(f"{kind}.{k}", name, out[k])

        if "import" in groups:
            imp_who = [
                c
                for c in ("floor", "mix_client", "sdk")
                if c == "floor" or c in wanted or (c == "sdk" and "sdk.sync" in wanted)
            ]
            if cfg.quick:
                imp_who = [c for c in imp_who if c != "sdk"]
            with tempfile.TemporaryDirectory(prefix="mixbench_pyc_") as pyc:
                for name in imp_who:  # one untimed run each: byte-compile, warm the page cache
                    import_sample(name, server.url, pyc)
                for r in range(cfg.import_samples):
                    for name in imp_who if r % 2 == 0 else imp_who[::-1]:
                        out = import_sample(name, server.url, pyc)
                        res.add("import.wall_ms", name, out["wall_ms"])
                        res.add("import.cpu_ms", name, out["cpu_ms"])
                if "mix_client" in imp_who:
                    for _ in range(cfg.import_samples):
                        for pyc_dir, key in ((pyc, "import_added"), (None, "import_added_nopyc")):
                            out = import_sample("mix_client", server.url, pyc_dir, IMPORT_ADDED)
                            res.add(f"{key}.wall_ms", "mix_client", out["wall_ms"])
            # the same without byte-code caching (a copied mix_client.py under
            # PYTHONDONTWRITEBYTECODE=1 is compiled on every import; aiohttp is not)
            for r in range(cfg.import_samples):
                for name in ("floor", "mix_client") if r % 2 == 0 else ("mix_client", "floor"):
                    if name in imp_who:
                        out = import_sample(name, server.url, None)
                        res.add("import_nopyc.wall_ms", name, out["wall_ms"])
    finally:
        server.close()

    elapsed = time.perf_counter() - t_start
    table, records = build_table(cfg, res)
    print()
    print(
        f"mix_client benchmark ({'quick' if cfg.quick else 'full'}; {cfg.rounds} rounds, medians; {elapsed:.0f} s)"
    )
    print(f"CPU: {pinning}")
    steal_after = cpu_steal()
    total = steal_after[1] - steal_before[1]
    steal = f"{100 * (steal_after[0] - steal_before[0]) / total:.1f}%" if total else "n/a"
    print(
        f"other load on the machine: {load_before} at start, {load_text()} at end; "
        f"CPU steal (hypervisor) during the run: {steal}"
    )
    print(
        f"python {sys.version.split()[0]}, aiohttp {aiohttp.__version__}, msgspec {msgspec.__version__}"
    )
    print()
    print(table)
    print()
    print(
        "ratio = mix_client / floor; (Nx) = that column / floor; status uses unrounded values. "
        "CPU = client process only."
    )
    for note in res.notes:
        print(f"note: {note}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "config": cfg.__dict__,
                    "pinning": pinning,
                    "load": [load_before, load_text()],
                    "elapsed_s": elapsed,
                    "rows": records,
                    "raw": res.data,
                    "notes": res.notes,
                },
                indent=2,
            )
        )
    return 1 if missing_mix is not None and (who is None or "mix_client" in who) else 0


if __name__ == "__main__":
    sys.exit(main())
