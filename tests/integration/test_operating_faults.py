"""Operating faults and access control: a second broker on one data dir, a corrupted
data dir, SIGTERM, the admin token, the endpoint secret, TLS."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import grpc
import pytest
from durable.v1 import admin_pb2, admin_pb2_grpc, invocation_pb2
from flights import flights_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from playground import playground_pb2 as pg

from tests.support import (
    PLAYGROUND,
    PYTHON,
    ROOT,
    Cluster,
    Process,
    free_port,
    wait_for,
    wait_healthy,
)


def _broker(tmp: Path, *extra: str, data: Path | None = None) -> tuple[Process, str, str]:
    ingress, admin = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    args = [PYTHON, "-m", "broker", "--data-dir", str(data or tmp / "data")]
    args += ["--ingress", ingress, "--admin", admin, *extra]
    return Process("broker", args, tmp / f"broker-{free_port()}.log"), ingress, admin


def _run_to_exit(tmp: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "broker", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def test_a_second_broker_on_the_same_data_dir_refuses_to_start(tmp_path: Path) -> None:
    first, _, admin = _broker(tmp_path)
    first.start()
    try:
        wait_healthy(admin, time.monotonic() + 30, first)
        data = str(tmp_path / "data")
        ports = ["--ingress", f"127.0.0.1:{free_port()}", "--admin", f"127.0.0.1:{free_port()}"]
        second = _run_to_exit(tmp_path, "--data-dir", data, *ports)
        assert second.returncode == 1
        assert "in use by another broker" in second.stderr
        # The first one is unharmed.
        wait_healthy(admin, time.monotonic() + 5, first)
    finally:
        first.terminate()


def test_a_corrupted_data_dir_gives_a_clear_error_and_no_start(tmp_path: Path) -> None:
    broker, _, admin = _broker(tmp_path)
    broker.start()
    wait_healthy(admin, time.monotonic() + 30, broker)
    broker.terminate()
    (tmp_path / "data" / "CURRENT").write_text("garbage")
    ports = ["--ingress", f"127.0.0.1:{free_port()}", "--admin", f"127.0.0.1:{free_port()}"]
    result = _run_to_exit(tmp_path, "--data-dir", str(tmp_path / "data"), *ports)
    assert result.returncode == 1
    assert "cannot open the data dir" in result.stderr
    assert "Corruption" in result.stderr
    assert "broker ready" not in result.stderr


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--metrics", "metrics-host", "not HOST:PORT: 'metrics-host'"),
        ("--console", "127.0.0.1:http", "not HOST:PORT: '127.0.0.1:http'"),
        ("--admin", "127.0.0.1:99999", "port 99999 is out of range"),
    ],
)
def test_an_address_that_cannot_be_listened_on_is_refused_before_anything_opens(
    tmp_path: Path, flag: str, value: str, message: str
) -> None:
    data = tmp_path / "data"
    ports = ["--ingress", f"127.0.0.1:{free_port()}", "--admin", f"127.0.0.1:{free_port()}"]
    result = _run_to_exit(tmp_path, "--data-dir", str(data), *ports, flag, value)
    assert result.returncode == 2, result.stderr
    assert f"argument {flag}: " in result.stderr and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not data.exists()


@pytest.mark.parametrize("flag", ["--admin", "--ingress"])
def test_a_taken_port_is_named_with_the_process_listening_on_it(tmp_path: Path, flag: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", free_port()))
        held.listen()
        taken = f"127.0.0.1:{held.getsockname()[1]}"
        addresses = {"--ingress": f"127.0.0.1:{free_port()}", "--admin": f"127.0.0.1:{free_port()}"}
        addresses[flag] = taken
        args = [arg for pair in addresses.items() for arg in pair]
        result = _run_to_exit(tmp_path, "--data-dir", str(tmp_path / "data"), *args)
    assert result.returncode == 1, result.stderr
    # This test's own process holds the port: the message names it, grpc's bare
    # "Failed to bind to address" does not reach the operator.
    failed = next(line for line in result.stderr.splitlines() if "broker failed" in line)
    assert taken in failed and f"already in use by pid {os.getpid()} (" in failed, failed
    assert "Failed to bind" not in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr


def test_a_start_that_fails_on_a_taken_port_lets_go_of_what_it_bound(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", free_port()))
        held.listen()
        taken = f"127.0.0.1:{held.getsockname()[1]}"
        ingress, admin = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        data = str(tmp_path / "data")
        args = ["--data-dir", data, "--ingress", ingress, "--admin", admin, "--metrics", taken]
        result = _run_to_exit(tmp_path, *args)
    assert result.returncode == 1, result.stderr
    assert "broker failed" in result.stderr and "in use" in result.stderr, result.stderr
    assert "broker ready" not in result.stderr
    # The ingress and admin servers it had started were stopped on the loop, not left to
    # the garbage collector after the loop closed ("Event loop is closed").
    assert "Exception ignored" not in result.stderr, result.stderr


def test_sigterm_shuts_down_promptly_and_cleanly(tmp_path: Path) -> None:
    with Cluster(tmp_path) as cluster:
        started = time.monotonic()
        assert cluster.broker.popen is not None
        cluster.broker.popen.send_signal(signal.SIGTERM)
        code = cluster.broker.popen.wait(timeout=15)
        assert code == 0
        assert time.monotonic() - started < 10
        assert "shutting down" in cluster.broker.log_path.read_text()
        # And it comes back on the same data dir.
        cluster.start_broker()


def test_sigterm_lets_a_running_side_effect_finish_instead_of_running_it_twice(
    tmp_path: Path,
) -> None:
    """A graceful stop waits (up to a second) for the attempts still running. Cut short,
    an attempt in the middle of a `ctx.run` would run that side effect again after the
    restart, its result not journaled yet: here it would have run twice."""
    with Cluster(tmp_path, services=(PLAYGROUND,)) as cluster:
        work = pg.WorkRequest(group="sigterm", millis=600)
        # The caller gives up at once; the invocation goes on without one waiting.
        with pytest.raises(grpc.RpcError) as gone:
            cluster.busy.Work(work, timeout=0.2)
        assert gone.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

        def began() -> list[str]:
            stats = cluster.busy.Stats(pg.WorkRequest(group="sigterm"), timeout=30)
            return list(stats.items)

        wait_for(lambda: began() == ["1"], timeout=30, message="the side effect to start")
        cluster.restart_broker()
        (done,) = [i for i in cluster.invocations(service="playground.Busy") if i.method == "Work"]
        wait_for(
            lambda: cluster.invocation(done.id).status == invocation_pb2.COMPLETED,
            timeout=30,
            message="the invocation to complete",
        )
        assert began() == ["1"], "the side effect ran again after the restart"


def test_the_admin_token_is_required_when_set(tmp_path: Path) -> None:
    broker, ingress, admin = _broker(tmp_path, "--admin-token", "s3cret")
    broker.start()
    try:
        wait_healthy(admin, time.monotonic() + 30, broker)  # health stays open
        with grpc.insecure_channel(admin) as channel:
            stub = admin_pb2_grpc.AdminStub(channel)
            with pytest.raises(grpc.RpcError) as denied:
                stub.ListServices(admin_pb2.ListServicesRequest(), timeout=10)
            assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "admin token" in (denied.value.details() or "")
            with pytest.raises(grpc.RpcError) as wrong:
                stub.ListServices(
                    admin_pb2.ListServicesRequest(),
                    metadata=(("authorization", "Bearer nope"),),
                    timeout=10,
                )
            assert wrong.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as other_scheme:
                stub.ListServices(
                    admin_pb2.ListServicesRequest(),
                    metadata=(("authorization", "Basic s3cret"),),
                    timeout=10,
                )
            assert other_scheme.value.code() == grpc.StatusCode.UNAUTHENTICATED
            # The scheme is case-insensitive and may be followed by several spaces.
            for authorization in ("Bearer s3cret", "bearer s3cret", "BEARER   s3cret"):
                stub.ListServices(
                    admin_pb2.ListServicesRequest(),
                    metadata=(("authorization", authorization),),
                    timeout=10,
                )
        # The ingress never exposes admin operations.
        with grpc.insecure_channel(ingress) as channel:
            with pytest.raises(grpc.RpcError) as missing:
                admin_pb2_grpc.AdminStub(channel).ListServices(
                    admin_pb2.ListServicesRequest(),
                    metadata=(("authorization", "Bearer s3cret"),),
                    timeout=10,
                )
            assert missing.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        broker.terminate()


def test_an_empty_admin_token_is_refused_not_taken_as_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    ports = ["--ingress", f"127.0.0.1:{free_port()}", "--admin", f"127.0.0.1:{free_port()}"]
    flag = _run_to_exit(tmp_path, "--data-dir", str(data), *ports, "--admin-token", "")
    assert flag.returncode == 2
    assert "--admin-token (BROKER_ADMIN_TOKEN) is empty" in flag.stderr
    monkeypatch.setenv("BROKER_ADMIN_TOKEN", " ")
    env = _run_to_exit(tmp_path, "--data-dir", str(data), *ports)
    assert env.returncode == 2
    assert "is empty" in env.stderr
    assert not data.exists()  # refused before anything was written


def test_endpoints_can_require_the_brokers_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DURABLE_ENDPOINT_SECRET", "shared")
    cluster = Cluster(tmp_path, broker_args=["--endpoint-secret", "shared"], services=("flights",))
    with cluster:
        reply = cluster.flights.Reserve(flights_pb2.ReserveRequest(trip_id="t1"), timeout=30)
        assert reply.state == "reserved"
        # Anyone else is turned away by the endpoint itself.
        from durable.v1 import protocol_pb2, protocol_pb2_grpc

        with grpc.insecure_channel(cluster.service_addresses["flights"]) as channel:
            with pytest.raises(grpc.RpcError) as denied:
                protocol_pb2_grpc.ServiceEndpointStub(channel).Discover(
                    protocol_pb2.DiscoverRequest(), timeout=10
                )
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED

    # A broker with another secret cannot register it.
    monkeypatch.setenv("DURABLE_ENDPOINT_SECRET", "other")
    other = Cluster(
        tmp_path / "b", broker_args=["--endpoint-secret", "shared"], services=("flights",)
    )
    try:
        with pytest.raises(grpc.RpcError) as refused:
            other.start()
    finally:
        other.close()
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "PERMISSION_DENIED" in (refused.value.details() or "")


def test_tls_on_ingress_and_admin(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    broker, ingress, admin = _broker(tmp_path, "--tls-cert", str(cert), "--tls-key", str(key))
    broker.start()
    try:
        creds = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        for address in (ingress, admin):
            deadline = time.monotonic() + 30
            while True:
                broker.check_alive()
                with grpc.secure_channel(address, creds) as channel:
                    try:
                        health_pb2_grpc.HealthStub(channel).Check(
                            health_pb2.HealthCheckRequest(), timeout=1, wait_for_ready=True
                        )
                        break
                    except grpc.RpcError:
                        assert time.monotonic() < deadline, broker.log_tail()
            with grpc.insecure_channel(address) as plain:
                with pytest.raises(grpc.RpcError):
                    health_pb2_grpc.HealthStub(plain).Check(
                        health_pb2.HealthCheckRequest(), timeout=2
                    )
    finally:
        broker.terminate()


def test_tls_flags_go_together(tmp_path: Path) -> None:
    result = _run_to_exit(tmp_path, "--tls-cert", "x.pem")
    assert result.returncode == 2
    assert "--tls-cert and --tls-key go together" in result.stderr
    assert os.path.exists(ROOT)


def test_brokerctl_sends_the_token(tmp_path: Path) -> None:
    broker, _, admin = _broker(tmp_path, "--admin-token", "s3cret")
    brokerctl = str(Path(PYTHON).parent / "brokerctl")
    broker.start()
    try:
        wait_healthy(admin, time.monotonic() + 30, broker)
        run = [brokerctl, "--admin", admin, "--json", "services", "list"]
        denied = subprocess.run(run, capture_output=True, text=True, timeout=30)
        assert denied.returncode == 1
        assert "UNAUTHENTICATED" in denied.stderr
        allowed = subprocess.run(
            run, capture_output=True, text=True, timeout=30,
            env={**os.environ, "BROKER_ADMIN_TOKEN": "s3cret"},
        )  # fmt: skip
        assert allowed.returncode == 0, allowed.stderr
        flag = subprocess.run(
            [brokerctl, "--admin", admin, "--token", "s3cret", "services", "list"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert flag.returncode == 0, flag.stderr
    finally:
        broker.terminate()
