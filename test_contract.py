"""Contract tests: drive every ``AsyncMix`` operation against a Prism mock of the spec.

Prism (``@stoplight/prism-cli``, pinned in package.json) serves
``contract/mix-openapi-merged.yaml`` -- the current spec plus the 0.2-only
operations -- in dynamic mode: it validates every request against the spec and
answers with random, schema-valid data. Between the client and Prism sits a small
recording proxy (run in a background thread) that

* records each exchange, so a test can compare what the client decoded with the
  raw bytes it received, and check what it sent (path segments, query, JSON body,
  multipart parts);
* can rewrite 2xx JSON bodies before the client sees them: ``strip`` removes every
  optional property the spec declares, ``null`` sets optional nullable ones to
  ``null`` -- Prism's dynamic mode always fills optional fields otherwise;
* keeps Prism alive: it refuses to forward a path with a malformed ``%`` escape
  and gives multipart parts a plain file name before forwarding (Prism's process
  dies on either; the original request is what the tests check).

A request that breaks the spec comes back from Prism with an ``sl-violations``
header (when the operation documents a 400) or as a 422 problem document; both
fail the tests.

Node.js and npm are required: without them the tests fail, unless
``MIX_SKIP_CONTRACT=1`` is set to skip them explicitly.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from _ops import (
    CALLS,
    OPERATIONS,
    SPEC,
    Exchange,
    _go_disposition_params,
    _plain,
    assert_decoded,
    check_request,
    check_result,
    deref,
    match_operation,
    parse_multipart,
)

ROOT = Path(__file__).resolve().parent
CONTRACT_DIR = ROOT / "contract"
MERGED_SPEC = CONTRACT_DIR / "mix-openapi-merged.yaml"
PACKAGE_JSON = ROOT / "package.json"
PRISM_VERSION = json.loads(PACKAGE_JSON.read_text(encoding="utf-8"))["devDependencies"][
    "@stoplight/prism-cli"
]
PRISM_BIN = ROOT / "node_modules" / ".bin" / "prism"
MODE_HEADER = "X-Contract-Mode"
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

# How many differently-awkward calls each operation gets.
ITERATIONS = 15
STRIP_ITERATIONS = 5
NULL_ITERATIONS = 3

# Operations that cannot be exercised for success on Prism. streamEvents answers
# text/event-stream, which Prism cannot mock (it answers 500); the stream is
# covered by the fake-server and real-server tests. Its documented error statuses
# are JSON, so test_error_status still forces them here.
NOT_ON_PRISM = {"streamEvents": "text/event-stream is not mockable by Prism"}
ON_PRISM = sorted(set(CALLS) - set(NOT_ON_PRISM))

pytestmark = pytest.mark.usefixtures("upload_dir")  # the call table's files go there

ERROR_CLASSES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    404: "NotFoundError",
    408: "RequestTimeoutError",
    413: "PayloadTooLargeError",
    422: "UnprocessableEntityError",
    429: "RateLimitError",
    500: "InternalServerError",
}


def _is_nullable(schema: dict[str, Any]) -> bool:
    t = schema.get("type")
    return bool(schema.get("nullable")) or (isinstance(t, list) and "null" in t)


def rewrite_optional(node: Any, schema: Any, mode: str) -> Any:
    """Drop (``strip``) or null (``null``) the optional properties the spec declares."""
    schema = deref(schema)
    if isinstance(node, dict):
        props = schema.get("properties")
        if isinstance(props, dict):
            required = set(schema.get("required", []))
            out: dict[str, Any] = {}
            for key, value in node.items():
                if key not in props:
                    out[key] = value  # undeclared extra: leave it, clients must ignore it
                    continue
                sub = deref(props[key])
                if key not in required:
                    if mode == "strip":
                        continue
                    if mode == "null" and _is_nullable(sub):
                        out[key] = None
                        continue
                out[key] = rewrite_optional(value, sub, mode)
            return out
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            return {k: rewrite_optional(v, extra, mode) for k, v in node.items()}
        return node
    if isinstance(node, list) and "items" in schema:
        return [rewrite_optional(v, schema["items"], mode) for v in node]
    return node


# ------------------------------------------------------------------ recording proxy


_MALFORMED_PCT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_HOP_HEADERS = {
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "accept-encoding",
    "content-encoding",
}


_SAFE_TOKEN = re.compile(r"[A-Za-z0-9_.-]+")


def prism_safe_multipart(ctype: str, body: bytes) -> bytes:
    """The same multipart body with file names Prism's parser survives.

    Prism splits Content-Disposition on ';' and '=' and JSON-parses the file name,
    so a name with ';', '=', or an RFC 5987 ``filename*=`` kills the process. File
    names are not validated by Prism anyway; the recorded original is what the
    tests check.
    """
    boundary = re.search(r'boundary="?([^";]+)"?', ctype)
    if boundary is None:
        raise ValueError(f"no boundary in {ctype!r}")
    delim = b"--" + boundary.group(1).encode()
    out = []
    for headers, content in parse_multipart(ctype, body):
        disp = _go_disposition_params(headers.get("content-disposition", ""))
        name = disp.get("name", "")
        if not _SAFE_TOKEN.fullmatch(name):
            name = "unnamed"
        lines = [f'Content-Disposition: form-data; name="{name}"']
        if "filename" in disp:
            lines[0] += '; filename="upload.bin"'
            part_type = headers.get("content-type") or "application/octet-stream"
            lines.append(f"Content-Type: {part_type}")
        out.append(delim + b"\r\n" + "\r\n".join(lines).encode() + b"\r\n\r\n" + content)
    return b"\r\n".join(out) + b"\r\n" + delim + b"--\r\n"


class RecordingProxy:
    """HTTP proxy in a background thread: records, forwards to Prism, rewrites."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.exchanges: list[Exchange] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._thread = threading.Thread(target=self._run, name="contract-proxy", daemon=True)
        self._error: BaseException | None = None
        self.url = ""

    # lifecycle
    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(30) or self._error:
            raise RuntimeError(f"contract proxy did not start: {self._error!r}")

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return
        fut = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
        with contextlib.suppress(Exception):
            fut.result(15)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(15)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._startup())
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        loop.run_forever()
        loop.close()

    async def _startup(self) -> None:
        self._session = aiohttp.ClientSession(
            auto_decompress=False, timeout=aiohttp.ClientTimeout(total=60)
        )
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def _shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    # recording
    def clear(self) -> None:
        with self._lock:
            self.exchanges.clear()

    def take(self) -> list[Exchange]:
        with self._lock:
            out = list(self.exchanges)
            self.exchanges.clear()
        return out

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw_path = request.raw_path
        body = await request.read()
        mode = request.headers.get(MODE_HEADER, "pass")
        sent_headers = {k: v for k, v in request.headers.items()}
        path_only = raw_path.split("?", 1)[0]
        matched = match_operation(request.method, path_only)
        op, params = (matched[0], matched[1]) if matched else (None, {})

        ctype_in = request.headers.get("Content-Type", "")
        refusal = None
        body_fwd = body
        if _MALFORMED_PCT.search(raw_path):
            refusal = f"malformed percent-escape in {raw_path!r}"
        elif ctype_in.startswith("multipart/form-data"):
            try:
                body_fwd = prism_safe_multipart(ctype_in, body)
            except (AssertionError, ValueError, UnicodeDecodeError) as exc:
                refusal = f"malformed multipart body: {exc}"
        if refusal is not None:
            # Prism dies on these (URIError, or JSON.parse in its multipart parser):
            # fail the request here instead of forwarding it.
            err = {
                "error": {
                    "code": 400,
                    "message": f"contract proxy: {refusal}",
                    "type": "bad_request",
                }
            }
            status = 400
            resp_headers = {
                "Content-Type": "application/json",
                "sl-violations": f"{refusal} (not forwarded to Prism)",
            }
            upstream_body = out_body = json.dumps(err).encode()
        else:
            fwd = {
                k: v
                for k, v in request.headers.items()
                if k.lower() not in _HOP_HEADERS and k.lower() != MODE_HEADER.lower()
            }
            if op is not None and op.op_id in NOT_ON_PRISM:
                # Prism cannot render text/event-stream, and with only that in Accept
                # it fails even the stream's JSON error responses (500
                # NO_COMPLEX_OBJECT_TEXT); widen Accept so it can pick the JSON.
                accept = next((v for k, v in fwd.items() if k.lower() == "accept"), "")
                fwd = {k: v for k, v in fwd.items() if k.lower() != "accept"}
                fwd["Accept"] = f"{accept}, application/json" if accept else "application/json"
            assert self._session is not None
            async with self._session.request(
                request.method,
                URL(self.upstream + raw_path, encoded=True),
                headers=fwd,
                data=body_fwd if body_fwd else None,
                allow_redirects=False,
            ) as resp:
                upstream_body = await resp.read()
                status = resp.status
                resp_headers = {
                    k: v for k, v in resp.headers.items() if k.lower() not in _HOP_HEADERS
                }
            out_body = upstream_body
            ctype = resp_headers.get("Content-Type", resp_headers.get("content-type", ""))
            if mode in ("strip", "null") and op is not None and "json" in ctype:
                schema = op.response_schema(status)
                if schema is not None and upstream_body:
                    rewritten = rewrite_optional(json.loads(upstream_body), schema, mode)
                    out_body = json.dumps(rewritten, ensure_ascii=False).encode()
        exchange = Exchange(
            method=request.method,
            raw_path=raw_path,
            request_headers=sent_headers,
            request_body=body,
            status=status,
            response_headers=resp_headers,
            upstream_body=upstream_body,
            body=out_body,
            op_id=op.op_id if op else None,
            path_params=params,
        )
        with self._lock:
            self.exchanges.append(exchange)
        return web.Response(status=status, body=out_body, headers=resp_headers)


