"""Safe deploys through real processes: `brokerctl invocations export`,
`durable.testing.replay` of what it printed, and `deployments register --check` against
new releases of `playground.Counter` (`tests.endpoints.counter_versions`)."""

from __future__ import annotations

import base64
import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from durable.testing import replay
from durable.v1 import admin_pb2, journal_pb2, protocol_pb2
from google.protobuf import descriptor_pb2
from playground import playground_pb2 as pb

from services.playground import service as playground
from tests.fake_endpoint import FakeEndpoint
from tests.support import (
    BIN,
    PLAYGROUND,
    PYTHON,
    ROOT,
    STARTUP_TIMEOUT_S,
    Cluster,
    Process,
    Status,
    free_port,
    invocation_id_of,
    wait_healthy,
)

CALL_TIMEOUT_S = 60.0
ALL_KINDS = {f.name for f in journal_pb2.JournalEntry.DESCRIPTOR.oneofs_by_name["command"].fields}
SERVICERS: dict[str, Any] = {
    "playground.Waiter": playground.Waiter,
    "playground.Counter": playground.Counter,
    "playground.Signup": playground.Signup,
}

pytestmark = pytest.mark.parametrize(
    "cluster", [{"suspend_after": "1s", "services": (PLAYGROUND,)}], indirect=True
)


