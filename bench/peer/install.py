"""Installs the peer (Restate's server and its Python SDK) into `.data/peer/`, once.

Pinned: the server from npm through this folder's `package.json` and `package-lock.json`
(`npm ci`), the SDK, hypercorn and uvloop into a virtual environment of their own, so that
nothing of theirs reaches ours. Idempotent: what is there at the pinned version is kept.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench.procs import ROOT, BenchError

RESTATE_VERSION = "1.7.12"
# The uvloop pin is ours (the SDK's): the peer's service gets the same event loop as ours.
PYTHON_PINS = {"restate-sdk": "1.2.0", "hypercorn": "0.18.0", "uvloop": "0.23.0"}
PEER_DIR = ROOT / ".data" / "peer"
NPM_DIR = PEER_DIR / "npm"
VENV_DIR = PEER_DIR / "venv"
SERVER_BIN = NPM_DIR / "node_modules/@restatedev/restate-server-linux-x64/bin/restate-server"
HERE = Path(__file__).resolve().parent
INSTALL_TIMEOUT_S = 600


@dataclasses.dataclass(frozen=True)
class Peer:
    """An installed peer.

    Attributes:
        server: The `restate-server` binary.
        python: The peer venv's interpreter (it runs hypercorn).
        versions: What is installed, by name, as printed with the results.
    """

    server: Path
    python: Path
    versions: dict[str, str]


def _run(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    try:
        done = subprocess.run(
            argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BenchError(f"installing the peer: {' '.join(argv[:3])} failed: {e}") from e
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).splitlines()[-15:])
        raise BenchError(
            f"installing the peer: {' '.join(argv[:3])} exited {done.returncode}:\n{tail}"
        )
    return done.stdout


def _server_version() -> str | None:
    if not SERVER_BIN.exists():
        return None
    try:
        out = subprocess.run(
            [str(SERVER_BIN), "--version"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    # "restate-server 1.7.12"
    return out.split()[-1] if out.split() else None


def _python_versions() -> dict[str, str]:
    python = VENV_DIR / "bin" / "python"
    if not python.exists():
        return {}
    script = (
        "import importlib.metadata as m, json, platform\n"
        "out = {'python': platform.python_version()}\n"
        "for name in ('restate-sdk', 'hypercorn', 'uvloop', 'h2'):\n"
        "    try: out[name] = m.version(name)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(out))\n"
    )
    try:
        out = subprocess.run(
            [str(python), "-c", script], capture_output=True, text=True, timeout=60
        ).stdout
        versions: dict[str, str] = json.loads(out)
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return {}
    return versions


def _pins_met(versions: dict[str, str]) -> bool:
    return all(versions.get(name) == version for name, version in PYTHON_PINS.items())


def ensure_installed(log: bool = True) -> Peer:
    """The peer, installed first where missing or at another version.

    Raises:
        BenchError: npm or python3 is missing, or an install step failed.
    """
    if _server_version() != RESTATE_VERSION:
        npm = shutil.which("npm")
        if npm is None:
            raise BenchError("the peer needs npm to install Restate's server; none on PATH")
        if log:
            print(f"installing restate-server {RESTATE_VERSION} into {NPM_DIR}", flush=True)
        NPM_DIR.mkdir(parents=True, exist_ok=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copyfile(HERE / name, NPM_DIR / name)
        # --ignore-scripts: a dependency's postinstall (@scarf/scarf) reports the install.
        env = {**os.environ, "SCARF_ANALYTICS": "false"}
        _run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"], NPM_DIR, env)
        if _server_version() != RESTATE_VERSION:
            raise BenchError(f"npm ci did not leave restate-server {RESTATE_VERSION} in {NPM_DIR}")
    if not _pins_met(_python_versions()):
        if log:
            print(f"installing {PYTHON_PINS} into {VENV_DIR}", flush=True)
        if not (VENV_DIR / "bin" / "python").exists():
            # The base interpreter, not ours: the peer's venv must not see our packages.
            base = getattr(sys, "_base_executable", sys.executable)
            _run([base, "-m", "venv", str(VENV_DIR)], ROOT)
        pins = [f"{name}=={version}" for name, version in PYTHON_PINS.items()]
        pip = [str(VENV_DIR / "bin" / "python"), "-m", "pip", "install", "-q"]
        _run([*pip, "--disable-pip-version-check", *pins], ROOT)
        if not _pins_met(_python_versions()):
            raise BenchError(f"pip did not leave {PYTHON_PINS} in {VENV_DIR}")
    versions = {"restate-server": RESTATE_VERSION, **_python_versions()}
    return Peer(SERVER_BIN, VENV_DIR / "bin" / "python", versions)
