"""`make run` (`python -m services.run_demo`): a taken port is named before anything
starts, and a hangup (the terminal closed) stops every child instead of orphaning them.

Every address is moved to a free port with the variables the demo reads, and the data
dir and the trips notification log to the test's temporary directory, so a developer's
own `make run` is not disturbed.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
from pathlib import Path

from tests.support import PYTHON, ROOT, Process, free_port, listening, pid_alive, wait_for

VARIABLES = (
    "BROKER_INGRESS",
    "BROKER_ADMIN",
    "FLIGHTS_LISTEN",
    "CARS_LISTEN",
    "PAYMENTS_LISTEN",
    "TRIPS_LISTEN",
)


def _demo_env(tmp_path: Path) -> dict[str, str]:
    env = {name: f"127.0.0.1:{free_port()}" for name in VARIABLES}
    env["BROKER_DATA_DIR"] = str(tmp_path / "broker")
    env["TRIPS_NOTIFICATION_LOG"] = str(tmp_path / "trips" / "notifications.log")
    return env


def test_a_taken_port_is_named_and_nothing_starts(tmp_path: Path) -> None:
    env = _demo_env(tmp_path)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        host, port = env["TRIPS_LISTEN"].rsplit(":", 1)
        held.bind((host, int(port)))
        held.listen()
        result = subprocess.run(
            [PYTHON, "-m", "services.run_demo"],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )

    assert result.returncode == 1, result
    assert f"{env['TRIPS_LISTEN']} (trips, TRIPS_LISTEN)" in result.stderr, result.stderr
    assert "already in use" in result.stderr.lower(), result.stderr
    assert "started" not in result.stdout and "registered" not in result.stdout, result.stdout
    assert "demo is running" not in result.stdout, result.stdout
    for name in ("BROKER_INGRESS", "BROKER_ADMIN", "FLIGHTS_LISTEN"):
        assert not listening(env[name]), f"{name} {env[name]} is served: something started"


def test_sighup_stops_every_child(tmp_path: Path) -> None:
    env = _demo_env(tmp_path)
    # `env` execs the demo in its place: same pid, the variables set for it alone.
    settings = [f"{name}={value}" for name, value in env.items()]
    args = ["env", *settings, PYTHON, "-m", "services.run_demo"]
    demo = Process("run_demo", args, tmp_path / "demo.log").start()
    children: list[int] = []

    def running() -> bool:
        if "demo is running" in demo.log_path.read_text():
            return True
        demo.check_alive()
        return False

    try:
        wait_for(
            running,
            timeout=90,
            message=lambda: "the demo to start\n" + demo.log_tail(),
        )
        children = [int(p) for p in re.findall(r"\(pid (\d+)\)", demo.log_path.read_text())]
        assert len(children) == 5, demo.log_tail()

        # As when the terminal closes: the hangup reaches make's (here: the demo's) group.
        assert demo.pid is not None
        os.killpg(demo.pid, signal.SIGHUP)

        assert demo.popen is not None
        assert demo.popen.wait(timeout=30) == 0, demo.log_tail()
        wait_for(
            lambda: not any(pid_alive(pid) for pid in children),
            timeout=30,
            message=lambda: f"children {children} to exit\n{demo.log_tail()}",
        )
        for name in VARIABLES:
            assert not listening(env[name]), f"{name} {env[name]} is still served"
    finally:
        demo.kill()
        for pid in children:  # orphans of a failed run: ours, so stop them by pid
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
