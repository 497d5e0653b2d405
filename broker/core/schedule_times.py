"""When a schedule fires: cron expressions (croniter, in a zoneinfo time zone) and fixed
intervals, and which missed slots a restart catches up. Pure: no clock is read here."""

from __future__ import annotations

import dataclasses
import datetime
import zoneinfo
from typing import Any

# A catch-up of "all" fires at most this many missed slots (a broker down for a month on
# an every-second schedule must not start millions of invocations at once).
MAX_CATCH_UP = 1000

# Intervals: shorter ones fire faster than a firing's batch commits on a loaded broker;
# longer ones are a cron expression's job, and keep every slot far inside int64 ms.
MIN_EVERY_MS = 1000
MAX_EVERY_MS = 366 * 86_400_000
# Every minute of an hour listed one by one is 170 characters. croniter parses about
# 100 characters a millisecond, on the loop, at every check and every next slot: a
# payload-sized expression would hold the broker for seconds each time.
MAX_CRON_CHARS = 1000
# The latest slot the records' and replies' int64 fields hold.
MAX_MS = 2**63 - 1

OVERLAPS = ("skip", "queue-one", "allow")
CATCH_UPS = ("latest", "all")


class BadSpec(ValueError):
    """A cron expression, time zone, interval or policy that cannot be used."""


@dataclasses.dataclass(frozen=True, slots=True)
class Spec:
    """When a schedule fires: `cron` in `timezone`, or every `every_ms`."""

    cron: str = ""
    timezone: str = ""
    every_ms: int = 0


def check(spec: Spec, overlap: str = "skip", catch_up: str = "latest") -> None:
    """Validates a schedule's timing and policies.

    Raises:
        BadSpec: saying what is wrong.
    """
    if bool(spec.cron) == bool(spec.every_ms):
        raise BadSpec("give exactly one of a cron expression and an interval (--every)")
    if spec.every_ms and spec.every_ms < MIN_EVERY_MS:
        raise BadSpec(
            f"the interval must be at least {MIN_EVERY_MS // 1000}s ({MIN_EVERY_MS} ms), "
            f"not {spec.every_ms} ms"
        )
    if spec.every_ms > MAX_EVERY_MS:
        raise BadSpec(
            f"the interval must be at most {MAX_EVERY_MS // 86_400_000}d ({MAX_EVERY_MS} ms), "
            f"not {spec.every_ms} ms; for rarer runs use a cron expression"
        )
    if spec.cron:
        if len(spec.cron) > MAX_CRON_CHARS:
            raise BadSpec(
                f"the cron expression is {len(spec.cron)} characters long, over the limit of "
                f"{MAX_CRON_CHARS}"
            )
        if len(spec.cron.split()) != 5:
            raise BadSpec(
                f"malformed cron expression {spec.cron!r}: expected 5 fields "
                "(minute hour day-of-month month day-of-week), e.g. '*/5 * * * *'"
            )
        if not _cron().croniter.is_valid(spec.cron):
            raise BadSpec(f"malformed cron expression {spec.cron!r}")
        if any(_random(field) for field in spec.cron.split()):
            # croniter draws R anew at every parse: each computation of a slot (every
            # check, every next slot, every describe) would name another time.
            raise BadSpec(
                f"cron expression {spec.cron!r}: random fields (R) are not supported, "
                "since a slot must come out the same each time it is computed; pick one"
            )
    elif spec.timezone:
        raise BadSpec("a time zone applies to a cron expression only, not to --every")
    _zone(spec.timezone)
    if spec.cron:
        # Valid fields can still name no date at all (February 30th). Any reference time
        # does: a match is at most 8 years away (February 29th) and croniter looks 50.
        next_after(spec, 0)
    if overlap not in OVERLAPS:
        raise BadSpec(f"unknown overlap policy {overlap!r}: use one of {', '.join(OVERLAPS)}")
    if catch_up not in CATCH_UPS:
        raise BadSpec(f"unknown catch-up policy {catch_up!r}: use one of {', '.join(CATCH_UPS)}")


def _random(field: str) -> bool:
    """Whether a cron field asks croniter for a random value (`R`, `R(0-29)`, `R/5`)."""
    return any(
        part.split("/")[0].upper() == "R" or part.upper().startswith("R(")
        for part in field.split(",")
    )


def _cron() -> Any:
    # Imported on first use: croniter brings dateutil (~50 ms), and only cron schedules
    # need it, not every broker start nor every --every schedule.
    import croniter  # type: ignore[import-untyped]

    return croniter


