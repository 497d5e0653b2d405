"""`durable.testing.DurableTestEnvironment`: a real broker and real services, in-process.

Every test drives the broker the way a user's test would: through the ingress with the
generated stubs, and through the environment's admin helpers. Async tests run their own
loop with `asyncio.run` (pytest-asyncio is not installed).
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cars import cars_pb2, cars_pb2_grpc
from durable.testing import DurableTestEnvironment, invocation_id_of
from durable.v1 import admin_pb2, admin_pb2_grpc, invocation_pb2
from flights import flights_pb2, flights_pb2_grpc
from payments import payments_pb2, payments_pb2_grpc
from trips import trips_pb2, trips_pb2_grpc

from services.cars.service import Cars
from services.flights.service import Flights
from services.payments.service import Payments
from services.trips.notifications import NotificationLog
from services.trips.service import Trips

COMPLETED = invocation_pb2.COMPLETED
THREAD_NAME = "durable-test-environment"
TRIP_FAILED_RE = re.compile(r"^trip (\S+) failed: .*; successfully applied (\d+) compensations$")
# Fast retries, so `flakyPayment` (two transient failures) does not wait out a backoff.
FAST_RETRIES = {"retry_initial": 0.01, "retry_max": 0.05}


def _env_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD_NAME]


def _accepts_connections(address: str) -> bool:
    host, port = address.removeprefix("http://").rsplit(":", 1)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        try:
            s.connect((host, int(port)))
        except OSError:
            return False
        return True


@pytest.fixture
def notifications(tmp_path: Path) -> NotificationLog:
    return NotificationLog(tmp_path / "trips" / "notifications.log")


@pytest.fixture
def saga_env(notifications: NotificationLog) -> Iterator[DurableTestEnvironment]:
    """All four demo services on one endpoint, one broker, fast retries."""
    services = [Flights(), Cars(), Payments(), Trips(notifications)]
    with DurableTestEnvironment(services, broker_settings=FAST_RETRIES) as env:
        yield env


def _records(log: NotificationLog) -> list[dict[str, str]]:
    return [json.loads(line) for line in log.path.read_text().splitlines()]


# --------------------------------------------------------------------------- sync form


def test_sync_form_calls_handlers_through_the_broker() -> None:
    with DurableTestEnvironment([Flights()]) as env:
        assert re.fullmatch(r"127\.0\.0\.1:\d+", env.ingress)
        assert re.fullmatch(r"127\.0\.0\.1:\d+", env.admin)
        flights = flights_pb2_grpc.FlightsStub(env.channel())

        reserved, call = flights.Reserve.with_call(flights_pb2.ReserveRequest(trip_id="t1"))
        assert (reserved.trip_id, reserved.state) == ("t1", "reserved")
        invocation_id = invocation_id_of(call)
        assert re.fullmatch(r"inv_[A-Za-z0-9_-]+", invocation_id)

        got = flights.Get(flights_pb2.TripRef(trip_id="t1"))
        assert got.state == "reserved"
        assert got.booking_id == reserved.booking_id

        described = env.describe(invocation_id)
        assert described.invocation.status == COMPLETED
        assert (described.invocation.service, described.invocation.method) == (
            "flights.Flights",
            "Reserve",
        )
        assert len(described.journal) == described.invocation.journal_length > 0

        reserves = env.invocations(service="flights.Flights", method="Reserve")
        assert [i.id for i in reserves] == [invocation_id]
        assert len(env.invocations(status="completed")) == 2
        assert env.invocations(status=invocation_pb2.SUSPENDED) == []
        assert [i.method for i in env.invocations(key="t1", method="Get")] == ["Get"]

        # The admin channel is a plain gRPC channel to the admin API.
        admin = admin_pb2_grpc.AdminStub(env.admin_channel())
        services = admin.ListServices(admin_pb2.ListServicesRequest()).services
        assert [(s.name, s.kind) for s in services] == [("flights.Flights", "virtual_object")]


def test_terminal_errors_reach_the_caller_with_their_status() -> None:
    with DurableTestEnvironment([Flights()]) as env:
        flights = flights_pb2_grpc.FlightsStub(env.channel())
        with pytest.raises(grpc.RpcError) as failure:
            flights.Reserve(flights_pb2.ReserveRequest(trip_id="t1", to="Oslo", fail=True))
        assert failure.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "no seats left" in (failure.value.details() or "")
        invocation_id = invocation_id_of(failure.value)
        result = env.describe(invocation_id).invocation.result
        assert result.HasField("failure")


def test_unknown_invocation_and_bad_status_are_reported() -> None:
    with DurableTestEnvironment([Flights()]) as env:
        with pytest.raises(grpc.RpcError) as failure:
            env.describe("inv_doesnotexist")
        assert failure.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(ValueError, match="backing-off"):
            env.invocations(status="sleeping")


def test_aio_channel_in_the_sync_form() -> None:
    """A sync environment also serves async clients running on the test's own loop."""
    with DurableTestEnvironment([Flights()]) as env:

        async def reserve() -> str:
            async with env.aio_channel() as channel:
                flights = flights_pb2_grpc.FlightsStub(channel)
                await flights.Reserve(flights_pb2.ReserveRequest(trip_id="t1"))
                status = await flights.Get(flights_pb2.TripRef(trip_id="t1"))
                assert len(await env.invocations_async()) == 2
                return str(status.state)

        assert asyncio.run(reserve()) == "reserved"


