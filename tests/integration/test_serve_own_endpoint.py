"""`durable.serve(...)` in a user's own script, with logging left unconfigured: it says
where it listens, and a taken port is one clear line and a non-zero exit."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.support import PYTHON, ROOT, Process, free_port, wait_for, wait_healthy

# What a user writes: no logging set-up, just serve.
SCRIPT = (
    "import sys, durable; from services.playground.service import Waiter; "
    "durable.serve([Waiter()], sys.argv[1])"
)


def test_serve_prints_where_it_listens_and_what_it_serves(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    endpoint = Process("own-endpoint", [PYTHON, "-c", SCRIPT, address], tmp_path / "own.log")
    endpoint.start()
    try:
        wait_healthy(address, time.monotonic() + 30, endpoint)
        line = wait_for(
            lambda: next(
                (ln for ln in endpoint.log_path.read_text().splitlines() if "listening on" in ln),
                None,
            ),
            message="the start-up line",
        )
        assert address in line and "playground.Waiter" in line, line
    finally:
        assert endpoint.terminate() == 0, endpoint.log_tail()


def test_serve_on_a_taken_port_is_one_line_and_exit_1() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        address = f"127.0.0.1:{held.getsockname()[1]}"
        result = subprocess.run(
            [PYTHON, "-c", SCRIPT, address],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )

    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    # This test's process listens there: the line names it.
    taken = f"error: cannot listen on {address}: already in use by pid {os.getpid()} ("
    assert lines[0].startswith(taken), result.stderr


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("waiter", "'waiter' is not HOST:PORT"),
        ("127.0.0.1:99999", "port 99999 is out of range (0 to 65535)"),
        ("no-such-host.invalid:9000", "cannot resolve 'no-such-host.invalid'"),
    ],
)
def test_serve_on_an_address_that_cannot_work_says_why_in_one_line(
    address: str, reason: str
) -> None:
    # Not left to gRPC: it would bind port 99999 as 34463, and call a name that does not
    # resolve "in use or not local".
    result = subprocess.run(
        [PYTHON, "-c", SCRIPT, address], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 1, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: cannot listen on {address}: {reason}"), result.stderr
