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
import datetime as dt
import enum
import importlib.util
import io
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
from urllib.parse import parse_qs, unquote, urlsplit

import aiohttp
import msgspec
import pytest
import yaml
from aiohttp import web
from yarl import URL

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

# Path-parameter values: every reserved character a server could misroute.
# '%' is followed by hex digits in one value and by junk in others: the client
# must send '%25' either way (a raw malformed '%' would crash Prism; the proxy
# turns it into a failure instead).
PATH_VALUES = [
    "a/b",
    "q?x=1&y=2",
    "frag#ment",
    "sp ace",
    "caf\u00e9",
    "\u65e5\u672c\u8a9e",
    "emoji \U0001f389",
    "pct%25literal",
    "50% off",
    "100%",
    "plus+sign",
    "semi;colon,comma",
    "dots.and..dots",
    "tilde~under_dash-",
    "quote'\"dq",
    "colon:at@amp&eq=",
    "brackets[x]{y}|<z>",
    "back\\slash^`",
    "plain-id",
]

# File names (the filename path parameter): the server decides what it accepts, so
# '/', '\\' and '..' inside a name go out as one percent-encoded segment like everything
# else; only the dot segments '.' and '..' themselves are refused by the client.
FILE_VALUES = [*PATH_VALUES, "dot.", ".hidden", "name.tar.gz", "v1..2.txt", "../up", "..."]

# JSON string values: escapes, unicode, characters HTML-escaping servers touch.
TEXT_VALUES = [
    "quote \" and ' apostrophe",
    "new\nline\r\ncr\ttab",
    "back\\slash \\n not a newline",
    "unicode caf\u00e9 \u65e5\u672c \U0001f389 \u00df\u2603",
    "<script>alert('x')</script> & &amp;",
    "nul\x00byte and \x1f unit separator",
    "\u2028line\u2029paragraph separators",
    '{"looks": ["like", "json"]}',
    "",
    "  leading and trailing spaces  ",
    "percent %s %d %25 %zz",
    "x" * 4096,
    "right-to-left \u202e\u05e9\u05dc\u05d5\u05dd",
    "zero\u200bwidth",
    "plain",
]

# Upload payloads: none of them (but the empty one) is valid UTF-8.
BINARY_VALUES = [
    bytes(range(0x80, 0x100)),
    bytes(range(256)) * 3,
    b"\xff\xfe\x00\x00binary\x80",
    b"",
    b"\xc3\x28 invalid utf-8 sequence \xa0\xa1",
    bytes((i * 37 + 11) % 256 for i in range(70_000)),
]

UPLOAD_NAMES = [
    "caf\u00e9 \u65e5\u672c \U0001f389.bin",
    "with space.txt",
    "semi;colon=1,comma.bin",
    "plain.bin",
    "v1..2.bin",
    "percent%41.bin",
    "+plus & amp.dat",
    'quote"d name.bin',
]

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


# --------------------------------------------------------------------------- spec


def load_spec() -> dict[str, Any]:
    with MERGED_SPEC.open(encoding="utf-8") as fh:
        spec: dict[str, Any] = yaml.safe_load(fh)
    return spec


SPEC = load_spec()


def deref(schema: Any) -> dict[str, Any]:
    """Follow ``$ref`` (keeping sibling keys such as ``nullable``)."""
    if not isinstance(schema, dict):
        return {}
    seen = 0
    while "$ref" in schema:
        seen += 1
        if seen > 20:
            raise ValueError(f"reference loop at {schema['$ref']}")
        ref = schema["$ref"]
        node: Any = SPEC
        for part in ref.lstrip("#/").split("/"):
            node = node[part]
        siblings = {k: v for k, v in schema.items() if k != "$ref"}
        schema = {**node, **siblings}
    return schema


@dataclasses.dataclass(frozen=True)
class Operation:
    op_id: str
    method: str
    template: str
    regex: re.Pattern[str]
    spec: dict[str, Any]

    def response_schema(self, status: int) -> dict[str, Any] | None:
        resp = self.spec.get("responses", {}).get(str(status))
        if not resp:
            return None
        content = resp.get("content", {})
        media = content.get("application/json")
        return deref(media["schema"]) if media and "schema" in media else None

    def statuses(self) -> list[int]:
        return sorted(int(code) for code in self.spec.get("responses", {}))

    def has_body(self) -> bool:
        return "requestBody" in self.spec


def _path_regex(template: str) -> re.Pattern[str]:
    out = "^"
    for piece in re.split(r"(\{[^}]+\})", template):
        if piece.startswith("{"):
            out += f"(?P<{piece[1:-1]}>[^/]+)"
        else:
            out += re.escape(piece)
    return re.compile(out + "$")


