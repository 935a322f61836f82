"""The route table (``mix_client.OPERATIONS``) against what documents and defines it.

Each operation's method and path are declared once, in the table; these tests hold the
README's methods table, the method docstrings, the method signatures and the OpenAPI
spec (``contract/mix-openapi-merged.yaml``: the current spec plus the 0.2-only
operations) to it, so a route written twice cannot drift.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from mix_client import OPERATIONS, AsyncMix, InvalidInputError, Mix

HERE = Path(__file__).parent
HTTP_METHODS = ("get", "post", "put", "patch", "delete", "head")


def readme_routes() -> list[tuple[str, str, str]]:
    """(method name, HTTP method, path) for every row of the README's methods table."""
    text = (HERE / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Methods\n", 1)[1].split("\n## ", 1)[0]
    rows: list[tuple[str, str, str]] = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[2].startswith("`"):
            continue
        # One method per endpoint, in order; helpers may follow (download_session_file, query).
        methods = [n for n in re.findall(r"`(\w+)\(", cells[1]) if hasattr(AsyncMix, n)]
        endpoints = re.findall(r"`(GET|POST|PUT|PATCH|DELETE) (/[^`\s]*)`", cells[2])
        assert endpoints and len(methods) >= len(endpoints), line
        rows += [
            (m, verb, path)
            for m, (verb, path) in zip(methods[: len(endpoints)], endpoints, strict=True)
        ]
    return rows


ROUTE_METHODS = {(verb, path): name for name, verb, path in readme_routes()}
"""The method the README names for each route."""


def spec_routes() -> dict[str, tuple[str, str]]:
    with open(HERE / "contract" / "mix-openapi-merged.yaml", encoding="utf-8") as fh:
        spec: dict[str, Any] = yaml.safe_load(fh)
    return {
        op["operationId"]: (verb.upper(), path)
        for path, item in spec["paths"].items()
        for verb, op in item.items()
        if verb in HTTP_METHODS
    }


def test_readme_methods_table_is_the_route_table() -> None:
    documented = readme_routes()
    assert sorted((verb, path) for _, verb, path in documented) == sorted(
        (op.method, op.path) for op in OPERATIONS.values()
    )
    assert len({name for name, _, _ in documented}) == len(documented)  # one method a route


def test_route_table_is_the_spec() -> None:
    spec = spec_routes()
    assert {op_id: (op.method, op.path) for op_id, op in OPERATIONS.items()} == spec
    assert len(OPERATIONS) == 42


@pytest.mark.parametrize("op_id", sorted(OPERATIONS))
def test_each_operation_has_its_methods(op_id: str) -> None:
    op = OPERATIONS[op_id]
    name = ROUTE_METHODS[op.method, op.path]
    fn = getattr(AsyncMix, name)
    assert name in vars(Mix)  # the blocking facade has it too
    # The docstring names the route: the same one as the table.
    assert f"``{op.method} {op.path}``" in (fn.__doc__ or "")
    # Path parameters come first, with the template's names (positional or keyword).
    params = [
        p.name
        for p in inspect.signature(fn).parameters.values()
        if p.kind is p.POSITIONAL_OR_KEYWORD and p.name != "self"
    ]
    assert tuple(params[: len(op.params)]) == op.params


def test_retry_class_follows_the_method() -> None:
    for op in OPERATIONS.values():
        assert op.idempotent is (op.method in ("GET", "PUT", "DELETE", "HEAD")), op
        assert (429 in op.retry_statuses) and ((500 in op.retry_statuses) is op.idempotent)


def test_url_fills_the_template_one_segment_each() -> None:
    op = OPERATIONS["getSessionFile"]
    assert op.params == ("id", "filename")
    assert op.url("a/b", "c d?#%") == "/api/sessions/a%2Fb/files/c%20d%3F%23%25"
    assert OPERATIONS["healthCheck"].url() == "/health"
    with pytest.raises(InvalidInputError, match="filename"):
        op.url("s", "..")
    with pytest.raises(InvalidInputError, match="id"):
        op.url("", "f")
