"""Checks a data dir before the broker opens it for writing: damaged or missing journal
data stops the broker with a message, unless the operator accepts the loss.

What RocksDB does on its own is not enough. Its default WAL recovery (point in time)
stops replaying at the first damaged record and opens with whatever came before, so a
flipped byte in the middle of the log silently drops every write after it; and a log
that was truncated or deleted opens as if nothing had been there. So:

- the store opens in `tolerate_corrupted_tail_records` mode: an incomplete last record
  (a write cut off by a crash, never fsynced, never acknowledged) is dropped, any other
  damage refuses the open;
- the high-water mark (`highwater`) catches what replays cleanly but is short;
- the check runs on a read-only open, so a refused start changes nothing in the data
  dir: the damaged log stays for whoever tries to rescue it;
- `--accept-data-loss` opens in point-in-time mode (everything up to the first damaged
  record) and reports what was left out.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import rocksdict

from . import highwater, wal

log = logging.getLogger("broker.storage")

_RESTORE = (
    "restore the data dir from a backup, or start with --accept-data-loss to run with what is left"
)


class IntegrityError(Exception):
    """The data dir lost acknowledged writes, or cannot be read; the message says what to do."""


@dataclasses.dataclass
class Checked:
    """What the check found, for `report` once the store is open.

    Attributes:
        mark: The high-water mark (None: none yet, or unreadable and accepted).
        wals: The write-ahead logs as they were before the open replayed them.
        recovered: The sequence number a replay reaches (None: a new store).
    """

    mark: int | None
    wals: list[wal.WalFile]
    recovered: int | None


def recovery_mode(accept_data_loss: bool) -> rocksdict.DBRecoveryMode:
    """RocksDB's WAL recovery mode: refuse damage, or replay up to it."""
    if accept_data_loss:
        return rocksdict.DBRecoveryMode.point_in_time()
    return rocksdict.DBRecoveryMode.tolerate_corrupted_tail_records()


def check(path: str, options: rocksdict.Options, accept_data_loss: bool) -> Checked:
    """Refuses a data dir that lost acknowledged writes (unless `accept_data_loss`).

    `options` must carry `recovery_mode(accept_data_loss)`.

    Raises:
        IntegrityError: What was lost or is unreadable, and what to do.
    """
    try:
        mark = highwater.read(path)
    except highwater.MarkError as e:
        if not accept_data_loss:
            raise IntegrityError(
                f"{e}: the broker cannot tell whether journal writes are missing; {_RESTORE}"
            ) from None
        log.warning("%s: ignored (--accept-data-loss)", e)
        mark = None
    if not os.path.exists(os.path.join(path, "CURRENT")):
        left = sorted(
            n for n in os.listdir(path) if n.endswith((".log", ".sst")) or n.startswith("MANIFEST-")
        )
        if (left or mark) and not accept_data_loss:
            held = f" (it still holds {', '.join(left[:4])})" if left else ""
            raise IntegrityError(
                f"the data dir {path} has lost RocksDB's CURRENT file{held}, so its journal "
                f"cannot be found; {_RESTORE}"
            )
        return Checked(mark, [], None)
    wals = wal.scan(path)
    missing = wal.hole(wals)
    if missing is not None and not accept_data_loss:
        raise IntegrityError(f"{missing} (in {path}); {_RESTORE}")
    recovered = _replay(path, options, wals, accept_data_loss)
    if mark is not None and recovered < mark and not accept_data_loss:
        raise IntegrityError(
            f"the data dir {path} is missing acknowledged journal writes: its journal ends at "
            f"write {recovered} but writes up to {mark} were fsynced ({highwater.FILE} says "
            f"so); a write-ahead log file (*.log) was truncated or deleted; {_RESTORE}"
        )
    return Checked(mark, wals, recovered)


def _replay(
    path: str, options: rocksdict.Options, wals: list[wal.WalFile], accept_data_loss: bool
) -> int:
    """The sequence number a replay of the store reaches, opened read-only."""
    try:
        return _read_only_sequence(path, options)
    except Exception as e:
        text = str(e)
    where = None if accept_data_loss or "Corruption" not in text else _locate(path, wals)
    if where is None:
        # Not the log (the MANIFEST, CURRENT, a table file...): opening up to the damage
        # would not help, only a backup does.
        hint = "" if "Corruption" in text else "if another broker uses it, stop that one; "
        raise IntegrityError(
            f"cannot open the data dir {path}: {text}; {hint}restore it from a backup"
        ) from None
    raise IntegrityError(f"the journal in {path} is damaged ({text}) {where}; {_RESTORE}")


def _read_only_sequence(path: str, options: rocksdict.Options) -> int:
    db = rocksdict.Rdict(path, options, access_type=rocksdict.AccessType.read_only())
    try:
        return int(db.latest_sequence_number())
    finally:
        db.close()


def _locate(path: str, wals: list[wal.WalFile]) -> str | None:
    """Where a damaged log stops a replay, and what it would drop, for the message; None
    when the damage is not in a log (a point-in-time replay fails as well)."""
    options = rocksdict.Options(raw_mode=True)
    options.set_wal_recovery_mode(rocksdict.DBRecoveryMode.point_in_time())
    try:
        stopped = _read_only_sequence(path, options)
    except Exception:
        return None
    for w in wals:
        offset = w.first_batch_after(stopped)
        if offset is not None:
            lost = sum(x.bytes_after(stopped) for x in wals)
            return (
                f"in the write-ahead log {os.path.join(path, w.name)} at byte {offset} of "
                f"{w.size}: {lost} bytes of acknowledged writes after it would be lost"
            )
    return "in " + ", ".join(os.path.join(path, w.name) for w in wals)


def report(checked: Checked, sequence: int, accept_data_loss: bool) -> None:
    """Logs what the open dropped; `sequence` is where the opened store stands."""
    if accept_data_loss:
        _report_accepted(checked, sequence)
        return
    torn = [f"{w.name}: {w.tail_bytes} bytes" for w in checked.wals if w.tail_bytes]
    if torn:
        # An fsynced record is complete on disk: an incomplete last one was still being
        # written when the broker stopped, so nobody was told it was durable.
        log.warning(
            "dropped the incomplete last record of the write-ahead log (%s): a write cut "
            "off when the broker stopped, never acknowledged",
            "; ".join(torn),
        )


def _report_accepted(checked: Checked, sequence: int) -> None:
    recovered = sequence if checked.recovered is None else checked.recovered
    dropped = sum(w.bytes_after(recovered) for w in checked.wals)
    gone = (checked.mark or 0) - recovered
    if dropped == 0 and gone <= 0:
        log.warning("--accept-data-loss: nothing was lost, the journal is complete")
        return
    files = ", ".join(
        f"{w.name} from byte {w.size - w.bytes_after(recovered)}"
        for w in checked.wals
        if w.bytes_after(recovered)
    )
    log.warning(
        "--accept-data-loss: opened the journal up to write %d: %d bytes of the write-ahead "
        "log were not replayed%s; %s",
        recovered,
        dropped,
        f" ({files})" if files else "",
        _against_mark(checked.mark, gone),
    )


def _against_mark(mark: int | None, gone: int) -> str:
    if mark is None:
        return "no high-water mark tells how many of them were fsynced"
    if gone > 0:
        return f"{gone} fsynced write(s) are gone (the high-water mark was {mark})"
    return f"every write up to the high-water mark ({mark}) is there"
