"""The replay state machine: the journal in, proposed steps out. No I/O, no asyncio.

The machine holds the journal the broker sent at the start of an attempt and hands out
journal indexes to the steps the handler takes. A step whose index is inside that journal
is *replayed*: it must match the journaled command, and its journaled result is reused. A
step past the end is *new*: it is appended and queued as an outgoing message.
"""

from __future__ import annotations

from durable.v1 import journal_pb2, protocol_pb2

from ._errors import NonDeterminismError, ProtocolViolation

Entry = journal_pb2.JournalEntry
Result = journal_pb2.Result


def _copy(entry: Entry) -> Entry:
    out = Entry()
    out.CopyFrom(entry)
    return out


# Per command, the fields a replay must reproduce (payloads and deadlines may differ).
_IDENTITY_FIELDS: dict[str, tuple[str, ...]] = {
    "call": ("service", "method"),
    "send": ("service", "method"),
    "run": ("name",),
    "get_state": ("key",),
    "set_state": ("key",),
    "clear_state": ("key",),
    "complete_awakeable": ("awakeable_id",),
    "get_promise": ("name",),
    "peek_promise": ("name",),
    "complete_promise": ("name",),
    "attach": ("invocation_id",),
    "get_output": ("invocation_id",),
}


def _identity(entry: Entry) -> tuple[str, ...]:
    """What must match between a journaled and a replayed command."""
    kind = entry.WhichOneof("command") or "none"
    command = getattr(entry, kind, None)
    return (kind, *(str(getattr(command, f)) for f in _IDENTITY_FIELDS.get(kind, ())))


def describe(entry: Entry) -> str:
    """A short human description of a journal command, for errors and logs."""
    kind, *fields = _identity(entry)
    if kind in ("call", "send"):
        return f"{kind} {fields[0]}/{fields[1]}"
    return " ".join([kind, *(repr(f) for f in fields)])


class ReplayMachine:
    """Tracks one attempt's journal and the messages it must send to the broker.

    Args:
        journal: The journal so far, entry 0 being the input.
    """

    def __init__(self, journal: list[Entry]) -> None:
        first = journal[0].WhichOneof("command") if journal else "nothing"
        if first != "input":
            raise ProtocolViolation(
                f"a journal starts with its input entry, but this one starts with "
                f"{first or 'an empty entry'}"
            )
        # Copies: completions must not write into the caller's start message.
        self._journal = [_copy(e) for e in journal]
        self._replay_length = len(journal)
        self._next = 1
        self._outbox: list[protocol_pb2.InvokeResponse] = []

    @property
    def input(self) -> journal_pb2.InputCommand:
        """The invocation's input."""
        return self._journal[0].input

    @property
    def position(self) -> int:
        """The journal index the handler's next step will take."""
        return self._next

    @property
    def replaying(self) -> bool:
        """Whether the next step still comes from the journal."""
        return self._next < self._replay_length

    def propose(self, entry: Entry) -> int:
        """Takes the handler's next step and returns its journal index.

        Raises:
            NonDeterminismError: the step differs from the journaled one at its index.
        """
        index = self._next
        self._next += 1
        if index < self._replay_length:
            journaled = self._journal[index]
            if _identity(journaled) != _identity(entry):
                raise NonDeterminismError(index, describe(journaled), describe(entry))
            return index
        self._journal.append(_copy(entry))
        # Built in place: protobuf's keyword constructor copies a nested message once
        # per level (twice the time, on every step of every handler).
        message = protocol_pb2.InvokeResponse()
        proposed = message.entry
        proposed.index = index
        proposed.entry.CopyFrom(entry)
        self._outbox.append(message)
        return index

    def journaled(self, index: int) -> Entry:
        """The journal entry at `index` (replayed or proposed in this attempt)."""
        return self._journal[index]

    def result(self, index: int) -> Result | None:
        """The entry's result, or None while it is not completed."""
        entry = self._journal[index]
        return entry.result if entry.HasField("result") else None

    def completed_at_ms(self, index: int) -> int:
        """When the broker completed the entry, as its journal says (0 when not said: a
        completion that arrived during this attempt)."""
        return self._journal[index].completed_at_ms

    def complete(self, index: int, result: Result) -> None:
        """Records a completion sent by the broker."""
        if index >= len(self._journal):
            raise ProtocolViolation(
                f"completion for entry {index} beyond the journal's end "
                f"(it has {len(self._journal)} entries)"
            )
        self._journal[index].result.CopyFrom(result)

    def propose_run_result(self, index: int, result: Result) -> None:
        """Queues a side effect's outcome; the broker completes the entry once it is durable.

        If the run's entry has not left yet, the outcome rides in it: one message, one
        commit.
        """
        for message in self._outbox:
            if message.HasField("entry") and message.entry.index == index:
                message.entry.entry.result.CopyFrom(result)
                return
        self._outbox.append(
            protocol_pb2.InvokeResponse(
                run_result=protocol_pb2.RunResultMessage(entry_index=index, result=result)
            )
        )

    def finish(self, result: Result) -> None:
        """Proposes the output entry and ends the attempt."""
        output = Entry()
        output.output.SetInParent()
        output.result.CopyFrom(result)
        self.propose(output)
        end = protocol_pb2.InvokeResponse()
        end.end.SetInParent()
        self._outbox.append(end)

    def suspend(self, waiting_on: list[int]) -> None:
        """Ends the attempt waiting on the given entries."""
        self._outbox.append(
            protocol_pb2.InvokeResponse(
                suspension=protocol_pb2.SuspensionMessage(waiting_on=sorted(set(waiting_on)))
            )
        )

    def fail(
        self,
        code: int,
        message: str,
        *,
        non_determinism: bool = False,
        retry_after_ms: int = 0,
        pause: bool = False,
        entry_index: int = -1,
    ) -> None:
        """Ends the attempt with a transient failure (the broker retries)."""
        self._outbox.append(
            protocol_pb2.InvokeResponse(
                error=protocol_pb2.ErrorMessage(
                    code=code,
                    message=message,
                    entry_index=entry_index,
                    non_determinism=non_determinism,
                    retry_after_ms=retry_after_ms,
                    pause=pause,
                )
            )
        )

    def drain(self) -> list[protocol_pb2.InvokeResponse]:
        """Takes the queued outgoing messages."""
        out, self._outbox = self._outbox, []
        return out