def brokerctl(
    cluster: Cluster, *args: str, timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """`brokerctl --admin ADMIN ARGS...`; never raises on a non-zero exit."""
    return subprocess.run(
        [str(BIN / "brokerctl"), "--admin", cluster.admin_address, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def export(cluster: Cluster, invocation_id: str) -> dict[str, Any]:
    done = brokerctl(cluster, "invocations", "export", invocation_id)
    assert done.returncode == 0, done.stderr
    document: dict[str, Any] = json.loads(done.stdout)
    return document


def called(method: Any, request: Any) -> str:
    """Calls through the ingress; the invocation's id."""
    _, call = method.with_call(request, timeout=CALL_TIMEOUT_S)
    return invocation_id_of(call)


def started(cluster: Cluster, service: str, method: str, since: set[str]) -> str:
    """The id of the one invocation of `service`/`method` not in `since` (waits for it)."""

    def new() -> str | None:
        fresh = [i.id for i in cluster.invocations(service=service, method=method)]
        fresh = [i for i in fresh if i not in since]
        return fresh[0] if fresh else None

    return cluster.wait_for(new, message=f"an invocation of {service}/{method}")


def ids(cluster: Cluster, service: str) -> set[str]:
    return {i.id for i in cluster.invocations(service=service)}


def every_kind(cluster: Cluster) -> list[str]:
    """Completed invocations whose journals hold every kind of entry between them."""
    out = []
    user, key = f"u-{uuid.uuid4().hex[:8]}", f"c-{uuid.uuid4().hex[:8]}"
    out.append(called(cluster.counter.Add, pb.AddRequest(name=key, amount=2)))
    out.append(called(cluster.counter.Keys, pb.CounterRef(name=key)))
    out.append(called(cluster.counter.Drop, pb.CounterRef(name=key)))
    out.append(called(cluster.counter.Reset, pb.CounterRef(name=key)))
    sleep = called(cluster.waiter.Sleep, pb.SleepRequest(millis=1))
    out += [sleep, called(cluster.waiter.Follow, pb.FollowRequest(invocation_id=sleep))]
    out.append(called(cluster.waiter.Race, pb.RaceRequest(a_millis=1, b_millis=3000)))
    out.append(called(cluster.waiter.Gather, pb.RaceRequest(a_millis=1, b_millis=2)))
    out.append(called(cluster.waiter.Later, pb.SleepRequest(millis=1)))
    # An awakeable, resolved by another handler.
    before = ids(cluster, "playground.Waiter")
    awaiting = cluster.waiter.Await.future(pb.AwaitRequest(), timeout=CALL_TIMEOUT_S)
    waiter_id = started(cluster, "playground.Waiter", "Await", before)
    awakeable = cluster.wait_for(lambda: cluster.awakeable_id(waiter_id), message="an awakeable")
    request = pb.ResolveRequest(awakeable_id=awakeable, value='{"ok": true}')
    out.append(called(cluster.waiter.Resolve, request))
    assert json.loads(awaiting.result(timeout=CALL_TIMEOUT_S).text) == {"ok": True}
    out.append(waiter_id)
    # A workflow's promise: awaited, peeked, completed.
    before = ids(cluster, "playground.Signup")
    run = cluster.signup.Run.future(pb.SignupRequest(user=user, email="a@b"), timeout=60)
    run_id = started(cluster, "playground.Signup", "Run", before)
    out.append(called(cluster.signup.Status, pb.UserRef(user=user)))
    out.append(called(cluster.signup.Verify, pb.VerifyRequest(user=user, code="42")))
    assert run.result(timeout=CALL_TIMEOUT_S).items == ["42"]
    out.append(run_id)
    for invocation_id in out:
        cluster.wait_status(invocation_id, "COMPLETED")
    return out


def test_every_kind_of_journal_entry_exports_and_replays(cluster: Cluster) -> None:
    seen: set[str] = set()
    for invocation_id in every_kind(cluster):
        document = export(cluster, invocation_id)
        record = document["invocation"]
        assert (record["id"], record["status"]) == (invocation_id, "COMPLETED")
        kinds = [item["kind"] for item in document["journal"]]
        assert kinds[0] == "input" and kinds[-1] == "output", kinds
        seen.update(kinds)

        result = replay(document, SERVICERS[record["service"]]())

        assert result.ok, str(result)
        assert (result.outcome, result.replayed) == ("completed", len(kinds)), str(result)
    assert seen == ALL_KINDS, ALL_KINDS - seen


def test_the_export_is_self_describing(cluster: Cluster) -> None:
    key = f"c-{uuid.uuid4().hex[:8]}"
    invocation_id = called(cluster.counter.Add, pb.AddRequest(name=key, amount=4))
    cluster.wait_status(invocation_id, "COMPLETED")

    document = export(cluster, invocation_id)

    record = document["invocation"]
    assert (record["service"], record["method"], record["key"]) == (
        "playground.Counter",
        "Add",
        key,
    )
    assert document["deployment"]["uri"].startswith("http://127.0.0.1:")
    plain = export(cluster, called(cluster.waiter.Sleep, pb.SleepRequest(millis=1)))
    assert (plain["invocation"]["key"], plain["invocation"]["status"]) == ("", "COMPLETED")
    files = descriptor_pb2.FileDescriptorSet.FromString(base64.b64decode(document["descriptors"]))
    assert "playground/playground.proto" in {f.name for f in files.file}
    first, *_, last = document["journal"]
    assert first["decoded"]["request"] == {"name": key, "amount": "4"}
    assert (
        base64.b64decode(first["entry"]["input"]["request"])
        == pb.AddRequest(name=key, amount=4).SerializeToString()
    )
    assert last["decoded"]["result"] == {"number": "4"}
    by_kind = {item["command"]: item for item in document["journal"]}
    assert by_kind["set_state 'total'"]["decoded"]["value"] == 4


def test_an_in_flight_journal_replays_to_where_it_waits(cluster: Cluster) -> None:
    before = ids(cluster, "playground.Waiter")
    sleeping = cluster.waiter.Sleep.future(pb.SleepRequest(millis=60_000), timeout=90)
    try:
        invocation_id = started(cluster, "playground.Waiter", "Sleep", before)
        cluster.wait_for(
            lambda: "sleep" in cluster.journal_kinds(invocation_id), message="the sleep"
        )
        document = export(cluster, invocation_id)
        result = replay(document, playground.Waiter())
        assert result.ok and result.outcome == "suspended", str(result)
    finally:
        sleeping.cancel()


def test_exporting_an_unknown_invocation_is_not_found(cluster: Cluster) -> None:
    done = brokerctl(cluster, "invocations", "export", "inv_nosuchthing")
    assert done.returncode == 1
    assert done.stderr.startswith("error: NOT_FOUND: no invocation 'inv_nosuchthing'")
    with pytest.raises(grpc.RpcError) as raised:
        cluster.admin.ExportInvocation(
            admin_pb2.ExportInvocationRequest(invocation_id="inv_nosuchthing"), timeout=10
        )
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


# --- deployments register --check -----------------------------------------------------


@pytest.fixture
def counter_version(cluster: Cluster, tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """Starts `tests.endpoints.counter_versions` variants; returns each one's URI."""
    processes: list[Process] = []

    def start(variant: str) -> str:
        address = f"127.0.0.1:{free_port()}"
        args = [PYTHON, "-m", "tests.endpoints.counter_versions", "--listen", address]
        process = Process(
            f"counter-{variant}", [*args, "--variant", variant], tmp_path / f"{variant}.log"
        ).start()
        processes.append(process)
        wait_healthy(address, time.monotonic() + STARTUP_TIMEOUT_S, process)
        return f"http://{address}"

    yield start
    for process in processes:
        process.terminate()


def test_check_refuses_reordered_steps_naming_each_entry_and_registers_nothing(
    cluster: Cluster, counter_version: Callable[[str], str]
) -> None:
    key = f"c-{uuid.uuid4().hex[:8]}"
    added = called(cluster.counter.Add, pb.AddRequest(name=key, amount=1))
    before = ids(cluster, "playground.Counter")
    holding = cluster.counter.Hold.future(
        pb.AddRequest(name=f"{key}-hold", amount=1, millis=60_000), timeout=90
    )
    try:
        held = started(cluster, "playground.Counter", "Hold", before)
        cluster.wait_status(held, "SUSPENDED")
        journal_before = cluster.describe(held).journal
        deployments_before = cluster.admin.ListDeployments(admin_pb2.ListDeploymentsRequest())
        uri = counter_version("reordered")

        done = brokerctl(cluster, "deployments", "register", uri, "--check")

        assert done.returncode == 1, done.stdout
        assert done.stderr.startswith("error: FAILED_PRECONDITION: "), done.stderr
        assert f"the endpoint at {uri} does not replay" in done.stderr
        assert (
            f"{added} (playground.Counter/Add) entry 2: recorded set_state 'total', "
            f"new code produced set_state 'by-1'"
        ) in done.stderr
        assert (
            f"{held} (playground.Counter/Hold) entry 1: recorded sleep, "
            f"new code produced get_state 'total'"
        ) in done.stderr
        # Nothing registered, nothing journaled, the invocation still waits.
        after = cluster.admin.ListDeployments(admin_pb2.ListDeploymentsRequest())
        assert [d.uri for d in after.deployments] == [d.uri for d in deployments_before.deployments]
        assert uri not in {d.uri for d in after.deployments}
        assert cluster.describe(held).journal == journal_before
        assert cluster.invocation(held).status == Status.SUSPENDED
    finally:
        holding.cancel()


def test_check_passes_a_compatible_change_which_then_registers(
    cluster: Cluster, counter_version: Callable[[str], str]
) -> None:
    key = f"c-{uuid.uuid4().hex[:8]}"
    added = called(cluster.counter.Add, pb.AddRequest(name=key, amount=1))
    cluster.wait_status(added, "COMPLETED")
    uri = counter_version("compatible")

    done = brokerctl(cluster, "--json", "deployments", "register", uri, "--check")

    assert done.returncode == 0, done.stderr
    registered = json.loads(done.stdout)
    assert registered["uri"] == uri
    assert int(registered["checked_journals"]) >= 1
    services = cluster.admin.ListServices(admin_pb2.ListServicesRequest()).services
    counter = next(s for s in services if s.name == "playground.Counter")
    assert counter.deployment_id == registered["id"]
    try:
        # New invocations go to the new code.
        reply = cluster.counter.Add(pb.AddRequest(name=key, amount=2), timeout=CALL_TIMEOUT_S)
        assert (reply.number, reply.text) == (3, "added 2")
    finally:
        # Its process stops with the test: the module's other tests call the playground's.
        remove = admin_pb2.RemoveDeploymentRequest(deployment_id=registered["id"], force=True)
        cluster.admin.RemoveDeployment(remove, timeout=10)


def _old_style_divergence(start: protocol_pb2.StartMessage) -> list[protocol_pb2.InvokeResponse]:
    """An endpoint of another SDK: it names the entry only in its message."""
    assert start.replay_only and start.suspend_after_ms == 0, start
    assert start.journal[0].HasField("input"), start
    last = len(start.journal) - 1
    message = (
        f"non-determinism at journal entry {last}: the journal has something, "
        "but the handler proposed run 'elsewhere'"
    )
    error = protocol_pb2.ErrorMessage(
        code=13, message=message, entry_index=-1, non_determinism=True
    )
    return [protocol_pb2.InvokeResponse(error=error)]


@pytest.mark.parametrize("transport", ["request-response", "stream"])
def test_check_drives_endpoints_that_only_stream_or_only_answer_once(
    cluster: Cluster, transport: str
) -> None:
    key = f"c-{uuid.uuid4().hex[:8]}"
    added = called(cluster.counter.Add, pb.AddRequest(name=key, amount=1))
    cluster.wait_status(added, "COMPLETED")
    counter = pb.DESCRIPTOR.services_by_name["Counter"]
    with FakeEndpoint([counter], _old_style_divergence, transport) as endpoint:
        done = brokerctl(cluster, "deployments", "register", endpoint.uri, "--check")
    assert done.returncode == 1, done.stdout
    assert (
        f"{added} (playground.Counter/Add) entry 4: recorded output, "
        "new code produced run 'elsewhere'"
    ) in done.stderr


def test_check_says_when_an_endpoint_cannot_be_driven(cluster: Cluster) -> None:
    key = f"c-{uuid.uuid4().hex[:8]}"
    added = called(cluster.counter.Add, pb.AddRequest(name=key, amount=1))
    cluster.wait_status(added, "COMPLETED")
    counter = pb.DESCRIPTOR.services_by_name["Counter"]
    # Only `Multiplex`: the check drives InvokeOnce, else Invoke.
    with FakeEndpoint([counter], _old_style_divergence, "multiplex") as endpoint:
        done = brokerctl(cluster, "deployments", "register", endpoint.uri, "--check")
    assert done.returncode == 1, done.stdout
    assert (
        f"{added} (playground.Counter/Add): cannot replay it: the endpoint does not serve "
        "InvokeOnce, and Invoke failed: "
    ) in done.stderr
    assert endpoint.uri not in {
        d.uri for d in cluster.admin.ListDeployments(admin_pb2.ListDeploymentsRequest()).deployments
    }