def spec_operations() -> dict[str, Operation]:
    ops: dict[str, Operation] = {}
    for template, item in SPEC["paths"].items():
        for method, op in item.items():
            if method in HTTP_METHODS:
                ops[op["operationId"]] = Operation(
                    op["operationId"], method.upper(), template, _path_regex(template), op
                )
    return ops


OPERATIONS = spec_operations()


def match_operation(method: str, raw_path: str) -> tuple[Operation, dict[str, str]] | None:
    """The operation a raw (still percent-encoded) path hits; literal routes win."""
    hits = []
    for op in OPERATIONS.values():
        if op.method != method:
            continue
        m = op.regex.match(raw_path)
        if m:
            hits.append((op.template.count("{"), op, m.groupdict()))
    if not hits:
        return None
    hits.sort(key=lambda h: h[0])
    return hits[0][1], hits[0][2]


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


@dataclasses.dataclass
class Exchange:
    method: str
    raw_path: str
    request_headers: dict[str, str]
    request_body: bytes
    status: int
    response_headers: dict[str, str]
    upstream_body: bytes
    body: bytes  # what the client received (after any rewrite)
    op_id: str | None
    path_params: dict[str, str]  # still percent-encoded

    @property
    def path(self) -> str:
        return self.raw_path.split("?", 1)[0]

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.raw_path).query, keep_blank_values=True)

    def violations(self) -> str | None:
        for key, value in self.response_headers.items():
            if key.lower() == "sl-violations":
                return value
        if self.status == 422:
            return self.body.decode("utf-8", "replace")
        return None

    def describe(self) -> str:
        def show(data: bytes) -> str:
            text = data[:600].decode("utf-8", "backslashreplace")
            return text + ("..." if len(data) > 600 else "")

        return (
            f"{self.method} {self.raw_path} (op {self.op_id})\n"
            f"  sent headers: {self.request_headers}\n"
            f"  sent body: {show(self.request_body)}\n"
            f"  got {self.status} {self.response_headers.get('Content-Type', '')}: {show(self.body)}"
        )


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


# ------------------------------------------------------------- decoded vs. raw


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    return value


