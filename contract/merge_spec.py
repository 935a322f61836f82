"""Build the merged OpenAPI document used by the contract tests.

The merged document is the current spec (``spec/mix-openapi.yaml``) plus the
operations that only the 0.2 spec (``spec/mix-openapi-0.2.yaml``) has, together
with every component schema those operations reference that the current spec
lacks. The client supports both server generations, so the mock server must
serve both sets of routes.

Usage::

    python contract/merge_spec.py          # (re)write contract/mix-openapi-merged.yaml
    python contract/merge_spec.py --check  # exit 1 if the committed file is stale
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CURRENT_SPEC = ROOT / "spec" / "mix-openapi.yaml"
OLD_SPEC = ROOT / "spec" / "mix-openapi-0.2.yaml"
MERGED_SPEC = Path(__file__).resolve().parent / "mix-openapi-merged.yaml"

# Operations served by 0.2-era servers only; the client keeps them.
OLD_ONLY_OPERATIONS = ("forkSession", "setApiKey", "initiateOAuthLogin")

HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

HEADER = (
    "# Merged Mix OpenAPI document for the contract tests.\n"
    "# Written by contract/merge_spec.py from spec/mix-openapi.yaml plus the\n"
    "# 0.2-only operations {ops} of spec/mix-openapi-0.2.yaml.\n"
    "# Do not edit by hand: change the inputs and run the script again.\n"
)


def load(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as fh:
        doc = yaml.safe_load(fh)
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: not an OpenAPI document")
    return doc


def iter_operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(path, method, operation) for every operation of ``doc``."""
    out = []
    for path, item in doc.get("paths", {}).items():
        for method, op in item.items():
            if method in HTTP_METHODS and isinstance(op, dict):
                out.append((path, method, op))
    return out


def schema_refs(node: Any) -> set[str]:
    """Names of every ``#/components/schemas/X`` reference inside ``node``."""
    found: set[str] = set()
    stack = [node]
    while stack:
        cur = stack.pop()
        if isinstance(cur, dict):
            ref = cur.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
                found.add(ref.rsplit("/", 1)[1])
            stack.extend(cur.values())
        elif isinstance(cur, list):
            stack.extend(cur)
    return found


def merge(current: dict[str, Any], old: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(current)
    paths = merged.setdefault("paths", {})
    schemas = merged.setdefault("components", {}).setdefault("schemas", {})
    old_schemas = old.get("components", {}).get("schemas", {})
    existing_ids = {op.get("operationId") for _, _, op in iter_operations(merged)}

    wanted = set(OLD_ONLY_OPERATIONS)
    for path, method, op in iter_operations(old):
        op_id = op.get("operationId")
        if op_id not in wanted:
            continue
        wanted.discard(op_id)
        if op_id in existing_ids:
            raise ValueError(f"{op_id} is already in the current spec; drop it from the list")
        item = paths.setdefault(path, {})
        if method in item:
            raise ValueError(f"{method.upper()} {path} already exists in the current spec")
        old_item = old["paths"][path]
        if "parameters" in old_item and "parameters" not in item:
            item["parameters"] = copy.deepcopy(old_item["parameters"])
        item[method] = copy.deepcopy(op)

        # Pull in referenced schemas (transitively) that the current spec lacks.
        todo = schema_refs(op) | schema_refs(old_item.get("parameters", []))
        while todo:
            name = todo.pop()
            if name in schemas:
                continue
            if name not in old_schemas:
                raise ValueError(f"{op_id} references unknown schema {name}")
            schemas[name] = copy.deepcopy(old_schemas[name])
            todo |= schema_refs(old_schemas[name])
    if wanted:
        raise ValueError(f"operations not found in the 0.2 spec: {sorted(wanted)}")

    merged["paths"] = dict(sorted(paths.items()))
    merged["components"]["schemas"] = dict(sorted(schemas.items()))
    return merged


def render(merged: dict[str, Any]) -> str:
    body = yaml.safe_dump(merged, sort_keys=False, allow_unicode=True, width=100)
    return HEADER.format(ops=", ".join(OLD_ONLY_OPERATIONS)) + body


def build() -> str:
    return render(merge(load(CURRENT_SPEC), load(OLD_SPEC)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the merged file is stale")
    args = parser.parse_args(argv)
    text = build()
    if args.check:
        if not MERGED_SPEC.exists() or MERGED_SPEC.read_text(encoding="utf-8") != text:
            print(f"{MERGED_SPEC} is stale: run python contract/merge_spec.py", file=sys.stderr)
            return 1
        return 0
    MERGED_SPEC.write_text(text, encoding="utf-8")
    print(f"wrote {MERGED_SPEC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