def _zone(name: str) -> datetime.tzinfo:
    if not name:
        return datetime.UTC
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        # The name is looked up as a file: OSError for a directory or an overlong name.
        # The message names neither the error nor the path it mentions.
        shown = name if len(name) <= 60 else name[:60] + "..."
        raise BadSpec(
            f"unknown time zone {shown!r} (use an IANA name, e.g. Europe/Berlin)"
        ) from None


def next_after(spec: Spec, after_ms: int) -> int:
    """The first slot strictly after `after_ms` (epoch milliseconds).

    Raises:
        BadSpec: the cron expression matches no date, or its time zone is unknown.
    """
    if spec.every_ms:
        # Slots are multiples of the interval since the epoch: stable across restarts.
        return (after_ms // spec.every_ms + 1) * spec.every_ms
    start = datetime.datetime.fromtimestamp(after_ms / 1000, _zone(spec.timezone))
    cron = _cron()
    try:
        nxt: datetime.datetime = cron.croniter(spec.cron, start).get_next(datetime.datetime)
    except cron.CroniterBadDateError:
        raise BadSpec(
            f"the cron expression {spec.cron!r} never fires: no date matches it "
            "(e.g. February 30th)"
        ) from None
    out = int(nxt.timestamp() * 1000)
    # croniter works in whole seconds; never return a slot at or before `after_ms`.
    if out <= after_ms:
        return next_after(spec, after_ms + 1000)
    if _repeated(nxt) and _fixed_time(spec.cron):
        # The clocks went back and this wall time comes round again: a job at a fixed
        # time ran at its first coming (as cron does; `0 * * * *` and `*/15 2 * * *`
        # fire in both hours, which are real hours of their own).
        return next_after(spec, out)
    return out


def _repeated(at: datetime.datetime) -> bool:
    """Whether `at` is the second coming of a wall time the clocks went back over."""
    return bool(at.fold) and at.replace(fold=0).utcoffset() != at.utcoffset()


def _fixed_time(cron: str) -> bool:
    """Whether the expression names its minutes and hours (no `*` in either): cron's
    "fixed-time" job, as opposed to a "wildcard" one that fires through every hour."""
    minute, hour = cron.split()[:2]
    return not (minute.startswith("*") or hour.startswith("*"))


def upcoming(spec: Spec, after_ms: int, count: int) -> list[int]:
    """The next `count` slots after `after_ms`, fewer if later ones would pass `MAX_MS`."""
    out: list[int] = []
    at = after_ms
    for _ in range(count):
        at = next_after(spec, at)
        if at > MAX_MS:
            break
        out.append(at)
    return out


def due(spec: Spec, next_fire_ms: int, now_ms: int, catch_up: str) -> tuple[list[int], int]:
    """The slots to fire now, and the next slot after them.

    `next_fire_ms` is the first slot not fired yet; every slot from it up to `now_ms` is
    due. "latest" fires only the last of them (after downtime: once, not once per missed
    slot), "all" fires each (up to `MAX_CATCH_UP`, the latest ones).

    Only the last stretch before `now_ms` is walked: a schedule firing every second
    that was down for a month must not walk 2.6 million slots on the event loop (nor a
    per-minute cron, at tens of microseconds a slot, a year of them).
    """
    if next_fire_ms > now_ms:
        return [], next_fire_ms
    wanted = 1 if catch_up == "latest" else MAX_CATCH_UP
    if spec.every_ms:
        # Slots are the interval's multiples: counted, not walked.
        every = spec.every_ms
        last = now_ms // every
        aligned = range(max(next_fire_ms // every + 1, last - wanted + 1), last + 1)
        slots = [k * every for k in aligned]
        if len(slots) < wanted:
            slots.insert(0, next_fire_ms)
        return slots[-wanted:], (last + 1) * every
    for back_ms in _LOOK_BACK_MS:
        start = now_ms - back_ms
        if start <= next_fire_ms:
            break
        slots, after = _walk(spec, next_after(spec, start - 1), now_ms, wanted)
        if len(slots) >= wanted:
            return slots, after
    return _walk(spec, next_fire_ms, now_ms, wanted)


# How far back `due` looks for a cron's last slots before walking from the first missed
# one: most crons fire within the hour; a yearly one needs the year (February 29th, 8).
_LOOK_BACK_MS = tuple(h * 3_600_000 for h in (1, 24, 32 * 24, 366 * 24, 8 * 366 * 24))


def _walk(spec: Spec, first_ms: int, now_ms: int, wanted: int) -> tuple[list[int], int]:
    """The last `wanted` slots from `first_ms` up to `now_ms`, and the slot after them."""
    slots: list[int] = []
    at = first_ms
    while at <= now_ms:
        slots.append(at)
        if len(slots) > wanted:
            del slots[0]
        at = next_after(spec, at)
    return slots, at