def assert_decoded(value: Any, raw: Any, schema: Any, where: str) -> None:
    """Every field the spec declares and the raw JSON carries survives decoding."""
    schema = deref(schema)
    value = _plain(value)
    if raw is None:
        assert value is None, f"{where}: raw null decoded as {value!r}"
        return
    if "anyOf" in schema or "oneOf" in schema:
        assert value == raw, f"{where}: {value!r} != raw {raw!r}"
        return
    if isinstance(raw, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        if isinstance(props, dict):
            assert isinstance(value, msgspec.Struct), (
                f"{where}: object decoded as {type(value).__name__}, expected a Struct"
            )
            fields = {f.encode_name: f for f in msgspec.structs.fields(value)}
            required = set(schema.get("required", []))
            for key, sub in props.items():
                field = fields.get(key)
                assert field is not None, (
                    f"{where}: {type(value).__name__} has no field for wire name {key!r}"
                )
                got = getattr(value, field.name)
                if key in raw:
                    assert_decoded(got, raw[key], sub, f"{where}.{key}")
                elif key not in required:
                    # None, or an empty list/dict for an absent optional collection.
                    empty = {"array": [], "object": {}}.get(deref(sub).get("type", ""))
                    assert got is None or (empty is not None and got == empty), (
                        f"{where}.{key}: absent optional field decoded as {got!r}, expected None"
                    )
            return
        if isinstance(extra, dict):
            assert isinstance(value, dict), f"{where}: map decoded as {type(value).__name__}"
            assert set(value) == set(raw), f"{where}: keys {set(value)} != raw {set(raw)}"
            for key, item in raw.items():
                assert_decoded(value[key], item, extra, f"{where}[{key!r}]")
            return
        # Free-form object: the full contents must survive.
        assert isinstance(value, dict), f"{where}: free-form object became {type(value).__name__}"
        assert value == raw, f"{where}: free-form object {value!r} != raw {raw!r}"
        return
    if isinstance(raw, list):
        assert isinstance(value, list), f"{where}: array decoded as {type(value).__name__}"
        assert len(value) == len(raw), f"{where}: {len(value)} items != raw {len(raw)}"
        for i, (item_v, item_r) in enumerate(zip(value, raw, strict=True)):
            assert_decoded(item_v, item_r, schema.get("items", {}), f"{where}[{i}]")
        return
    if isinstance(raw, bool):
        assert value is raw, f"{where}: {value!r} != raw {raw!r}"
        return
    if isinstance(raw, (int, float)):
        assert isinstance(value, (int, float)) and not isinstance(value, bool), (
            f"{where}: number decoded as {type(value).__name__}"
        )
        if schema.get("type") == "integer":
            assert isinstance(value, int), f"{where}: integer decoded as {type(value).__name__}"
        assert value == raw, f"{where}: {value!r} != raw {raw!r}"
        return
    if isinstance(raw, str):
        if isinstance(value, (dt.datetime, dt.date)):
            expected = msgspec.json.decode(json.dumps(raw), type=type(value))
            assert value == expected, f"{where}: {value!r} != raw {raw!r}"
            return
        assert value == raw, f"{where}: {value!r} != raw {raw!r}"
        return
    raise AssertionError(f"{where}: unexpected raw value {raw!r}")


# ------------------------------------------------------------- the call table


@dataclasses.dataclass
class Call:
    """One client call and what must go on the wire for it."""

    invoke: Callable[..., Awaitable[Any]]  # (client, **per-call options) -> result
    path_params: dict[str, str] = dataclasses.field(default_factory=dict)
    json_body: dict[str, Any] | None = None
    defaults: dict[str, Any] = dataclasses.field(default_factory=dict)  # may be absent
    query: dict[str, str] | None = None  # exact query, or None: no query expected
    query_optional: dict[str, str] = dataclasses.field(default_factory=dict)
    upload: tuple[bytes, str | None, str | None] | None = None  # payload, name, type
    result: str = "decoded"  # decoded | none | bytes | file | iter


def pv(i: int, salt: int = 0) -> str:
    return PATH_VALUES[(i * 7 + salt) % len(PATH_VALUES)]


def fv(i: int, salt: int = 0) -> str:
    return FILE_VALUES[(i * 7 + salt) % len(FILE_VALUES)]


def tv(i: int, salt: int = 0) -> str:
    return TEXT_VALUES[(i * 5 + salt) % len(TEXT_VALUES)]


def pick(options: list[Any], i: int, salt: int = 0) -> Any:
    return options[(i + salt) % len(options)]


def _callback_wire(i: int, k: int) -> dict[str, Any]:
    kind = pick(["bash_script", "sub_agent", "send_message"], i, k)
    cb: dict[str, Any] = {
        "toolName": pick(["*", "Bash", "brave_search", tv(i, k)], i, k),
        "type": kind,
    }
    if kind == "bash_script":
        cb["bashCommand"] = "echo \"$CALLBACK_TOOL_NAME\" | tr 'a' '\u00e9'\n"
        if (i + k) % 2:
            cb["bashTimeout"] = 1000 * (i + 1)
            cb["excludeFromContext"] = True
    elif kind == "sub_agent":
        cb["subAgentPrompt"] = tv(i, k + 3)
        if i % 2:
            cb["subAgentType"] = "general-purpose"
            cb["includeFullHistory"] = False
    else:
        cb["messageContent"] = tv(i, k + 1)
    if i % 3:
        cb["name"] = tv(i, k + 2)
    return cb


def _callbacks(i: int) -> tuple[list[Any], list[dict[str, Any]]]:
    mc = _client_module()
    wire = [_callback_wire(i, k) for k in range(i % 3)]
    return [msgspec.convert(cb, mc.Callback) for cb in wire], wire


def c_store_api_key(i: int) -> Call:
    key, provider = tv(i), pick(["anthropic", "openai", "openrouter", "gemini", "brave"], i)
    return Call(
        lambda m, **o: m.store_api_key(api_key=key, provider=provider, **o),
        json_body={"api_key": key, "provider": provider},
    )


def c_set_api_key(i: int) -> Call:
    key = tv(i, 1)
    return Call(lambda m, **o: m.set_api_key(api_key=key, **o), json_body={"apiKey": key})


def c_initiate_oauth_login(i: int) -> Call:
    return Call(lambda m, **o: m.initiate_oauth_login(**o))


def c_handle_oauth_callback(i: int) -> Call:
    provider, code, state = tv(i), tv(i, 1), tv(i, 2)
    return Call(
        lambda m, **o: m.handle_oauth_callback(provider=provider, code=code, state=state, **o),
        json_body={"provider": provider, "code": code, "state": state},
    )


def c_start_oauth_flow(i: int) -> Call:
    provider = pv(i)
    return Call(
        lambda m, **o: m.start_oauth_flow(provider, **o), path_params={"provider": provider}
    )


def c_get_auth_status(i: int) -> Call:
    return Call(lambda m, **o: m.get_auth_status(**o))


def c_validate_preferred_provider(i: int) -> Call:
    return Call(lambda m, **o: m.validate_preferred_provider(**o))


def c_delete_credentials(i: int) -> Call:
    provider = pv(i, 3)
    return Call(
        lambda m, **o: m.delete_credentials(provider, **o), path_params={"provider": provider}
    )


def c_list_commands(i: int) -> Call:
    return Call(lambda m, **o: m.list_commands(**o))


def c_get_command(i: int) -> Call:
    name = pv(i, 5)
    return Call(lambda m, **o: m.get_command(name, **o), path_params={"name": name})


def c_list_mcp_servers(i: int) -> Call:
    return Call(lambda m, **o: m.list_mcp_servers(**o))


def c_get_message_history(i: int) -> Call:
    if i % 4 == 0:
        return Call(
            lambda m, **o: m.get_message_history(**o),
            query={},
            query_optional={"limit": "50", "offset": "0"},
        )
    limit, offset = pick([1, 1000, 37, 50], i), pick([0, 5, 10**6], i)
    return Call(
        lambda m, **o: m.get_message_history(limit=limit, offset=offset, **o),
        query={"limit": str(limit), "offset": str(offset)},
    )


def c_respond_to_notification(i: int) -> Call:
    nid, kind = pv(i, 1), pick(["acknowledge", "text", "choice"], i)
    if i % 3 == 0:
        return Call(
            lambda m, **o: m.respond_to_notification(nid, type=kind, **o),
            path_params={"id": nid},
            json_body={"type": kind},
            result="none",
        )
    value = tv(i, 4)
    return Call(
        lambda m, **o: m.respond_to_notification(nid, type=kind, value=value, **o),
        path_params={"id": nid},
        json_body={"type": kind, "value": value},
        result="none",
    )


def c_deny_permission(i: int) -> Call:
    pid = pv(i, 2)
    return Call(lambda m, **o: m.deny_permission(pid, **o), path_params={"id": pid})


def c_grant_permission(i: int) -> Call:
    pid = pv(i, 4)
    return Call(lambda m, **o: m.grant_permission(pid, **o), path_params={"id": pid})


def c_get_preferences(i: int) -> Call:
    return Call(lambda m, **o: m.get_preferences(**o))


_PREF_FIELDS = [
    ("main_agent_max_tokens", lambda i: 1000 + i),
    ("main_agent_model", lambda i: tv(i)),
    ("main_agent_reasoning_effort", lambda i: pick(["low", "medium", "high", tv(i, 2)], i)),
    ("preferred_provider", lambda i: pick(["anthropic", "openai", "openrouter"], i)),
    ("sub_agent_max_tokens", lambda i: 0 if i % 2 else 2**31),
    ("sub_agent_model", lambda i: tv(i, 3)),
    ("sub_agent_reasoning_effort", lambda i: tv(i, 6)),
]


def c_update_preferences(i: int) -> Call:
    # None would be sent as null, which the spec does not allow: not used here.
    chosen = {name: make(i) for k, (name, make) in enumerate(_PREF_FIELDS) if (i >> (k % 4)) & 1}
    if i == 0:
        chosen = {}
    return Call(lambda m, **o: m.update_preferences(**chosen, **o), json_body=dict(chosen))


def c_get_available_providers(i: int) -> Call:
    return Call(lambda m, **o: m.get_available_providers(**o))


def c_reset_preferences(i: int) -> Call:
    return Call(lambda m, **o: m.reset_preferences(**o))


def c_list_sessions(i: int) -> Call:
    if i % 3 == 0:
        return Call(
            lambda m, **o: m.list_sessions(**o),
            query={},
            query_optional={"includeSubagents": "false"},
        )
    flag = bool(i % 2)
    return Call(
        lambda m, **o: m.list_sessions(include_subagents=flag, **o),
        query={"includeSubagents": "true" if flag else "false"},
    )


def c_create_session(i: int) -> Call:
    title = tv(i)
    mode = pick(["electron-embedded-browser", "local-browser-service", "remote-cdp-websocket"], i)
    kwargs: dict[str, Any] = {"title": title, "browser_mode": mode}
    wire: dict[str, Any] = {"title": title, "browserMode": mode}
    if i % 2:
        cbs, cb_wire = _callbacks(i)
        kwargs["callbacks"], wire["callbacks"] = cbs, cb_wire
    if mode == "remote-cdp-websocket":
        kwargs["cdp_url"] = wire["cdpUrl"] = "wss://cdp.example.invalid/s?id=\u00e9&x=1#f"
    if i % 3 == 1:
        kwargs["custom_system_prompt"] = wire["customSystemPrompt"] = tv(i, 2) + " $<domain>"
        kwargs["prompt_mode"] = wire["promptMode"] = pick(["default", "append", "replace"], i)
    if i % 4 == 2:
        kwargs["session_type"] = wire["sessionType"] = "main"
    if i % 5 == 3:
        kwargs["subagent_type"] = wire["subagentType"] = ""
    return Call(lambda m, **o: m.create_session(**kwargs, **o), json_body=wire)


def c_delete_session(i: int) -> Call:
    sid = pv(i, 6)
    return Call(lambda m, **o: m.delete_session(sid, **o), path_params={"id": sid}, result="none")


def c_get_session(i: int) -> Call:
    sid = pv(i)
    return Call(lambda m, **o: m.get_session(sid, **o), path_params={"id": sid})


def c_update_session_callbacks(i: int) -> Call:
    sid = pv(i, 8)
    cbs, wire = _callbacks(i)
    return Call(
        lambda m, **o: m.update_session_callbacks(sid, callbacks=cbs, **o),
        path_params={"id": sid},
        json_body={"callbacks": wire},
    )


def c_cancel_session_processing(i: int) -> Call:
    sid = pv(i, 9)
    return Call(lambda m, **o: m.cancel_session_processing(sid, **o), path_params={"id": sid})


def c_export_session(i: int) -> Call:
    sid = pv(i, 10)
    return Call(lambda m, **o: m.export_session(sid, **o), path_params={"id": sid})


def c_list_session_files(i: int) -> Call:
    sid = pv(i, 11)
    return Call(lambda m, **o: m.list_session_files(sid, **o), path_params={"id": sid})


class _AsyncChunks:
    def __init__(self, data: bytes, size: int) -> None:
        self._chunks = [data[k : k + size] for k in range(0, len(data), size)]

    def __aiter__(self) -> _AsyncChunks:
        return self

    async def __anext__(self) -> bytes:
        if not self._chunks:
            raise StopAsyncIteration
        return self._chunks.pop(0)


UPLOAD_DIR: list[Path] = []  # set by the upload_dir fixture


def c_upload_session_file(i: int) -> Call:
    sid = pv(i, 12)
    data = pick(BINARY_VALUES, i)
    name = pick(UPLOAD_NAMES, i)
    ctype = pick([None, "application/octet-stream", "image/png", "text/plain; charset=latin-1"], i)
    form = i % 4
    extra: dict[str, Any] = {}
    if ctype is not None:
        extra["content_type"] = ctype
    if form == 0:  # bytes
        payload: Any = data
        extra["filename"] = name
    elif form == 1:  # path on disk (name taken from it)
        path = UPLOAD_DIR[0] / f"{i}-{name}"
        path.write_bytes(data)
        payload = path
        name = path.name
    elif form == 2:  # binary file object
        payload = io.BytesIO(data)
        extra["filename"] = name
    else:  # async iterator of chunks
        payload = _AsyncChunks(data, 1000)
        extra["filename"] = name
    return Call(
        lambda m, **o: m.upload_session_file(sid, payload, **extra, **o),
        path_params={"id": sid},
        upload=(data, name, ctype),
    )


def c_delete_session_file(i: int) -> Call:
    sid, fname = pv(i, 13), fv(i, 14)
    return Call(
        lambda m, **o: m.delete_session_file(sid, fname, **o),
        path_params={"id": sid, "filename": fname},
        result="none",
    )


def _file_query(i: int) -> tuple[dict[str, Any], dict[str, str]]:
    kwargs: dict[str, Any] = {}
    query: dict[str, str] = {}
    if i % 3 == 1:
        kwargs["thumb"] = query["thumb"] = pick(["100", "w100", "h240", "7"], i)
    if i % 4 == 1:
        kwargs["time"] = pick([0, 1.5, 86400, 12.25], i)
        query["time"] = str(kwargs["time"])
    return kwargs, query


def c_get_session_file(i: int) -> Call:
    sid, fname = pv(i, 15), fv(i, 16)
    kwargs, query = _file_query(i)
    variant = i % 3
    if variant == 0:
        return Call(
            lambda m, **o: m.get_session_file(sid, fname, **kwargs, **o),
            path_params={"id": sid, "filename": fname},
            query=query,
            result="bytes",
        )
    if variant == 1:
        dest = UPLOAD_DIR[0] / f"download-{i}.bin"

        async def download(m: Any, **o: Any) -> Any:
            n = await m.download_session_file(sid, fname, dest, **kwargs, **o)
            return n, dest.read_bytes()

        return Call(
            download, path_params={"id": sid, "filename": fname}, query=query, result="file"
        )

    async def iterate(m: Any, **o: Any) -> Any:
        chunks = []
        async for chunk in m.iter_session_file(sid, fname, **kwargs, **o):
            assert isinstance(chunk, bytes)
            chunks.append(chunk)
        return b"".join(chunks)

    return Call(iterate, path_params={"id": sid, "filename": fname}, query=query, result="bytes")


def c_fork_session(i: int) -> Call:
    sid, index = pv(i, 17), 1 + i * 3
    if i % 2:
        title = tv(i, 5)
        return Call(
            lambda m, **o: m.fork_session(sid, message_index=index, title=title, **o),
            path_params={"id": sid},
            json_body={"messageIndex": index, "title": title},
        )
    return Call(
        lambda m, **o: m.fork_session(sid, message_index=index, **o),
        path_params={"id": sid},
        json_body={"messageIndex": index},
    )


def c_get_session_messages(i: int) -> Call:
    sid = pv(i, 18)
    return Call(lambda m, **o: m.get_session_messages(sid, **o), path_params={"id": sid})


def c_send_message(i: int) -> Call:
    sid, text = pv(i, 1), tv(i, 7)
    kwargs: dict[str, Any] = {"text": text}
    wire: dict[str, Any] = {"text": text}
    # plan_mode false may be left out: spec default and Go zero value agree.
    defaults: dict[str, Any] = {"plan_mode": False}
    if i % 2:
        kwargs["plan_mode"] = wire["plan_mode"] = bool(i % 4 == 1)
    if i % 3 == 1:
        kwargs["thinking_level"] = wire["thinking_level"] = pick(
            ["off", "basic", "medium", "maximum", None], i
        )
    if i % 5 == 2:
        kwargs["max_steps"] = wire["max_steps"] = 1 + i
    return Call(
        lambda m, **o: m.send_message(sid, **kwargs, **o),
        path_params={"id": sid},
        json_body=wire,
        defaults=defaults,
    )


def c_rewind_session(i: int) -> Call:
    sid, msg = pv(i, 2), pv(i, 9)
    if i % 2:
        flag = bool(i % 4 == 1)
        return Call(
            lambda m, **o: m.rewind_session(sid, message_id=msg, cleanup_media=flag, **o),
            path_params={"id": sid},
            json_body={"messageId": msg, "cleanupMedia": flag},
        )
    # The client's default is the spec's (true), but the real server decodes the
    # field into a plain Go bool: leaving it out means false. It must be sent.
    return Call(
        lambda m, **o: m.rewind_session(sid, message_id=msg, **o),
        path_params={"id": sid},
        json_body={"messageId": msg, "cleanupMedia": True},
    )


def c_get_system_info(i: int) -> Call:
    return Call(lambda m, **o: m.get_system_info(**o))


def c_list_llm_tools(i: int) -> Call:
    return Call(lambda m, **o: m.list_llm_tools(**o))


def c_get_tool_credentials_status(i: int) -> Call:
    return Call(lambda m, **o: m.get_tool_credentials_status(**o))


def c_get_tools_status(i: int) -> Call:
    return Call(lambda m, **o: m.get_tools_status(**o))


def c_health_check(i: int) -> Call:
    return Call(lambda m, **o: m.health_check(**o))


def c_get_oauth_health(i: int) -> Call:
    return Call(lambda m, **o: m.get_oauth_health(**o))


def c_refresh_oauth_tokens(i: int) -> Call:
    return Call(lambda m, **o: m.refresh_oauth_tokens(**o))


CALLS: dict[str, Callable[[int], Call]] = {
    "storeApiKey": c_store_api_key,
    "setApiKey": c_set_api_key,
    "initiateOAuthLogin": c_initiate_oauth_login,
    "handleOAuthCallback": c_handle_oauth_callback,
    "startOAuthFlow": c_start_oauth_flow,
    "getAuthStatus": c_get_auth_status,
    "validatePreferredProvider": c_validate_preferred_provider,
    "deleteCredentials": c_delete_credentials,
    "listCommands": c_list_commands,
    "getCommand": c_get_command,
    "listMcpServers": c_list_mcp_servers,
    "getMessageHistory": c_get_message_history,
    "respondToNotification": c_respond_to_notification,
    "denyPermission": c_deny_permission,
    "grantPermission": c_grant_permission,
    "getPreferences": c_get_preferences,
    "updatePreferences": c_update_preferences,
    "getAvailableProviders": c_get_available_providers,
    "resetPreferences": c_reset_preferences,
    "listSessions": c_list_sessions,
    "createSession": c_create_session,
    "deleteSession": c_delete_session,
    "getSession": c_get_session,
    "updateSessionCallbacks": c_update_session_callbacks,
    "cancelSessionProcessing": c_cancel_session_processing,
    "exportSession": c_export_session,
    "listSessionFiles": c_list_session_files,
    "uploadSessionFile": c_upload_session_file,
    "deleteSessionFile": c_delete_session_file,
    "getSessionFile": c_get_session_file,
    "forkSession": c_fork_session,
    "getSessionMessages": c_get_session_messages,
    "sendMessage": c_send_message,
    "rewindSession": c_rewind_session,
    "getSystemInfo": c_get_system_info,
    "listLLMTools": c_list_llm_tools,
    "getToolCredentialsStatus": c_get_tool_credentials_status,
    "getToolsStatus": c_get_tools_status,
    "healthCheck": c_health_check,
    "getOAuthHealth": c_get_oauth_health,
    "refreshOAuthTokens": c_refresh_oauth_tokens,
}


@pytest.fixture(autouse=True)
def upload_dir(tmp_path: Path) -> Any:
    UPLOAD_DIR[:] = [tmp_path]
    yield tmp_path
    UPLOAD_DIR.clear()


# ------------------------------------------------------------- request checks

_SEGMENT_OK = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@%]*")


