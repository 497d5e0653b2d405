"""`make dist`: the SDK and broker wheels and sdists, built out of tree.

Each distribution's sources are copied to a temporary staging directory and built there
with the `build` frontend (`--no-isolation`: the dev venv already has the pinned
setuptools, so nothing is downloaded), so no `build/` or `*.egg-info` is left in the
checkout. The SDK's generated protocol code (`sdk_python/durable/v1`) must exist:
`make dist` runs `make proto` first.

    python tools/dist.py --outdir dist
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SDK = ROOT / "sdk_python"
# What the broker's own project is made of (pyproject.toml's packages, setup.py's inputs).
BROKER_FILES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md")
# Never staged: what builds, editable installs and test runs leave behind.
LITTER = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")
# Files each wheel must hold, and prefixes it must not: a quick check that the wheel is
# what users need, not only that setuptools ran.
REQUIRED = {
    "durable_sdk": (
        "durable/__init__.py",
        "durable/codegen.py",
        "durable/_codegen/plugin.py",
        "durable/v1/options.proto",
        "durable/v1/options_pb2.py",
        "durable/v1/protocol_pb2_grpc.py",
    ),
    "durable_broker": ("broker/__main__.py", "broker/cli.py"),
}
FORBIDDEN = ("services/", "tests/", "gen/", "bench/")


class DistError(Exception):
    """The distributions could not be built; the message says what to do."""


def _stage_sdk(stage: Path) -> Path:
    generated = SDK / "durable" / "v1"
    if not (generated / "options_pb2.py").exists() or not (generated / "options.proto").exists():
        raise DistError(f"{generated} has no generated code or protos: run `make proto` first")
    target = stage / "sdk"
    shutil.copytree(SDK, target, ignore=LITTER)
    return target


def _stage_broker(stage: Path) -> Path:
    target = stage / "broker"
    target.mkdir()
    for name in BROKER_FILES:
        shutil.copy2(ROOT / name, target / name)
    shutil.copytree(ROOT / "broker", target / "broker", ignore=LITTER)
    version = Path("sdk_python", "durable", "_version.py")
    (target / version).parent.mkdir(parents=True)
    shutil.copy2(ROOT / version, target / version)
    return target


def _build(project: Path, outdir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(outdir), str(project)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise DistError(
            f"building {project.name} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )


def _check_wheel(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    project = wheel.name.split("-")[0]
    missing = [n for n in REQUIRED.get(project, ()) if n not in names]
    stray = sorted(n for n in names if n.startswith(FORBIDDEN))
    if missing or stray:
        raise DistError(f"{wheel.name}: missing {missing}, must not contain {stray[:5]}")


def build(outdir: Path) -> list[Path]:
    """Builds both distributions into `outdir` (created when missing).

    Returns:
        The wheels and sdists built, SDK first.

    Raises:
        DistError: The generated code is missing, a build failed, or a wheel lacks
            something users need.
    """
    with tempfile.TemporaryDirectory(prefix="durable-dist-") as tmp:
        stage = Path(tmp)
        # Built apart, then moved: `outdir` gets nothing unless both built and passed.
        out = stage / "out"
        for project in (_stage_sdk(stage), _stage_broker(stage)):
            _build(project, out)
        for wheel in out.glob("*.whl"):
            _check_wheel(wheel)
        outdir.mkdir(parents=True, exist_ok=True)
        built = []
        for artifact in sorted(out.iterdir(), key=lambda p: ("broker" in p.name, p.name)):
            built.append(outdir.resolve() / artifact.name)
            shutil.move(artifact, built[-1])
    return built


def main() -> int:
    """`python tools/dist.py [--outdir DIR]`."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--outdir", type=Path, default=ROOT / "dist")
    args = parser.parse_args()
    try:
        built = build(args.outdir)
    except DistError as e:
        print(f"dist: {e}", file=sys.stderr)
        return 1
    for path in built:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
