"""Describing and exporting a journal whose payloads are near the admin API's message
size cap (64 MiB): the JSON renderings, which roughly double an answer, are left out and
the answer says so; a journal too big even without them is refused with a message that
says why, and is read in pages (`max_entries`) instead, as `brokerctl` does. Real broker,
real service, real `brokerctl`."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import pytest
from durable.v1 import admin_pb2, admin_pb2_grpc
from playground import playground_pb2, playground_pb2_grpc

from tests.support import PLAYGROUND, ROOT, Cluster, free_port, invocation_id_of

BROKERCTL = Path(sys.executable).parent / "brokerctl"
MIB = 1024 * 1024
# Big channels: these answers are past gRPC's default 4 MiB receive limit.
BIG = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]


def _brokerctl(cluster: Cluster, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    command = [str(BROKERCTL), "--admin", cluster.admin_address, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=120) as response:
        assert response.status == 200
        return str(response.read().decode())


def test_a_journal_too_big_to_render_is_described_and_exported_without_renderings(
    tmp_path: Path,
) -> None:
    console = f"127.0.0.1:{free_port()}"
    args = ["--max-payload-bytes", str(63 * MIB), "--console", console]
    with (
        Cluster(tmp_path, broker_args=args, services=(PLAYGROUND,)) as cluster,
        grpc.insecure_channel(cluster.ingress, options=BIG) as ingress,
        grpc.insecure_channel(cluster.admin_address, options=BIG) as admin_channel,
    ):
        busy = playground_pb2_grpc.BusyStub(ingress)
        admin = admin_pb2_grpc.AdminStub(admin_channel)
        # Its output is in the journal and the invocation's result (60 MiB), and renders
        # to JSON as long as itself: 90 MiB with the renderings, 60 without.
        reply, call = busy.Fill.with_call(playground_pb2.FillRequest(size=30 * MIB), timeout=120)
        assert len(reply.text) == 30 * MIB
        fits = invocation_id_of(call)
        small = invocation_id_of(
            busy.Fill.with_call(playground_pb2.FillRequest(size=10), timeout=30)[1]
        )

        described = admin.DescribeInvocation(
            admin_pb2.DescribeInvocationRequest(invocation_id=fits), timeout=120
        )
        assert described.rendering_omitted
        assert not described.rendered and not described.result_json
        output = playground_pb2.Reply.FromString(described.journal[-1].result.value)
        assert len(output.text) == 30 * MIB, "the journal itself is whole"
        exported = admin.ExportInvocation(
            admin_pb2.ExportInvocationRequest(invocation_id=fits), timeout=120
        )
        assert exported.rendering_omitted and not exported.rendered
        assert len(exported.journal) == len(described.journal)
        # A small one keeps its renderings.
        plain = admin.DescribeInvocation(
            admin_pb2.DescribeInvocationRequest(invocation_id=small), timeout=30
        )
        assert not plain.rendering_omitted and plain.result_json

        shown = _brokerctl(cluster, "invocations", "describe", fits, timeout=120)
        assert shown.returncode == 0, shown.stderr[-2000:]
        # It reads the journal in pages, and each page has room for the renderings the
        # whole answer had to leave out: the output is shown as JSON (cut, on a terminal).
        assert "payloads are shown as bytes" not in shown.stderr, shown.stderr
        assert f"(protobuf, {30 * MIB + 10} bytes; whole in --json)" in shown.stdout

        # The console asks for a page at a time too; the output does not fit beside the
        # input and the record's result, so the first page ends early and links on.
        first_page = _get(f"http://{console}/invocations/{fits}")
        assert "Journal (2 entries)" in first_page and 'id="entry-0"' in first_page
        assert 'id="entry-1"' not in first_page
        assert f'href="/invocations/{fits}?start=1">later entries' in first_page
        second_page = _get(f"http://{console}/invocations/{fits}?start=1")
        assert 'id="entry-1"' in second_page and 'id="entry-0"' not in second_page
        assert "earlier entries" in second_page and "later entries" not in second_page
        # A start past the end (a stale link) shows the first page.
        assert 'id="entry-0"' in _get(f"http://{console}/invocations/{fits}?start=9")

        # Past the cap even without renderings: refused, saying why (not gRPC's own
        # "larger than max" from deep in the transport).
        too_big = invocation_id_of(
            busy.Fill.with_call(playground_pb2.FillRequest(size=40 * MIB), timeout=120)[1]
        )
        for ask in (
            lambda: admin.DescribeInvocation(
                admin_pb2.DescribeInvocationRequest(invocation_id=too_big), timeout=120
            ),
            lambda: admin.ExportInvocation(
                admin_pb2.ExportInvocationRequest(invocation_id=too_big), timeout=120
            ),
        ):
            with pytest.raises(grpc.RpcError) as refused:
                ask()
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            details = refused.value.details() or ""
            # 80: the output is in the journal and in the invocation's result both.
            assert f"invocation {too_big}'s journal (2 entries) takes 80.0 MiB" in details
            assert "over the 64 MiB an admin answer can carry" in details
            assert "ask for it in pages" in details

        # A listing of the three holds their records, results included (70 MiB): its
        # first page stops before the answer would pass the cap, and a token goes on.
        first_list = admin.ListInvocations(admin_pb2.ListInvocationsRequest(limit=50), timeout=60)
        assert [r.id for r in first_list.invocations] == [too_big, small]
        assert first_list.total == 3 and first_list.next_page_token
        rest = admin.ListInvocations(
            admin_pb2.ListInvocationsRequest(limit=50, page_token=first_list.next_page_token),
            timeout=60,
        )
        assert [r.id for r in rest.invocations] == [fits] and not rest.next_page_token
        listed = _brokerctl(cluster, "invocations", "list", timeout=60)
        assert listed.returncode == 0 and "more follow" in listed.stderr, listed.stderr[-2000:]
        # Without results (what the console asks for) the three fit in one page, and the
        # console's first page lists all three (it listed two, and its second page
        # started at the 51st match: the third was out of its reach).
        bare = admin.ListInvocations(
            admin_pb2.ListInvocationsRequest(limit=50, without_results=True), timeout=60
        )
        assert [r.id for r in bare.invocations] == [too_big, small, fits]
        assert not bare.next_page_token and bare.ByteSize() < 10_000
        assert not any(r.result.HasField("value") for r in bare.invocations)
        listing = _get(f"http://{console}/invocations")
        assert all(f"/invocations/{i}" in listing for i in (too_big, small, fits))
        assert "1&ndash;3 of 3" in listing

        # In pages it is shown whole: the record's 40 MiB result and the output entry
        # holding it cannot share one, so the output's page leaves the result out.
        pages: list[admin_pb2.DescribeInvocationResponse] = []
        first = 0
        while len(pages) < 5:
            page = admin.DescribeInvocation(
                admin_pb2.DescribeInvocationRequest(
                    invocation_id=too_big, first_entry=first, max_entries=100
                ),
                timeout=120,
            )
            pages.append(page)
            if not page.next_entry:
                break
            first = page.next_entry
        assert [len(p.journal) for p in pages] == [1, 1]
        assert [p.journal_length for p in pages] == [2, 2]
        assert pages[0].journal[0].HasField("input") and not pages[0].result_omitted
        assert len(pages[0].invocation.result.value) == len(pages[1].journal[0].result.value)
        assert pages[1].result_omitted and not pages[1].invocation.HasField("result")
        output = playground_pb2.Reply.FromString(pages[1].journal[0].result.value)
        assert len(output.text) == 40 * MIB
        with pytest.raises(grpc.RpcError) as past_end:
            admin.ExportInvocation(
                admin_pb2.ExportInvocationRequest(invocation_id=too_big, first_entry=2),
                timeout=30,
            )
        assert past_end.value.code() == grpc.StatusCode.OUT_OF_RANGE
        assert "journal has 2 entries (0 to 1): first_entry 2 is past its end" in (
            past_end.value.details() or ""
        )

        # brokerctl reads the pages (describe did above, in two): the export holds the
        # whole journal, the output's 40 MiB included.
        done = _brokerctl(cluster, "invocations", "export", too_big, timeout=180)
        assert done.returncode == 0, done.stderr[-2000:]
        document = json.loads(done.stdout)
        assert [entry["index"] for entry in document["journal"]] == [0, 1], document.keys()
        output_result = document["journal"][1]["entry"]["result"]
        assert len(base64.b64decode(output_result["value"])) > 40 * MIB
        # The record's result, left out of the output's page, is put back.
        assert document["invocation"]["result"] == output_result