def _content_type(headers: dict[str, str]) -> str:
    for key, value in headers.items():
        if key.lower() == "content-type":
            return value
    return ""


def _go_disposition_params(header: str) -> dict[str, str]:
    """Content-Disposition parameters read the way Go's mime package reads them."""
    params: dict[str, str] = {}
    for m in re.finditer(r';\s*([A-Za-z0-9_*.-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)', header):
        key, val = m.group(1).lower(), m.group(2).strip()
        if val.startswith('"'):
            val = re.sub(r"\\(.)", r"\1", val[1:-1])
        if key.endswith("*"):
            charset, _, rest = val.partition("'")
            _, _, encoded = rest.partition("'")
            params[key[:-1]] = unquote(encoded, encoding=charset or "utf-8", errors="strict")
        elif key not in params:
            params[key] = val
    return params


def parse_multipart(ctype: str, body: bytes) -> list[tuple[dict[str, str], bytes]]:
    m = re.search(r'boundary="?([^";]+)"?', ctype)
    assert m, f"multipart Content-Type without boundary: {ctype!r}"
    delim = b"--" + m.group(1).encode()
    assert body.startswith(delim), "multipart body does not start with its boundary"
    parts = []
    for chunk in body.split(b"\r\n" + delim)[0:]:
        chunk = chunk.removeprefix(delim)
        if chunk.startswith(b"--"):
            break
        chunk = chunk.removeprefix(b"\r\n")
        head, sep, content = chunk.partition(b"\r\n\r\n")
        assert sep, "multipart part without header/body separator"
        headers = {}
        for line in head.decode("utf-8").split("\r\n"):
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        parts.append((headers, content))
    assert body.rstrip(b"\r\n").endswith(delim + b"--"), "multipart body is not terminated"
    return parts


