"""The broker and the benchmarks import only the SDK's public modules; the wire pieces
they share with it are `durable.wire`, with an explicit `__all__`."""

from __future__ import annotations

import ast
from pathlib import Path

import durable.wire
from durable import _framing, _loop

ROOT = Path(__file__).resolve().parents[2]


def _private_sdk_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found += [
            f"{path.relative_to(ROOT)}:{node.lineno} {n}"
            for n in names
            if n.startswith("durable.") and any(p.startswith("_") for p in n.split(".")[1:])
        ]
    return found


def test_the_broker_and_bench_import_no_private_sdk_module() -> None:
    offending = [
        hit
        for folder in ("broker", "bench")
        for path in sorted((ROOT / folder).rglob("*.py"))
        for hit in _private_sdk_imports(path)
    ]
    assert offending == []


def test_the_wire_module_exports_what_it_documents() -> None:
    assert sorted(durable.wire.__all__) == [
        "FRAME_BYTES",
        "JOURNAL_EXPORT_FORMAT",
        "Unparsed",
        "awakeable_id",
        "describe_command",
        "frames",
        "lenient",
        "loop_name",
        "parse_awakeable_id",
        "run",
    ]
    # The SDK hands awakeable ids out and the broker parses them: one form for both.
    assert durable.wire.parse_awakeable_id(durable.wire.awakeable_id("inv_x", 3)) == ("inv_x", 3)
    # The old private names still work for code written before `durable.wire`.
    assert _framing.frames is durable.wire.frames
    assert _loop.run is durable.wire.run
