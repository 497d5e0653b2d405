"""Two versions of one contract side by side: v2 renames a message, or ships the same
messages in a file of another name. v2 registers beside v1; an invocation in flight on
v1 finishes on v1 (across a broker restart too); new calls go to v2; reflection shows v2.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from durable.v1 import admin_pb2

from tests.endpoints import versioned
from tests.support import (
    PYTHON,
    STARTUP_TIMEOUT_S,
    Cluster,
    Process,
    free_port,
    invocation_id_of,
    wait_healthy,
)

GREET = f"/{versioned.SERVICE}/Greet"


def start_endpoint(tmp: Path, variant: str) -> tuple[Process, str]:
    """A `tests.endpoints.versioned` process serving `variant`; (process, its URI)."""
    address = f"127.0.0.1:{free_port()}"
    process = Process(
        f"versioned-{variant}",
        [PYTHON, "-m", "tests.endpoints.versioned", "--listen", address, "--variant", variant],
        tmp / "logs" / f"versioned-{variant}.log",
    ).start()
    wait_healthy(address, time.monotonic() + STARTUP_TIMEOUT_S, process)
    return process, f"http://{address}"


def greet(channel: grpc.Channel, variant: str) -> Any:
    """`Greet` through the ingress, with the message classes of `variant`."""
    request_type, reply_type = versioned.message_types(variant)
    return channel.unary_unary(
        GREET,
        request_serializer=request_type.SerializeToString,
        response_deserializer=reply_type.FromString,
    )


@pytest.mark.parametrize("v2", ["v2-renamed", "v2-moved"])
def test_v2_registers_beside_v1_which_finishes_what_it_began(tmp_path: Path, v2: str) -> None:
    request_v1, reply_v1 = versioned.message_types("v1")
    with Cluster(tmp_path, suspend_after="200ms", services=()) as cluster:
        v1_process, v1_uri = start_endpoint(tmp_path, "v1")
        v2_process: Process | None = None
        try:
            d1 = cluster.register(v1_uri)
            pending = greet(cluster.ingress_channel, "v1").future(
                request_v1(name="old", wait=True), timeout=120
            )
            old_id = cluster.wait_for(
                lambda: next(iter(cluster.invocations(service=versioned.SERVICE)), None),
                message="the v1 invocation to start",
            ).id
            cluster.wait_for(
                lambda: cluster.awakeable_id(old_id), message="the v1 invocation's awakeable"
            )
            cluster.wait_status(old_id, "suspended")

            v2_process, v2_uri = start_endpoint(tmp_path, v2)
            d2 = cluster.register(v2_uri)
            assert d2.id != d1.id
            listed = cluster.admin.ListDeployments(admin_pb2.ListDeploymentsRequest())
            assert [d.id for d in listed.deployments] == [d1.id, d2.id]

            # New calls go to v2 (a v1 client still speaks the same wire format).
            reply, call = greet(cluster.ingress_channel, v2).with_call(
                versioned.message_types(v2)[0](name="new"), timeout=60
            )
            assert reply.text == f"{v2}: hello new"
            assert cluster.invocation(invocation_id_of(call)).deployment_id == d2.id

            # Reflection describes v2's contract.
            described = cluster.grpcurl(
                "-plaintext", cluster.ingress, "describe", versioned.SERVICE
            )
            assert described.returncode == 0, described.stderr
            prefix = "Hello" if v2 == "v2-renamed" else "Greet"
            assert (
                f"rpc Greet ( .versioned.{prefix}Request ) returns ( .versioned.{prefix}Reply )"
                in described.stdout
            ), described.stdout
            message = cluster.grpcurl(
                "-plaintext", cluster.ingress, "describe", f"versioned.{prefix}Request"
            )
            assert message.returncode == 0 and "bool wait = 2;" in message.stdout, message

            # The in-flight invocation finishes on v1: now, and after a restart that
            # loads both deployments from storage.
            pending.cancel()
            cluster.restart_broker()
            listed = cluster.admin.ListDeployments(admin_pb2.ListDeploymentsRequest())
            assert [d.id for d in listed.deployments] == [d1.id, d2.id]
            cluster.resolve_awakeable(cluster.awakeable_id(old_id), "done")
            finished = cluster.wait_status(old_id, "completed")
            assert finished.deployment_id == d1.id
            old_reply: Any = reply_v1.FromString(finished.result.value)  # built at run time
            assert old_reply.text == 'v1: hello old: "done"'

            # And new calls still go to v2 after the restart.
            again = greet(cluster.ingress_channel, "v1")(request_v1(name="later"), timeout=60)
            assert again.text == f"{v2}: hello later"
        finally:
            for process in (v1_process, v2_process):
                if process is not None:
                    process.terminate()