def check_request(call: Call, op: Operation, ex: Exchange) -> None:
    ctx = ex.describe()
    assert ex.op_id == op.op_id, f"request reached {ex.op_id}, expected {op.op_id}:\n{ctx}"
    assert ex.method == op.method, ctx
    # Path parameters: one percent-encoded segment each, decoding to the exact value.
    for name, expected in call.path_params.items():
        raw = ex.path_params.get(name)
        assert raw is not None, f"path parameter {name} missing:\n{ctx}"
        assert _SEGMENT_OK.fullmatch(raw), f"unescaped characters in {name}={raw!r}:\n{ctx}"
        assert unquote(raw, errors="strict") == expected, (
            f"path parameter {name}: sent {raw!r}, decodes to {unquote(raw)!r}, "
            f"expected {expected!r}:\n{ctx}"
        )
    # Query string.
    got_query = {k: v for k, v in ex.query.items()}
    if call.query is None:
        assert not got_query, f"unexpected query {got_query}:\n{ctx}"
    else:
        for key, value in call.query.items():
            assert got_query.get(key) == [value], f"query {key}: expected {value!r}:\n{ctx}"
        for key, values in got_query.items():
            if key in call.query:
                continue
            assert key in call.query_optional, f"unexpected query parameter {key}:\n{ctx}"
            assert values == [call.query_optional[key]], f"query {key}={values}:\n{ctx}"
    ctype = _content_type(ex.request_headers)
    if call.upload is not None:
        data, name, part_type = call.upload
        assert ctype.startswith("multipart/form-data"), f"upload not multipart:\n{ctx}"
        parts = parse_multipart(ctype, ex.request_body)
        assert len(parts) == 1, f"expected one multipart part, got {len(parts)}:\n{ctx}"
        headers, content = parts[0]
        disp = _go_disposition_params(headers.get("content-disposition", ""))
        assert disp.get("name") == "file", f"multipart field is {disp.get('name')!r}:\n{ctx}"
        assert content == data, f"uploaded bytes differ ({len(content)} vs {len(data)}):\n{ctx}"
        if name is not None:
            assert disp.get("filename") == name, (
                f"a Go server reads the file name as {disp.get('filename')!r}, "
                f"expected {name!r}:\n{ctx}"
            )
        if part_type is not None:
            assert headers.get("content-type") == part_type, f"part Content-Type:\n{ctx}"
        return
    if call.json_body is None:
        if not op.has_body():
            assert ex.request_body == b"", f"body sent to an operation without one:\n{ctx}"
        return
    assert ctype.split(";")[0].strip() == "application/json", f"Content-Type {ctype!r}:\n{ctx}"
    sent = json.loads(ex.request_body)
    assert isinstance(sent, dict), ctx
    expected = dict(call.json_body)
    for key, default in call.defaults.items():
        # A value equal to a default that the server applies may be left out.
        if key not in sent and expected.get(key, default) == default:
            expected.pop(key, None)
        elif key in sent and key not in expected:
            expected[key] = default
    assert sent == expected, f"JSON body {sent!r} != expected {expected!r}:\n{ctx}"


