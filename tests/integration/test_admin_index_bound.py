"""The admin API's index of completed invocations holds the newest `--admin-index-rows`:
memory stays bounded however many are retained, and every answer built on the index says
when it leaves older ones out. Real broker, real service, real `brokerctl`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from durable.v1 import admin_pb2, invocation_pb2
from playground import playground_pb2

from tests.support import PLAYGROUND, ROOT, Cluster, invocation_id_of

BROKERCTL = Path(sys.executable).parent / "brokerctl"
COMPLETED = invocation_pb2.InvocationStatus.COMPLETED
BOUND = 16  # the broker drops a sixteenth past it: one row at a time here
CALLS = 40


def _completed_ids(cluster: Cluster) -> list[str]:
    listed = cluster.admin.ListInvocations(
        admin_pb2.ListInvocationsRequest(status=COMPLETED, limit=1000), timeout=30
    )
    assert listed.partial, "a listing that leaves older ones out must say so"
    assert listed.total == len(listed.invocations)
    return [i.id for i in listed.invocations]


def test_the_newest_completed_invocations_are_listed_and_the_answers_say_so(
    tmp_path: Path,
) -> None:
    args = ["--admin-index-rows", str(BOUND)]
    with Cluster(tmp_path, broker_args=args, services=(PLAYGROUND,)) as cluster:
        ids = []
        for _ in range(CALLS):
            _, call = cluster.waiter.Sleep.with_call(
                playground_pb2.SleepRequest(millis=0), timeout=30
            )
            ids.append(invocation_id_of(call))
        newest_first = list(reversed(ids))

        assert _completed_ids(cluster) == newest_first[:BOUND]
        assert not cluster.admin.GetStats(admin_pb2.GetStatsRequest(), timeout=30).complete
        # An older one is retained all the same, and described by its id.
        oldest = cluster.admin.DescribeInvocation(
            admin_pb2.DescribeInvocationRequest(invocation_id=ids[0]), timeout=30
        )
        assert oldest.invocation.status == COMPLETED

        result = subprocess.run(
            [str(BROKERCTL), "--admin", cluster.admin_address, "invocations", "list"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        assert result.returncode == 0, result.stderr
        assert "--admin-index-rows" in result.stderr
        as_json = subprocess.run(
            [str(BROKERCTL), "--admin", cluster.admin_address, "--json", "invocations", "list"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        assert json.loads(as_json.stdout)["partial"] is True

        # After a restart the index is built from storage: the same bound, the same rows.
        cluster.restart_broker()
        assert _completed_ids(cluster) == newest_first[:BOUND]
