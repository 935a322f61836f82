"""Many sessions on one client: N concurrent turns on one default ``AsyncMix``.

Usage::

    python bench/scale.py               # 1,000 concurrent turns
    python bench/scale.py --quick       # 50 turns: a smoke test for CI
    python bench/scale.py --turns 300 --event-delay 0.5

``mix_fake.py`` runs in another process (pinned to another CPU when there are two).
Each turn is ``send_and_wait`` on its own session, all started at once on ONE
``AsyncMix()`` with default settings. While every turn's stream is open (the fake pauses
``--event-delay`` seconds after each event, so a turn lasts several seconds), the run
measures the latency of a plain call (``health_check``, sequential, spread over about three
event delays so that it meets the bursts of events) and compares it with the same calls,
paced the same way, on the idle client in the same run. Reported:

* turns completed, with the expected answer (all of them, or the run fails);
* client RSS growth per open stream (all streams open, against the idle client);
* client CPU per turn (``time.process_time()`` over the whole turn phase / turns);
* ``health_check`` latency median and p95: idle vs with every stream open.

Exit status: 0 when every turn completed with its answer (targets met or not), 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mix_client import AsyncMix, ConnectedEvent  # noqa: E402

TARGET_RSS_KIB = 32.0
TARGET_LATENCY_RATIO = 2.0


def rss_kib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return float(line.split()[1])
    return float("nan")


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        new = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


def start_server(event_delay: float) -> tuple[subprocess.Popen[str], str, str]:
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    server_cpu = cpus[-1] if len(cpus) >= 2 else None

    def pin() -> None:
        if server_cpu is not None:
            os.sched_setaffinity(0, {server_cpu})
        raise_fd_limit(65536)

    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "mix_fake.py"),
            "--port",
            "0",
            "--event-delay",
            str(event_delay),
        ],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=pin,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"(http://[\d.]+:\d+)", line)
    if match is None:
        proc.kill()
        raise SystemExit(f"mix_fake did not start: {line!r}")
    if server_cpu is not None:
        os.sched_setaffinity(0, {cpus[0]})
        pinning = f"client pinned to CPU {cpus[0]}, server to CPU {server_cpu}"
    else:
        pinning = "no CPU pinning (one CPU): client and server share it"
    return proc, match.group(1), pinning


async def latency(mix: AsyncMix, calls: int, every: float = 0.0) -> list[float]:
    """``calls`` sequential health checks, one every ``every`` seconds (0: back to back)."""
    out = []
    for _ in range(calls):
        started = time.perf_counter()
        await mix.health_check()
        took = time.perf_counter() - started
        out.append(took)
        if every > took:
            await asyncio.sleep(every - took)
    return out


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]


async def run(url: str, turns: int, samples: int, every: float) -> dict[str, Any]:
    async with AsyncMix(url) as mix:  # the defaults: no options, no session of ours
        # Warm up, then the idle baseline, paced like the measurement under load.
        await latency(mix, 20)
        idle = await latency(mix, samples, every)

        sem = asyncio.Semaphore(100)

        async def create(i: int) -> str:
            async with sem:
                session = await mix.create_session(
                    title=f"scale {i}", browser_mode="local-browser-service"
                )
                return session.id

        ids = await asyncio.gather(*(create(i) for i in range(turns)))
        await latency(mix, 5)
        rss_before = rss_kib()

        connected = 0
        all_open = asyncio.Event()

        def on_event(event: Any) -> None:
            nonlocal connected
            if isinstance(event, ConnectedEvent):
                connected += 1
                if connected == turns:
                    all_open.set()

        done = 0

        async def turn(i: int, sid: str) -> bool:
            nonlocal done
            result = await mix.send_and_wait(sid, f"question {i}", on_event=on_event)
            done += 1
            return result.text == f"Echo: question {i}"

        cpu0 = time.process_time()
        wall0 = time.perf_counter()
        tasks = [asyncio.create_task(turn(i, sid)) for i, sid in enumerate(ids)]
        open_wait = asyncio.create_task(all_open.wait())
        every_turn = asyncio.gather(*tasks, return_exceptions=True)
        # Every stream open, or (when some turns failed before connecting) every turn over.
        await asyncio.wait(
            [open_wait, every_turn], return_when=asyncio.FIRST_COMPLETED, timeout=600
        )
        open_wait.cancel()
        opened_in = time.perf_counter() - wall0
        done_before = done
        rss_open = rss_kib()
        busy = await latency(mix, samples, every)
        done_after = done
        rss_open = max(rss_open, rss_kib())
        results = await every_turn
        wall = time.perf_counter() - wall0
        cpu = time.process_time() - cpu0
        ok = sum(1 for r in results if r is True)
        errors = [r for r in results if isinstance(r, BaseException)]
    return {
        "turns": turns,
        "completed": ok,
        "errors": errors,
        "opened_in": opened_in,
        "open_during_measure": (turns - done_before, turns - done_after),
        "rss_per_stream_kib": (rss_open - rss_before) / turns,
        "rss_before_mib": rss_before / 1024,
        "rss_open_mib": rss_open / 1024,
        "cpu_per_turn_ms": cpu / turns * 1000,
        "wall": wall,
        "idle_median_ms": statistics.median(idle) * 1000,
        "idle_p95_ms": p95(idle) * 1000,
        "busy_median_ms": statistics.median(busy) * 1000,
        "busy_p95_ms": p95(busy) * 1000,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="50 turns (CI smoke test)")
    parser.add_argument(
        "--event-delay", type=float, default=None, help="fake's pause after each event (s)"
    )
    parser.add_argument("--samples", type=int, default=None, help="health_check calls per phase")
    args = parser.parse_args()
    turns = 50 if args.quick else args.turns
    event_delay = args.event_delay if args.event_delay is not None else (0.3 if args.quick else 1.0)
    samples = args.samples or (20 if args.quick else 100)
    raise_fd_limit(turns * 2 + 256)
    proc, url, pinning = start_server(event_delay)
    try:
        # Spread the samples over about three event delays: they see the event bursts.
        r = asyncio.run(run(url, turns, samples, 3 * event_delay / samples))
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    ratio = r["busy_median_ms"] / r["idle_median_ms"]
    rss_ok = r["rss_per_stream_kib"] <= TARGET_RSS_KIB
    lat_ok = ratio <= TARGET_LATENCY_RATIO
    print(f"mix_client scale run: {turns} concurrent turns on one default AsyncMix")
    print(f"{pinning}; mix_fake in another process, --event-delay {event_delay}")
    print(f"python {sys.version.split()[0]}; load average {os.getloadavg()[0]:.2f}")
    print()
    rows = [
        (
            "turns completed with their answer",
            f"{r['completed']} / {turns}",
            "all",
            r["completed"] == turns,
        ),
        ("all streams open after", f"{r['opened_in']:.2f} s", "", None),
        (
            "streams open while measuring",
            "{} -> {}".format(*r["open_during_measure"]),
            f"{turns}",
            None,
        ),
        (
            "client RSS per open stream",
            f"{r['rss_per_stream_kib']:.1f} KiB",
            f"<= {TARGET_RSS_KIB:.0f} KiB",
            rss_ok,
        ),
        (
            "client RSS idle -> all open",
            f"{r['rss_before_mib']:.1f} -> {r['rss_open_mib']:.1f} MiB",
            "",
            None,
        ),
        ("client CPU per turn", f"{r['cpu_per_turn_ms']:.2f} ms", "", None),
        (
            "health_check median: idle / streams open",
            f"{r['idle_median_ms']:.2f} / {r['busy_median_ms']:.2f} ms ({ratio:.2f}x)",
            f"<= {TARGET_LATENCY_RATIO:.0f}x",
            lat_ok,
        ),
        (
            "health_check p95: idle / streams open",
            f"{r['idle_p95_ms']:.2f} / {r['busy_p95_ms']:.2f} ms",
            "",
            None,
        ),
        ("whole turn phase (wall)", f"{r['wall']:.1f} s", "", None),
    ]
    width = max(len(row[0]) for row in rows)
    for name, value, target, status in rows:
        mark = "" if status is None else ("PASS" if status else "FAIL")
        print(f"{name:<{width}}  {value:<32} {target:<10} {mark}")
    for error in r["errors"][:5]:
        print(f"error: {type(error).__name__}: {error}")
    if len(r["errors"]) > 5:
        print(f"... and {len(r['errors']) - 5} more errors")
    return 0 if r["completed"] == turns else 1


if __name__ == "__main__":
    sys.exit(main())