def check_result(call: Call, op: Operation, ex: Exchange, result: Any) -> None:
    ctx = ex.describe()
    success = [s for s in op.statuses() if 200 <= s < 300]
    assert ex.status in success, f"status {ex.status}, spec says {success}:\n{ctx}"
    if call.result == "none":
        assert result is None, f"expected None, got {result!r}:\n{ctx}"
        return
    if call.result == "bytes":
        assert isinstance(result, bytes) and result == ex.body, f"bytes differ:\n{ctx}"
        return
    if call.result == "file":
        n, content = result
        assert n == len(ex.body) and content == ex.body, f"downloaded file differs:\n{ctx}"
        return
    schema = op.response_schema(ex.status)
    assert schema is not None, f"no JSON schema for {op.op_id} {ex.status}"
    try:
        assert_decoded(result, json.loads(ex.body), schema, op.op_id)
        wire = result.message if op.op_id == "sendMessage" and ex.status == 200 else result
        assert_encodes_back(wire, json.loads(ex.body), op.op_id)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{ctx}") from None


def assert_encodes_back(value: Any, raw: Any, where: str) -> None:
    """Encoding the decoded response gives back the wire document: every field the model
    knows that was sent with a value, with its wire name (``null`` and unknown fields
    aside; timestamps compared as instants). A field not sent may only appear with the
    model's documented default."""
    _encodes_back(value, json.loads(msgspec.json.encode(value)), raw, where)


