"""The registry without a network: endpoint URIs in canonical form, and versions of one
contract side by side (each deployment with its own descriptor pool)."""

from __future__ import annotations

import pytest
from durable.v1 import storage_pb2
from google.protobuf import descriptor_pb2

from broker import endpoint_uri
from broker.registry import ProtocolViolation, Registry
from tests.endpoints import versioned


@pytest.mark.parametrize(
    "raw",
    [
        "http://127.0.0.1:9101",
        "http://127.0.0.1:9101/",
        "127.0.0.1:9101",
        "dns:///127.0.0.1:9101",
        "dns:127.0.0.1:9101",
        "grpc://127.0.0.1:9101",
        "HTTP://127.0.0.1:9101",
        "  http://127.0.0.1:9101 ",
    ],
)
def test_spellings_of_one_endpoint_are_one_uri(raw: str) -> None:
    assert endpoint_uri.canonical(raw) == "http://127.0.0.1:9101"


def test_host_names_and_ipv6() -> None:
    assert endpoint_uri.canonical("Flights.Internal:80") == "http://flights.internal:80"
    assert endpoint_uri.canonical("http://[0:0::1]:5") == "http://[::1]:5"


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ("http://127.0.0.1:99999", "the port 99999 is out of range (1 to 65535)"),
        ("http://127.0.0.1:65536", "out of range"),
        ("http://127.0.0.1:0", "out of range"),
        ("http://127.0.0.1:-1", "is not a number"),
        ("http://127.0.0.1", "expected http://HOST:PORT"),
        ("http://:9101", "expected http://HOST:PORT"),
        ("http://a:1/x", "without a path"),
        ("http://u@a:1", "user name"),
        ("https://a:1", "plaintext"),
        ("unix:///tmp/s", "unsupported scheme"),
        ("http://999.0.0.1:1", "not an IPv4 address"),
        ("http://a_b:1", "not a host name"),
        ("http://::1:1", "in brackets"),
        ("http://[zz]:1", "not an IPv6 address"),
    ],
)
def test_uris_that_cannot_be_dialled(raw: str, says: str) -> None:
    with pytest.raises(endpoint_uri.BadUri) as bad:
        endpoint_uri.canonical(raw)
    assert says in str(bad.value)


def test_a_huge_uri_is_not_echoed() -> None:
    with pytest.raises(endpoint_uri.BadUri) as bad:
        endpoint_uri.canonical("x" * 100_000)
    assert str(bad.value) == "the endpoint URI is 100000 characters long; the limit is 2048"


def _deployment(deployment_id: str, variant: str, created: int) -> storage_pb2.DeploymentRecord:
    files = descriptor_pb2.FileDescriptorSet()
    files.file.append(versioned.contract(variant))
    return storage_pb2.DeploymentRecord(
        id=deployment_id,
        uri=f"http://127.0.0.1:{9000 + created}",
        services=[versioned.SERVICE],
        files=files,
        created_at_ms=created,
    )


@pytest.mark.parametrize("v2", ["v2-renamed", "v2-moved"])
def test_versions_of_a_contract_side_by_side(v2: str) -> None:
    registry = Registry()
    registry.add(_deployment("dp_1", "v1", 1))
    registry.add(_deployment("dp_2", v2, 2))

    routed = registry.service(versioned.SERVICE)
    assert routed is not None and routed.deployment_id == "dp_2"
    prefix = "Hello" if v2 == "v2-renamed" else "Greet"
    assert routed.methods["Greet"].input_type.DESCRIPTOR.full_name == f"versioned.{prefix}Request"
    pinned = registry.service_on("dp_1", versioned.SERVICE)
    assert pinned is not None
    assert pinned.methods["Greet"].input_type.DESCRIPTOR.full_name == "versioned.GreetRequest"
    # Reflection looks the service up in the newest deployment's pool first.
    first = registry.pools(f"{versioned.SERVICE}.Greet")[0]
    assert (
        first.FindServiceByName(versioned.SERVICE).methods_by_name["Greet"].input_type.name
        == f"{prefix}Request"
    )

    # Without v2, v1 routes again.
    registry.remove("dp_2")
    again = registry.service(versioned.SERVICE)
    assert again is not None and again.deployment_id == "dp_1"


def test_descriptors_that_do_not_build_are_a_protocol_violation() -> None:
    record = _deployment("dp_1", "v1", 1)
    record.files.file[0].dependency.append("versioned/missing.proto")
    with pytest.raises(ProtocolViolation, match=r"imports 'versioned/missing\.proto'"):
        Registry().add(record)
    record = _deployment("dp_1", "v1", 1)
    record.files.file[0].message_type[0].field[0].type_name = ".versioned.Nowhere"
    record.files.file[0].message_type[0].field[
        0
    ].type = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
    with pytest.raises(ProtocolViolation, match="does not build"):
        Registry().add(record)


def test_by_uri_compares_canonical_forms() -> None:
    registry = Registry()
    registry.add(_deployment("dp_1", "v1", 1))
    found = registry.by_uri("127.0.0.1:9001/")
    assert found is not None and found.id == "dp_1"
