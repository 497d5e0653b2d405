"""One invocation: its record, its journal as a timeline, its caller and callees, and
the actions on it."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import grpc
from durable.v1 import admin_pb2, journal_pb2

from ..core.model import now_ms
from ._admin import AdminError
from ._decode import code_name, json_bytes
from ._format import STATUS_NAMES, Status, badge, duration, inv_link, key_link, when
from ._html import Safe, h, join, link, notice

if TYPE_CHECKING:
    from . import Console

ACTIONS = {
    "cancel": "The handler sees a terminal CANCELLED error at its next await, so its "
    "compensations run; the calls it waits on are cancelled too.",
    "kill": "Stops it now, and the calls it waits on: no compensation runs; its caller "
    "gets ABORTED.",
    "pause": "Abandons its attempt; nothing runs it again until it is resumed.",
    "resume": "Resumes a paused invocation, or retries a backing-off one now.",
    "purge": "Deletes the completed invocation now rather than when its retention ends: its "
    "record, its journal and its idempotency key (a call with the key starts anew); for a "
    "workflow's run, the workflow's promises and state too.",
}


@dataclasses.dataclass
class Step:
    """A journal entry as the timeline shows it."""

    index: int
    kind: str
    name: str = ""
    detail: str = ""
    link: str = ""  # markup (Safe)
    start_ms: int = 0
    end_ms: int = 0
    result_kind: str = ""
    result: str = ""
    note: str = ""


JOURNAL_PAGE = 500  # entries per page: a journal may hold 10,000


async def _steps(
    console: Console, response: admin_pb2.DescribeInvocationResponse, start: int
) -> list[Step]:
    record = response.invocation
    decode = console.decoder
    dep = record.deployment_id
    steps: list[Step] = []
    waiting = set(record.waiting_on) if record.status == Status.SUSPENDED else set()
    for i, entry in enumerate(response.journal, start):
        kind = str(entry.WhichOneof("command"))
        # The broker stamps entries when it journals and completes them; journals
        # written before it did fall back to what the records say.
        step = Step(i, kind, start_ms=entry.appended_at_ms, end_ms=entry.completed_at_ms)
        rk, rt = decode.result(entry.result)
        if kind == "input":
            step.detail = decode.message(entry.input.request, record.service, record.method, dep)
            step.start_ms = step.start_ms or record.created_at_ms
        elif kind in ("call", "send"):
            cmd = entry.call if kind == "call" else entry.send
            step.name = f"{cmd.service}/{cmd.method}"
            step.detail = decode.message(cmd.request, cmd.service, cmd.method)
            if cmd.invocation_id:
                step.link = inv_link(cmd.invocation_id)
                try:
                    callee = (await console.admin.describe(cmd.invocation_id)).invocation
                except AdminError:
                    callee = None
                if callee is not None:
                    step.start_ms = step.start_ms or callee.created_at_ms
                    if callee.status == Status.COMPLETED and kind == "call":
                        step.end_ms = step.end_ms or callee.modified_at_ms
                    step.note = STATUS_NAMES.get(callee.status, "")
                    if callee.attempts > 1:
                        step.note += f" after {callee.attempts} attempts"
                        if callee.last_error:
                            step.note += f"; an attempt failed: {callee.last_error[:200]}"
            if kind == "call":
                rk, rt = decode.result(entry.result, cmd.service, cmd.method)
            elif entry.send.invoke_at_ms:
                step.note = f"not before {when(entry.send.invoke_at_ms)}"
        elif kind == "run":
            step.name = entry.run.name
        elif kind == "sleep":
            step.name = f"until {when(entry.sleep.wake_up_at_ms)}"
            if entry.HasField("result"):
                step.end_ms = step.end_ms or entry.sleep.wake_up_at_ms
        elif kind in ("get_state", "clear_state"):
            step.name = getattr(entry, kind).key
        elif kind == "set_state":
            step.name = entry.set_state.key
            step.detail = json_bytes(entry.set_state.value)
        elif kind == "awakeable":
            step.name = entry.awakeable.awakeable_id
            if not entry.HasField("result"):
                step.link = link(f"/awaiting#{entry.awakeable.awakeable_id}", "resolve or reject")
        elif kind == "complete_awakeable":
            step.name = entry.complete_awakeable.awakeable_id
            rk, rt = decode.result(entry.complete_awakeable.completion)
        elif kind in ("get_promise", "peek_promise", "complete_promise"):
            step.name = getattr(entry, kind).name
        elif kind in ("attach", "get_output"):
            target = getattr(entry, kind).invocation_id
            step.name, step.link = target, inv_link(target)
        elif kind == "output":
            rk, rt = decode.result(entry.result, record.service, record.method, dep)
            if record.status == Status.COMPLETED:
                step.start_ms = step.start_ms or record.modified_at_ms
        step.result_kind, step.result = rk, rt
        if i in waiting:
            step.note = (step.note + "; " if step.note else "") + "suspended here: waiting"
        steps.append(step)
    return steps


def _bar(step: Step, t0: int, t1: int) -> Safe:
    if not step.start_ms or t1 <= t0:
        return Safe("")
    left = max(0.0, (step.start_ms - t0) / (t1 - t0) * 100)
    end = step.end_ms or step.start_ms
    width = max(0.6, (end - step.start_ms) / (t1 - t0) * 100)
    return h(
        '<svg class="bar" viewBox="0 0 100 4" preserveAspectRatio="none" aria-hidden="true">'
        '<rect x="{x:.2f}" y="0" width="{w:.2f}" height="4"/></svg>',
        x=left,
        w=min(width, 100 - left),
    )


def _timeline(steps: list[Step], t0: int, t1: int) -> Safe:
    items = []
    for s in steps:
        waits = s.kind in ("call", "run", "sleep", "awakeable", "get_promise", "attach")
        known = s.start_ms and s.end_ms and (waits or s.end_ms > s.start_ms)
        took = duration(s.end_ms - s.start_ms) if known else ""
        result = ""
        if s.result_kind:
            result = h(
                '<div><span class="lbl">result</span><pre class="r-{k}">{t}</pre></div>',
                k=s.result_kind,
                t=s.result,
            )
        elif s.kind not in ("input", "send", "set_state", "clear_state", "output"):
            result = Safe('<div><span class="pending">pending</span></div>')
        label = {"input": "request", "set_state": "value"}.get(s.kind, "request")
        items.append(
            h(
                """<li class="step k-{kind}{failed}" id="entry-{i}">