# --------------------------------------------------------------------- Prism server


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _ensure_prism() -> Path:
    """Install Prism with ``npm ci`` when needed. Missing Node.js/npm is a failure."""
    if not PRISM_BIN.exists():
        npm = shutil.which("npm")
        if shutil.which("node") is None or npm is None:
            pytest.fail(
                "contract tests need Node.js (20+) and npm to run the Prism mock server, "
                "and neither node_modules/.bin/prism nor node/npm was found. Install Node.js "
                "and npm (Debian: apt-get install nodejs npm), or set MIX_SKIP_CONTRACT=1 to "
                "skip these tests on purpose.",
                pytrace=False,
            )
        proc = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        if proc.returncode != 0 or not PRISM_BIN.exists():
            pytest.fail(
                f"`npm ci` failed (exit {proc.returncode}); cannot install Prism:\n"
                f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}",
                pytrace=False,
            )
    version = subprocess.run(
        [str(PRISM_BIN), "--version"], capture_output=True, text=True, timeout=120, check=False
    ).stdout.strip()
    if version != PRISM_VERSION:
        pytest.fail(
            f"node_modules has Prism {version!r}, package.json pins {PRISM_VERSION}: run `npm ci`",
            pytrace=False,
        )
    return PRISM_BIN


@dataclasses.dataclass
class PrismServer:
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-n:]
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None


