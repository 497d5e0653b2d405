"""grpcurl against the ingress: reflection, JSON calls, headers and idempotency keys."""

from __future__ import annotations

import json
import subprocess
import uuid

from tests.support import (
    INVOCATION_ID_RE,
    SERVICE_NAMES,
    Cluster,
    Status,
    grpcurl_json,
    grpcurl_verbose_parts,
    parse_grpcurl_error,
)


def test_list_shows_the_four_demo_services(cluster: Cluster) -> None:
    result = cluster.grpcurl("-plaintext", cluster.ingress, "list")

    assert result.returncode == 0, result.stderr
    listed = set(result.stdout.split())
    assert set(SERVICE_NAMES.values()) <= listed, result.stdout


def test_describe_trips_shows_its_method(cluster: Cluster) -> None:
    result = cluster.grpcurl("-plaintext", cluster.ingress, "describe", "trips.Trips")

    assert result.returncode == 0, result.stderr
    assert "trips.Trips is a service" in result.stdout, result.stdout
    assert "rpc Reserve ( .trips.ReserveTripRequest ) returns ( .trips.ReserveTripResponse )" in (
        result.stdout
    )


def test_describe_the_response_message_shows_trip_id(cluster: Cluster) -> None:
    result = cluster.grpcurl("-plaintext", cluster.ingress, "describe", "trips.ReserveTripResponse")

    assert result.returncode == 0, result.stderr
    assert "tripId" in result.stdout, result.stdout


def test_describe_a_virtual_object(cluster: Cluster) -> None:
    result = cluster.grpcurl("-plaintext", cluster.ingress, "describe", "flights.Flights")

    assert result.returncode == 0, result.stderr
    for method in ("Reserve", "Confirm", "Cancel", "Get"):
        assert f"rpc {method} (" in result.stdout, result.stdout


def test_admin_port_serves_reflection(cluster: Cluster) -> None:
    result = cluster.grpcurl("-plaintext", cluster.admin_address, "list")

    assert result.returncode == 0, result.stderr
    assert "durable.v1.Admin" in result.stdout.split(), result.stdout


def test_call_prints_tripid_and_invocation_id_header(cluster: Cluster) -> None:
    result = cluster.grpcurl_call("trips.Trips/Reserve", {}, verbose=True)

    assert result.returncode == 0, result.stderr
    headers, body = grpcurl_verbose_parts(result.stdout)
    assert body.get("status") == "success", result.stdout
    assert body.get("tripId"), result.stdout
    assert "invocation-id" in headers, result.stdout
    invocation_id = headers["invocation-id"]
    assert INVOCATION_ID_RE.match(invocation_id), invocation_id
    record = cluster.invocation(invocation_id)
    assert (record.service, record.method, record.status) == (
        "trips.Trips",
        "Reserve",
        Status.COMPLETED,
    )


def test_keyed_get_through_grpcurl(cluster: Cluster) -> None:
    booked = grpcurl_json(cluster.grpcurl_call("trips.Trips/Reserve", {}).stdout)

    result = cluster.grpcurl_call("flights.Flights/Get", {"trip_id": booked["tripId"]})

    assert result.returncode == 0, result.stderr
    assert grpcurl_json(result.stdout)["state"] == "confirmed", result.stdout


def test_same_idempotency_key_same_invocation_and_response(cluster: Cluster) -> None:
    key = f"reflection-{uuid.uuid4()}"
    header = f"idempotency-key: {key}"

    first = cluster.grpcurl_call("trips.Trips/Reserve", {}, headers=[header], verbose=True)
    second = cluster.grpcurl_call("trips.Trips/Reserve", {}, headers=[header], verbose=True)

    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    first_headers, first_body = grpcurl_verbose_parts(first.stdout)
    second_headers, second_body = grpcurl_verbose_parts(second.stdout)
    assert first_body["tripId"] and first_body == second_body
    assert first_headers["invocation-id"] == second_headers["invocation-id"]
    trips = [i for i in cluster.invocations(service="trips.Trips") if i.idempotency_key == key]
    assert len(trips) == 1, trips
    assert trips[0].id == first_headers["invocation-id"]
    # One trip was booked, not two.
    assert len(cluster.notifications(first_body["tripId"])) == 1


def test_idempotency_key_is_scoped_to_the_method(cluster: Cluster) -> None:
    key = f"scoped-{uuid.uuid4()}"
    header = f"idempotency-key: {key}"
    booked = cluster.grpcurl_call("trips.Trips/Reserve", {}, headers=[header])
    assert booked.returncode == 0, booked.stderr
    trip_id = grpcurl_json(booked.stdout)["tripId"]

    looked_up = cluster.grpcurl_call("flights.Flights/Get", {"trip_id": trip_id}, headers=[header])

    assert looked_up.returncode == 0, looked_up.stderr
    assert grpcurl_json(looked_up.stdout)["state"] == "confirmed", looked_up.stdout
    with_key = [i for i in cluster.invocations() if i.idempotency_key == key]
    assert sorted((i.service, i.method) for i in with_key) == [
        ("flights.Flights", "Get"),
        ("trips.Trips", "Reserve"),
    ], with_key


def test_ingress_reflection_lists_health_and_reflection(cluster: Cluster) -> None:
    listed = cluster.grpcurl("-plaintext", cluster.ingress, "list")

    assert listed.returncode == 0, listed.stderr
    names = set(listed.stdout.split())
    assert {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names, (
        listed.stdout
    )


def test_health_check_through_grpcurl_on_the_ingress(cluster: Cluster) -> None:
    result = cluster.grpcurl("-plaintext", cluster.ingress, "grpc.health.v1.Health/Check")

    assert result.returncode == 0, result.stderr
    assert grpcurl_json(result.stdout) == {"status": "SERVING"}, result.stdout


def test_a_journal_read_in_pages_through_grpcurl(cluster: Cluster) -> None:
    result = cluster.grpcurl_call("trips.Trips/Reserve", {}, verbose=True)
    assert result.returncode == 0, result.stderr
    invocation_id = grpcurl_verbose_parts(result.stdout)[0]["invocation-id"]

    def describe(body: dict[str, object]) -> subprocess.CompletedProcess[str]:
        request = json.dumps({"invocationId": invocation_id, **body})
        method = "durable.v1.Admin/DescribeInvocation"
        return cluster.grpcurl("-plaintext", "-d", request, cluster.admin_address, method)

    whole = grpcurl_json(describe({}).stdout)["journal"]
    assert len(whole) > 4, whole  # a saga: calls and sends besides its input and output
    got: list[object] = []
    first, pages = 0, 0
    while pages < 50:
        page = grpcurl_json(describe({"firstEntry": first, "maxEntries": 2}).stdout)
        pages += 1
        assert 1 <= len(page["journal"]) <= 2 and page["journal_length"] == len(whole), page
        got += page["journal"]
        if "next_entry" not in page:  # 0 on the last page, which JSON leaves out
            break
        first = page["next_entry"]
    assert got == whole
    assert pages == (len(whole) + 1) // 2
    past = describe({"firstEntry": len(whole)})
    code, message = parse_grpcurl_error(past.stderr)
    assert code == "OutOfRange", past.stderr
    assert f"journal has {len(whole)} entries" in message and "past its end" in message
