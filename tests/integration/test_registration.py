"""Registering deployments: one endpoint is one deployment whatever form its URI takes;
a registration that cannot succeed says why with a status a person can act on; a
force-removed deployment's in-flight invocations resume when its URI registers again."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from durable.v1 import admin_pb2, options_pb2, protocol_pb2
from google.protobuf import descriptor_pb2
from playground import playground_pb2

from tests.support import (
    BIN,
    PLAYGROUND,
    ROOT,
    Cluster,
    Status,
    free_port,
)

BROKERCTL = BIN / "brokerctl"


def brokerctl(admin: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`brokerctl --admin ADMIN ARGS...`; never raises on a non-zero exit."""
    return subprocess.run(
        [str(BROKERCTL), "--admin", admin, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def refused(cluster: Cluster, uri: str) -> grpc.RpcError:
    """The error RegisterDeployment answers for `uri`."""
    with pytest.raises(grpc.RpcError) as error:
        cluster.register(uri)
    return error.value


@pytest.fixture(scope="module")
def playground(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("registration")
    with Cluster(tmp, services=(PLAYGROUND,)) as cluster:
        yield cluster


# -- the URI --------------------------------------------------------------------------


def test_one_endpoint_is_one_deployment_whatever_form_its_uri_takes(playground: Cluster) -> None:
    address = playground.service_addresses[PLAYGROUND]
    canonical = f"http://{address}"
    forms = [f"http://{address}/", address, canonical, f"dns:///{address}", f" {canonical} "]
    ids = {form: playground.register(form).id for form in forms}
    assert len(set(ids.values())) == 1, ids
    listed = playground.admin.ListDeployments(admin_pb2.ListDeploymentsRequest()).deployments
    assert [(d.id, d.uri) for d in listed] == [(ids[canonical], canonical)]
    shown = brokerctl(playground.admin_address, "deployments", "register", f"{address}/")
    assert shown.returncode == 0, shown.stderr
    assert f"registered deployment {ids[canonical]} at {canonical}\n" in shown.stdout


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("http://127.0.0.1:99999", "the port 99999 is out of range (1 to 65535)"),
        ("http://127.0.0.1:0", "the port 0 is out of range (1 to 65535)"),
        ("http://127.0.0.1", "expected http://HOST:PORT"),
        ("http://127.0.0.1:9x", "the port '9x' is not a number"),
        ("http://127.0.0.1:9101/some/path", "without a path"),
        ("https://127.0.0.1:9101", "plaintext gRPC; use http://HOST:PORT"),
        ("ftp://127.0.0.1:9101", "unsupported scheme 'ftp'"),
        ("", "the endpoint URI is empty"),
    ],
)
def test_a_uri_the_broker_cannot_dial_is_invalid(playground: Cluster, uri: str, says: str) -> None:
    error = refused(playground, uri)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    assert says in (error.details() or ""), error.details()


def test_port_out_of_range_through_brokerctl(playground: Cluster) -> None:
    result = brokerctl(
        playground.admin_address, "deployments", "register", "http://127.0.0.1:99999"
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: INVALID_ARGUMENT:"), result.stderr
    assert "port 99999 is out of range" in result.stderr


def test_a_huge_uri_gets_its_length_and_the_limit_not_an_echo(playground: Cluster) -> None:
    uri = "http://" + "a" * 100_000 + ":9101"
    error = refused(playground, uri)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    details = error.details() or ""
    assert details == (f"the endpoint URI is {len(uri)} characters long; the limit is 2048"), (
        details[:200]
    )


# -- the endpoint's answer --------------------------------------------------------------


def _discover_reply(kind: str) -> bytes:
    """What the fake endpoint answers Discover with."""
    if kind == "garbage":
        return b"\xff\xff\xff\xff"
    if kind == "empty":
        return b""
    if kind == "no-services":
        return protocol_pb2.DiscoverResponse(protocol_version=1).SerializeToString()
    if kind == "future-version":
        return protocol_pb2.DiscoverResponse(
            protocol_version=7, services=["x.X"]
        ).SerializeToString()
    if kind in ("twice", "reserved", "missing-unknown", "tiny-rate"):
        # Descriptors that build; what is wrong is the list of services.
        files = descriptor_pb2.FileDescriptorSet()
        package = "durable.v1" if kind == "reserved" else "x"
        f = files.file.add(name="x/x.proto", package=package, syntax="proto3")
        f.message_type.add(name="M")
        service = f.service.add(name="Ingress")
        method = service.method.add(name="Do")
        method.input_type = method.output_type = f".{package}.M"
        if kind == "tiny-rate":
            service.options.Extensions[options_pb2.service_limits].rate = 1e-310
        listed = [f"{package}.Ingress"] * (2 if kind == "twice" else 1)
        # A missing handler must be a method of a hosted service (x.Ingress has Do only).
        missing = ["x.Ingress/Undo"] if kind == "missing-unknown" else []
        return protocol_pb2.DiscoverResponse(
            protocol_version=1, services=listed, files=files, missing_handlers=missing
        ).SerializeToString()
    files = descriptor_pb2.FileDescriptorSet()
    f = files.file.add(name="x/x.proto", package="x", dependency=["x/missing.proto"])
    f.service.add(name="X")
    return protocol_pb2.DiscoverResponse(
        protocol_version=1, services=["x.X"], files=files
    ).SerializeToString()


class _FakeEndpoint:
    """A raw gRPC server on 127.0.0.1 answering Discover with `reply()` (no SDK), or
    serving nothing of the protocol at all when `reply` is None."""

    def __init__(self, reply: Callable[[], bytes] | None) -> None:
        self.address = f"127.0.0.1:{free_port()}"
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        if reply is not None:

            def discover(request: bytes, context: Any) -> bytes:
                return reply()

            self.server.add_generic_rpc_handlers(
                (
                    grpc.method_handlers_generic_handler(
                        "durable.v1.ServiceEndpoint",
                        {"Discover": grpc.unary_unary_rpc_method_handler(discover)},
                    ),
                )
            )
        self.server.add_insecure_port(self.address)

    def __enter__(self) -> _FakeEndpoint:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop(None)


@pytest.mark.parametrize(
    ("kind", "says"),
    [
        ("garbage", "its Discover reply does not parse as a durable.v1.DiscoverResponse"),
        ("empty", "its Discover reply names no protocol version"),
        ("no-services", "its Discover reply lists no services"),
        ("future-version", "it speaks service protocol version 7; this broker speaks 1"),
        (
            "bad-descriptors",
            "the descriptor file 'x/x.proto' imports 'x/missing.proto', which the endpoint "
            "did not send",
        ),
        ("twice", "its Discover reply lists x.Ingress more than once"),
        (
            "missing-unknown",
            "it names 'x.Ingress/Undo' among its missing handlers, which is not a method of "
            "a service it hosts",
        ),
    ],
)
def test_a_discover_reply_that_breaks_the_protocol(
    playground: Cluster, kind: str, says: str
) -> None:
    with _FakeEndpoint(lambda: _discover_reply(kind)) as endpoint:
        error = refused(playground, f"http://{endpoint.address}")
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error
    details = error.details() or ""
    assert details.startswith(f"protocol violation by the endpoint at http://{endpoint.address}:")
    assert says in details, details
    # Nothing of it was registered.
    listed = playground.admin.ListDeployments(admin_pb2.ListDeploymentsRequest()).deployments
    assert endpoint.address not in " ".join(d.uri for d in listed)
    # Said once, as the endpoint's violation: not also as a traceback from grpc.
    assert "Exception deserializing" not in (playground.tmp / "logs" / "broker.log").read_text()


def test_a_service_named_like_the_brokers_own_is_refused(playground: Cluster) -> None:
    # The broker serves durable.v1.Ingress itself: the route would never reach it.
    with _FakeEndpoint(lambda: _discover_reply("reserved")) as endpoint:
        error = refused(playground, f"http://{endpoint.address}")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    assert "hosts durable.v1.Ingress, a name the broker reserves" in (error.details() or "")
    services = playground.admin.ListServices(admin_pb2.ListServicesRequest()).services
    assert "durable.v1.Ingress" not in [s.name for s in services]


def test_a_declared_rate_no_limit_may_have_is_refused(playground: Cluster) -> None:
    # 1e-310 per second overflowed the wait for a token in the middle of an event.
    with _FakeEndpoint(lambda: _discover_reply("tiny-rate")) as endpoint:
        error = refused(playground, f"http://{endpoint.address}")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    assert "x.Ingress: the limit it declares: rate 1e-310 per second is below the slowest rate" in (
        error.details() or ""
    ), error.details()


def test_a_server_that_is_no_durable_endpoint(playground: Cluster) -> None:
    with _FakeEndpoint(None) as endpoint:
        error = refused(playground, f"http://{endpoint.address}")
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error
    assert "does not serve durable.v1.ServiceEndpoint/Discover" in (error.details() or "")


def test_nothing_listening_is_unavailable(playground: Cluster) -> None:
    error = refused(playground, f"http://127.0.0.1:{free_port()}")
    assert error.code() == grpc.StatusCode.UNAVAILABLE, error
    assert "cannot discover the endpoint at http://127.0.0.1:" in (error.details() or "")


# -- removal and registering again -------------------------------------------------------


def test_force_removed_invocations_resume_when_the_uri_registers_again(tmp_path: Path) -> None:
    args = ["--retry-initial", "100ms", "--retry-max", "60s"]
    with Cluster(
        tmp_path, suspend_after="200ms", broker_args=args, services=(PLAYGROUND,)
    ) as cluster:
        address = cluster.service_addresses[PLAYGROUND]
        (deployment,) = cluster.admin.ListDeployments(
            admin_pb2.ListDeploymentsRequest()
        ).deployments
        pending = cluster.waiter.Await.future(playground_pb2.AwaitRequest(), timeout=120)
        try:
            invocation = cluster.wait_for(
                lambda: next(iter(cluster.invocations(service="playground.Waiter")), None),
                message="the Await invocation",
            )
            awakeable = cluster.wait_for(lambda: cluster.awakeable_id(invocation.id))
            cluster.wait_status(invocation.id, "suspended")

            removed = brokerctl(
                cluster.admin_address, "deployments", "remove", deployment.id, "--force"
            )
            assert removed.returncode == 0, removed.stderr
            assert removed.stdout.startswith(
                f"removed deployment {deployment.id} (1 invocation still in flight on it"
            ), removed.stdout
            # Its attempts fail while no deployment of its own is registered.
            cluster.resolve_awakeable(awakeable, "back")

            def stranded() -> bool:
                record = cluster.invocation(invocation.id)
                return record.status == Status.BACKING_OFF and record.attempts >= 3

            cluster.wait_for(stranded, message="the invocation to back off")
            assert f"deployment {deployment.id} is not registered" in (
                cluster.invocation(invocation.id).last_error
            )

            # The same endpoint, in another spelling of its URI, takes the old id back.
            again = brokerctl(
                cluster.admin_address, "--json", "deployments", "register", f"dns:///{address}/"
            )
            assert again.returncode == 0, again.stderr
            assert f'"id": "{deployment.id}"' in again.stdout, again.stdout
            reply = pending.result(timeout=60)
            assert reply.text == '"back"'
            finished = cluster.invocation(invocation.id)
            assert finished.status == Status.COMPLETED
            assert finished.deployment_id == deployment.id
        finally:
            pending.cancel()
        # The id is the endpoint's for good: the same after a restart, and new calls work.
        cluster.restart_broker()
        listed = cluster.admin.ListDeployments(admin_pb2.ListDeploymentsRequest()).deployments
        assert [(d.id, d.uri) for d in listed] == [(deployment.id, f"http://{address}")]
        slept = cluster.waiter.Sleep(playground_pb2.SleepRequest(millis=1), timeout=30)
        assert slept.text == "slept"
