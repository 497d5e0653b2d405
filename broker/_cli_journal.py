"""`brokerctl`'s reading of a whole journal, a page at a time: one admin answer carries at
most 64 MiB, and a journal of large payloads can hold far more."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from durable.v1 import admin_pb2

from ._cli_format import CommandError

# Entries asked for per page: the broker answers fewer when their bytes reach its cap.
PAGE_ENTRIES = 1000

Request = TypeVar("Request", admin_pb2.DescribeInvocationRequest, admin_pb2.ExportInvocationRequest)
Answer = TypeVar("Answer", admin_pb2.DescribeInvocationResponse, admin_pb2.ExportInvocationResponse)


class BadPage(CommandError):
    """A page that does not follow the one before (a broker bug: stop, not loop)."""

    def __init__(self, message: str) -> None:
        super().__init__("INTERNAL", message)


def whole(call: Callable[[Request], Answer], request: Request) -> Answer:
    """Every page of the journal `request` names, from its `first_entry`, as one answer:
    every page's entries and renderings, with the record as the last page has it.

    The journal may grow, and the invocation end, between pages; entries once written
    never change, so the pages read in turn are the journal as the last one saw it, and
    that page's record (status, result, length) is the one that goes with them.

    A broker that does not page answers the whole journal at once (`next_entry` 0).
    The record's result, left out of a page that could not hold it, is put back from
    the output entry that holds it.
    """
    request.max_entries = PAGE_ENTRIES
    answer = call(request)
    merged = answer
    while answer.next_entry:
        if (
            answer.next_entry <= request.first_entry
            or answer.next_entry >= answer.journal_length
            or not answer.journal
        ):
            raise BadPage(
                f"the broker's page from entry {request.first_entry} says the next starts "
                f"at {answer.next_entry} of {answer.journal_length}"
            )
        request.first_entry = answer.next_entry
        answer = call(request)
        merged.journal.extend(answer.journal)
        merged.rendered.extend(answer.rendered)
        merged.rendering_omitted |= answer.rendering_omitted
    if answer is not merged:
        _take_record(merged, answer)
    merged.next_entry = 0
    if merged.result_omitted:
        _restore_result(merged)
    return merged


def _take_record(merged: Answer, last: Answer) -> None:
    merged.invocation.CopyFrom(last.invocation)
    merged.journal_length = last.journal_length
    merged.result_omitted = last.result_omitted
    if isinstance(merged, admin_pb2.DescribeInvocationResponse) and isinstance(
        last, admin_pb2.DescribeInvocationResponse
    ):
        merged.result_json = last.result_json


def _restore_result(merged: Answer) -> None:
    for i, entry in enumerate(merged.journal):
        if entry.HasField("output"):
            merged.invocation.result.CopyFrom(entry.result)
            if isinstance(merged, admin_pb2.DescribeInvocationResponse) and i < len(
                merged.rendered
            ):
                merged.result_json = merged.rendered[i].result_json
            merged.result_omitted = False
            return
