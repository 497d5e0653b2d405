"""`durable.process`: spawn a process, wait until it serves, and fail with its log tail when
it exits or does not come up in time (the helper behind tests/support.py, bench/ and
`make run`)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from durable.process import NotServing, ProcessExited, spawn, wait_serving

from tests.support import ROOT, free_port


def test_a_serving_endpoint_is_waited_for(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    log = tmp_path / "logs" / "flights.log"
    child = spawn(
        "flights",
        [sys.executable, "-m", "services.flights", "--listen", address],
        log=log,
        append=True,
        cwd=ROOT,
    )
    try:
        wait_serving(address, deadline=time.monotonic() + 30, watch=[child])
        assert child.popen.poll() is None
        assert log.read_text().startswith("=== start: ")
    finally:
        child.popen.terminate()
        child.popen.wait(timeout=10)


def test_an_exit_fails_the_wait_at_once_with_the_log_tail(tmp_path: Path) -> None:
    script = "import sys; print('bad flag --nope', file=sys.stderr); sys.exit(3)"
    child = spawn("doomed", [sys.executable, "-c", script], log=tmp_path / "doomed.log")
    started = time.monotonic()
    with pytest.raises(ProcessExited) as failure:
        wait_serving(f"127.0.0.1:{free_port()}", deadline=started + 30, watch=[child])
    assert time.monotonic() - started < 20
    message = str(failure.value)
    assert f"doomed (pid {child.pid}) exited with code 3" in message
    assert "bad flag --nope" in message


def test_a_process_that_never_serves_times_out_with_its_log(tmp_path: Path) -> None:
    script = "import time; print('still thinking', flush=True); time.sleep(60)"
    child = spawn("silent", [sys.executable, "-c", script], log=tmp_path / "silent.log")
    address = f"127.0.0.1:{free_port()}"
    try:
        with pytest.raises(NotServing) as failure:
            wait_serving(address, deadline=time.monotonic() + 1.5, watch=[child])
        message = str(failure.value)
        assert f"silent is not healthy on {address}" in message
        assert "still thinking" in message
    finally:
        child.popen.kill()
        child.popen.wait(timeout=10)