def _encodes_back(value: Any, enc: Any, raw: Any, where: str) -> None:
    if isinstance(value, msgspec.Struct):
        fields = {f.encode_name: f for f in msgspec.structs.fields(value)}
        sent = {k for k, v in raw.items() if k in fields and v is not None}
        assert sent <= set(enc), f"{where}: {sorted(sent - set(enc))} lost on encoding"
        for key in set(enc) - sent:
            f = fields[key]
            default = f.default_factory() if f.default is msgspec.NODEFAULT else f.default
            assert enc[key] == msgspec.to_builtins(default), f"{where}.{key}: {enc[key]!r}"
        for key in sent:
            _encodes_back(getattr(value, fields[key].name), enc[key], raw[key], f"{where}.{key}")
    elif isinstance(value, dt.datetime):
        got = msgspec.convert(enc, dt.datetime)
        assert got == msgspec.convert(raw, dt.datetime), f"{where}: {enc!r} != {raw!r}"
    elif isinstance(value, dict):
        assert set(enc) == set(raw), f"{where}: keys {sorted(enc)} != {sorted(raw)}"
        for key in raw:
            _encodes_back(value[key], enc[key], raw[key], f"{where}[{key!r}]")
    elif isinstance(value, list):
        assert len(enc) == len(raw), f"{where}: {len(enc)} items != {len(raw)}"
        for i, item in enumerate(value):
            _encodes_back(item, enc[i], raw[i], f"{where}[{i}]")
    else:
        same_kind = isinstance(enc, bool) == isinstance(raw, bool)
        assert enc == raw and same_kind, f"{where}: encoded {enc!r} != sent {raw!r}"


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


