"""Generate Python code for your own `.proto` files, in your own repository.

::

    python -m durable.codegen -I proto --out gen proto/shop/shop.proto

writes, for each file, protoc's `_pb2.py`, `_pb2.pyi` and `_pb2_grpc.py` and this SDK's
`_durable.py` (typed durable clients and handler base classes) under `--out`, laid out
as protoc lays them out: by the file's path under its `-I` directory
(`proto/shop/shop.proto` with `-I proto` gives `gen/shop/shop_durable.py`). `--out` and
the `__init__.py` files of the packages in it are created when missing. The directory
given to `--out` is an import root: put it on `sys.path` (`PYTHONPATH=gen`, or pytest's
`pythonpath = ["gen"]`).

Everything it needs comes with the SDK: `durable/v1/options.proto` (and the other
`durable/v1` protos), protoc (from grpcio-tools), and `protoc-gen-durable`, run with the
interpreter this command runs on, so no virtualenv needs to be on `PATH`.
"""

from __future__ import annotations

import argparse
import importlib.resources
import importlib.util
import os
import stat
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

__all__ = ["CodegenError", "export_protos", "generate", "main"]


class CodegenError(Exception):
    """Generation failed: a usage error (a missing file, a file outside every `-I`;
    `exit_code` 2) or a file that protoc rejected (`exit_code` 1, protoc's own message
    already on stderr)."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def export_protos(into: str | os.PathLike[str]) -> list[Path]:
    """Copies the SDK's shipped `durable/v1/*.proto` to `into/durable/v1/`.

    `generate` uses a private copy as an include root holding only these files, rather
    than the directory the SDK is installed in (site-packages), so protoc sees no other
    package's `.proto` files. Tools that need them inside your repository (`buf`) get
    them with `python -m durable.codegen --export-protos DIR`.

    Returns:
        The files written.
    """
    shipped = importlib.resources.files("durable.v1")
    names = [r.name for r in shipped.iterdir() if r.name.endswith(".proto")]
    if "options.proto" not in names:
        raise CodegenError(
            "this durable-sdk installation has no durable/v1/options.proto "
            f"(looked in {shipped}); reinstall the SDK, or run `make proto` in a checkout"
        )
    target = Path(into) / "durable" / "v1"
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        (target / name).write_bytes(shipped.joinpath(name).read_bytes())
    return [target / name for name in sorted(names)]


def _plugin_wrapper(into: Path) -> Path:
    """An executable that runs `protoc-gen-durable` with this very interpreter.

    protoc runs plugins as programs; pointing it at this wrapper instead of a console
    script on `PATH` means the plugin always matches the SDK this command runs from.
    """
    if os.name == "nt":
        wrapper = into / "protoc-gen-durable.cmd"
        wrapper.write_text(f'@"{sys.executable}" -m durable._codegen.plugin %*\r\n')
    else:
        wrapper = into / "protoc-gen-durable"
        wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m durable._codegen.plugin "$@"\n')
        wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return wrapper


def _relative_to_includes(file: Path, includes: Sequence[Path]) -> Path:
    """`file`'s path under the first `-I` directory that contains it (its protoc name)."""
    resolved = file.resolve()
    for include in includes:
        try:
            return resolved.relative_to(include.resolve())
        except ValueError:
            continue
    shown = ", ".join(str(i) for i in includes)
    raise CodegenError(
        f"{file} is not inside any -I directory ({shown}); add -I with the directory that "
        "its name and its imports are relative to (e.g. -I proto for proto/shop/shop.proto)"
    )


def _add_package_inits(out: Path, generated: Sequence[Path]) -> None:
    """Creates an empty `__init__.py` in every directory between `out` and the generated
    modules, so that tools which want regular packages (mypy, older importers) find them.
    `out` itself is the import root and gets none; existing files are left alone.

    None goes under a top-level name installed elsewhere (`google` for vendored
    `google/api/*.proto`, `grpc` for `grpc/health/v1/health.proto`, a standard library
    module): a regular package there would hide the installed one (`google.protobuf`,
    grpcio) from everything on the path after `out`. protoc's own layout (no
    `__init__.py`) merges with an installed namespace package instead."""
    root = out.resolve()
    for module in generated:
        directory = module.resolve().parent
        if directory == root or root not in directory.parents:
            continue
        top = directory.relative_to(root).parts[0]
        if _installed_elsewhere(top, root):
            continue
        while directory != root and root in directory.parents:
            (directory / "__init__.py").touch(exist_ok=True)
            directory = directory.parent


def _installed_elsewhere(name: str, root: Path) -> bool:
    """Whether the top-level module or package `name` is importable from outside
    `root` (installed, or in the standard library)."""
    if name in sys.stdlib_module_names:
        return True
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return False
    if spec is None:
        return False
    places = list(spec.submodule_search_locations or []) or [spec.origin or ""]
    return any(place and not Path(place).resolve().is_relative_to(root) for place in places)


