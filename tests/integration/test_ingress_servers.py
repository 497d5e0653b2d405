"""Several gRPC servers on the ingress port (`--ingress-servers`): each serves every kind
of call, and the port still belongs to one broker."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import grpc
from durable.v1 import ingress_pb2, ingress_pb2_grpc
from flights import flights_pb2, flights_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support import PYTHON, ROOT, Cluster, free_port, invocation_id_of, wait_healthy

# Connections opened, each its own: the kernel spreads them over the servers by their
# addresses, so with this many every one of 4 servers gets some (all on one: 4^-11).
CONNECTIONS = 12


def _connection(address: str) -> grpc.Channel:
    # A subchannel pool of its own: a new TCP connection, not the process's shared one.
    return grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])


def test_every_ingress_server_serves_calls_attach_and_health(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, broker_args=["--ingress-servers", "4"], services=("flights",))
    with cluster:
        for n in range(CONNECTIONS):
            with _connection(cluster.ingress) as channel:
                health = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=10
                )
                assert health.status == health_pb2.HealthCheckResponse.SERVING
                reply, call = flights_pb2_grpc.FlightsStub(channel).Reserve.with_call(
                    flights_pb2.ReserveRequest(trip_id=f"trip-{n}"), timeout=30
                )
                assert reply.state == "reserved"
                invocation_id = invocation_id_of(call)
                assert invocation_id.startswith("inv_")
                # The broker's own Ingress service (attach) is on every server too.
                attached = ingress_pb2_grpc.IngressStub(channel).Attach(
                    ingress_pb2.AttachRequest(invocation_id=invocation_id), timeout=30
                )
                assert flights_pb2.BookingStatus.FromString(attached.value) == reply


def test_a_second_broker_on_the_ingress_port_refuses_to_start(tmp_path: Path) -> None:
    # SO_REUSEPORT lets the first broker's servers share the port; a second broker must
    # not join them and take a share of the callers' connections.
    with Cluster(tmp_path, services=()) as cluster:
        args = [PYTHON, "-m", "broker", "--data-dir", str(tmp_path / "second")]
        args += ["--ingress", cluster.ingress, "--admin", f"127.0.0.1:{free_port()}"]
        second = subprocess.run(
            args,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        assert second.returncode == 1, second
        assert f"the ingress address {cluster.ingress} is already in use" in second.stderr
        assert "broker ready" not in second.stderr
        # The first still serves every new connection.
        wait_healthy(cluster.admin_address, time.monotonic() + 5, cluster.broker)
        for _ in range(4):
            with _connection(cluster.ingress) as channel:
                health = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=10
                )
                assert health.status == health_pb2.HealthCheckResponse.SERVING