def _start_prism(log_path: Path, *, dynamic: bool) -> PrismServer:
    port = _free_port()
    cmd = [str(PRISM_BIN), "mock", "-h", "127.0.0.1", "-p", str(port), str(MERGED_SPEC)]
    if dynamic:
        cmd.insert(2, "-d")
    log = log_path.open("wb")
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    log.close()
    server = PrismServer(f"http://127.0.0.1:{port}", proc, log_path)
    deadline = time.monotonic() + 90
    while True:
        if not server.alive():
            pytest.fail(f"Prism exited with {proc.returncode}:\n{server.log_tail()}", pytrace=False)
        try:
            with urllib.request.urlopen(server.url + "/health", timeout=2) as resp:
                if resp.status == 200:
                    return server
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            _stop_prism(server)
            pytest.fail(f"Prism did not answer within 90 s:\n{server.log_tail()}", pytrace=False)
        time.sleep(0.25)


def _stop_prism(server: PrismServer) -> None:
    if server.alive():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.proc.pid, signal.SIGTERM)
        try:
            server.proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.proc.pid, signal.SIGKILL)
            server.proc.wait(10)


@dataclasses.dataclass
class Contract:
    prism: PrismServer
    proxy: RecordingProxy

    @property
    def url(self) -> str:
        return self.proxy.url

    def check_prism_alive(self) -> None:
        assert self.prism.alive(), f"Prism died:\n{self.prism.log_tail()}"


@pytest.fixture(scope="session")
def prism(tmp_path_factory: pytest.TempPathFactory) -> Any:
    if os.environ.get("MIX_SKIP_CONTRACT") == "1":
        pytest.skip("MIX_SKIP_CONTRACT=1: contract tests skipped on request")
    _ensure_prism()
    server = _start_prism(tmp_path_factory.mktemp("prism") / "prism.log", dynamic=True)
    try:
        yield server
    finally:
        _stop_prism(server)


@pytest.fixture(scope="session")
def contract(prism: PrismServer) -> Any:
    proxy = RecordingProxy(prism.url)
    proxy.start()
    try:
        yield Contract(prism, proxy)
    finally:
        proxy.stop()


# ------------------------------------------------------------------ the client


def _client_module() -> Any:
    import mix_client  # imported lazily so that infrastructure tests run without it

    return mix_client


@pytest.fixture
async def mix(contract: Contract) -> AsyncIterator[Any]:
    mc = _client_module()
    async with mc.AsyncMix(contract.url) as client:
        yield client