def test_table_covers_every_operation() -> None:
    in_spec = set(OPERATIONS)
    covered = set(CALLS) | set(NOT_ON_PRISM)
    assert not set(CALLS) & set(NOT_ON_PRISM)
    assert covered == in_spec, (
        f"missing from the call table: {sorted(in_spec - covered)}; "
        f"not in the spec: {sorted(covered - in_spec)}"
    )


def test_client_has_every_operation() -> None:
    mc = _client_module()
    for op_id in OPERATIONS:
        words = op_id.replace("OAuth", "Oauth")
        name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", words).lower()
        assert callable(getattr(mc.AsyncMix, name, None)), f"AsyncMix.{name} ({op_id}) missing"
        # Mix's methods are descriptors: present on the class, callable on an instance.
        assert getattr(mc.Mix, name, None) is not None, f"Mix.{name} ({op_id}) missing"


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


@pytest.mark.parametrize("op_id", sorted(CALLS))
async def test_operation(contract: Contract, mix: Any, op_id: str) -> None:
    """Awkward inputs go out per spec; every declared field comes back intact."""
    for i in range(ITERATIONS):
        prefer = "dynamic=false" if i == ITERATIONS - 1 else ""
        await run_call(contract, mix, op_id, i, prefer=prefer)


@pytest.mark.parametrize("op_id", sorted(CALLS))
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
