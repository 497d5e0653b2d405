"""What journaling each kind of command does beyond appending it.

`apply` is called by the partition for every proposed entry, inside the entry's batch.
It returns the entry's result when the broker completes it on the spot (a promise that
is already resolved, an output that is ready), or None when it completes later.
"""

from __future__ import annotations

import logging

from durable.v1 import journal_pb2
from durable.wire import awakeable_id

from ..codes import CANCELLED, FAILED_PRECONDITION, NOT_FOUND
from ..storage import Batch, state, timers
from . import actions
from .model import Entry, Live, Result, Status, failure
from .ports import PartitionOps

log = logging.getLogger("broker.core")

# Entries a handler awaits: the ones a pending cancellation is delivered through.
AWAITABLE = ("call", "sleep", "awakeable", "get_promise", "attach")
# Entries whose result the SDK supplies itself.
SDK_COMPLETED = ("get_state", "get_state_keys", "output")


class ProtocolViolation(Exception):
    """The endpoint proposed something the protocol forbids."""


class LimitExceeded(Exception):
    """The entry would break a configured limit; the invocation fails terminally."""


def apply(p: PartitionOps, batch: Batch, live: Live, index: int, entry: Entry) -> Result | None:
    """Performs the entry's effects; returns its immediate result, if any.

    Raises:
        ProtocolViolation: the command is not allowed here.
    """
    kind = entry.WhichOneof("command")
    record = live.record
    if kind in AWAITABLE and record.cancel_pending:
        # A cancellation with nothing to interrupt is delivered at the next await.
        record.cancel_pending = False
        return failure(CANCELLED, "invocation cancelled")
    if kind == "call":
        return p.journal_call(batch, live, index, entry)
    if kind == "send":
        p.journal_send(batch, live, entry)
    elif kind == "run":
        pass
    elif kind == "sleep":
        due = entry.sleep.wake_up_at_ms
        timers.put(batch, due, live.id, index)
        batch.then(actions.ArmTimer(due, live.id, index))
    elif kind in ("get_state", "get_state_keys"):
        if not record.key or not entry.HasField("result"):
            raise ProtocolViolation(f"{kind} outside a keyed handler or without its result")
    elif kind in ("set_state", "clear_state", "clear_all_state"):
        if not record.exclusive:
            raise ProtocolViolation(f"{kind} is only allowed in exclusive handlers")
        sizes = state_sizes(p, live)
        if kind == "set_state":
            s = entry.set_state
            too_big = state_limit_error(p, live, s.key, s.value)
            if too_big is not None:
                raise LimitExceeded(too_big)
            state.put(batch, record.service, record.key, s.key, s.value)
            sizes[s.key] = state.value_size(s.key, s.value)
        elif kind == "clear_state":
            state.delete(batch, record.service, record.key, entry.clear_state.key)
            sizes.pop(entry.clear_state.key, None)
        else:
            for name in sizes:
                state.delete(batch, record.service, record.key, name)
            sizes.clear()
    elif kind == "output":
        if not entry.HasField("result"):
            raise ProtocolViolation("output entry without a result")
    elif kind == "awakeable":
        entry.awakeable.awakeable_id = awakeable_id(live.id, index)
    elif kind == "complete_awakeable":
        c = entry.complete_awakeable
        why = p.waits.complete_awakeable(batch, c.awakeable_id, c.completion)
        if why is not None:
            # Nothing awaits this step's result to be told: the log is where it shows.
            log.warning("invocation %s step %d: %s; ignored", live.id, index, why[:500])
    elif kind in ("get_promise", "peek_promise", "complete_promise"):
        return _promise(p, batch, live, index, entry)
    elif kind == "attach":
        return p.waits.attach(batch, (live.id, index), entry.attach.invocation_id)
    elif kind == "get_output":
        target = entry.get_output.invocation_id
        if not p.placement.local(target):
            p.waits.get_output(batch, (live.id, index), target)
            return None
        if target in p.live:
            return Result(empty=journal_pb2.Empty())
        done = p.completed(target)
        return done if done is not None else failure(NOT_FOUND, f"no invocation {target!r}")
    else:
        raise ProtocolViolation(f"entry {index} has no valid command ({kind})")
    return None


def _promise(p: PartitionOps, batch: Batch, live: Live, index: int, entry: Entry) -> Result | None:
    record = live.record
    target = p.registry.service(record.service)
    if target is None or target.kind != "workflow":
        raise ProtocolViolation("durable promises exist only in workflows")
    kind = entry.WhichOneof("command")
    if kind == "get_promise":
        name = entry.get_promise.name
        done = p.waits.promise(record.service, record.key, name)
        if done is None:
            p.waits.wait_for_promise(record.service, record.key, name, (live.id, index))
        return done
    if kind == "peek_promise":
        done = p.waits.promise(record.service, record.key, entry.peek_promise.name)
        return done if done is not None else Result(empty=journal_pb2.Empty())
    c = entry.complete_promise
    if not p.waits.complete_promise(batch, record.service, record.key, c.name, c.completion):
        return failure(FAILED_PRECONDITION, f"promise {c.name!r} was already completed")
    return Result(empty=journal_pb2.Empty())


def status_name(status: int) -> str:
    """Lower-case status, for messages."""
    return str(Status.Name(status)).lower().replace("_", "-")  # type: ignore[arg-type]


def state_sizes(
    p: PartitionOps, live: Live, stored: dict[str, bytes] | None = None
) -> dict[str, int]:
    """The size of each of the object's state values as its exclusive handler sees them:
    what storage holds plus this invocation's writes not applied yet.

    Read from storage once per invocation (or taken from `stored`, what the caller just
    read: the attempt's start carries it), then kept up to date by its own state
    commands: while an exclusive handler holds the key nothing else writes the state
    (an operator's edit is refused), so a scan per `set_state` would read it again for
    nothing.
    """
    if live.state_sizes is None:
        r = live.record
        values = dict(stored) if stored is not None else state.load(p.kv, r.service, r.key)
        for e in live.journal:
            if e.HasField("set_state"):
                values[e.set_state.key] = e.set_state.value
            elif e.HasField("clear_state"):
                values.pop(e.clear_state.key, None)
            elif e.HasField("clear_all_state"):
                values.clear()
        live.state_sizes = {name: state.value_size(name, v) for name, v in values.items()}
    return live.state_sizes


def state_limit_error(p: PartitionOps, live: Live, name: str, value: bytes) -> str | None:
    """Why setting `name` would take the object's state over its limit, if it would."""
    sizes = state_sizes(p, live)
    total = sum(sizes.values()) - sizes.get(name, 0) + state.value_size(name, value)
    return _over(p, live.record.service, live.record.key, total)


def state_over_limit(
    p: PartitionOps, service: str, key: str, values: dict[str, bytes]
) -> str | None:
    """Why an object holding `values` would be over --max-state-bytes, if it would."""
    return _over(p, service, key, state.size(values))


def _over(p: PartitionOps, service: str, key: str, total: int) -> str | None:
    if total <= p.settings.max_state_bytes:
        return None
    return (
        f"state limit reached: {service} key {key!r} would hold {total} bytes, "
        f"over the {p.settings.max_state_bytes}-byte limit (--max-state-bytes)"
    )
