"""`--console` with `--workers`: the web console in the supervisor, over the admin front.

The console reads through an admin servicer called in process (`broker.console`); here
that servicer is the front itself (`FrontServicer`: each method serializes its request,
runs the front's handler, parses the answer), so the console and `brokerctl` see the
same routed and merged answers. The console decodes payloads with a registry of the
deployments' message types; `Deployments` keeps one in this process, discovering each
deployment partition 0 lists from its endpoint, as registration does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

import grpc
from durable.v1 import admin_pb2, protocol_pb2, protocol_pb2_grpc
from google.protobuf.message import Message

from .. import registration
from .. import registry as reg
from ..admin import AdminServicer
from ..config import Settings
from ..console import AdminError, Console, start_console
from ..multiplex import endpoint_address
from ..security import ENDPOINT_SECRET_HEADER
from .front import AdminFront

log = logging.getLogger("broker.console")

_ADMIN = admin_pb2.DESCRIPTOR.services_by_name["Admin"]
REFRESH_S = 2.0


# How long the front waits for a partition on a console page's behalf (brokerctl's own
# default deadline).
CALL_TIMEOUT_S = 10.0


class _Context:
    """What the front's handlers use of a `grpc.aio.ServicerContext`."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> Sequence[tuple[str, str]]:
        return self._metadata

    def time_remaining(self) -> float | None:
        # Each call the front makes for a page gets this long: a hung worker's
        # partitions (SIGSTOP) left pages unanswered for good, and every tab's refresh
        # added one more waiting request.
        return CALL_TIMEOUT_S

    async def abort(self, code: grpc.StatusCode, details: str = "", *_: Any) -> None:
        raise AdminError(code, details)


class FrontServicer:
    """The admin servicer's methods (`await servicer.ListServices(request, context)`),
    answered by the front in this process.

    Args:
        front: The routing front.
        token: The admin token, passed on to the partitions, which check it.
    """

    def __init__(self, front: AdminFront, token: str | None) -> None:
        self._context = _Context((("authorization", f"Bearer {token}"),) if token else ())
        for name, handler in front.handlers().items():
            output = getattr(admin_pb2, _ADMIN.methods_by_name[name].output_type.name)
            setattr(self, name, self._method(handler, output))

    def _method(
        self, handler: Callable[[bytes, Any], Awaitable[bytes]], output: type[Message]
    ) -> Callable[[Message, Any], Awaitable[Message]]:
        async def call(request: Message, context: Any) -> Message:
            return output.FromString(await handler(request.SerializeToString(), self._context))

        return call


class Deployments:
    """A registry of the deployments partition 0 lists, kept current by polling.

    Args:
        servicer: The front, as the console calls it.
        endpoint_secret: Sent to endpoints, as the workers send it.
    """

    def __init__(self, servicer: Any, endpoint_secret: str | None) -> None:
        self.registry = reg.Registry()
        self._servicer = servicer
        self._metadata = ((ENDPOINT_SECRET_HEADER, endpoint_secret),) if endpoint_secret else ()
        self._failing = False

    async def refresh(self) -> None:
        """Adds the deployments not known yet, drops the removed ones."""
        listed: admin_pb2.ListDeploymentsResponse = await self._servicer.ListDeployments(
            admin_pb2.ListDeploymentsRequest(), None
        )
        wanted = {d.id: d for d in listed.deployments}
        for known in self.registry.deployments():
            now = wanted.get(known.id)
            # Gone, moved, or registered again with other services: learn it anew.
            if now is None or now.uri != known.uri or list(now.services) != list(known.services):
                self.registry.remove(known.id)
        for deployment in wanted.values():
            if self.registry.deployment(deployment.id) is None:
                self.registry.add(await self._discover(deployment))

    async def _discover(self, deployment: admin_pb2.Deployment) -> reg.Deployment:
        async with grpc.aio.insecure_channel(endpoint_address(deployment.uri)) as channel:
            stub = protocol_pb2_grpc.ServiceEndpointStub(channel)
            reply = await stub.Discover(
                protocol_pb2.DiscoverRequest(),
                timeout=registration.DISCOVER_TIMEOUT_S,
                metadata=self._metadata,
            )
        found = registration.check_reply(deployment.uri, reply)
        return reg.Deployment(
            id=deployment.id,
            uri=deployment.uri,
            services=list(found.services),
            files=found.files,
            retry_policies=list(found.retry_policies),
            request_response=found.request_response,
            multiplex=found.multiplex,
            created_at_ms=deployment.created_at_ms,
        )

    async def run(self, interval: float = REFRESH_S) -> None:
        """Refreshes every `interval` seconds; a failure is logged once per outage (the
        console then shows payloads it cannot decode as JSON or hex)."""
        while True:
            try:
                await self.refresh()
            except Exception as e:  # an endpoint or a partition down: try again later
                if not self._failing:
                    log.warning("the console cannot load the deployments' types: %s", e)
                self._failing = True
            else:
                self._failing = False
            await asyncio.sleep(interval)


class FrontConsole:
    """The running console and the task that keeps its types current."""

    def __init__(self, console: Console, refresher: asyncio.Task[None]) -> None:
        self.console = console
        self._refresher = refresher

    async def stop(self) -> None:
        """Stops both."""
        self._refresher.cancel()
        await self.console.stop()


async def start(settings: Settings, front: AdminFront) -> FrontConsole:
    """Serves the console on `settings.console`, reading through `front`."""
    servicer = FrontServicer(front, settings.admin_token)
    deployments = Deployments(servicer, settings.endpoint_secret)
    refresher = asyncio.create_task(deployments.run())
    # The servicer answers every method the console calls, as AdminServicer would.
    console = await start_console(settings, cast(AdminServicer, servicer), deployments.registry)
    return FrontConsole(console, refresher)