# --------------------------------------------------------------------------- async form


def test_async_form_runs_on_the_callers_loop() -> None:
    async def scenario() -> None:
        async with DurableTestEnvironment([Flights()]) as env:
            assert not _env_threads(), "the async form must not start a thread"
            flights = flights_pb2_grpc.FlightsStub(env.aio_channel())
            call = flights.Reserve(flights_pb2.ReserveRequest(trip_id="t1"))
            reserved = await call
            assert reserved.state == "reserved"
            invocation_id = str(dict(await call.initial_metadata())["invocation-id"])

            described = await env.describe_async(invocation_id)
            assert described.invocation.status == COMPLETED
            listed = await env.invocations_async(service="flights.Flights")
            assert [i.id for i in listed] == [invocation_id]
            got = await flights.Get(flights_pb2.TripRef(trip_id="t1"))
            assert got.state == "reserved"

            # Blocking calls on the loop the broker runs on fail fast instead of hanging...
            with pytest.raises(RuntimeError, match="aio_channel"):
                flights_pb2_grpc.FlightsStub(env.channel()).Get(
                    flights_pb2.TripRef(trip_id="t1"), timeout=5
                )
            with pytest.raises(RuntimeError, match="_async"):
                env.invocations()
            # ...but work from another thread.
            assert len(await asyncio.to_thread(env.invocations)) == 2

    asyncio.run(scenario())


def test_async_form_stops_everything() -> None:
    async def scenario() -> tuple[list[str], grpc.aio.Channel]:
        async with DurableTestEnvironment([Flights()]) as env:
            channel = env.aio_channel()
            await flights_pb2_grpc.FlightsStub(channel).Reserve(
                flights_pb2.ReserveRequest(trip_id="t1")
            )
            addresses = [env.ingress, env.admin, *env.endpoint_uris]
            assert all(_accepts_connections(a) for a in addresses)
        with pytest.raises(RuntimeError, match="stopped"):
            env.aio_channel()
        return addresses, channel

    addresses, channel = asyncio.run(scenario())
    assert len(addresses) == 3
    assert not any(_accepts_connections(a) for a in addresses)
    assert channel.get_state() == grpc.ChannelConnectivity.SHUTDOWN


# --------------------------------------------------------------------------- the saga