<div class="head"><span class="idx">#{i}</span> <strong class="kind">{kind}</strong>
<span class="name mono">{name}</span> {link} <span class="note">{note}</span></div>
<div class="when">{start}{took}</div>{bar}
<div class="io">{detail}{result}</div></li>""",
                kind=s.kind,
                failed=" failed" if s.result_kind == "failure" else "",
                i=s.index,
                name=s.name,
                link=s.link,
                note=s.note,
                start=when(s.start_ms),
                took=h(" · took {d}", d=took) if took else "",
                bar=_bar(s, t0, t1),
                detail=h(
                    '<div><span class="lbl">{l}</span><pre>{d}</pre></div>', l=label, d=s.detail
                )
                if s.detail
                else "",
                result=result,
            )
        )
    return h('<ol class="timeline">{items}</ol>', items=join(items))


def _actions(record: admin_pb2.DescribeInvocationResponse) -> Safe:
    status = record.invocation.status
    allowed = ["purge"] if status == Status.COMPLETED else ["cancel", "kill", "pause"]
    if status in (Status.PAUSED, Status.BACKING_OFF):
        allowed.append("resume")
    buttons = join(
        h(
            '<a class="button {a}" href="/invocations/{id}/{a}">{label}</a>',
            a=a,
            id=record.invocation.id,
            label=a.capitalize() + "…",
        )
        for a in allowed
    )
    return h('<div class="actions" aria-label="Actions">{b}</div>', b=buttons)


async def page(console: Console, invocation_id: str, message: str = "", start: int = 0) -> Safe:
    """The invocation page, its journal from entry `start` (NOT_FOUND raises AdminError)."""
    start = max(0, start)
    try:
        response = await console.admin.describe(invocation_id, start, JOURNAL_PAGE)
    except AdminError as e:
        if e.code != grpc.StatusCode.OUT_OF_RANGE:
            raise
        # Past the journal's end (a stale link): its first page.
        start = 0
        response = await console.admin.describe(invocation_id, start, JOURNAL_PAGE)
    r = response.invocation
    steps = await _steps(console, response, start)
    pager = []
    if start > 0:
        back = max(0, start - JOURNAL_PAGE)
        pager.append(link(f"/invocations/{r.id}?start={back}", "← earlier entries"))
    if response.next_entry:
        # A page of large entries may end before JOURNAL_PAGE: the broker says where.
        pager.append(link(f"/invocations/{r.id}?start={response.next_entry}", "later entries →"))
    now = now_ms()
    t1 = r.modified_at_ms if r.status == Status.COMPLETED else now
    t1 = max([t1] + [s.end_ms or s.start_ms for s in steps])
    facts = [
        ("Handler", f"{r.service}/{r.method}"),
        ("Key", key_link(r.service, r.key) if r.key else "—"),
        ("Status", badge(r)),
        ("Attempts", r.attempts),
        ("Created", when(r.created_at_ms)),
        ("Last change", when(r.modified_at_ms)),
        ("Took" if r.status == Status.COMPLETED else "Running for", duration(t1 - r.created_at_ms)),
        ("Deployment", r.deployment_id or "—"),
        ("Idempotency key", r.idempotency_key or "—"),
        (
            "Caller",
            inv_link(r.caller.invocation_id) if r.caller.invocation_id else "ingress or a send",
        ),
    ]
    if r.next_retry_at_ms and r.status == Status.BACKING_OFF:
        facts.append(("Next attempt", when(r.next_retry_at_ms)))
    if r.cancel_pending:
        facts.append(("Cancellation", "requested, not yet delivered"))
    if console.jaeger_url and r.traceparent.count("-") >= 3:
        trace_id = r.traceparent.split("-")[1]
        facts.append(
            ("Trace", link(f"{console.jaeger_url}/trace/{trace_id}", trace_id, rel="noreferrer"))
        )
    dl = join(h('<div class="fact"><dt>{k}</dt><dd>{v}</dd></div>', k=k, v=v) for k, v in facts)
    problems = []
    if r.result.HasField("failure"):
        f = r.result.failure
        problems.append(notice(f"Failed with {code_name(f.code)}: {f.message}"))
    if r.last_error and r.status != Status.COMPLETED:
        problems.append(notice(f"Attempt {r.attempts} failed: {r.last_error}"))
    elif r.last_error:
        problems.append(notice(f"An earlier attempt failed: {r.last_error}", "info"))
    callees = [s.link for s in steps if s.kind in ("call", "send") and s.link]
    live = r.status != Status.COMPLETED
    return h(
        """<div{poll}><h1>Invocation <span class="mono">{id}</span></h1>{message}{problems}
