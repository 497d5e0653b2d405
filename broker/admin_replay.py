"""The admin API's journal export: one invocation's journal, self-describing.

Status codes: NOT_FOUND for an id the broker does not hold (never created, or completed
and purged after its retention); OUT_OF_RANGE for a `first_entry` past the journal's end;
RESOURCE_EXHAUSTED for a journal that cannot fit in one answer (ask for pages).
"""

from __future__ import annotations

from typing import Any

import grpc
from durable.v1 import admin_pb2, invocation_pb2

from . import registry as reg
from . import rendering
from .admin_fields import check_part
from .config import MAX_SEND_BYTES
from .core.model import UnknownInvocation
from .core.partition import Partition
from .storage import invocations


class ReplayAdmin:
    """`ExportInvocation` of `durable.v1.Admin` (mixed into the admin servicer)."""

    _partition: Partition
    _registry: reg.Registry

    async def ExportInvocation(
        self,
        request: admin_pb2.ExportInvocationRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> admin_pb2.ExportInvocationResponse:
        await check_part(context, "invocation_id", request.invocation_id)
        try:
            record, journal = self._partition.record(request.invocation_id)
        except UnknownInvocation:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no invocation {request.invocation_id!r}: it never existed, or it "
                "completed and its retention ended (brokerctl invocations list shows "
                "the ones held)",
            )
            raise AssertionError("unreachable") from None
        first, length = request.first_entry, len(journal)
        past_end = rendering.first_entry_error(record.id, first, length)
        if past_end is not None:
            await context.abort(grpc.StatusCode.OUT_OF_RANGE, past_end)
        entries = rendering.window(journal, first, request.max_entries)
        deployment = self._pinned(record)
        rendered, _ = rendering.render(self._registry, record, entries, self._other)
        answer = admin_pb2.ExportInvocationResponse(
            invocation=record,
            deployment_id=deployment.id if deployment else "",
            deployment_uri=deployment.uri if deployment else "",
            files=deployment.files if deployment else None,
        )
        paged = bool(request.max_entries)
        too_big = rendering.place(answer, entries, rendered, first, length, paged, MAX_SEND_BYTES)
        if too_big is not None:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, too_big)
        return answer

    def _pinned(self, record: invocation_pb2.Invocation) -> reg.Deployment | None:
        """The deployment the invocation is pinned to or, before its first attempt,
        the one its service routes to."""
        if record.deployment_id:
            return self._registry.deployment(record.deployment_id)
        target = self._registry.service(record.service)
        return self._registry.deployment(target.deployment_id) if target else None

    def _other(self, invocation_id: str) -> invocation_pb2.Invocation | None:
        """Another invocation's record (for attach and get_output results)."""
        live = self._partition.live.get(invocation_id)
        if live is not None:
            return live.snapshot()
        return invocations.get(self._partition.kv, invocation_id)
