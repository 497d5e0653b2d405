"""The broker's JSON renderings of journal payloads (`broker.rendering`), no network."""

from __future__ import annotations

import json

from durable.v1 import invocation_pb2, journal_pb2
from flights import flights_pb2
from trips import trips_pb2

from broker import rendering
from tests.unit.test_partition import make_registry

Entry = journal_pb2.JournalEntry
Result = journal_pb2.Result


def test_as_json_renders_the_type_and_refuses_other_bytes() -> None:
    data = trips_pb2.ReserveTripResponse(status="success", tripId="t1").SerializeToString()
    assert json.loads(rendering.as_json(trips_pb2.ReserveTripResponse, data)) == {
        "status": "success",
        "tripId": "t1",
    }
    assert rendering.as_json(trips_pb2.ReserveTripResponse, b"\xff\xff") == ""
    # JSON bytes parse as a message with unknown fields only: not this type.
    assert rendering.as_json(trips_pb2.ReserveTripResponse, b'{"x": 1}') == ""


def test_render_uses_each_entry_s_method_types() -> None:
    registry = make_registry()
    record = invocation_pb2.Invocation(
        service="trips.Trips",
        method="Reserve",
        result=Result(value=trips_pb2.ReserveTripResponse(status="success").SerializeToString()),
    )
    flight = flights_pb2.ReserveRequest(trip_id="t1")
    journal = [
        Entry(
            input=journal_pb2.InputCommand(
                request=trips_pb2.ReserveTripRequest().SerializeToString()
            )
        ),
        Entry(
            call=journal_pb2.CallCommand(
                service="flights.Flights", method="Reserve", request=flight.SerializeToString()
            ),
            result=Result(
                value=flights_pb2.BookingStatus(trip_id="t1", state="reserved").SerializeToString()
            ),
        ),
        Entry(call=journal_pb2.CallCommand(service="gone.Gone", method="X", request=b"\x08\x01")),
        Entry(run=journal_pb2.RunCommand(name="n"), result=Result(value=b"1")),
        Entry(output=journal_pb2.OutputCommand(), result=record.result),
    ]

    rendered, result_json = rendering.render(registry, record, journal, lambda _: None)

    assert [(r.request_json, r.result_json) for r in rendered] == [
        ("{}", ""),
        ('{"tripId": "t1"}', '{"tripId": "t1", "state": "reserved"}'),
        ("", ""),
        ("", ""),
        ("", '{"status": "success"}'),
    ]
    assert result_json == '{"status": "success"}'