async def run_call(
    contract: Contract, client: Any, op_id: str, i: int, mode: str = "pass", prefer: str = ""
) -> None:
    contract.check_prism_alive()
    op = OPERATIONS[op_id]
    call = CALLS[op_id](i)
    headers = {MODE_HEADER: mode}
    if prefer:
        headers["Prefer"] = prefer
    contract.proxy.clear()
    try:
        result = await asyncio.wait_for(call.invoke(client, headers=headers), 30)
    except Exception as exc:
        sent = "\n".join(ex.describe() for ex in contract.proxy.take())
        contract.check_prism_alive()
        raise AssertionError(
            f"{op_id} iteration {i} ({mode}) raised {exc!r}\n"
            f"exchanges:\n{sent or '(none reached the proxy)'}"
        ) from exc
    exchanges = contract.proxy.take()
    assert len(exchanges) == 1, f"{op_id}: expected one request, got:\n" + "\n".join(
        e.describe() for e in exchanges
    )
    ex = exchanges[0]
    violation = ex.violations()
    assert violation is None, (
        f"{op_id}: Prism reports a spec violation: {violation}\n{ex.describe()}"
    )
    check_request(call, op, ex)
    check_result(call, op, ex, result)


# --------------------------------------------------------------------- tests


def test_merged_spec_is_fresh() -> None:
    spec_path = CONTRACT_DIR / "merge_spec.py"
    mod_spec = importlib.util.spec_from_file_location("contract_merge_spec", spec_path)
    assert mod_spec and mod_spec.loader
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    assert MERGED_SPEC.read_text(encoding="utf-8") == module.build(), (
        "contract/mix-openapi-merged.yaml is stale: run python contract/merge_spec.py"
    )
    assert len(OPERATIONS) == 42, sorted(OPERATIONS)


def test_prism_pinned_exactly() -> None:
    package = json.loads(PACKAGE_JSON.read_text(encoding="utf-8"))
    assert package.get("private") is True
    for name, version in package["devDependencies"].items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"{name} is not pinned: {version}"
    lock = json.loads((ROOT / "package-lock.json").read_text(encoding="utf-8"))
    locked = lock["packages"]["node_modules/@stoplight/prism-cli"]["version"]
    assert locked == PRISM_VERSION, f"package-lock.json has Prism {locked}, run npm install"


async def test_harness_detects_violations(contract: Contract) -> None:
    """The checks are not vacuous: Prism and the proxy flag bad requests."""
    async with aiohttp.ClientSession() as session:

        async def send(method: str, path: str, **kw: Any) -> Exchange:
            contract.proxy.clear()
            async with session.request(
                method, URL(contract.url + path, encoded=True), **kw
            ) as resp:
                await resp.read()
            (ex,) = contract.proxy.take()
            return ex

        # Missing required body field, operation documents 400: 400 + sl-violations.
        ex = await send("POST", "/api/sessions", json={"title": "t"})
        assert ex.status == 400 and ex.violations(), ex.describe()
        # No documented 400: Prism answers 422 with a validation list.
        ex = await send("GET", "/api/sessions?includeSubagents=False")
        assert ex.status == 422 and "validation" in json.loads(ex.body), ex.describe()
        # null where the spec has a plain string.
        ex = await send("POST", "/api/preferences", json={"main_agent_model": None})
        assert ex.violations(), ex.describe()
        # A malformed escape never reaches Prism.
        ex = await send("GET", "/api/sessions/50%zz")
        assert ex.status == 400 and ex.violations(), ex.describe()
        # A valid request is clean; Prefer: code= forces a documented status.
        ex = await send("GET", "/api/sessions/a%2Fb%3F%23%20%C3%A9")
        assert ex.status == 200 and ex.violations() is None, ex.describe()
        assert ex.op_id == "getSession" and ex.path_params == {"id": "a%2Fb%3F%23%20%C3%A9"}
        ex = await send("GET", "/api/sessions/x", headers={"Prefer": "code=404"})
        assert ex.status == 404 and json.loads(ex.body)["error"]["message"], ex.describe()
        # The strip mode removes optional declared fields, keeps required ones.
        ex = await send("GET", "/api/sessions/x", headers={MODE_HEADER: "strip"})
        stripped = json.loads(ex.body)
        required = set(deref(SPEC["components"]["schemas"]["SessionData"])["required"])
        assert required <= set(stripped) and "cdpUrl" not in stripped, stripped
    contract.check_prism_alive()


@pytest.mark.parametrize("op_id", ON_PRISM)
async def test_operation(contract: Contract, mix: Any, op_id: str) -> None:
    """Awkward inputs go out per spec; every declared field comes back intact."""
    for i in range(ITERATIONS):
        prefer = "dynamic=false" if i == ITERATIONS - 1 else ""
        await run_call(contract, mix, op_id, i, prefer=prefer)


