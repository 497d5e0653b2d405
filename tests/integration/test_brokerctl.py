"""brokerctl end to end: the real console script against a real broker, every verb.

The cluster fixture runs the broker and the four demo services; this module adds the
playground service (timers, awakeables, workflows, state, retry policies), registered
through `brokerctl deployments register` itself. Every verb runs as a subprocess with
`--json`, and its output is parsed and checked against what the broker did.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from durable.v1 import admin_pb2, invocation_pb2
from playground import playground_pb2 as pg
from playground import playground_pb2_grpc as pg_grpc
from trips import trips_pb2

from tests import support

BROKERCTL = Path(sys.executable).parent / "brokerctl"
LONG_MS = 600_000  # "forever" for a test: the invocation is cancelled or killed first
CANCELLED, NOT_FOUND, ABORTED = 1, 5, 10


def brokerctl(admin: str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Runs `brokerctl --admin ADMIN ARGS...`; never raises on a non-zero exit."""
    return subprocess.run(
        [str(BROKERCTL), "--admin", admin, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=support.ROOT,
    )


def ok_json(admin: str, *args: str) -> Any:
    """`brokerctl --json ARGS...`, which must succeed; its stdout parsed as JSON."""
    result = brokerctl(admin, "--json", *args)
    assert result.returncode == 0, f"brokerctl {' '.join(args)} failed:\n{result.stderr}"
    return json.loads(result.stdout)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Playground:
    """The playground service, registered with the cluster's broker."""

    def __init__(self, cluster: support.Cluster, process: support.Process, uri: str) -> None:
        self.cluster = cluster
        self.process = process
        self.uri = uri
        self.admin = cluster.admin_address
        self.registered: dict[str, Any] = {}
        self._calls: list[grpc.Future[Any]] = []
        self._stubs: dict[str, Any] = {
            "playground.Waiter": pg_grpc.WaiterStub,
            "playground.Counter": pg_grpc.CounterStub,
            "playground.Signup": pg_grpc.SignupStub,
            "playground.Flaky": pg_grpc.FlakyStub,
        }

    @property
    def waiter(self) -> pg_grpc.WaiterStub:
        return pg_grpc.WaiterStub(self.cluster.ingress_channel)

    @property
    def counter(self) -> pg_grpc.CounterStub:
        return pg_grpc.CounterStub(self.cluster.ingress_channel)

    @property
    def signup(self) -> pg_grpc.SignupStub:
        return pg_grpc.SignupStub(self.cluster.ingress_channel)

    @property
    def flaky(self) -> pg_grpc.FlakyStub:
        return pg_grpc.FlakyStub(self.cluster.ingress_channel)

    def start_call(self, service: str, method: str, request: Any) -> tuple[Any, str]:
        """Starts `service/method` through the ingress without waiting: (future, its id).

        The id is found as a new invocation in the broker's list (a unary call's response
        metadata only reaches the client with its response).
        """
        before = {i.id for i in self.cluster.invocations(service=service)}
        stub = self._stubs[service](self.cluster.ingress_channel)
        call = getattr(stub, method).future(request, timeout=120)
        self._calls.append(call)

        def started() -> str | None:
            new = [
                i.id
                for i in self.cluster.invocations(service=service, method=method)
                if i.id not in before
            ]
            assert len(new) <= 1, f"more than one new {service}/{method}: {new}"
            return new[0] if new else None

        invocation_id = self.cluster.wait_for(started, message=f"a new {service}/{method}")
        assert invocation_id is not None
        return call, invocation_id

    def cancel_calls(self) -> None:
        for call in self._calls:
            call.cancel()

    def wait_journal(self, invocation_id: str, kind: str) -> Any:
        """Waits until the invocation's journal has a `kind` entry; returns the response."""

        def has_entry() -> Any:
            described = self.cluster.describe(invocation_id)
            kinds = [e.WhichOneof("command") for e in described.journal]
            return described if kind in kinds else None

        return self.cluster.wait_for(has_entry, message=f"a {kind} entry in {invocation_id}")

    def wait_status(self, invocation_id: str, status: int) -> invocation_pb2.Invocation:
        def reached() -> invocation_pb2.Invocation | None:
            record = self.cluster.invocation(invocation_id)
            return record if record.status == status else None

        name = invocation_pb2.InvocationStatus.Name(status)  # type: ignore[arg-type]
        record = self.cluster.wait_for(reached, message=f"{invocation_id} to be {name}")
        assert record is not None
        return record


@pytest.fixture(scope="module")
def playground(
    cluster: support.Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Playground]:
    """The playground service on a free port, registered through brokerctl."""
    address = f"127.0.0.1:{support.free_port()}"
    log = tmp_path_factory.mktemp("playground") / "playground.log"
    process = support.Process(
        "playground", [support.PYTHON, "-m", "services.playground", "--listen", address], log
    )
    process.start()
    try:
        support.wait_healthy(address, time.monotonic() + support.STARTUP_TIMEOUT_S, process)
        ground = Playground(cluster, process, f"http://{address}")
        ground.registered = ok_json(cluster.admin_address, "deployments", "register", ground.uri)
        yield ground
        ground.cancel_calls()
    finally:
        process.terminate()


def _journal_kinds(described: dict[str, Any]) -> list[str]:
    kinds = []
    for entry in described["journal"]:
        # Besides its command, an entry has its result and the broker's timestamps.
        kinds += [k for k in entry if k not in ("result", "appended_at_ms", "completed_at_ms")]
    return kinds


def _entries(described: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [entry for entry in described["journal"] if kind in entry]


# -- deployments and services ----------------------------------------------------------


def test_deployments_register_and_list(playground: Playground) -> None:
    admin = playground.admin
    registered = playground.registered
    assert registered["id"].startswith("dp_")
    assert registered["uri"] == playground.uri
    assert set(registered["services"]) == {
        "playground.Waiter",
        "playground.Counter",
        "playground.Signup",
        "playground.Flaky",
        "playground.Busy",
    }
    # Registration is idempotent: the same URI keeps its deployment id.
    again = ok_json(admin, "deployments", "register", playground.uri)
    assert again["id"] == registered["id"]

    listed = ok_json(admin, "deployments", "list")
    by_uri = {d["uri"]: d for d in listed["deployments"]}
    assert by_uri[playground.uri]["id"] == registered["id"]
    assert by_uri[playground.uri]["mode"] == "stream"
    assert by_uri[playground.uri]["in_flight"] == 0
    for name, address in playground.cluster.service_addresses.items():
        assert by_uri[f"http://{address}"]["services"] == [support.SERVICE_NAMES[name]]

    human = brokerctl(admin, "deployments", "list")
    assert human.returncode == 0
    assert human.stdout.split()[:7] == ["ID", "URI", "MODE", "IN", "FLIGHT", "SERVICES", "CREATED"]
    assert registered["id"] in human.stdout and playground.uri in human.stdout


def test_deployments_remove(playground: Playground, tmp_path: Path) -> None:
    """A second endpoint takes the playground's services; removing it is refused while an
    invocation that began on it runs (unless forced), and routing falls back to the first."""
    admin = playground.admin
    address = f"127.0.0.1:{support.free_port()}"
    process = support.Process(
        "playground-b",
        [support.PYTHON, "-m", "services.playground", "--listen", address],
        tmp_path / "playground-b.log",
    )
    process.start()
    try:
        support.wait_healthy(address, time.monotonic() + support.STARTUP_TIMEOUT_S, process)
        b = ok_json(admin, "deployments", "register", f"http://{address}")
        assert b["id"] != playground.registered["id"]
        waiter = ok_json(admin, "services", "describe", "playground.Waiter")
        assert waiter["deployment_id"] == b["id"]

        call, sleep_id = playground.start_call(
            "playground.Waiter", "Sleep", pg.SleepRequest(millis=LONG_MS)
        )
        assert playground.cluster.invocation(sleep_id).deployment_id == b["id"]
        listed = {d["id"]: d for d in ok_json(admin, "deployments", "list")["deployments"]}
        assert listed[b["id"]]["in_flight"] == 1
        assert listed[b["id"]]["mode"] == "stream"
        human = brokerctl(admin, "deployments", "list")
        assert human.stdout.split()[:7] == [
            "ID",
            "URI",
            "MODE",
            "IN",
            "FLIGHT",
            "SERVICES",
            "CREATED",
        ]

        refused = brokerctl(admin, "--json", "deployments", "remove", b["id"])
        assert refused.returncode == 1 and refused.stdout == ""
        assert refused.stderr.startswith("error: FAILED_PRECONDITION:")
        ok_json(admin, "invocations", "kill", sleep_id)
        with pytest.raises(grpc.RpcError):
            call.result(timeout=60)

        removed = ok_json(admin, "deployments", "remove", b["id"])
        assert removed == {"deployment_id": b["id"], "in_flight": 0}
        ids = [d["id"] for d in ok_json(admin, "deployments", "list")["deployments"]]
        assert b["id"] not in ids and playground.registered["id"] in ids
        waiter = ok_json(admin, "services", "describe", "playground.Waiter")
        assert waiter["deployment_id"] == playground.registered["id"]

        # Forced: removed even though an invocation that began on it is in flight.
        b2 = ok_json(admin, "deployments", "register", f"http://{address}")
        call, sleep_id = playground.start_call(
            "playground.Waiter", "Sleep", pg.SleepRequest(millis=LONG_MS)
        )
        assert playground.cluster.invocation(sleep_id).deployment_id == b2["id"]
        forced = brokerctl(admin, "deployments", "remove", b2["id"], "--force")
        assert forced.returncode == 0, forced.stderr
        assert forced.stdout.startswith(f"removed deployment {b2['id']} (1 invocation still")
        ok_json(admin, "invocations", "kill", sleep_id)
        with pytest.raises(grpc.RpcError):
            call.result(timeout=60)
        waiter = ok_json(admin, "services", "describe", "playground.Waiter")
        assert waiter["deployment_id"] == playground.registered["id"]
    finally:
        process.terminate()

    unknown = brokerctl(admin, "deployments", "remove", "dp_nothing")
    assert unknown.returncode == 1
    assert unknown.stderr.startswith("error: NOT_FOUND:")


def test_register_an_unreachable_endpoint_is_a_broker_error(playground: Playground) -> None:
    result = brokerctl(
        playground.admin, "deployments", "register", f"http://127.0.0.1:{support.free_port()}"
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("error: UNAVAILABLE:")


def test_services_list_and_describe(playground: Playground) -> None:
    admin = playground.admin
    services = {s["name"]: s for s in ok_json(admin, "services", "list")["services"]}
    assert {"trips.Trips", "flights.Flights", "playground.Counter"} <= set(services)
    assert services["flights.Flights"]["kind"] == "virtual_object"
    assert services["playground.Waiter"]["kind"] == "service"

    counter = ok_json(admin, "services", "describe", "playground.Counter")
    assert counter["name"] == "playground.Counter"
    assert counter["kind"] == "virtual_object"
    assert counter["key_field"] == "name"
    assert counter["deployment_id"] == playground.registered["id"]
    assert counter["deployment_uri"] == playground.uri
    handlers = {h["name"]: h for h in counter["handlers"]}
    assert set(handlers) == {"Add", "Get", "Keys", "Reset", "Hold", "Drop"}
    assert handlers["Add"] == {
        "name": "Add",
        "input_type": "playground.AddRequest",
        "output_type": "playground.Reply",
        "shared": False,
    }
    assert handlers["Get"]["shared"] is True
    assert handlers["Get"]["input_type"] == "playground.CounterRef"

    signup = ok_json(admin, "services", "describe", "playground.Signup")
    assert signup["kind"] == "workflow" and signup["key_field"] == "user"

    human = brokerctl(admin, "services", "describe", "playground.Counter")
    assert human.returncode == 0
    assert "kind:" in human.stdout and "virtual_object" in human.stdout
    assert f"{playground.registered['id']} ({playground.uri})" in human.stdout
    get_row = next(line for line in human.stdout.splitlines() if line.strip().startswith("Get "))
    assert get_row.split() == ["Get", "playground.CounterRef", "playground.Reply", "shared"]

    unknown = brokerctl(admin, "--json", "services", "describe", "Counter")
    assert unknown.returncode == 1
    assert unknown.stdout == ""
    assert unknown.stderr.startswith("error: NOT_FOUND: no service 'Counter'")
    assert "did you mean playground.Counter?" in unknown.stderr


# -- invocations -----------------------------------------------------------------------


def test_invocations_list_filters_and_describe(playground: Playground) -> None:
    admin = playground.admin
    key = unique("list")
    _, call = playground.counter.Add.with_call(pg.AddRequest(name=key, amount=3), timeout=30)
    invocation_id = str(dict(call.initial_metadata())["invocation-id"])
    other_key = unique("other")
    playground.counter.Add(pg.AddRequest(name=other_key, amount=1), timeout=30)

    by_key = ok_json(admin, "invocations", "list", "--service", "playground.Counter", "--key", key)
    assert [i["id"] for i in by_key["invocations"]] == [invocation_id]
    (record,) = by_key["invocations"]
    assert record["status"] == "COMPLETED"
    assert (record["service"], record["method"], record["key"]) == (
        "playground.Counter",
        "Add",
        key,
    )

    by_service = ok_json(admin, "invocations", "list", "--service", "playground.Counter")
    ids = [i["id"] for i in by_service["invocations"]]
    assert invocation_id in ids
    assert {i["service"] for i in by_service["invocations"]} == {"playground.Counter"}
    # Newest first (int64 fields are strings in the proto JSON mapping).
    created = [int(i["created_at_ms"]) for i in by_service["invocations"]]
    assert created == sorted(created, reverse=True)
    assert other_key in {i["key"] for i in by_service["invocations"]}

    completed = ok_json(admin, "invocations", "list", "--status", "completed")
    assert invocation_id in [i["id"] for i in completed["invocations"]]
    assert {i["status"] for i in completed["invocations"]} == {"COMPLETED"}
    for status in ("pending", "running", "suspended", "backing-off", "paused"):
        listed = ok_json(admin, "invocations", "list", "--status", status)
        assert invocation_id not in [i["id"] for i in listed["invocations"]], status
    limited = ok_json(admin, "invocations", "list", "--limit", "1")
    assert len(limited["invocations"]) == 1

    described = ok_json(admin, "invocations", "describe", invocation_id)
    assert described["invocation"]["id"] == invocation_id
    assert described["invocation"]["status"] == "COMPLETED"
    kinds = _journal_kinds(described)
    assert kinds[0] == "input" and kinds[-1] == "output"
    assert "get_state" in kinds
    (get_total,) = _entries(described, "get_state")
    assert get_total["get_state"]["key"] == "total"
    set_states = {e["set_state"]["key"]: e["set_state"] for e in _entries(described, "set_state")}
    assert set_states["total"]["value_json"] == 3
    assert set_states["by-3"]["value_json"] is True

    human = brokerctl(admin, "invocations", "describe", invocation_id)
    assert human.returncode == 0
    assert "status:" in human.stdout and "completed" in human.stdout
    assert f"playground.Counter/Add (key {key})" in human.stdout
    assert 'key "total" = 3' in human.stdout
    assert 'key "by-3" = true' in human.stdout

    listing = brokerctl(admin, "invocations", "list", "--key", key)
    assert listing.returncode == 0
    assert invocation_id in listing.stdout and "completed" in listing.stdout


def test_invocations_list_pages_with_page_token(playground: Playground) -> None:
    admin = playground.admin
    key = unique("pages")
    made = set()
    for amount in range(3):
        _, call = playground.counter.Add.with_call(
            pg.AddRequest(name=key, amount=amount), timeout=30
        )
        made.add(support.invocation_id_of(call))
    listing = ("invocations", "list", "--key", key, "--limit", "2")

    first = ok_json(admin, *listing)
    assert len(first["invocations"]) == 2 and first["total"] == 3
    token = first["next_page_token"]
    assert token
    second = ok_json(admin, *listing, "--page-token", token)
    assert second["next_page_token"] == ""
    walked = [i["id"] for i in first["invocations"] + second["invocations"]]
    assert sorted(walked) == sorted(made) and len(walked) == 3

    table = brokerctl(admin, *listing)
    assert table.returncode == 0, table.stderr
    assert f"--page-token {token}" in table.stderr
    assert token not in table.stdout
    last = brokerctl(admin, *listing, "--page-token", token)
    assert last.returncode == 0 and last.stderr == ""

    refused = brokerctl(admin, *listing, "--page-token", "garbage")
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: INVALID_ARGUMENT: page_token is not one this broker")


def test_invocations_list_shows_and_filters_the_outcome(playground: Playground) -> None:
    trips = playground.cluster.trips
    _, call = trips.Reserve.with_call(trips_pb2.ReserveTripRequest(), timeout=60)
    succeeded_id = support.invocation_id_of(call)
    with pytest.raises(grpc.RpcError) as failed_call:
        trips.Reserve(trips_pb2.ReserveTripRequest(run_type="failPayment"), timeout=60)
    assert failed_call.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    failed_id = support.invocation_id_of(failed_call.value)
    admin = playground.admin
    args = ("invocations", "list", "--service", "trips.Trips")

    failed = ok_json(admin, *args, "--status", "failed")
    assert failed_id in [i["id"] for i in failed["invocations"]]
    assert succeeded_id not in [i["id"] for i in failed["invocations"]]
    assert {(i["outcome"], i["failure_code"]) for i in failed["invocations"]} == {
        ("failed", "FAILED_PRECONDITION")
    }
    succeeded = ok_json(admin, *args, "--status", "succeeded")
    assert succeeded_id in [i["id"] for i in succeeded["invocations"]]
    assert failed_id not in [i["id"] for i in succeeded["invocations"]]
    assert {i["outcome"] for i in succeeded["invocations"]} == {"succeeded"}
    # `completed` keeps meaning both.
    completed = {i["id"] for i in ok_json(admin, *args, "--status", "completed")["invocations"]}
    assert {succeeded_id, failed_id} <= completed

    table = brokerctl(admin, *args)
    assert table.returncode == 0, table.stderr
    rows = {line.split()[0]: line for line in table.stdout.splitlines()[1:]}
    assert "completed  failed FAILED_PRECONDITION" in rows[failed_id], rows[failed_id]
    assert "completed  succeeded" in rows[succeeded_id], rows[succeeded_id]

    # An outcome refines COMPLETED only: with another status the admin API says so.
    with pytest.raises(grpc.RpcError) as refused:
        playground.cluster.admin.ListInvocations(
            admin_pb2.ListInvocationsRequest(
                status=invocation_pb2.RUNNING, outcome=admin_pb2.OUTCOME_FAILED
            ),
            timeout=10,
        )
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "completed invocations only" in (refused.value.details() or "")


def test_invocations_describe_shows_payloads_as_json(playground: Playground) -> None:
    response, call = playground.cluster.trips.Reserve.with_call(
        trips_pb2.ReserveTripRequest(run_type=""), timeout=60
    )
    invocation_id = support.invocation_id_of(call)
    trip_id = support.trip_id_of(response)
    admin = playground.admin

    human = brokerctl(admin, "invocations", "describe", invocation_id)
    assert human.returncode == 0, human.stderr
    result_line = next(ln for ln in human.stdout.splitlines() if ln.startswith("result:"))
    assert f'"tripId": "{trip_id}"' in result_line, human.stdout
    call_lines = [ln for ln in human.stdout.splitlines() if " call " in ln]
    reserve = next(ln for ln in call_lines if "flights.Flights/Reserve" in ln)
    assert f'Reserve {{"tripId": "{trip_id}"}} -> inv_' in reserve, reserve
    assert f'value {{"tripId": "{trip_id}", "state": "res' in reserve, reserve
    output = next(ln for ln in human.stdout.splitlines() if " output " in ln)
    assert '"status": "success"' in output, output

    hexed = brokerctl(admin, "invocations", "describe", invocation_id, "--hex")
    assert hexed.returncode == 0, hexed.stderr
    assert '"tripId"' not in hexed.stdout and "value 0x" in hexed.stdout, hexed.stdout

    described = ok_json(admin, "invocations", "describe", invocation_id)
    assert described["invocation"]["result"]["value_json"]["tripId"] == trip_id
    (first_call, *_) = _entries(described, "call")
    assert first_call["call"]["request_json"]["tripId"] == trip_id


def test_cancel_runs_compensation_and_cancels_the_callee(playground: Playground) -> None:
    admin = playground.admin
    call, chain_id = playground.start_call(
        "playground.Waiter", "Chain", pg.RaceRequest(a_millis=LONG_MS)
    )
    described = playground.wait_journal(chain_id, "call")
    (sleep_id,) = [e.call.invocation_id for e in described.journal if e.HasField("call")]
    playground.wait_journal(sleep_id, "sleep")

    cancelled = ok_json(admin, "invocations", "cancel", chain_id)
    assert cancelled["invocation"]["id"] == chain_id
    # A second cancel (an impatient operator, a retrying script) changes nothing: it
    # used to fail the compensation the first one had started. (The compensation is
    # quick: the chain may have completed by then.)
    again = brokerctl(admin, "--json", "invocations", "cancel", chain_id)
    assert again.returncode == 0 or "already completed" in again.stderr, again.stderr

    with pytest.raises(grpc.RpcError) as failed:
        call.result(timeout=60)
    assert failed.value.code() == grpc.StatusCode.CANCELLED
    assert "compensated" in (failed.value.details() or "")

    chain = ok_json(admin, "invocations", "describe", chain_id)
    assert chain["invocation"]["status"] == "COMPLETED"
    assert chain["invocation"]["result"]["failure"]["code"] == CANCELLED
    (compensate,) = _entries(chain, "run")
    assert compensate["run"]["name"] == "compensate"
    assert compensate["result"]["value_json"] == "undone"
    sleep = ok_json(admin, "invocations", "describe", sleep_id)
    assert sleep["invocation"]["result"]["failure"]["code"] == CANCELLED

    human = brokerctl(admin, "invocations", "describe", chain_id)
    assert 'name "compensate"' in human.stdout and 'value "undone"' in human.stdout

    again = brokerctl(admin, "invocations", "cancel", chain_id)
    assert again.returncode == 1
    assert again.stderr.startswith("error: FAILED_PRECONDITION:")


def test_kill_stops_without_compensation(playground: Playground) -> None:
    admin = playground.admin
    call, chain_id = playground.start_call(
        "playground.Waiter", "Chain", pg.RaceRequest(a_millis=LONG_MS)
    )
    described = playground.wait_journal(chain_id, "call")
    (sleep_id,) = [e.call.invocation_id for e in described.journal if e.HasField("call")]

    human = brokerctl(admin, "invocations", "kill", chain_id)
    assert human.returncode == 0, human.stderr
    assert human.stdout.startswith(f"killed {chain_id}: status completed")
    assert "ABORTED" in human.stdout

    with pytest.raises(grpc.RpcError) as failed:
        call.result(timeout=60)
    assert failed.value.code() == grpc.StatusCode.ABORTED

    chain = ok_json(admin, "invocations", "describe", chain_id)
    assert chain["invocation"]["status"] == "COMPLETED"
    assert chain["invocation"]["result"]["failure"]["code"] == ABORTED
    assert _entries(chain, "run") == []  # no compensation ran
    sleep = ok_json(admin, "invocations", "describe", sleep_id)
    assert sleep["invocation"]["status"] == "COMPLETED"
    assert sleep["invocation"]["result"]["failure"]["code"] == ABORTED

    again = brokerctl(admin, "--json", "invocations", "kill", chain_id)
    assert again.returncode == 1 and again.stdout == ""
    assert again.stderr.startswith("error: FAILED_PRECONDITION:")


def test_purge_deletes_a_completed_invocation_and_frees_its_idempotency_key(
    playground: Playground,
) -> None:
    admin = playground.admin
    key = (("idempotency-key", unique("purge")),)
    _, call = playground.waiter.Sleep.with_call(pg.SleepRequest(millis=1), metadata=key, timeout=60)
    done = support.invocation_id_of(call)
    running, running_id = playground.start_call(
        "playground.Waiter", "Sleep", pg.SleepRequest(millis=LONG_MS)
    )
    playground.wait_journal(running_id, "sleep")
    before = ok_json(admin, "invocations", "list", "--status", "completed")["total"]

    purged = brokerctl(admin, "invocations", "purge", done)
    assert purged.returncode == 0, purged.stderr
    assert purged.stdout.startswith(f"purged {done} (playground.Waiter/Sleep, which had completed")
    gone = brokerctl(admin, "invocations", "describe", done)
    assert gone.returncode == 1 and gone.stderr.startswith("error: NOT_FOUND:")
    assert ok_json(admin, "invocations", "list", "--status", "completed")["total"] == before - 1
    again = brokerctl(admin, "invocations", "purge", done)
    assert again.returncode == 1 and again.stderr.startswith("error: NOT_FOUND:")
    # Its key starts a new invocation now, as a key past its retention does.
    _, second = playground.waiter.Sleep.with_call(
        pg.SleepRequest(millis=1), metadata=key, timeout=60
    )
    assert support.invocation_id_of(second) != done

    refused = brokerctl(admin, "invocations", "purge", running_id)
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: FAILED_PRECONDITION:")
    assert "has not completed" in refused.stderr and "cancel or kill it first" in refused.stderr
    ok_json(admin, "invocations", "kill", running_id)
    with pytest.raises(grpc.RpcError):
        running.result(timeout=60)


def test_cancel_kill_json_after_the_verb(playground: Playground) -> None:
    """`--json` is accepted after the verb too, the way people type it."""
    admin = playground.admin
    call, sleep_id = playground.start_call(
        "playground.Waiter", "Sleep", pg.SleepRequest(millis=LONG_MS)
    )
    playground.wait_journal(sleep_id, "sleep")
    killed = brokerctl(admin, "invocations", "kill", sleep_id, "--json")
    assert killed.returncode == 0, killed.stderr
    assert json.loads(killed.stdout)["invocation"]["status"] == "COMPLETED"
    with pytest.raises(grpc.RpcError):
        call.result(timeout=60)


def test_paused_invocation_is_listed_and_resumed(playground: Playground) -> None:
    admin = playground.admin
    key = unique("pause")
    call, invocation_id = playground.start_call(
        "playground.Flaky", "Pausing", pg.FlakyRequest(key=key, fail_times=2)
    )
    playground.wait_status(invocation_id, invocation_pb2.PAUSED)

    paused = ok_json(
        admin, "invocations", "list", "--status", "paused", "--service", "playground.Flaky"
    )
    (record,) = [i for i in paused["invocations"] if i["id"] == invocation_id]
    assert record["status"] == "PAUSED"
    assert "flaky failure 2 of 2" in record["last_error"]
    human_list = brokerctl(admin, "invocations", "list", "--status", "paused")
    assert invocation_id in human_list.stdout and "paused" in human_list.stdout

    resumed = ok_json(admin, "invocations", "resume", invocation_id)
    assert resumed["invocation"]["id"] == invocation_id
    assert resumed["invocation"]["status"] != "PAUSED"

    reply = call.result(timeout=60)
    assert reply.text == "ok"
    done = ok_json(admin, "invocations", "describe", invocation_id)
    assert done["invocation"]["status"] == "COMPLETED"
    assert done["invocation"]["attempts"] >= 3

    again = brokerctl(admin, "invocations", "resume", invocation_id)
    assert again.returncode == 1
    assert again.stderr.startswith("error: FAILED_PRECONDITION:")


# -- awakeables and promises -----------------------------------------------------------


def _awakeable_id(playground: Playground, invocation_id: str) -> str:
    """The awakeable id, as a script finds it: in `invocations describe --json`."""
    playground.wait_journal(invocation_id, "awakeable")
    described = ok_json(playground.admin, "invocations", "describe", invocation_id)
    (entry,) = _entries(described, "awakeable")
    awakeable_id = str(entry["awakeable"]["awakeable_id"])
    assert awakeable_id.startswith("awk_")
    return awakeable_id


def test_awakeable_resolve(playground: Playground) -> None:
    admin = playground.admin
    call, invocation_id = playground.start_call("playground.Waiter", "Await", pg.AwaitRequest())
    awakeable_id = _awakeable_id(playground, invocation_id)

    human = brokerctl(admin, "invocations", "describe", invocation_id)
    assert f"id {awakeable_id}" in human.stdout

    bad = brokerctl(admin, "awakeables", "resolve", awakeable_id, "{ok: true}")
    assert bad.returncode == 2
    assert "not valid JSON" in bad.stderr

    resolved = ok_json(admin, "awakeables", "resolve", awakeable_id, '{"ok": true, "n": 7}')
    assert resolved == {
        "awakeable_id": awakeable_id,
        "outcome": "resolved",
        "value": {"ok": True, "n": 7},
    }
    reply = call.result(timeout=60)
    assert json.loads(reply.text) == {"ok": True, "n": 7}

    described = ok_json(admin, "invocations", "describe", invocation_id)
    (entry,) = _entries(described, "awakeable")
    assert entry["result"]["value_json"] == {"ok": True, "n": 7}
    human = brokerctl(admin, "invocations", "describe", invocation_id)
    assert 'value {"ok": true, "n": 7}' in human.stdout

    # Completed already: an error. (The broker answers NOT_FOUND once the invocation has
    # finished, FAILED_PRECONDITION while it still runs; scripts rely on the exit code.)
    again = brokerctl(admin, "awakeables", "resolve", awakeable_id)
    assert again.returncode == 1
    assert again.stderr.startswith("error: ") and awakeable_id in again.stderr


def test_awakeable_resolve_defaults_to_null(playground: Playground) -> None:
    call, invocation_id = playground.start_call("playground.Waiter", "Await", pg.AwaitRequest())
    awakeable_id = _awakeable_id(playground, invocation_id)
    human = brokerctl(playground.admin, "awakeables", "resolve", awakeable_id)
    assert human.returncode == 0, human.stderr
    assert human.stdout.strip() == f"resolved awakeable {awakeable_id} with null"
    assert call.result(timeout=60).text == "null"


def test_awakeable_reject(playground: Playground) -> None:
    admin = playground.admin
    call, invocation_id = playground.start_call("playground.Waiter", "Await", pg.AwaitRequest())
    awakeable_id = _awakeable_id(playground, invocation_id)

    rejected = ok_json(admin, "awakeables", "reject", awakeable_id, "the payment bounced")
    assert rejected == {
        "awakeable_id": awakeable_id,
        "outcome": "rejected",
        "reason": "the payment bounced",
    }
    with pytest.raises(grpc.RpcError) as failed:
        call.result(timeout=60)
    assert "the payment bounced" in (failed.value.details() or "")

    malformed = brokerctl(admin, "awakeables", "reject", "awk_bm9uZQ", "no")  # "none"
    assert malformed.returncode == 1
    assert malformed.stderr.startswith("error: INVALID_ARGUMENT:"), malformed.stderr
    assert "is not an awakeable id" in malformed.stderr
    unknown = brokerctl(admin, "awakeables", "reject", "awk_aW52X25vbmU6MQ", "no")  # inv_none:1
    assert unknown.returncode == 1
    assert unknown.stderr.startswith("error: NOT_FOUND:"), unknown.stderr


def test_promise_resolve_and_reject(playground: Playground) -> None:
    admin = playground.admin
    user = unique("user")
    call, run_id = playground.start_call(
        "playground.Signup", "Run", pg.SignupRequest(user=user, email="a@example.com")
    )
    playground.wait_journal(run_id, "get_promise")
    described = ok_json(admin, "invocations", "describe", run_id)
    (waiting,) = _entries(described, "get_promise")
    assert waiting["get_promise"]["name"] == "verified"
    human = brokerctl(admin, "invocations", "describe", run_id)
    assert 'name "verified"' in human.stdout

    resolved = ok_json(admin, "promises", "resolve", "playground.Signup", user, "verified", '"c-7"')
    assert resolved == {
        "service": "playground.Signup",
        "key": user,
        "name": "verified",
        "outcome": "resolved",
        "value": "c-7",
    }
    reply = call.result(timeout=60)
    assert reply.text == "welcome a@example.com" and list(reply.items) == ["c-7"]
    described = ok_json(admin, "invocations", "describe", run_id)
    (entry,) = _entries(described, "get_promise")
    assert entry["result"]["value_json"] == "c-7"

    again = brokerctl(admin, "promises", "resolve", "playground.Signup", user, "verified", "null")
    assert again.returncode == 1
    assert again.stderr.startswith("error: FAILED_PRECONDITION:")

    other = unique("user")
    call, _ = playground.start_call(
        "playground.Signup", "Run", pg.SignupRequest(user=other, email="b@example.com")
    )
    rejected = ok_json(
        admin, "promises", "reject", "playground.Signup", other, "verified", "spam address"
    )
    assert rejected["outcome"] == "rejected" and rejected["reason"] == "spam address"
    with pytest.raises(grpc.RpcError) as failed:
        call.result(timeout=60)
    assert "spam address" in (failed.value.details() or "")

    # NAME forgotten: the value is not taken for the name (it was, resolving '"c-8"' with null).
    forgot = brokerctl(admin, "promises", "resolve", "playground.Signup", user, '"c-8"')
    assert forgot.returncode == 2
    assert "the following arguments are required: JSON" in forgot.stderr
    not_workflow = brokerctl(admin, "promises", "resolve", "playground.Counter", "k", "p", "1")
    assert not_workflow.returncode == 1
    assert not_workflow.stderr.startswith("error: NOT_FOUND:")
    bad = brokerctl(admin, "promises", "resolve", "playground.Signup", other, "verified", "nope")
    assert bad.returncode == 2 and "not valid JSON" in bad.stderr


# -- state -----------------------------------------------------------------------------


def test_state_get_set_clear(playground: Playground) -> None:
    admin = playground.admin
    key = unique("counter")
    playground.counter.Add(pg.AddRequest(name=key, amount=5), timeout=30)

    state = ok_json(admin, "state", "get", "playground.Counter", key)
    assert state == {
        "service": "playground.Counter",
        "key": key,
        "state": {"total": 5, "by-5": True},
        "raw_state": {},
    }
    human = brokerctl(admin, "state", "get", "playground.Counter", key)
    assert human.returncode == 0
    lines = human.stdout.splitlines()
    assert lines[0].split() == ["NAME", "VALUE"]
    assert [line.split() for line in lines[1:]] == [["by-5", "true"], ["total", "5"]]

    one = brokerctl(admin, "state", "get", "playground.Counter", key, "total")
    assert one.returncode == 0 and one.stdout == "5\n"
    one_json = ok_json(admin, "state", "get", "playground.Counter", key, "total")
    assert one_json == {"service": "playground.Counter", "key": key, "name": "total", "value": 5}
    missing = brokerctl(admin, "state", "get", "playground.Counter", key, "nothing")
    assert missing.returncode == 1
    assert missing.stderr.startswith("error: NOT_FOUND:") and "'nothing'" in missing.stderr

    after_set = ok_json(admin, "state", "set", "playground.Counter", key, "total", "42")
    # What changed, and the size of the state after it (each name plus its JSON value).
    assert after_set == {
        "service": "playground.Counter",
        "key": key,
        "name": "total",
        "value": 42,
        "values": 2,
        "bytes": len("total") + len("42") + len("by-5") + len("true"),
    }
    assert playground.counter.Get(pg.CounterRef(name=key), timeout=30).number == 42
    label = ok_json(admin, "state", "set", "playground.Counter", key, "label", '{"a": [1, "x"]}')
    assert label["value"] == {"a": [1, "x"]} and label["values"] == 3
    negative = ok_json(admin, "state", "set", "playground.Counter", key, "total", "-3")
    assert negative["value"] == -3
    label_text = brokerctl(admin, "state", "get", "playground.Counter", key, "label")
    assert json.loads(label_text.stdout) == {"a": [1, "x"]}

    after_clear = ok_json(admin, "state", "clear", "playground.Counter", key, "by-5")
    assert after_clear["cleared"] is True and after_clear["values"] == 2
    after_state = ok_json(admin, "state", "get", "playground.Counter", key)["state"]
    assert after_state == {"total": -3, "label": {"a": [1, "x"]}}
    keys = playground.counter.Keys(pg.CounterRef(name=key), timeout=30)
    assert sorted(keys.items) == ["label", "total"]

    bad = brokerctl(admin, "state", "set", "playground.Counter", key, "total", "forty-two")
    assert bad.returncode == 2 and "not valid JSON" in bad.stderr
    assert playground.counter.Get(pg.CounterRef(name=key), timeout=30).number == -3

    empty = brokerctl(admin, "state", "get", "playground.Counter", unique("nobody"))
    assert empty.returncode == 0 and empty.stdout.startswith("no state for playground.Counter")
    not_keyed = brokerctl(admin, "state", "get", "playground.Waiter", key)
    assert not_keyed.returncode == 1
    assert not_keyed.stderr.startswith("error: NOT_FOUND:")


def test_state_set_is_refused_while_an_exclusive_handler_holds_the_key(
    playground: Playground,
) -> None:
    admin = playground.admin
    key = unique("held")
    call, hold_id = playground.start_call(
        "playground.Counter", "Hold", pg.AddRequest(name=key, amount=1, millis=LONG_MS)
    )
    playground.wait_journal(hold_id, "sleep")

    refused = brokerctl(admin, "state", "set", "playground.Counter", key, "total", "1")
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: FAILED_PRECONDITION:")
    assert hold_id in refused.stderr and "try again later" in refused.stderr
    # Paused, it holds the key until an operator acts: the refusal says so.
    ok_json(admin, "invocations", "pause", hold_id)
    refused = brokerctl(admin, "state", "set", "playground.Counter", key, "total", "1")
    assert refused.returncode == 1 and "which is paused: resume it" in refused.stderr

    ok_json(admin, "invocations", "kill", hold_id)
    with pytest.raises(grpc.RpcError):
        call.result(timeout=60)
    after = ok_json(admin, "state", "set", "playground.Counter", key, "total", "1")
    assert after["value"] == 1 and after["values"] == 1


def test_state_bigger_than_grpcs_default_limit_is_readable(playground: Playground) -> None:
    # gRPC clients receive at most 4 MiB by default; the broker holds up to 16 MiB of state
    # per key (--max-state-bytes), each value set in a request under its 4 MiB payload limit.
    key = unique("big")
    values = {name: '"' + name[-1] * 2_500_000 + '"' for name in ("big-a", "big-b")}
    for name, value in values.items():
        request = admin_pb2.SetStateRequest(
            service="playground.Counter", key=key, name=name, value=value.encode()
        )
        playground.cluster.admin.SetState(request, timeout=60)

    whole = brokerctl(playground.admin, "--json", "state", "get", "playground.Counter", key)
    assert whole.returncode == 0, whole.stderr
    assert json.loads(whole.stdout)["state"] == {n: json.loads(v) for n, v in values.items()}
    table = brokerctl(playground.admin, "state", "get", "playground.Counter", key)
    assert table.returncode == 0, table.stderr
    assert [line.split()[0] for line in table.stdout.splitlines()] == ["NAME", "big-a", "big-b"]


# -- control characters ----------------------------------------------------------------


def test_a_hostile_key_is_shown_escaped(playground: Playground) -> None:
    # A key that would clear the screen, turn the text red and forge a line of output.
    key = unique("esc") + "\x1b[2J\x1b[31mRED\nfake line"
    playground.counter.Add(pg.AddRequest(name=key, amount=1), timeout=30)
    shown = key.replace("\x1b", "\\x1b").replace("\n", "\\n")

    listed = brokerctl(
        playground.admin, "invocations", "list", "--service", "playground.Counter", "--key", key
    )
    assert listed.returncode == 0, listed.stderr
    assert "\x1b" not in listed.stdout
    header, row = listed.stdout.splitlines()
    assert header.split()[:2] == ["ID", "STATUS"]
    assert shown in row
    invocation_id = row.split()[0]

    described = brokerctl(playground.admin, "invocations", "describe", invocation_id)
    assert described.returncode == 0, described.stderr
    assert "\x1b" not in described.stdout
    assert f"playground.Counter/Add (key {shown})" in described.stdout

    # --json stays JSON, with the key as it is.
    as_json = ok_json(
        playground.admin, "invocations", "list", "--service", "playground.Counter", "--key", key
    )
    assert [i["key"] for i in as_json["invocations"]] == [key]


# -- exit codes ------------------------------------------------------------------------


@pytest.mark.parametrize("verb", ["describe", "cancel", "kill", "resume", "purge"])
def test_unknown_invocation_exits_1(playground: Playground, verb: str) -> None:
    result = brokerctl(playground.admin, "--json", "invocations", verb, "inv_doesnotexist")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("error: NOT_FOUND:")
    assert "inv_doesnotexist" in result.stderr


def test_usage_errors_exit_2(playground: Playground) -> None:
    admin = playground.admin
    assert brokerctl(admin, "invocations", "list", "--status", "sleeping").returncode == 2
    assert brokerctl(admin, "state", "set", "playground.Counter", "k", "total").returncode == 2
    nan = brokerctl(admin, "state", "set", "playground.Counter", "k", "total", "NaN")
    assert nan.returncode == 2 and "not valid JSON" in nan.stderr
    assert brokerctl(admin, "frobnicate").returncode == 2


def _assert_usage_error(result: subprocess.CompletedProcess[str], message: str) -> None:
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    # Nothing from gRPC's C core (it logs before failing a call it cannot make).
    assert result.stderr.startswith("usage: brokerctl"), result.stderr


def test_tls_ca_that_is_missing_or_not_pem_is_a_usage_error(
    playground: Playground, tmp_path: Path
) -> None:
    missing = str(tmp_path / "nonexistent")
    result = brokerctl(playground.admin, "--tls-ca", missing, "deployments", "list")
    _assert_usage_error(result, f"argument --tls-ca: cannot read {missing!r}")

    not_pem = tmp_path / "hostname"
    not_pem.write_text("myhost\n")
    result = brokerctl(playground.admin, "--tls-ca", str(not_pem), "deployments", "list")
    _assert_usage_error(result, f"{str(not_pem)!r} is not a PEM certificate")
    assert "cannot reach" not in result.stderr


@pytest.mark.parametrize(
    ("admin", "message"),
    [
        ("foo", "not HOST:PORT: 'foo'"),
        ("127.0.0.1:0", "not HOST:PORT: '127.0.0.1:0'"),
        ("127.0.0.1:99999", "port 99999 is out of range (1 to 65535)"),
        ("::1:9091", "an IPv6 host goes in brackets"),
    ],
)
def test_an_admin_address_that_is_not_host_and_port_is_a_usage_error(
    admin: str, message: str
) -> None:
    # gRPC would dial "foo" on port 443 and 99999 as 34463: "cannot reach the broker"
    # would hide the typo.
    result = brokerctl(admin, "deployments", "list")
    _assert_usage_error(result, message)
    assert "argument --admin: " in result.stderr
    assert "cannot reach" not in result.stderr


def test_token_with_a_newline_is_a_usage_error(playground: Playground) -> None:
    result = brokerctl(playground.admin, "--token", "a\nb", "deployments", "list")
    _assert_usage_error(result, "the token has characters not allowed in a gRPC header")
    assert "printable ASCII" in result.stderr


def test_limits_of_an_unknown_service_is_not_found_like_limit(playground: Playground) -> None:
    limit = brokerctl(playground.admin, "services", "limit", "nope.Nope", "--concurrency", "1")
    limits = brokerctl(playground.admin, "services", "limits", "nope.Nope")
    assert limit.returncode == limits.returncode == 1
    assert limits.stdout == ""
    assert limit.stderr.startswith("error: NOT_FOUND: no service 'nope.Nope' is registered")
    assert limits.stderr.startswith("error: NOT_FOUND: no service 'nope.Nope' is registered")
    known = brokerctl(playground.admin, "services", "limits", "playground.Counter")
    assert known.returncode == 0, known.stderr


def test_limit_with_an_empty_method_is_a_usage_error(playground: Playground) -> None:
    result = brokerctl(
        playground.admin, "services", "limit", "playground.Busy/", "--concurrency", "1"
    )
    _assert_usage_error(result, "the method after / is empty")
    assert "SERVICE or SERVICE/METHOD" in result.stderr
    # Nothing was set: no run-time limit on the whole service.
    shown = ok_json(playground.admin, "services", "limits", "playground.Busy")
    assert not [s for s in shown["limits"] if s["source"] == "runtime" and not s["method"]]


def test_reaching_the_broker_leaves_no_connectivity_poll_behind() -> None:
    # Closing a channel waits for gRPC's pending connectivity poll (a thread, up to 0.2 s):
    # brokerctl checks that the admin API answers without starting one. An in-process
    # server that serves health, as the broker's admin port does.
    from concurrent import futures

    from grpc_health.v1 import health, health_pb2_grpc

    from broker import cli

    pool = futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="health-server")
    server = grpc.server(pool)
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        before = set(threading.enumerate())
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            cli.wait_for_channel(channel, timeout=10)
            started = [t.name for t in set(threading.enumerate()) - before]
            assert [n for n in started if not n.startswith("health-server")] == []
    finally:
        server.stop(None)


@pytest.mark.parametrize(
    "args",
    [
        ["deployments", "list"],
        ["deployments", "remove", "dp_x"],
        ["services", "describe", "trips.Trips"],
        ["invocations", "cancel", "inv_x"],
        ["awakeables", "resolve", "awk_x", "1"],
        ["promises", "reject", "playground.Signup", "u", "verified"],
        ["state", "get", "playground.Counter", "k"],
    ],
)
def test_unreachable_broker_exits_3(args: list[str]) -> None:
    address = f"127.0.0.1:{support.free_port()}"
    result = brokerctl(address, "--json", *args)
    assert result.returncode == 3
    assert result.stdout == ""
    assert f"cannot reach the broker's admin API at {address}" in result.stderr