def generate(
    files: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    includes: Sequence[str | os.PathLike[str]] = (".",),
) -> list[Path]:
    """Runs protoc with the Python, pyi, gRPC and durable generators.

    Args:
        files: The `.proto` files to generate code for; each must lie under an include.
        out: The output root; created when missing.
        includes: The `-I` directories, searched in order (the SDK's own protos and
            protobuf's well-known types are added after them).

    Returns:
        The paths of the generated modules.

    Raises:
        CodegenError: A file is missing or outside every include, or protoc failed (its
            message is on stderr).
    """
    # Imported here so that `import durable.codegen` stays cheap (`--help`).
    from grpc_tools import protoc

    from ._codegen.plugin import durable_path

    include_dirs = [Path(i) for i in includes]
    for include in include_dirs:
        if not include.is_dir():
            raise CodegenError(f"-I {include}: no such directory")
    if not files:
        raise CodegenError("no .proto files given")
    names: list[Path] = []
    for file in map(Path, files):
        if not file.is_file():
            raise CodegenError(f"{file}: no such file")
        names.append(_relative_to_includes(file, include_dirs))
    out_dir = Path(out)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise CodegenError(f"--out {out_dir}: a file is in the way, not a directory") from None
    # A file whose services were all removed gets no `_durable.py` this time: one left
    # from before would still import, and fail on the service it no longer has.
    for n in names:
        (out_dir / durable_path(n.as_posix())).unlink(missing_ok=True)
    well_known = Path(str(importlib.resources.files("grpc_tools") / "_proto"))
    with tempfile.TemporaryDirectory(prefix="durable-codegen-") as tmp:
        shipped = Path(tmp) / "include"
        export_protos(shipped)
        plugin = _plugin_wrapper(Path(tmp))
        args = ["grpc_tools.protoc"]
        args += [f"--proto_path={i}" for i in [*include_dirs, shipped, well_known]]
        args += [f"--plugin=protoc-gen-durable={plugin}"]
        args += [f"--{kind}_out={out_dir}" for kind in ("python", "pyi", "grpc_python", "durable")]
        args += [str(n) for n in names]
        code = protoc.main(args)
    if code != 0:
        raise CodegenError(f"protoc failed (exit code {code}); its message is above", 1)
    # Files without a service get no `_durable.py`; report only what exists. Each module
    # goes where protoc's Python generator puts it (`a-b/c.v1.proto`: `a_b/c/v1_pb2.py`).
    suffixes = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_durable.py")
    stems = [durable_path(n.as_posix()).removesuffix("_durable.py") for n in names]
    generated = [out_dir / (stem + suffix) for stem in stems for suffix in suffixes]
    generated = [g for g in generated if g.exists()]
    _add_package_inits(out_dir, generated)
    return generated


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m durable.codegen",
        description="Generate _pb2, _pb2.pyi, _pb2_grpc and _durable modules for .proto "
        "files, laid out under --out by each file's path under its -I directory. "
        '`import "durable/v1/options.proto";` works without any -I of yours.',
    )
    parser.add_argument(
        "-I",
        "--proto_path",
        dest="includes",
        action="append",
        metavar="PROTO_DIR",
        help="a root that imports and the files' names are relative to (repeatable; "
        "default: the current directory)",
    )
    parser.add_argument(
        "--out",
        metavar="OUT_DIR",
        help="where the modules go (created when missing); put it on PYTHONPATH",
    )
    parser.add_argument(
        "--export-protos",
        metavar="DIR",
        help="only copy the SDK's durable/v1/*.proto to DIR/durable/v1 (for buf) and exit",
    )
    parser.add_argument("files", nargs="*", metavar="FILE.proto", help="the files to generate")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m durable.codegen` (also the `durable-codegen` script).

    Returns:
        0 on success, 1 when protoc rejected a file, 2 for a usage error (a missing file,
        a file outside every `-I`).
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if args.export_protos:
        try:
            written = export_protos(args.export_protos)
        except CodegenError as e:
            print(f"durable.codegen: {e}", file=sys.stderr)
            return e.exit_code
        print(f"durable.codegen: wrote {len(written)} file(s) to {written[0].parent}")
        return 0
    if not args.out or not args.files:
        parser.error("give --out OUT_DIR and at least one FILE.proto (or --export-protos DIR)")
    try:
        generate(args.files, args.out, args.includes or ["."])
    except CodegenError as e:
        print(f"durable.codegen: {e}", file=sys.stderr)
        return e.exit_code
    print(f"durable.codegen: generated {len(args.files)} file(s) under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
