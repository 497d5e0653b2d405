"""Requests the admin API and the ingress's own service refuse: the status a person can
act on, never UNKNOWN with a traceback in the broker's log, and a message that reaches
the caller however long what it quotes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from durable.v1 import admin_pb2, ingress_pb2
from playground import playground_pb2 as pb

from tests.support import PLAYGROUND, Cluster, invocation_id_of, running_cluster, wait_for

LONGEST_KEY = 0xFFFF


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp: Path = tmp_path_factory.mktemp("admin-bad-input")
    with running_cluster(tmp, services=(PLAYGROUND,)) as running:
        yield running


def _raw(channel: grpc.Channel, path: str, body: bytes) -> bytes:
    call: Callable[..., bytes] = channel.unary_unary(
        path, request_serializer=None, response_deserializer=None
    )
    return call(body, timeout=30)


def _refused(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def _log(cluster: Cluster) -> str:
    return (cluster.tmp / "logs" / "broker.log").read_text()


@pytest.mark.parametrize(
    ("port", "path", "body"),
    [
        ("admin", "/durable.v1.Admin/DescribeInvocation", b"\x0a\x04\xff\xfe\xc0\x80"),
        ("admin", "/durable.v1.Admin/CancelInvocation", b"\x0a\x10abc"),
        ("admin", "/durable.v1.Admin/CreateSchedule", b"\xff" * 11),
        ("ingress", "/durable.v1.Ingress/Attach", b"\xff" * 11),
        ("ingress", "/durable.v1.Ingress/GetOutput", b"\x0a\x04\xff\xfe\xc0\x80"),
    ],
)
def test_a_body_that_does_not_parse_is_invalid_argument(
    cluster: Cluster, port: str, path: str, body: bytes
) -> None:
    address = cluster.ingress if port == "ingress" else cluster.admin_address
    with grpc.insecure_channel(address) as channel:
        error = _refused(lambda: _raw(channel, path, body))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    assert (error.details() or "").startswith("the request body does not parse"), error
    assert "Traceback" not in _log(cluster)


def test_an_id_longer_than_storage_keys_is_invalid_argument(cluster: Cluster) -> None:
    too_long = "inv_" + "x" * LONGEST_KEY
    describe = admin_pb2.DescribeInvocationRequest(invocation_id=too_long)
    error = _refused(lambda: cluster.admin.DescribeInvocation(describe, timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    assert "over the 65535-byte limit" in (error.details() or ""), error
    output = ingress_pb2.AttachRequest(invocation_id=too_long)
    error = _refused(lambda: cluster.ingress_api.GetOutput(output, timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    assert "Traceback" not in _log(cluster)


@pytest.mark.parametrize(
    ("method", "request_", "field"),
    [
        ("DescribeInvocation", admin_pb2.DescribeInvocationRequest(), "invocation_id"),
        ("ExportInvocation", admin_pb2.ExportInvocationRequest(), "invocation_id"),
        ("CancelInvocation", admin_pb2.InvocationRequest(), "invocation_id"),
        ("PauseInvocation", admin_pb2.InvocationRequest(), "invocation_id"),
        ("ResolveAwakeable", admin_pb2.ResolveAwakeableRequest(), "awakeable_id"),
    ],
)
def test_an_empty_id_is_invalid_argument_not_a_lookup(
    cluster: Cluster, method: str, request_: object, field: str
) -> None:
    # "No invocation ''" would send a person looking for one that never could exist.
    call = getattr(cluster.admin, method)
    error = _refused(lambda: call(request_, timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    assert error.details() == f"{field} is required", error


def test_a_long_quoted_id_is_cut_and_the_code_stands(cluster: Cluster) -> None:
    # Quoted whole, the message would pass the client's 16 KiB header limit and the
    # caller would see RESOURCE_EXHAUSTED instead of NOT_FOUND.
    unknown = "inv_" + "x" * 20_000
    describe = admin_pb2.DescribeInvocationRequest(invocation_id=unknown)
    error = _refused(lambda: cluster.admin.DescribeInvocation(describe, timeout=10))
    assert error.code() == grpc.StatusCode.NOT_FOUND, error
    details = error.details() or ""
    assert details.startswith("no invocation 'inv_xxx"), details[:100]
    assert details.endswith("more characters cut to fit a gRPC status]"), details[-100:]
    assert len(details) <= 6000


def test_a_long_failure_message_reaches_the_caller_with_its_code(cluster: Cluster) -> None:
    waiting = cluster.waiter.Await.future(pb.AwaitRequest(), timeout=60)

    def awakeable() -> str | None:
        listed = cluster.admin.ListAwaiting(admin_pb2.ListAwaitingRequest(), timeout=10)
        return listed.awakeables[0].awakeable_id if listed.awakeables else None

    reason = "r" * 20_000
    cluster.reject_awakeable(wait_for(awakeable, message="the awakeable"), reason)
    with pytest.raises(grpc.RpcError) as info:
        waiting.result(timeout=60)
    error = info.value
    assert error.code() == grpc.StatusCode.ABORTED, error
    assert (error.details() or "").startswith("r" * 1000)
    assert "cut to fit a gRPC status" in (error.details() or "")
    # The whole message is kept: GetOutput carries it in the body.
    invocation_id = invocation_id_of(waiting)
    output = cluster.ingress_api.GetOutput(
        ingress_pb2.AttachRequest(invocation_id=invocation_id), timeout=10
    )
    assert output.failure.message.endswith(reason)


@pytest.mark.parametrize("field", ["status", "outcome"])
def test_an_unknown_status_or_outcome_filter_is_invalid_argument(
    cluster: Cluster, field: str
) -> None:
    request = admin_pb2.ListInvocationsRequest(**{field: 999})  # type: ignore[arg-type]
    error = _refused(lambda: cluster.admin.ListInvocations(request, timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    assert f"unknown {field} 999: give one of" in (error.details() or ""), error


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"page_token": "not-a-token"}, "pass next_page_token from the previous page unchanged"),
        ({"page_token": "MTI6aW52X2E", "offset": 3}, "page_token and offset cannot be combined"),
        ({"offset": 9999, "limit": 10}, "first 10,000 matches"),
        ({"offset": 9001}, "page with page_token instead"),
    ],
)
def test_a_page_the_listing_cannot_serve_is_invalid_argument(
    cluster: Cluster, fields: dict[str, object], says: str
) -> None:
    request = admin_pb2.ListInvocationsRequest(**fields)  # type: ignore[arg-type]
    error = _refused(lambda: cluster.admin.ListInvocations(request, timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    assert says in (error.details() or ""), error
    # The broker goes on answering, the same listing on its first pages included.
    listed = cluster.admin.ListInvocations(
        admin_pb2.ListInvocationsRequest(offset=9990, limit=10), timeout=10
    )
    assert listed.next_page_token == ""
    assert "Traceback" not in _log(cluster)


@pytest.mark.parametrize(
    ("key", "name", "says"),
    [
        ("", "verified", "the key of playground.Signup is required"),
        ("ann", "", "the promise name is required"),
        (
            "ann",
            "n" * (LONGEST_KEY + 1),
            "the promise name of 65536 bytes is over the 65535-byte limit",
        ),
    ],
)
def test_a_promise_needs_a_key_and_a_name_storage_can_hold(
    cluster: Cluster, key: str, name: str, says: str
) -> None:
    request = admin_pb2.CompletePromiseRequest(
        service="playground.Signup", key=key, name=name, value=b"1"
    )
    error = _refused(lambda: cluster.admin.CompletePromise(request, timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    assert says in (error.details() or ""), error
    described = cluster.admin.DescribeKey(
        admin_pb2.DescribeKeyRequest(service="playground.Signup", key=key or "ann"), timeout=10
    )
    assert list(described.promises) == []


def test_a_state_name_is_held_to_the_key_limit(cluster: Cluster) -> None:
    request = admin_pb2.SetStateRequest(
        service="playground.Counter", key="names", name="n" * (LONGEST_KEY + 1), value=b"1"
    )
    error = _refused(lambda: cluster.admin.SetState(request, timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    assert "the state name of 65536 bytes is over the 65535-byte limit" in (
        error.details() or ""
    ), error
    state = cluster.admin.GetState(
        admin_pb2.GetStateRequest(service="playground.Counter", key="names"), timeout=10
    )
    assert dict(state.state) == {}


def test_a_limit_past_1000_is_taken_as_1000_and_the_broker_goes_on(cluster: Cluster) -> None:
    waiting = cluster.waiter.Await.future(pb.AwaitRequest(), timeout=60)

    def awaited() -> admin_pb2.ListAwaitingResponse | None:
        listed = cluster.admin.ListAwaiting(
            admin_pb2.ListAwaitingRequest(limit=4_000_000_000), timeout=10
        )
        return listed if listed.awakeables else None

    listed = wait_for(awaited, message="the awakeable")
    assert len(listed.awakeables) == min(listed.total_awakeables, 1000) >= 1
    assert len(listed.promises) == min(listed.total_promises, 1000)
    schedules = cluster.admin.ListSchedules(
        admin_pb2.ListSchedulesRequest(limit=0xFFFFFFFF), timeout=10
    )
    assert len(schedules.schedules) == min(schedules.total, 1000)
    assert schedules.next_page_token == ""

    cluster.resolve_awakeable(listed.awakeables[0].awakeable_id, "done")
    assert waiting.result(timeout=60).text == '"done"'
    after = cluster.admin.ListAwaiting(admin_pb2.ListAwaitingRequest(), timeout=10)
    assert (len(after.awakeables), after.total_awakeables) == (0, 0)
    assert "Traceback" not in _log(cluster)


@pytest.mark.parametrize(
    "token",
    [
        "not-a-token",
        "Z29vZA==",  # base64 of a name, padded: not as the broker writes it
        "MTI6aW52X2E",  # a ListInvocations token: "12:inv_a" is no schedule's name
        "x" * 10_000,
    ],
)
def test_a_schedule_page_token_the_broker_did_not_issue_is_invalid_argument(
    cluster: Cluster, token: str
) -> None:
    request = admin_pb2.ListSchedulesRequest(page_token=token)
    error = _refused(lambda: cluster.admin.ListSchedules(request, timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    assert "pass next_page_token from the previous page unchanged" in (error.details() or "")
    listed = cluster.admin.ListSchedules(admin_pb2.ListSchedulesRequest(), timeout=10)
    assert listed.next_page_token == ""
    assert "Traceback" not in _log(cluster)


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (b"NaN", "not valid JSON"),
        (b"[Infinity]", "not valid JSON"),
        (b'{"x": -Infinity}', "not valid JSON"),
        (b"1e400", "the number 1e400 is too large to read (it would be infinity)"),
        (b"[-2.5e999]", "the number -2.5e999 is too large to read"),
    ],
)
def test_a_value_that_is_not_strict_json_is_invalid_argument(
    cluster: Cluster, value: bytes, says: str
) -> None:
    # Python's json reads NaN and Infinity; no JSON standard (nor another SDK) does. It
    # reads 1e400 as infinity too, which a handler would write back as Infinity.
    with pytest.raises(grpc.RpcError) as refused:
        cluster.admin.ResolveAwakeable(
            admin_pb2.ResolveAwakeableRequest(awakeable_id="awk_aW52X25vbmU6MQ", value=value),
            timeout=10,
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert says in (refused.value.details() or ""), refused.value.details()


def test_a_value_at_the_payload_limit_passes_and_one_over_it_names_the_flag(
    cluster: Cluster,
) -> None:
    # The server used to take in no more than the payload limit in all: a value at
    # the limit was refused for its request's other bytes, with gRPC's bare "larger
    # than max".
    limit = 4 * 1024 * 1024  # the default --max-payload-bytes
    unknown = "awk_aW52X25vbmU6MQ"  # inv_none:1

    def resolve(value: bytes) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as refused:
            cluster.admin.ResolveAwakeable(
                admin_pb2.ResolveAwakeableRequest(awakeable_id=unknown, value=value), timeout=30
            )
        return refused.value

    at = b'"' + b"x" * (limit - 2) + b'"'
    assert resolve(at).code() == grpc.StatusCode.NOT_FOUND  # past every size check
    over = resolve(at + b" ")
    assert over.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"over the broker's {limit}-byte payload limit (--max-payload-bytes)" in (
        over.details() or ""
    )
    with pytest.raises(grpc.RpcError) as state:
        cluster.admin.SetState(
            admin_pb2.SetStateRequest(
                service="playground.Counter", key="k", name="n", value=at + b" "
            ),
            timeout=30,
        )
    assert state.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "--max-payload-bytes" in (state.value.details() or "")
