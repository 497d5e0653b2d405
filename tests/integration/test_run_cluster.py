"""`make cluster` (`python -m services.run_cluster`): a taken port is named before anything
starts; the three NATS servers, three nodes and four services start, are registered and
are stopped, every one, by a hangup.

Every address is moved to a free port with the variables the launcher reads, and the
data to the test's temporary directory, so a developer's own `make cluster` is not
disturbed. The nodes are real cluster nodes (`python -m broker --nats ...`).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
from pathlib import Path

import grpc
from trips import trips_pb2, trips_pb2_grpc

from tests.support import PYTHON, ROOT, Process, free_port, listening, pid_alive, wait_for

ADDRESSES = (
    *(f"CLUSTER_NODE{n}_{kind}" for n in (1, 2, 3) for kind in ("INGRESS", "ADMIN")),
    "FLIGHTS_LISTEN",
    "CARS_LISTEN",
    "PAYMENTS_LISTEN",
    "TRIPS_LISTEN",
)
NATS_PORTS = ("CLUSTER_NATS_CLIENT_PORTS", "CLUSTER_NATS_ROUTE_PORTS", "CLUSTER_NATS_HTTP_PORTS")


def _cluster_env(tmp_path: Path) -> dict[str, str]:
    env = {name: f"127.0.0.1:{free_port()}" for name in ADDRESSES}
    for name in NATS_PORTS:
        env[name] = ",".join(str(free_port()) for _ in range(3))
    env["CLUSTER_DATA_DIR"] = str(tmp_path / "cluster")
    env["TRIPS_NOTIFICATION_LOG"] = str(tmp_path / "trips" / "notifications.log")
    return env


def _every_address(env: dict[str, str]) -> list[str]:
    nats = [f"127.0.0.1:{port}" for name in NATS_PORTS for port in env[name].split(",")]
    return [*(env[name] for name in ADDRESSES), *nats]


def test_a_taken_port_is_named_and_nothing_starts(tmp_path: Path) -> None:
    env = _cluster_env(tmp_path)
    route_port = int(env["CLUSTER_NATS_ROUTE_PORTS"].split(",")[1])
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        held.bind(("127.0.0.1", route_port))
        held.listen()
        result = subprocess.run(
            [PYTHON, "-m", "services.run_cluster"],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        others = [a for a in _every_address(env) if a != f"127.0.0.1:{route_port}"]
        served = [address for address in others if listening(address)]

    assert result.returncode == 1, result
    named = f"127.0.0.1:{route_port} (NATS server n2's routes, CLUSTER_NATS_ROUTE_PORTS)"
    assert named in result.stderr, result.stderr
    assert "already in use" in result.stderr.lower(), result.stderr
    assert "nothing was started" in result.stderr, result.stderr
    assert "started" not in result.stdout, result.stdout
    assert not served, f"something started: {served}"
    assert not (tmp_path / "cluster").exists()


def test_the_cluster_starts_and_a_hangup_stops_every_process(tmp_path: Path) -> None:
    env = _cluster_env(tmp_path)
    # `env` execs the launcher in its place: same pid, the variables set for it alone.
    settings = [f"{name}={value}" for name, value in env.items()]
    args = ["env", *settings, PYTHON, "-m", "services.run_cluster"]
    launcher = Process("run_cluster", args, tmp_path / "run_cluster.log").start()
    children: list[int] = []

    def running() -> bool:
        if "cluster is running" in launcher.log_path.read_text():
            return True
        launcher.check_alive()
        return False

    try:
        wait_for(
            running, timeout=120, message=lambda: "the cluster to start\n" + launcher.log_tail()
        )
        log = launcher.log_path.read_text()
        children = [int(p) for p in re.findall(r"^started .* \(pid (\d+)\)$", log, re.MULTILINE)]
        # Three NATS servers, three nodes, four services.
        assert len(children) == 10, launcher.log_tail()
        for n in (1, 2, 3):  # every node serves a saga, whichever partition it lands in
            with grpc.insecure_channel(env[f"CLUSTER_NODE{n}_INGRESS"]) as channel:
                reply = trips_pb2_grpc.TripsStub(channel).Reserve(
                    trips_pb2.ReserveTripRequest(), timeout=60
                )
            assert reply.status == "success", (n, reply)
        assert log.count("registered http://") == 4, log
        node1_admin = env["CLUSTER_NODE1_ADMIN"]
        assert f"--admin {node1_admin} cluster status" in log, log
        for n in (1, 2, 3):
            ingress = env[f"CLUSTER_NODE{n}_INGRESS"]
            assert f"'{{}}' {ingress} trips.Trips/Reserve    # through node{n}" in log, log

        # As when the terminal closes: the hangup reaches make's (here: the launcher's) group.
        assert launcher.pid is not None and launcher.popen is not None
        os.killpg(launcher.pid, signal.SIGHUP)
        assert launcher.popen.wait(timeout=60) == 0, launcher.log_tail()
        wait_for(
            lambda: not any(pid_alive(pid) for pid in children),
            timeout=30,
            message=lambda: f"children {children} to exit\n{launcher.log_tail()}",
        )
        still = [address for address in _every_address(env) if listening(address)]
        assert not still, f"still served: {still}\n{launcher.log_tail()}"
    finally:
        launcher.kill()
        for pid in children:  # orphans of a failed run: ours, so stop them by pid
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