def test_trips_saga_succeeds_across_four_services(
    saga_env: DurableTestEnvironment, notifications: NotificationLog
) -> None:
    channel = saga_env.channel()
    trips = trips_pb2_grpc.TripsStub(channel)
    response, call = trips.Reserve.with_call(
        trips_pb2.ReserveTripRequest(to="Oslo", amount_cents=12_000)
    )
    assert response.status == "success"
    trip_id = response.tripId
    assert trip_id

    assert flights_pb2_grpc.FlightsStub(channel).Get(
        flights_pb2.TripRef(trip_id=trip_id)
    ).state == ("confirmed")
    assert cars_pb2_grpc.CarsStub(channel).Get(cars_pb2.TripRef(trip_id=trip_id)).state == (
        "confirmed"
    )
    payment = payments_pb2_grpc.PaymentsStub(channel).Get(payments_pb2.TripRef(trip_id=trip_id))
    assert (payment.state, payment.amount_cents) == ("processed", 12_000)
    assert _records(notifications) == [{"trip_id": trip_id, "status": "success", "run_type": ""}]

    # suspend_after=0: the saga suspended at each of its calls and was replayed each time.
    saga = saga_env.describe(invocation_id_of(call)).invocation
    assert saga.status == COMPLETED
    assert saga.attempts > 1
    calls = saga_env.invocations(key=trip_id)
    assert {(i.service, i.method) for i in calls} >= {
        ("flights.Flights", "Reserve"),
        ("cars.Cars", "Reserve"),
        ("payments.Payments", "Process"),
        ("flights.Flights", "Confirm"),
        ("cars.Cars", "Confirm"),
    }
    assert all(i.caller.invocation_id == saga.id for i in calls if i.method != "Get")


@pytest.mark.parametrize(
    ("run_type", "compensations", "flight", "car", "payment"),
    [
        ("failFlightReservation", 1, "cancelled", "", ""),
        ("failCarReservation", 2, "cancelled", "cancelled", ""),
        ("failPayment", 3, "cancelled", "cancelled", "refunded"),
        ("failNotification", 3, "cancelled", "cancelled", "refunded"),
    ],
)
def test_trips_saga_failure_runs_the_compensations(
    saga_env: DurableTestEnvironment,
    notifications: NotificationLog,
    run_type: str,
    compensations: int,
    flight: str,
    car: str,
    payment: str,
) -> None:
    channel = saga_env.channel()
    with pytest.raises(grpc.RpcError) as failure:
        trips_pb2_grpc.TripsStub(channel).Reserve(trips_pb2.ReserveTripRequest(run_type=run_type))
    assert failure.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    message = failure.value.details()
    match = TRIP_FAILED_RE.match(message or "")
    assert match, message
    trip_id = match.group(1)
    assert int(match.group(2)) == compensations

    ref = {"trip_id": trip_id}
    assert flights_pb2_grpc.FlightsStub(channel).Get(flights_pb2.TripRef(**ref)).state == flight
    assert cars_pb2_grpc.CarsStub(channel).Get(cars_pb2.TripRef(**ref)).state == car
    assert payments_pb2_grpc.PaymentsStub(channel).Get(payments_pb2.TripRef(**ref)).state == payment
    [record] = _records(notifications)
    assert record["trip_id"] == trip_id
    assert record["status"] == "failed"
    assert record["reason"].endswith(f"successfully applied {compensations} compensations")


def test_trips_saga_retries_a_flaky_payment(saga_env: DurableTestEnvironment) -> None:
    channel = saga_env.channel()
    trips = trips_pb2_grpc.TripsStub(channel)
    response = trips.Reserve(trips_pb2.ReserveTripRequest(run_type="flakyPayment"))
    assert response.status == "success"
    [process] = saga_env.invocations(
        service="payments.Payments", method="Process", key=response.tripId
    )
    assert process.attempts >= 3  # two transient failures, retried by the broker


def test_services_in_separate_deployments_call_each_other(
    notifications: NotificationLog,
) -> None:
    with DurableTestEnvironment([Trips(notifications)], broker_settings=FAST_RETRIES) as env:
        uri = env.add_deployment([Flights(), Cars(), Payments()])
        assert env.endpoint_uris[1] == uri
        response = trips_pb2_grpc.TripsStub(env.channel()).Reserve(trips_pb2.ReserveTripRequest())
        assert response.status == "success"
        flights = env.invocations(service="flights.Flights")
        trips = env.invocations(service="trips.Trips")
        assert {i.deployment_id for i in flights}.isdisjoint({i.deployment_id for i in trips})


def test_external_endpoints_are_registered(notifications: NotificationLog) -> None:
    """`endpoints` registers services hosted elsewhere, here by another environment."""
    with DurableTestEnvironment([Flights()]) as other:
        [flights_uri] = other.endpoint_uris
        with DurableTestEnvironment([], endpoints=[flights_uri]) as env:
            flights = flights_pb2_grpc.FlightsStub(env.channel())
            assert flights.Reserve(flights_pb2.ReserveRequest(trip_id="x")).state == "reserved"
            deployments = admin_pb2_grpc.AdminStub(env.admin_channel()).ListDeployments(
                admin_pb2.ListDeploymentsRequest()
            )
            assert [d.uri for d in deployments.deployments] == [flights_uri]


