"""Long sessions: per-turn client cost as a session grows, and reads during a permission wait.

Usage::

    python bench/turns.py               # 2,000 tool turns on one session, then a 10 s wait
    python bench/turns.py --quick       # 200 turns and a 3 s wait: a smoke test for CI
    python bench/turns.py --turns 500 --wait 20 --export-mib 50
    python bench/turns.py --json out.json

``mix_fake.MixFake`` runs in a child process (this script with ``--serve``), pinned to
another CPU when there are two, so ``time.process_time()`` here is the client's CPU alone.
The child adds two routes of its own to the fake before starting it: ``GET /_bench/stats``
(the fake's ``hits`` plus the response body bytes of every operation, counted in an
``on_response_prepare`` hook) and ``POST /_bench/seed`` (appends stored rows to a session).
Neither is an operation, so neither is counted.

1. **Per-turn cost along one session.**  ONE default ``AsyncMix`` runs N sequential turns
   ``send_and_wait(sid, "step [tool]")`` on ONE session (each a ``bash`` tool step, so the
   stored messages are read at the end of each turn, and the session gains 4 rows a turn).
   Windows of 10 turns (turns 1-10, ..., N-9..N) report client CPU and wall time per turn,
   requests per turn by operation and the response bytes the client read per turn. The
   headline is the last window against the first.
2. **Reads during a permission wait.**  A new session gets about ``--export-mib`` MiB of
   stored rows (tool turns with large results), then ``send_and_wait(sid, "write
   [permission]", on_permission=...)`` runs; the callback grants the permission ``--wait``
   seconds later. Reported: ``exportSession`` and ``getSessionMessages`` calls and MiB
   read between the ``permission`` event and the grant, and over the whole turn.

Exit status: 0 when every turn returned its expected answer (whatever the figures), 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

MiB = 1 << 20
KiB = 1 << 10
WINDOW = 10
READ_OPS = ("exportSession", "getSessionMessages")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- server child


def serve(port: int, cpu: int | None) -> None:
    """The child: a MixFake with a stats route and a seed route, until killed."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    from aiohttp import web

    import mix_fake

    dumps = getattr(mix_fake, "_dumps", None) or (
        lambda obj: json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    )
    fake = mix_fake.MixFake(port=port)
    sent: dict[str, int] = {}  # operationId -> response body bytes

    async def count_bytes(request: web.Request, response: web.StreamResponse) -> None:
        route = request.match_info.route
        op = route.name if route.resource is not None else None
        if not op:
            return
        body = getattr(response, "body", None)
        n = len(body) if isinstance(body, (bytes, bytearray)) else (response.content_length or 0)
        sent[op] = sent.get(op, 0) + n

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"hits": dict(fake.hits), "bytes": dict(sent)})

    async def seed(request: web.Request) -> web.Response:
        """Append tool turns (user, assistant tool_use with a big result, tool, assistant
        end_turn) to a session until its export is about ``mib`` MiB."""
        body = await request.json()
        session = fake._sessions[body["sid"]]
        target = int(float(body["mib"]) * MiB)
        result_size = int(body.get("result_bytes", 16 * KiB))
        Message = mix_fake._Message
        now = time.time() - 86400
        i = 0
        chunk = ("lorem ipsum dolor sit amet " * (result_size // 27 + 1))[:result_size]

        def add_turn(i: int) -> None:
            t = now + i
            sid = session.id
            ident = f"{i:06d}"
            session.messages.append(Message(f"msg_u{ident}", sid, "user", f"read file {i}", t))
            call = {
                "id": f"toolu_{ident}",
                "name": "read_text",
                "input": json.dumps({"file_path": f"/tmp/mix/f{i}.txt"}),
                "type": "tool_use",
                "finished": True,
                "result": chunk,
            }
            session.messages.append(
                Message(
                    f"msg_a{ident}",
                    sid,
                    "assistant",
                    "",
                    t,
                    tool_calls=[call],
                    finish_reason="tool_use",
                )
            )
            session.messages.append(Message(f"msg_t{ident}", sid, "tool", chunk, t))
            session.messages.append(
                Message(
                    f"msg_r{ident}",
                    sid,
                    "assistant",
                    f"The file {i} says lorem ipsum.",
                    t,
                    input_tokens=100,
                    output_tokens=10,
                    finish_reason="end_turn",
                )
            )

        # size one turn, then add as many as fit
        add_turn(0)
        per_turn = len(dumps(session.export()).encode())
        turns = max(1, target // max(per_turn, 1))
        for i in range(1, turns):
            add_turn(i)
        session.updated_at = now + turns
        export_bytes = len(dumps(session.export()).encode())
        messages_bytes = len(dumps([m.backend() for m in session.messages]).encode())
        return web.json_response(
            {
                "rows": len(session.messages),
                "export_bytes": export_bytes,
                "messages_bytes": messages_bytes,
            }
        )

    fake.app.router.add_get("/_bench/stats", stats)
    fake.app.router.add_post("/_bench/seed", seed)
    fake.app.on_response_prepare.append(count_bytes)

    async def main() -> None:
        url = await fake.start()
        print(f"READY {url}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await fake.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())


class Server:
    def __init__(self) -> None:
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        server_cpu = cpus[-1] if len(cpus) >= 2 else None
        cmd = [sys.executable, str(Path(__file__).resolve()), "--serve", "--port", "0"]
        if server_cpu is not None:
            cmd += ["--cpu", str(server_cpu)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        match = re.search(r"READY (http://[\d.]+:\d+)", line)
        if match is None:
            self.proc.kill()
            raise SystemExit(f"mix_fake child did not start: {line!r}")
        self.url = match.group(1)
        if server_cpu is not None:
            os.sched_setaffinity(0, {cpus[0]})
            self.pinning = f"client pinned to CPU {cpus[0]}, mix_fake to CPU {server_cpu}"
        else:
            self.pinning = "no CPU pinning (one CPU): client and mix_fake share it"

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# --------------------------------------------------------------------------- measurement


class Stats:
    """Snapshots of the child's counters, read on a connection of their own."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.s: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Stats:
        self.s = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.s is not None
        await self.s.close()

    async def get(self) -> dict[str, dict[str, int]]:
        assert self.s is not None
        async with self.s.get(self.url + "/_bench/stats") as r:
            r.raise_for_status()
            return await r.json()  # type: ignore[no-any-return]

    async def seed(self, sid: str, mib: float) -> dict[str, int]:
        assert self.s is not None
        async with self.s.post(self.url + "/_bench/seed", json={"sid": sid, "mib": mib}) as r:
            r.raise_for_status()
            return await r.json()  # type: ignore[no-any-return]


def delta(after: dict[str, dict[str, int]], before: dict[str, dict[str, int]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("hits", "bytes"):
        a, b = after[key], before[key]
        out[key] = {k: a[k] - b.get(k, 0) for k in a if a[k] - b.get(k, 0)}
    return out


def window_ends(turns: int) -> list[int]:
    ends = [e for e in (10, 100, 500, 1000) if e < turns] + [turns]
    return sorted({max(e, WINDOW) for e in ends})


async def long_session(url: str, stats: Stats, turns: int) -> dict[str, Any]:
    from mix_client import AsyncMix

    ends = window_ends(turns)
    windows: list[dict[str, Any]] = []
    bad: list[str] = []
    async with AsyncMix(url) as mix:  # the defaults, like an application would
        await mix.health_check()
        session = await mix.create_session(title="long", browser_mode="local-browser-service")
        sid = session.id
        t_phase = time.perf_counter()
        done = 0
        for end in ends:
            start = end - WINDOW + 1
            while done < start - 1:  # the turns between windows, not measured
                turn = await mix.send_and_wait(sid, "step [tool]")
                done += 1
                if turn.text != "Echo: step [tool]" or len(turn.tool_calls) != 1:
                    bad.append(f"turn {done}: {turn.text!r}, {len(turn.tool_calls)} tool calls")
            gc.collect()
            before = await stats.get()
            cpu: list[float] = []
            wall: list[float] = []
            for _ in range(WINDOW):
                c0, w0 = time.process_time(), time.perf_counter()
                turn = await mix.send_and_wait(sid, "step [tool]")
                wall.append(time.perf_counter() - w0)
                cpu.append(time.process_time() - c0)
                done += 1
                if turn.text != "Echo: step [tool]" or len(turn.tool_calls) != 1:
                    bad.append(f"turn {done}: {turn.text!r}, {len(turn.tool_calls)} tool calls")
            d = delta(await stats.get(), before)
            windows.append(
                {
                    "first": start,
                    "last": end,
                    "cpu_ms": 1000 * sum(cpu) / WINDOW,
                    "wall_ms": 1000 * sum(wall) / WINDOW,
                    "cpu_ms_max": 1000 * max(cpu),
                    "requests": {k: v / WINDOW for k, v in sorted(d["hits"].items())},
                    "read_kib": sum(d["bytes"].values()) / WINDOW / KiB,
                    "read_by_op_kib": {k: v / WINDOW / KiB for k, v in sorted(d["bytes"].items())},
                }
            )
            log(
                f"turns {start}-{end}: {windows[-1]['cpu_ms']:.2f} ms CPU/turn "
                f"({time.perf_counter() - t_phase:.0f} s)"
            )
        phase_s = time.perf_counter() - t_phase
        stored = len(await mix.get_session_messages(sid))
    return {"windows": windows, "bad": bad, "phase_s": phase_s, "rows": stored}


async def permission_wait(url: str, stats: Stats, wait: float, mib: float) -> dict[str, Any]:
    from mix_client import AsyncMix

    async with AsyncMix(url) as mix:
        await mix.health_check()
        session = await mix.create_session(title="big", browser_mode="local-browser-service")
        sid = session.id
        seeded = await stats.seed(sid, mib)
        snaps: dict[str, Any] = {}
        grants: list[asyncio.Task[None]] = []

        async def grant_later(pid: str) -> None:
            await asyncio.sleep(wait)
            snaps["granted"] = await stats.get()
            snaps["granted_at"] = time.perf_counter()
            await mix.grant_permission(pid)

        async def on_permission(event: Any) -> None:
            snaps["asked"] = await stats.get()
            snaps["asked_at"] = time.perf_counter()
            grants.append(asyncio.create_task(grant_later(event.data.id)))

        start = await stats.get()
        t0 = time.perf_counter()
        turn = await mix.send_and_wait(sid, "write [permission]", on_permission=on_permission)
        t1 = time.perf_counter()
        end = await stats.get()
        for task in grants:
            await task
    ok = (
        turn.text == "Echo: write [permission]"
        and len(turn.permissions) == 1
        and "asked" in snaps
        and "granted" in snaps
    )
    during = delta(snaps["granted"], snaps["asked"]) if ok else {"hits": {}, "bytes": {}}
    whole = delta(end, start)
    return {
        "ok": ok,
        "text": turn.text,
        "seeded": seeded,
        "waited_s": snaps["granted_at"] - snaps["asked_at"] if ok else float("nan"),
        "turn_s": t1 - t0,
        "during": during,
        "whole": whole,
    }


async def run(url: str, turns: int, wait: float, mib: float) -> dict[str, Any]:
    async with Stats(url) as stats:
        long = await long_session(url, stats, turns)
        log(f"permission wait: seeding {mib:g} MiB, waiting {wait:g} s")
        perm = await permission_wait(url, stats, wait, mib)
    return {"long": long, "perm": perm}


# --------------------------------------------------------------------------- report


def fmt_requests(req: dict[str, float]) -> str:
    short = {
        "sendMessage": "send",
        "getSessionMessages": "messages",
        "exportSession": "export",
        "streamEvents": "stream",
    }
    return ", ".join(f"{short.get(k, k)} {v:g}" for k, v in req.items()) or "-"


def table(header: list[str], rows: list[list[str]], right: set[int]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    out = [" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    out.append("-+-".join("-" * w for w in widths))
    for r in rows:
        out.append(
            " | ".join(
                c.rjust(w) if i in right else c.ljust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    return "\n".join(out)


def report(r: dict[str, Any], args: argparse.Namespace, pinning: str, elapsed: float) -> None:
    import mix_client

    long, perm = r["long"], r["perm"]
    ws = long["windows"]
    first, last = ws[0], ws[-1]
    print()
    print(
        f"mix_client long-session benchmark ({'quick' if args.quick else 'full'}; "
        f"{args.turns} tool turns on one session, {args.wait:g} s permission wait; {elapsed:.0f} s)"
    )
    print(f"{pinning}; mix_fake in another process (bench/turns.py --serve)")
    print(
        f"python {sys.version.split()[0]}, aiohttp {aiohttp.__version__}, "
        f"mix_client {getattr(mix_client, '__version__', '?')}; "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print()
    print(f'1. send_and_wait(sid, "step [tool]"), sequential, averages over {WINDOW} turns')
    rows = [
        [
            f"{w['first']}-{w['last']}",
            f"{w['cpu_ms']:.2f}",
            f"{w['cpu_ms_max']:.2f}",
            f"{w['wall_ms']:.2f}",
            f"{w['read_kib']:.1f}",
            fmt_requests(w["requests"]),
        ]
        for w in ws
    ]
    rows.append(
        [
            f"ratio {last['last']} / {first['last']}",
            f"{last['cpu_ms'] / first['cpu_ms']:.2f}x",
            "",
            f"{last['wall_ms'] / first['wall_ms']:.2f}x",
            f"{last['read_kib'] / first['read_kib']:.1f}x" if first["read_kib"] else "-",
            "",
        ]
    )
    print(
        table(
            [
                "turns",
                "CPU ms/turn",
                "max",
                "wall ms/turn",
                "KiB read/turn",
                "requests/turn",
            ],
            rows,
            {1, 2, 3, 4},
        )
    )
    print(
        f"({long['rows']} stored rows at the end; all {args.turns} turns in "
        f"{long['phase_s']:.1f} s; 'KiB read' = response bodies of every operation except "
        "the event stream)"
    )
    print()
    seeded = perm["seeded"]
    print(
        f'2. send_and_wait(sid, "write [permission]") on a session of {seeded["rows"]} stored rows '
        f"(export {seeded['export_bytes'] / MiB:.1f} MiB, messages "
        f"{seeded['messages_bytes'] / MiB:.1f} MiB); granted after {perm['waited_s']:.1f} s"
    )
    rows = []
    for label, d in (("during the wait", perm["during"]), ("whole turn", perm["whole"])):
        rows.append(
            [
                label,
                str(d["hits"].get("exportSession", 0)),
                str(d["hits"].get("getSessionMessages", 0)),
                f"{sum(d['bytes'].get(op, 0) for op in READ_OPS) / MiB:.2f}",
                f"{sum(d['bytes'].values()) / MiB:.2f}",
                fmt_requests(dict(sorted(d["hits"].items()))),
            ]
        )
    print(
        table(
            ["", "exports", "messages reads", "MiB read (both)", "MiB read (all)", "requests"],
            rows,
            {1, 2, 3, 4},
        )
    )
    print(f"(turn took {perm['turn_s']:.1f} s, answer {perm['text']!r})")
    for line in long["bad"][:5]:
        print(f"error: {line}")
    if not perm["ok"]:
        print("error: the permission turn did not end as expected")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="200 turns, 3 s wait (CI smoke test)")
    ap.add_argument("--turns", type=int, help="tool turns on the long session (2000)")
    ap.add_argument("--wait", type=float, help="seconds before the permission is granted (10)")
    ap.add_argument("--export-mib", type=float, help="stored rows of the big session (10 MiB)")
    ap.add_argument("--json", metavar="PATH", help="write all results as JSON")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--cpu", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        serve(args.port, args.cpu)
        return 0
    args.turns = args.turns or (200 if args.quick else 2000)
    args.wait = args.wait if args.wait is not None else (3.0 if args.quick else 10.0)
    args.export_mib = args.export_mib or 10.0
    if args.turns < WINDOW:
        raise SystemExit(f"--turns must be at least {WINDOW}")
    t0 = time.perf_counter()
    server = Server()
    log(f"{server.pinning}; mix_fake at {server.url}")
    try:
        r = asyncio.run(run(server.url, args.turns, args.wait, args.export_mib))
    finally:
        server.close()
    report(r, args, server.pinning, time.perf_counter() - t0)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), **r}, indent=2, default=str))
    return 0 if not r["long"]["bad"] and r["perm"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
