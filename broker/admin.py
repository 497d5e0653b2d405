"""The admin API: deployments, services and invocations, for operators and brokerctl.

Status codes: NOT_FOUND for an unknown invocation or deployment id; INVALID_ARGUMENT for
a malformed request or an endpoint whose services cannot be served (the message says
why); registration's others (UNAVAILABLE, FAILED_PRECONDITION) are listed in
`broker.registration`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import secrets
from collections.abc import Callable
from typing import Any

import grpc
from durable.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    invocation_pb2,
    journal_pb2,
    protocol_pb2,
)
from durable.wire import parse_awakeable_id

from . import (
    admin_limits,
    admin_paging,
    admin_query,
    codes,
    contract_change,
    deploy_check,
    endpoint_uri,
    registration,
    rendering,
)
from . import registry as reg
from ._cli_format import parse_json
from .admin_fields import check_part, check_payload
from .admin_replay import ReplayAdmin
from .admin_schedules import ScheduleAdmin
from .config import MAX_SEND_BYTES
from .core import control
from .core.model import UnknownInvocation, failure, now_ms
from .core.partition import Partition
from .driver import Driver
from .storage import Batch, deployments, invocations, state

# Invocations listed when the request sets no limit (see `admin_paging` for the rest).
DEFAULT_LIST_LIMIT = admin_paging.DEFAULT_LIST_LIMIT

log = logging.getLogger("broker.admin")

Status = invocation_pb2.InvocationStatus
Outcome = admin_pb2.InvocationOutcome


class AdminServicer(ScheduleAdmin, ReplayAdmin, admin_pb2_grpc.AdminServicer):
    """Implements `durable.v1.Admin`."""

    def __init__(self, driver: Driver, registry: reg.Registry) -> None:
        self._driver = driver
        self._partition = driver.partition
        self._max_payload = driver.partition.settings.max_payload_bytes
        self._registry = registry
        self._invoker = driver.invoker
        self._deployments_lock = asyncio.Lock()
        # Completed invocations by creation time, so that listings and counts stay fast
        # with many retained; `index_completed` builds it after a start.
        self.completed_index = admin_query.CompletedIndex(
            self._partition, self._partition.settings.admin_index_rows
        )

    async def index_completed(self) -> None:
        """Builds the index of completed invocations (until then listings scan)."""
        await self.completed_index.build()

    async def RegisterDeployment(
        self,
        request: admin_pb2.RegisterDeploymentRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> admin_pb2.Deployment:
        try:
            if request.check_only:
                uri = registration.canonical_uri(request.uri)
                discovered = await registration.discover(self._invoker, uri)
                checked = await self._check(uri, discovered) if request.check else 0
                if not request.force:
                    self._refuse_in_place_change(uri, discovered)
                return admin_pb2.Deployment(uri=uri, checked_journals=checked)
            record, checked = await self._register(
                request.uri,
                check=request.check,
                wanted_id=request.deployment_id,
                force=request.force,
            )
        except registration.Refused as e:
            await context.abort(e.code, e.message)
            raise AssertionError("unreachable") from None
        except Exception as e:  # a bug of ours: say so, rather than UNKNOWN
            log.exception("registering %.200s failed", request.uri)
            await context.abort(
                grpc.StatusCode.INTERNAL,
                f"the broker failed to register the endpoint ({type(e).__name__}: "
                f"{str(e)[:500]}); its log has the details",
            )
            raise AssertionError("unreachable") from None
        # The new deployment may declare other limits: let waiting invocations through.
        self._driver.apply(self._partition.on_limits_due)
        answer = _deployment(record)
        answer.checked_journals = checked
        return answer

    async def _register(
        self, raw_uri: str, check: bool = False, wanted_id: str = "", force: bool = False
    ) -> tuple[reg.Deployment, int]:
        """Discovers, checks and durably registers the endpoint at `raw_uri`; with
        `check`, only once recorded journals replay against it (`broker.deploy_check`).
        Returns the deployment and how many journals the check replayed.

        Args:
            raw_uri: The endpoint's address as given.
            check: Replay recorded journals against it first.
            wanted_id: The id a cluster's front decided on (partition 0's), or "".
            force: Replace the URI's deployment even if `_refuse_in_place_change` would
                refuse.

        Raises:
            registration.Refused: with the status to answer (see `broker.registration`);
                FAILED_PRECONDITION listing the divergences a check found, or for a
                contract changed under invocations in flight.
        """
        registration.check_wanted_id_form(wanted_id)
        uri = registration.canonical_uri(raw_uri)
        discovered = await registration.discover(self._invoker, uri)
        checked = await self._check(uri, discovered) if check else 0
        # One registration or removal at a time: two of the same URI must not both
        # decide that it is new.
        async with self._deployments_lock:
            existing = self._registry.by_uri(uri)
            # A URI registered again after its deployment was removed takes the old id
            # back, so that invocations still pinned to it (a forced removal) resume.
            retired = None if existing else deployments.retired_id(self._partition.kv, uri)
            if wanted_id:
                registration.check_wanted_id(
                    self._registry, wanted_id, uri, existing.id if existing else retired
                )
            record = reg.Deployment(
                id=wanted_id
                or (existing.id if existing else retired or "dp_" + secrets.token_hex(8)),
                uri=uri,
                services=list(discovered.services),
                files=discovered.files,
                retry_policies=list(discovered.retry_policies),
                request_response=discovered.request_response,
                multiplex=discovered.multiplex,
                missing_handlers=list(discovered.missing_handlers),
                created_at_ms=existing.created_at_ms if existing else now_ms(),
            )
            try:
                built = self._registry.prepare(record)
                reg.check_declared_limits(record)
            except reg.ProtocolViolation as e:
                raise registration.Refused(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"protocol violation by the endpoint at {uri}: {e}",
                ) from None
            except reg.RegistrationError as e:
                raise registration.Refused(
                    grpc.StatusCode.INVALID_ARGUMENT, f"cannot register {uri}: {e}"
                ) from None
            if not force:
                self._refuse_in_place_change(uri, discovered, built.services)
            batch = Batch()
            deployments.put(batch, record)
            if retired:
                deployments.unretire(batch, uri)
            try:
                await self._driver.committer.commit(batch)
            except Exception as e:  # the registration is not durable: nothing changed
                raise registration.Refused(
                    grpc.StatusCode.UNAVAILABLE,
                    f"the broker cannot write the registration of {uri} to its journal "
                    f"({e}); retry later",
                ) from None
            self._registry.install(built)
        if retired:
            self._retry_pinned(record.id)
        log.info("registered deployment %s at %s: %s", record.id, uri, ", ".join(record.services))
        return record, checked

    def _refuse_in_place_change(
        self,
        uri: str,
        discovered: protocol_pb2.DiscoverResponse,
        services: dict[str, reg.Service] | None = None,
    ) -> None:
        """Refuses to replace the URI's deployment with code that changes the contract
        of a handler whose invocations pinned to it are in flight: they would resume on
        it (a field whose type changed reads their journaled values as another type,
        silently), where the design has them finish on the deployment they began on.
        What counts is the wire contract (`broker.contract_change`), not file layout.

        `services`: the new code's, when the caller prepared them already.

        Raises:
            registration.Refused: FAILED_PRECONDITION naming them and the ways out.
        """
        existing = self._registry.by_uri(uri)
        if existing is None or (
            existing.files == discovered.files
            and list(existing.services) == list(discovered.services)
            and list(existing.missing_handlers) == list(discovered.missing_handlers)
        ):
            return  # the same contract and the same handlers

        def runs_here(record: invocation_pb2.Invocation) -> bool:
            if record.deployment_id:
                return record.deployment_id == existing.id
            # Accepted, not started yet (queued behind a key, a limit, or its time): it
            # starts on whatever deployment routes its service then, this one's code.
            routed = self._registry.service(record.service)
            return routed is not None and routed.deployment_id == existing.id

        pinned = [
            live.record
            for live in self._partition.listed()
            if live.record.status != Status.COMPLETED and runs_here(live.record)
        ]
        if not pinned:
            return
        if services is None:
            try:
                services = self._registry.prepare(
                    reg.Deployment(
                        id=existing.id,
                        uri=uri,
                        services=list(discovered.services),
                        files=discovered.files,
                        missing_handlers=list(discovered.missing_handlers),
                    )
                ).services
            except (reg.ProtocolViolation, reg.RegistrationError):
                return  # refused as it is, by the registration itself
        handlers = [(r.service, r.method) for r in pinned]
        changes = contract_change.changed(self._registry, existing.id, services, handlers)
        if not changes:
            return
        affected = [
            r.id for r in pinned if any(c.startswith(f"{r.service}/{r.method}") for c in changes)
        ]
        shown = ", ".join(affected[:5])
        if len(affected) > 5:
            shown += f" and {len(affected) - 5} more"
        raise registration.Refused(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"the endpoint at {uri} changes the contract of handlers with invocations in "
            f"flight on its deployment {existing.id} ({'; '.join(changes)}): "
            f"{len(affected)} invocation(s) ({shown}) would run on it. Let them finish "
            "first, or register the new version at another address (those already started "
            "finish on the old one; those not started yet start on the newest deployment of "
            "their service, as new calls do), or register with --force to replace it in "
            "place",
        )

    async def _check(self, uri: str, discovered: protocol_pb2.DiscoverResponse) -> int:
        """Replays this partition's recorded journals against the endpoint; returns how
        many.

        Raises:
            registration.Refused: FAILED_PRECONDITION listing the divergences.
        """
        report = await deploy_check.check(
            self._invoker, uri, self._partition, self.completed_index, discovered.services
        )
        if report.divergences:
            raise registration.Refused(grpc.StatusCode.FAILED_PRECONDITION, report.refusal(uri))
        return report.checked

    def _retry_pinned(self, deployment_id: str) -> None:
        """Retries now the invocations that backed off while their deployment was gone,
        rather than after what may be minutes of backoff."""
        for live in self._partition.listed():
            # `listed`: reading `record` would unpack every waiting invocation's for good.
            listed = live.listed
            if listed.deployment_id == deployment_id and listed.status == Status.BACKING_OFF:
                self._driver.apply(self._partition.resume, live)

    async def ListDeployments(
        self, request: admin_pb2.ListDeploymentsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.ListDeploymentsResponse:
        in_flight = self._in_flight()
        return admin_pb2.ListDeploymentsResponse(
            deployments=[
                _deployment(d, in_flight.get(d.id, 0)) for d in self._registry.deployments()
            ]
        )

    def _in_flight(self) -> dict[str, int]:
        counts = collections.Counter(live.listed.deployment_id for live in self._partition.listed())
        counts.pop("", None)  # not started yet
        return counts

    async def RemoveDeployment(
        self,
        request: admin_pb2.RemoveDeploymentRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> admin_pb2.RemoveDeploymentResponse:
        async with self._deployments_lock:
            record = self._registry.deployment(request.deployment_id)
            if record is None:
                await context.abort(
                    grpc.StatusCode.NOT_FOUND, f"no deployment {request.deployment_id!r}"
                )
                raise AssertionError("unreachable")
            in_flight = self._in_flight().get(request.deployment_id, 0)
            if in_flight and not request.force:
                await context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"deployment {request.deployment_id} has {in_flight} invocation(s) in "
                    "flight; wait for them to finish, or force the removal",
                )
            batch = Batch()
            deployments.delete(batch, request.deployment_id)
            deployments.retire(batch, endpoint_uri.comparable(record.uri), request.deployment_id)
            await self._driver.committer.commit(batch)
            self._registry.remove(request.deployment_id)
        self._invoker.forget(request.deployment_id)
        log.info("removed deployment %s (%d in flight)", request.deployment_id, in_flight)
        return admin_pb2.RemoveDeploymentResponse(in_flight=in_flight)

    async def ListServices(
        self, request: admin_pb2.ListServicesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.ListServicesResponse:
        out = []
        for s in self._registry.services():
            key_field = next((m.key_field for m in s.methods.values() if m.key_field), "")
            out.append(
                admin_pb2.Service(
                    name=s.name,
                    kind=s.kind,
                    deployment_id=s.deployment_id,
                    key_field=key_field,
                    handlers=[
                        admin_pb2.Handler(
                            name=m.name,
                            input_type=m.input_type.DESCRIPTOR.full_name,
                            output_type=m.output_type.DESCRIPTOR.full_name,
                            shared=m.shared,
                        )
                        for m in s.methods.values()
                        if m.implemented
                    ],
                )
            )
        return admin_pb2.ListServicesResponse(services=out)

    async def SetLimits(
        self, request: admin_pb2.SetLimitsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.SetLimitsResponse:
        try:
            limit = admin_limits.check(self._registry, request)
        except admin_limits.LimitError as e:
            await context.abort(getattr(grpc.StatusCode, e.code), str(e))
            raise AssertionError("unreachable") from None
        await self._driver.commit(
            self._partition.set_limits, request.service, request.method, limit
        )
        log.info("limits of %s/%s: %s", request.service, request.method or "*", limit)
        return admin_pb2.SetLimitsResponse(
            limits=admin_limits.scope_view(self._partition, request.service, request.method)
        )

    async def GetLimits(
        self, request: admin_pb2.GetLimitsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.GetLimitsResponse:
        return admin_limits.view(self._partition, request.service)

    async def ListInvocations(
        self, request: admin_pb2.ListInvocationsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.ListInvocationsResponse:
        status = request.status
        # Proto3 enums are open: an unknown number parses, and would otherwise fail the
        # listing (status) or be taken as "any" (outcome).
        for field, value, enum in (
            ("status", status, Status),
            ("outcome", request.outcome, Outcome),
        ):
            if value not in enum.values():
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"unknown {field} {value}: give one of {', '.join(enum.keys()[1:])}",
                )
        if request.failure_code and request.outcome != admin_pb2.OUTCOME_FAILED:
            # Ignored until now: every invocation was listed, as if no filter were given.
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "failure_code filters failed invocations: give it with outcome OUTCOME_FAILED",
            )
        if request.outcome and status and status != Status.COMPLETED:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "an outcome filter applies to completed invocations only; "
                f"it cannot be combined with status {Status.Name(status)}",
            )
        # Just after a start: the loop serves calls while the index is built; waiting a
        # moment for it beats answering without the completed ones.
        await self.completed_index.wait_built()
        try:
            return admin_query.list_invocations(self._partition, self.completed_index, request)
        except admin_paging.PagingError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            raise AssertionError("unreachable") from None

    async def DescribeInvocation(
        self,
        request: admin_pb2.DescribeInvocationRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> admin_pb2.DescribeInvocationResponse:
        await check_part(context, "invocation_id", request.invocation_id)
        try:
            record, journal = self._partition.record(request.invocation_id)
        except UnknownInvocation:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"no invocation {request.invocation_id!r}"
            )
            raise AssertionError("unreachable") from None
        first, length = request.first_entry, len(journal)
        past_end = rendering.first_entry_error(record.id, first, length)
        if past_end is not None:
            await context.abort(grpc.StatusCode.OUT_OF_RANGE, past_end)
        entries = rendering.window(journal, first, request.max_entries)
        rendered, result_json = rendering.render(self._registry, record, entries, self._lookup)
        answer = admin_pb2.DescribeInvocationResponse(invocation=record, result_json=result_json)
        paged = bool(request.max_entries)
        too_big = rendering.place(answer, entries, rendered, first, length, paged, MAX_SEND_BYTES)
        if too_big is not None:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, too_big)
        return answer

    def _lookup(self, invocation_id: str) -> invocation_pb2.Invocation | None:
        live = self._partition.live.get(invocation_id)
        if live is not None:
            return live.snapshot()
        return invocations.get(self._partition.kv, invocation_id)

    async def CancelInvocation(
        self, request: admin_pb2.InvocationRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.InvocationResponse:
        return await self._control(context, request.invocation_id, control.cancel)

    async def KillInvocation(
        self, request: admin_pb2.InvocationRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.InvocationResponse:
        return await self._control(context, request.invocation_id, control.kill)

    async def PauseInvocation(
        self, request: admin_pb2.InvocationRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.InvocationResponse:
        return await self._control(context, request.invocation_id, control.pause)

    async def ResumeInvocation(
        self, request: admin_pb2.InvocationRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.InvocationResponse:
        return await self._control(context, request.invocation_id, control.resume)

    async def PurgeInvocation(
        self, request: admin_pb2.InvocationRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.InvocationResponse:
        answer = await self._control(context, request.invocation_id, control.purge)
        self.completed_index.forget(request.invocation_id)
        return answer

    async def _control(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        invocation_id: str,
        action: Callable[[Partition, str], invocation_pb2.Invocation],
    ) -> admin_pb2.InvocationResponse:
        await check_part(context, "invocation_id", invocation_id)
        try:
            record = await self._driver.commit(action, self._partition, invocation_id)
        except UnknownInvocation:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no invocation {invocation_id!r}")
            raise AssertionError("unreachable") from None
        except control.NotAllowed as e:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
            raise AssertionError("unreachable") from None
        log.info("%s: %s", action.__name__, invocation_id)
        return admin_pb2.InvocationResponse(invocation=record)

    async def ResolveAwakeable(
        self,
        request: admin_pb2.ResolveAwakeableRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> admin_pb2.ResolveAwakeableResponse:
        await check_payload(context, "the value", len(request.value), self._max_payload)
        value = await _json(context, request.value or b"null")
        return await self._complete_awakeable(
            context, request.awakeable_id, journal_pb2.Result(value=value)
        )

    async def RejectAwakeable(
        self,
        request: admin_pb2.RejectAwakeableRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> admin_pb2.ResolveAwakeableResponse:
        reason = request.reason or "rejected"
        await check_payload(context, "the reason", len(reason.encode()), self._max_payload)
        return await self._complete_awakeable(
            context, request.awakeable_id, failure(codes.ABORTED, reason)
        )

    async def _complete_awakeable(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        awakeable_id: str,
        result: journal_pb2.Result,
    ) -> admin_pb2.ResolveAwakeableResponse:
        await check_part(context, "awakeable_id", awakeable_id)
        if parse_awakeable_id(awakeable_id) is None:
            # A long one is cut to fit a status by ErrorStatuses, as every message is.
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{awakeable_id!r} is not an awakeable id: give the whole id the handler's "
                "ctx.awakeable() made (awk_ and what follows)",
            )
        problem = await self._driver.commit(
            control.complete_awakeable, self._partition, awakeable_id, result
        )
        if problem is not None:
            code = (
                grpc.StatusCode.FAILED_PRECONDITION
                if "already" in problem
                else grpc.StatusCode.NOT_FOUND
            )
            await context.abort(code, problem)
        return admin_pb2.ResolveAwakeableResponse()

    async def CompletePromise(
        self,
        request: admin_pb2.CompletePromiseRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> admin_pb2.CompletePromiseResponse:
        target = self._registry.service(request.service)
        if target is None or target.kind != "workflow":
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"{request.service!r} is not a registered workflow"
            )
        await check_part(context, f"the key of {request.service}", request.key)
        await check_part(context, "the promise name", request.name)
        completion = request.rejection.encode() if request.HasField("rejection") else request.value
        await check_payload(context, "the completion", len(completion), self._max_payload)
        if request.HasField("rejection"):
            result = failure(codes.ABORTED, request.rejection)
        else:
            result = journal_pb2.Result(value=await _json(context, request.value or b"null"))
        if not await self._driver.commit(
            control.complete_promise,
            self._partition,
            request.service,
            request.key,
            request.name,
            result,
        ):
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"promise {request.name!r} of {request.service} {request.key!r} "
                "was already completed",
            )
        return admin_pb2.CompletePromiseResponse()

    async def GetState(
        self, request: admin_pb2.GetStateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.GetStateResponse:
        await self._keyed(request.service, context)
        await check_part(context, f"the key of {request.service}", request.key)
        answer = admin_pb2.GetStateResponse(
            state=state.load(self._partition.kv, request.service, request.key)
        )
        try:
            admin_query.check_fits(answer, f"{request.service} key {request.key!r}'s state values")
        except admin_query.TooBig as e:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
        return answer

    async def SetState(
        self, request: admin_pb2.SetStateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.SetStateResponse:
        await self._keyed(request.service, context)
        await check_part(context, f"the key of {request.service}", request.key)
        await check_part(context, "the state name", request.name)
        value = request.value if request.HasField("value") else None
        if value is not None:
            await check_payload(context, "the value", len(value), self._max_payload)
            await _json(context, value)
        try:
            after = await self._driver.commit(
                control.set_state,
                self._partition,
                request.service,
                request.key,
                request.name,
                value,
            )
        except control.NotAllowed as e:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
            raise AssertionError("unreachable") from None
        except control.TooLarge as e:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
            raise AssertionError("unreachable") from None
        # What changed, not the whole state: a large state must not fail the answer
        # to a write that was applied.
        return admin_pb2.SetStateResponse(
            service=request.service,
            key=request.key,
            name=request.name,
            value=value,
            values=len(after),
            bytes=state.size(after),
        )

    async def GetStats(
        self, request: admin_pb2.GetStatsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.GetStatsResponse:
        return admin_query.stats(self._partition, self.completed_index)

    async def DescribeKey(
        self, request: admin_pb2.DescribeKeyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.DescribeKeyResponse:
        await self._keyed(request.service, context)
        await check_part(context, f"the key of {request.service}", request.key)
        try:
            return admin_query.describe_key(self._partition, request.service, request.key)
        except admin_query.TooBig as e:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
            raise AssertionError("unreachable") from None

    async def ListAwaiting(
        self, request: admin_pb2.ListAwaitingRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.ListAwaitingResponse:
        return await admin_query.awaiting(self._partition, request.limit)

    async def ClusterStatus(
        self, request: admin_pb2.ClusterStatusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.ClusterStatusResponse:
        # The single-process broker: one process, one partition. A `--workers` broker's
        # front answers this itself (`broker.cluster.front`).
        return admin_pb2.ClusterStatusResponse(
            mode="embedded",
            nodes=[
                admin_pb2.ClusterNode(name="embedded", pid=os.getpid(), alive=True, partitions=[0])
            ],
            partitions=[admin_pb2.ClusterPartition(id=0, owner="embedded", serving=True)],
        )

    async def _keyed(self, service: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        target = self._registry.service(service)
        if target is None or not target.keyed:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"{service!r} is not a registered virtual object or workflow",
            )


async def _json(context: grpc.aio.ServicerContext[Any, Any], value: bytes) -> bytes:
    """`value` if it is strict JSON (what the SDK decodes, and other languages' SDKs
    would: no NaN or Infinity); INVALID_ARGUMENT otherwise."""
    try:
        parse_json(value)
    except (ValueError, RecursionError) as e:  # RecursionError: nested past any use
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"the value is not valid JSON: {e}")
    return value


def _outcome(record: invocation_pb2.Invocation) -> int:
    """How a completed invocation ended (unspecified while it has no result)."""
    kind = record.result.WhichOneof("kind") if record.HasField("result") else None
    if kind is None:
        return admin_pb2.INVOCATION_OUTCOME_UNSPECIFIED
    return admin_pb2.OUTCOME_FAILED if kind == "failure" else admin_pb2.OUTCOME_SUCCEEDED


def _deployment(record: reg.Deployment, in_flight: int = 0) -> admin_pb2.Deployment:
    return admin_pb2.Deployment(
        id=record.id,
        uri=record.uri,
        services=list(record.services),
        created_at_ms=record.created_at_ms,
        mode="request_response" if record.request_response else "stream",
        in_flight=in_flight,
    )
