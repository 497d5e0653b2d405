"""The admin API's schedules: create, list, describe, pause, resume, trigger, delete.

Status codes: INVALID_ARGUMENT for a bad name, cron expression (malformed, or matching
no date), time zone, interval (not from 1 s to 366 days), policy or request JSON, or a
keyed method without its key, and for a listing's page_token the broker did not issue;
NOT_FOUND for an unknown service, method or schedule; ALREADY_EXISTS for a name in use.
Nothing is stored for a refused request.

Nothing caps how many schedules there are, so the listing pages (AIP-158, as
ListInvocations: `broker.admin_paging`): by name, at most 1000 a page.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, NoReturn

import grpc
from durable.v1 import admin_pb2, invocation_pb2
from google.protobuf import json_format

from . import admin_paging
from . import registry as reg
from .admin_fields import check_payload
from .core import schedule_times as times
from .core import schedules
from .driver import Driver
from .rendering import pool_of
from .storage import invocations

log = logging.getLogger("broker.admin")

Context = grpc.aio.ServicerContext[Any, Any]
NEXT_SHOWN = 3
# Schedules described between two yields to the event loop while a page is built.
_INFO_SLICE = 100


async def _abort(context: Context, code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("unreachable")


class ScheduleAdmin:
    """The schedule RPCs of `durable.v1.Admin` (mixed into the admin servicer)."""

    _driver: Driver
    _registry: reg.Registry

    async def CreateSchedule(
        self, request: admin_pb2.CreateScheduleRequest, context: Context
    ) -> admin_pb2.ScheduleInfo:
        record = await self._build(request, context)
        try:
            await self._driver.commit(self._driver.schedules.create, record, self._driver.now_ms())
        except schedules.Exists:
            await _abort(
                context,
                grpc.StatusCode.ALREADY_EXISTS,
                f"a schedule named {request.name!r} exists already; delete it first or "
                "choose another name",
            )
        return self._info(record)

    async def _build(
        self, request: admin_pb2.CreateScheduleRequest, context: Context
    ) -> schedules.Schedule:
        invalid = grpc.StatusCode.INVALID_ARGUMENT
        if not schedules.NAME.fullmatch(request.name):
            await _abort(
                context,
                invalid,
                f"bad schedule name {request.name!r}: use up to 200 letters, digits, "
                "'.', '_' or '-', starting with a letter or digit",
            )
        if request.name in self._driver.schedules.records:
            await _abort(
                context,
                grpc.StatusCode.ALREADY_EXISTS,
                f"a schedule named {request.name!r} exists already",
            )
        overlap = request.overlap or "skip"
        catch_up = request.catch_up or "latest"
        spec = times.Spec(request.cron.strip(), request.timezone, request.every_ms)
        try:
            times.check(spec, overlap, catch_up)
        except times.BadSpec as e:
            await _abort(context, invalid, str(e))
        target = self._registry.service(request.service)
        method = target.methods.get(request.method) if target else None
        if target is None or method is None:
            what = (
                f"service {request.service!r}"
                if target is None
                else f"method {request.method!r} of {request.service}"
            )
            await _abort(
                context,
                grpc.StatusCode.NOT_FOUND,
                f"unknown {what}: register its deployment first",
            )
        message = method.input_type()
        try:
            json_format.Parse(
                request.request_json or "{}", message, descriptor_pool=pool_of(message)
            )
        except json_format.ParseError as e:
            await _abort(
                context,
                invalid,
                f"the request is not a valid {message.DESCRIPTOR.full_name} in JSON: {e}",
            )
        field = method.key_field
        if field is None and request.key:
            await _abort(context, invalid, f"{request.service} is not keyed: drop --key")
        if field is not None:
            given = str(getattr(message, field))
            if request.key and given and given != request.key:
                await _abort(
                    context,
                    invalid,
                    f"--key {request.key!r} and the request's {field!r} {given!r} differ",
                )
            if not request.key and not given:
                await _abort(
                    context,
                    invalid,
                    f"{request.service} is keyed by {field!r}: give --key (or set "
                    f"{field!r} in the request)",
                )
            if request.key:
                try:
                    setattr(message, field, request.key)
                except (TypeError, ValueError) as e:
                    await _abort(context, invalid, f"--key does not fit {field!r}: {e}")
        body = message.SerializeToString()
        limit = self._driver.partition.settings.max_payload_bytes
        await check_payload(context, "the schedule's request", len(body), limit)
        try:
            _, _, key = reg.resolve(self._registry, request.service, request.method, body)
        except reg.BadRequest as e:
            await _abort(context, invalid, e.message)
        return schedules.Schedule(
            name=request.name,
            service=request.service,
            method=request.method,
            key=key,
            request=body,
            cron=spec.cron,
            timezone=spec.timezone,
            every_ms=spec.every_ms,
            overlap=overlap,
            catch_up=catch_up,
        )

    async def ListSchedules(
        self, request: admin_pb2.ListSchedulesRequest, context: Context
    ) -> admin_pb2.ListSchedulesResponse:
        records = self._driver.schedules.records
        try:
            page, token = admin_paging.name_page(
                sorted(records), request.page_token, request.limit, _is_name
            )
        except admin_paging.PagingError as e:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(e))
        out = admin_pb2.ListSchedulesResponse(total=len(records), next_page_token=token)
        for n, name in enumerate(page):
            if n and not n % _INFO_SLICE:
                # A cron schedule's next fire times take most of a millisecond: a full
                # page would hold the loop for most of a second.
                await asyncio.sleep(0)
            record = self._driver.schedules.records.get(name)
            if record is not None:  # deleted while the loop served another call
                out.schedules.append(self._info(record))
        return out

    async def DescribeSchedule(
        self, request: admin_pb2.ScheduleRequest, context: Context
    ) -> admin_pb2.ScheduleInfo:
        return self._info(await self._known(request.name, context))

    async def PauseSchedule(
        self, request: admin_pb2.ScheduleRequest, context: Context
    ) -> admin_pb2.ScheduleInfo:
        await self._known(request.name, context)
        record = await self._driver.commit(self._driver.schedules.pause, request.name)
        log.info("schedule %s paused", request.name)
        return self._info(record)

    async def ResumeSchedule(
        self, request: admin_pb2.ScheduleRequest, context: Context
    ) -> admin_pb2.ScheduleInfo:
        await self._known(request.name, context)
        record = await self._driver.commit(
            self._driver.schedules.resume, request.name, self._driver.now_ms()
        )
        log.info("schedule %s resumed", request.name)
        return self._info(record)

    async def TriggerSchedule(
        self, request: admin_pb2.ScheduleRequest, context: Context
    ) -> admin_pb2.ScheduleInfo:
        await self._known(request.name, context)
        record = await self._driver.commit(
            self._driver.schedules.trigger, request.name, self._driver.now_ms()
        )
        return self._info(record)

    async def DeleteSchedule(
        self, request: admin_pb2.ScheduleRequest, context: Context
    ) -> admin_pb2.DeleteScheduleResponse:
        await self._known(request.name, context)
        await self._driver.commit(self._driver.schedules.delete, request.name)
        log.info("schedule %s deleted", request.name)
        return admin_pb2.DeleteScheduleResponse()

    async def _known(self, name: str, context: Context) -> schedules.Schedule:
        record = self._driver.schedules.records.get(name)
        if record is None:
            await _abort(context, grpc.StatusCode.NOT_FOUND, f"no schedule {name!r}")
        return record

    def _info(self, record: schedules.Schedule) -> admin_pb2.ScheduleInfo:
        info = admin_pb2.ScheduleInfo()
        info.schedule.CopyFrom(record)
        if not record.paused:
            info.next_fires_ms.extend(_next_fires(record))
        if record.last_invocation_id:
            live = self._driver.partition.live.get(record.last_invocation_id)
            last = (
                live.snapshot()
                if live
                else invocations.get(self._driver.partition.kv, record.last_invocation_id)
            )
            if last is not None:
                info.last_status = last.status
                info.last_outcome = _outcome(last)
        target = self._registry.service(record.service)
        method = target.methods.get(record.method) if target else None
        if method is not None:
            try:
                message = method.input_type.FromString(record.request)
                info.request_json = json_format.MessageToJson(
                    message, indent=None, descriptor_pool=pool_of(message)
                )
            except Exception:  # a changed contract: the bytes are still what fires
                info.request_json = ""
        return info


def _is_name(name: str) -> bool:
    return schedules.NAME.fullmatch(name) is not None


def _next_fires(record: schedules.Schedule) -> list[int]:
    # A record stored by an older version may hold what `times.check` now refuses (an
    # interval whose slots overflow int64, a zone gone from tzdata): it must still be
    # listed, so that an operator can see and delete it, and not hide the others.
    try:
        return [
            record.next_fire_ms,
            *times.upcoming(schedules.spec(record), record.next_fire_ms, NEXT_SHOWN - 1),
        ]
    except (ValueError, OverflowError) as e:
        log.warning("schedule %s: its next slots cannot be computed: %s", record.name, e)
        return [record.next_fire_ms]


def _outcome(record: invocation_pb2.Invocation) -> admin_pb2.InvocationOutcome.ValueType:
    kind = record.result.WhichOneof("kind") if record.HasField("result") else None
    if kind is None:
        return admin_pb2.INVOCATION_OUTCOME_UNSPECIFIED
    return admin_pb2.OUTCOME_FAILED if kind == "failure" else admin_pb2.OUTCOME_SUCCEEDED
