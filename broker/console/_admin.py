"""The console's only way to the broker's data: the admin API's servicer, called in
process (no serialization, no second path into storage), so `brokerctl` and the
console always agree. Its aborts become `AdminError`s that pages show."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import grpc
from durable.v1 import admin_pb2, invocation_pb2

from ..admin import AdminServicer


class AdminError(Exception):
    """An admin call answered with an error status."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class _Context:
    """The part of `grpc.aio.ServicerContext` the servicer uses."""

    async def abort(self, code: grpc.StatusCode, details: str = "", *_: Any) -> None:
        raise AdminError(code, details)

    def invocation_metadata(self) -> Sequence[tuple[str, str]]:
        return ()


class Admin:
    """Typed calls to `durable.v1.Admin`."""

    def __init__(self, servicer: AdminServicer) -> None:
        self._s = servicer

    @staticmethod
    def _ctx() -> Any:
        return cast(Any, _Context())

    async def services(self) -> admin_pb2.ListServicesResponse:
        return await self._s.ListServices(admin_pb2.ListServicesRequest(), self._ctx())

    async def deployments(self) -> admin_pb2.ListDeploymentsResponse:
        return await self._s.ListDeployments(admin_pb2.ListDeploymentsRequest(), self._ctx())

    async def stats(self) -> admin_pb2.GetStatsResponse:
        return await self._s.GetStats(admin_pb2.GetStatsRequest(), self._ctx())

    async def invocations(
        self, request: admin_pb2.ListInvocationsRequest
    ) -> admin_pb2.ListInvocationsResponse:
        return await self._s.ListInvocations(request, self._ctx())

    async def describe(
        self, invocation_id: str, first_entry: int = 0, max_entries: int = 1
    ) -> admin_pb2.DescribeInvocationResponse:
        """The record, and a page of at most `max_entries` journal entries from
        `first_entry` (never the whole journal at once: it may hold thousands)."""
        request = admin_pb2.DescribeInvocationRequest(
            invocation_id=invocation_id, first_entry=first_entry, max_entries=max_entries
        )
        return await self._s.DescribeInvocation(request, self._ctx())

    async def control(self, action: str, invocation_id: str) -> invocation_pb2.Invocation:
        """`action` is cancel, kill, pause, resume or purge."""
        method = {
            "cancel": self._s.CancelInvocation,
            "kill": self._s.KillInvocation,
            "pause": self._s.PauseInvocation,
            "resume": self._s.ResumeInvocation,
            "purge": self._s.PurgeInvocation,
        }[action]
        request = admin_pb2.InvocationRequest(invocation_id=invocation_id)
        return (await method(request, self._ctx())).invocation

    async def key(self, service: str, key: str) -> admin_pb2.DescribeKeyResponse:
        request = admin_pb2.DescribeKeyRequest(service=service, key=key)
        return await self._s.DescribeKey(request, self._ctx())

    async def awaiting(self, limit: int = 200) -> admin_pb2.ListAwaitingResponse:
        return await self._s.ListAwaiting(admin_pb2.ListAwaitingRequest(limit=limit), self._ctx())

    async def resolve_awakeable(self, awakeable_id: str, value: bytes) -> None:
        request = admin_pb2.ResolveAwakeableRequest(awakeable_id=awakeable_id, value=value)
        await self._s.ResolveAwakeable(request, self._ctx())

    async def reject_awakeable(self, awakeable_id: str, reason: str) -> None:
        request = admin_pb2.RejectAwakeableRequest(awakeable_id=awakeable_id, reason=reason)
        await self._s.RejectAwakeable(request, self._ctx())

    async def complete_promise(
        self, service: str, key: str, name: str, value: bytes | None, rejection: str | None
    ) -> None:
        request = admin_pb2.CompletePromiseRequest(service=service, key=key, name=name)
        if rejection is not None:
            request.rejection = rejection
        else:
            request.value = value or b"null"
        await self._s.CompletePromise(request, self._ctx())

    async def set_state(
        self, service: str, key: str, name: str, value: bytes | None
    ) -> admin_pb2.SetStateResponse:
        request = admin_pb2.SetStateRequest(service=service, key=key, name=name)
        if value is not None:
            request.value = value
        return await self._s.SetState(request, self._ctx())
