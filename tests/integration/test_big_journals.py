"""Describing and exporting a journal whose payloads are near the admin API's message
size cap (64 MiB): the JSON renderings, which roughly double an answer, are left out and
the answer says so; a journal too big even without them is refused with a message that
says why. Real broker, real service, real `brokerctl`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from durable.v1 import admin_pb2, admin_pb2_grpc
from playground import playground_pb2, playground_pb2_grpc

from tests.support import PLAYGROUND, ROOT, Cluster, invocation_id_of

BROKERCTL = Path(sys.executable).parent / "brokerctl"
MIB = 1024 * 1024
# Big channels: these answers are past gRPC's default 4 MiB receive limit.
BIG = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]


def test_a_journal_too_big_to_render_is_described_and_exported_without_renderings(
    tmp_path: Path,
) -> None:
    args = ["--max-payload-bytes", str(63 * MIB)]
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

        shown = subprocess.run(
            [str(BROKERCTL), "--admin", cluster.admin_address, "invocations", "describe", fits],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
        assert shown.returncode == 0, shown.stderr[-2000:]
        assert "payloads are shown as bytes" in shown.stderr

        # Past the cap even without renderings: refused, saying why (not gRPC's own
        # "larger than max" from deep in the transport).
        too_big = invocation_id_of(
            busy.Fill.with_call(playground_pb2.FillRequest(size=62 * MIB), timeout=120)[1]
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
            # 124: the output is in the journal and in the invocation's result both.
            assert f"invocation {too_big}'s journal (2 entries) takes 124.0 MiB" in details
            assert "over the 64 MiB an admin answer can carry" in details
