"""`broker.ingress.listen`: the probe that keeps an ingress port to one broker even though
its servers share it with SO_REUSEPORT."""

from __future__ import annotations

import socket

import pytest

from broker.addresses import with_port
from broker.ingress.listen import PortInUse, refuse_if_listened


def _listener(reuse_port: bool) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # As gRPC's listeners do: their closed connections then leave the port bindable.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


@pytest.mark.parametrize("reuse_port", [False, True])
def test_a_port_something_listens_on_is_refused(reuse_port: bool) -> None:
    # With SO_REUSEPORT the listener is what another broker's servers look like: the
    # probe, binding without it, must still be refused.
    with _listener(reuse_port) as held:
        address = f"127.0.0.1:{held.getsockname()[1]}"
        with pytest.raises(PortInUse, match=f"the ingress address {address} is already in use"):
            refuse_if_listened(address)


def test_a_free_port_and_an_ephemeral_one_pass() -> None:
    with _listener(False) as held:
        port = held.getsockname()[1]
    refuse_if_listened(f"127.0.0.1:{port}")  # closed again: free
    refuse_if_listened("127.0.0.1:0")


def test_a_port_whose_connections_linger_in_time_wait_is_free() -> None:
    # A broker restarted on its port finds its last run's closed connections there.
    with _listener(False) as held:
        port = held.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = held.accept()
        accepted.close()  # the server side closes first: TIME_WAIT is on the port
        client.close()
    refuse_if_listened(f"127.0.0.1:{port}")


def test_with_port_keeps_the_host_form() -> None:
    assert with_port("127.0.0.1:0", 9090) == "127.0.0.1:9090"
    assert with_port("[::1]:0", 9090) == "[::1]:9090"


def test_a_malformed_address_is_named() -> None:
    with pytest.raises(ValueError, match="'nowhere' is not HOST:PORT"):
        refuse_if_listened("nowhere")