@pytest.mark.parametrize("op_id", ON_PRISM)
async def test_operation_optional_fields(contract: Contract, mix: Any, op_id: str) -> None:
    """Responses without any optional field, or with nullable ones null, decode too."""
    for i in range(STRIP_ITERATIONS):
        await run_call(contract, mix, op_id, i, mode="strip")
    for i in range(NULL_ITERATIONS):
        await run_call(contract, mix, op_id, i, mode="null")


def _error_cases() -> list[tuple[str, int]]:
    return [
        (op_id, status)
        for op_id, op in sorted(OPERATIONS.items())
        for status in op.statuses()
        if status >= 400
    ]


async def _stream_once(client: Any, headers: dict[str, str]) -> None:
    async with client.stream_events(
        "s/1 \u00e9?#", reconnect=False, headers=headers, max_retries=0
    ) as events:
        async for _ in events:
            break


@pytest.mark.parametrize(("op_id", "status"), _error_cases())
async def test_error_status(contract: Contract, mix: Any, op_id: str, status: int) -> None:
    """Each documented error status surfaces as its typed error with the decoded body."""
    mc = _client_module()
    expected_cls = getattr(mc, ERROR_CLASSES.get(status, "APIStatusError"))
    op = OPERATIONS[op_id]
    headers = {"Prefer": f"code={status}"}
    if op_id in NOT_ON_PRISM:
        invokers: list[Callable[[], Awaitable[Any]]] = [lambda: _stream_once(mix, headers)]
    else:
        variants = [1, 2, 3] if op_id == "getSessionFile" else [1]
        invokers = []
        for i in variants:
            call = CALLS[op_id](i)
            invokers.append(
                lambda call=call: call.invoke(mix, headers=dict(headers), max_retries=0)
            )
    for invoke in invokers:
        contract.check_prism_alive()
        contract.proxy.clear()
        with pytest.raises(mc.APIStatusError) as info:
            await asyncio.wait_for(invoke(), 30)
        exchanges = contract.proxy.take()
        trace = "\n".join(e.describe() for e in exchanges)
        assert len(exchanges) == 1, f"max_retries=0 but {len(exchanges)} requests:\n{trace}"
        ex = exchanges[0]
        assert ex.status == status and ex.op_id == op_id, trace
        assert ex.violations() is None, f"spec violation: {ex.violations()}\n{trace}"
        err = info.value
        assert isinstance(err, expected_cls), (
            f"{op_id} {status}: got {type(err).__name__}, expected {expected_cls.__name__}"
        )
        assert isinstance(err, mc.MixError)
        assert err.status_code == status
        raw = json.loads(ex.body)["error"]
        assert isinstance(err.error, mc.RESTError), f"err.error is {err.error!r}:\n{trace}"
        assert err.error.code == raw["code"], trace
        assert err.error.message == raw["message"], trace
        assert _plain(err.error.type) == raw["type"], trace
        assert str(err.method).upper() == op.method, err.method
        body = err.body.encode() if isinstance(err.body, str) else err.body
        assert json.loads(body) == json.loads(ex.body), trace
    contract.check_prism_alive()


async def test_per_call_retry_option(contract: Contract, mix: Any) -> None:
    """max_retries= per call: a retryable 500 on an idempotent GET is sent again."""
    mc = _client_module()
    contract.proxy.clear()
    with pytest.raises(mc.InternalServerError) as info:
        await asyncio.wait_for(mix.health_check(headers={"Prefer": "code=500"}, max_retries=1), 30)
    exchanges = contract.proxy.take()
    assert [e.status for e in exchanges] == [500, 500], [e.describe() for e in exchanges]
    assert all(e.violations() is None for e in exchanges)
    assert info.value.error is not None
    assert info.value.error.message == json.loads(exchanges[-1].body)["error"]["message"]


def test_blocking_facade(contract: Contract) -> None:
    """The blocking facade goes through the same encoding and decoding."""
    mc = _client_module()
    client = mc.Mix(contract.url)
    try:
        contract.proxy.clear()
        session = client.get_session("a/b?c#d \u00e9")
        (ex,) = contract.proxy.take()
        assert ex.violations() is None and ex.path_params["id"] == "a%2Fb%3Fc%23d%20%C3%A9"
        assert_decoded(
            session,
            json.loads(ex.body),
            OPERATIONS["getSession"].response_schema(200),
            "getSession",
        )
        with pytest.raises(mc.NotFoundError):
            client.get_session("x", headers={"Prefer": "code=404"}, max_retries=0)
    finally:
        client.close()