# --------------------------------------------------------------------------- storage


def test_rocksdb_storage_survives_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "broker"
    with DurableTestEnvironment([Flights()], storage=data) as env:
        flights = flights_pb2_grpc.FlightsStub(env.channel())
        _, call = flights.Reserve.with_call(flights_pb2.ReserveRequest(trip_id="t1"))
        invocation_id = invocation_id_of(call)
    assert data.is_dir() and any(data.iterdir()), "nothing was written to the RocksDB dir"

    # A new environment (new ports, new endpoint) on the same directory: same journal.
    with DurableTestEnvironment([Flights()], storage=str(data)) as env:
        assert env.describe(invocation_id).invocation.status == COMPLETED
        flights = flights_pb2_grpc.FlightsStub(env.channel())
        assert flights.Get(flights_pb2.TripRef(trip_id="t1")).state == "reserved"
        flights.Cancel(flights_pb2.TripRef(trip_id="t1"))
        assert flights.Get(flights_pb2.TripRef(trip_id="t1")).state == "cancelled"


def test_memory_storage_starts_empty() -> None:
    for _ in range(2):
        with DurableTestEnvironment([Flights()]) as env:
            assert env.invocations() == []
            flights = flights_pb2_grpc.FlightsStub(env.channel())
            assert flights.Get(flights_pb2.TripRef(trip_id="t1")).state == ""
            flights.Reserve(flights_pb2.ReserveRequest(trip_id="t1"))


# --------------------------------------------------------------------------- lifecycle


def test_leaving_the_context_stops_everything() -> None:
    before = len(_env_threads())
    with DurableTestEnvironment([Flights()]) as env:
        assert len(_env_threads()) == before + 1
        channel = env.channel()
        flights = flights_pb2_grpc.FlightsStub(channel)
        flights.Reserve(flights_pb2.ReserveRequest(trip_id="t1"))
        addresses = [env.ingress, env.admin, *env.endpoint_uris]
        assert len(addresses) == 3
        assert all(_accepts_connections(a) for a in addresses)
    assert len(_env_threads()) == before, "the environment's thread was not joined"
    assert not any(_accepts_connections(a) for a in addresses)
    with pytest.raises(ValueError, match="closed channel"):
        flights.Get(flights_pb2.TripRef(trip_id="t1"))
    with pytest.raises(RuntimeError, match="stopped"):
        env.channel()
    env.stop()  # idempotent


def test_leaving_on_an_exception_stops_everything_and_keeps_the_exception() -> None:
    before = len(_env_threads())
    with pytest.raises(KeyError, match="from the test"):
        with DurableTestEnvironment([Flights()]) as env:
            ingress = env.ingress
            raise KeyError("from the test")
    assert len(_env_threads()) == before
    assert not _accepts_connections(ingress)


def test_a_failed_start_raises_and_cleans_up() -> None:
    before = len(_env_threads())
    # Nothing listens on port 1: registering it fails, and the start with it.
    env = DurableTestEnvironment([Flights()], endpoints=["http://127.0.0.1:1"])
    with pytest.raises(grpc.RpcError) as failure:
        env.start()
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
    assert len(_env_threads()) == before
    assert env.endpoint_uris and not _accepts_connections(env.endpoint_uris[0])
    assert not _accepts_connections(env.ingress)


def test_misuse_is_reported_clearly() -> None:
    with pytest.raises(TypeError, match="is a list"):
        DurableTestEnvironment(Flights())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="suspend_after"):
        DurableTestEnvironment([Flights()], suspend_after=-1)
    with pytest.raises(TypeError, match="retry_maxx"):
        DurableTestEnvironment([Flights()], broker_settings={"retry_maxx": 1}).start()
    with pytest.raises(TypeError, match="storage"):
        DurableTestEnvironment([Flights()], broker_settings={"data_dir": "x"}).start()

    env = DurableTestEnvironment([Flights()])
    with pytest.raises(RuntimeError, match="new"):
        env.channel()
    with env:
        with pytest.raises(RuntimeError, match="starts once"):
            env.start()
    with pytest.raises(RuntimeError, match="starts once"):
        env.start()