<dl class="facts">{dl}</dl>{actions}
<section aria-labelledby="tl"><h2 id="tl">Journal ({n} entries)</h2>
<p class="hint">Times are UTC: when the broker journaled each entry and, for those
that wait, how long until their result was journaled (the bars place them within the
invocation). Only the latest failed attempt's error is retained.</p>{timeline}
<nav class="pager" aria-label="Journal pages">{pager}</nav></section>
<section aria-labelledby="ce"><h2 id="ce">Callees</h2>{callees}</section></div>""",
        poll=h(
            ' data-poll="/invocations/{id}?fragment=1&amp;start={s}" data-swap="outer"',
            id=r.id,
            s=start,
        )
        if live
        else "",
        id=r.id,
        message=notice(message, "info") if message else "",
        problems=join(problems),
        dl=dl,
        actions=_actions(response),
        n=response.journal_length,
        timeline=_timeline(steps, r.created_at_ms, t1),
        pager=join(pager, " "),
        callees=join(callees, " ") if callees else "none",
    )


def confirm(invocation_id: str, action: str) -> Safe:
    """The confirmation step of an action (works without JavaScript)."""
    return h(
        """<h1>{title} <span class="mono">{id}</span>?</h1><p>{what}</p>
<form method="post" action="/invocations/{id}/{action}">
<input type="hidden" name="confirm" value="yes">
<button type="submit" class="danger" autofocus>Yes, {action} it</button>
<a href="/invocations/{id}">No, go back</a></form>""",
        title=action.capitalize(),
        id=invocation_id,
        action=action,
        what=ACTIONS[action],
    )


__all__ = ["ACTIONS", "confirm", "journal_pb2", "page"]
