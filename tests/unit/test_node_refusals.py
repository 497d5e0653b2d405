"""What a cluster node says when its data dir cannot be opened: its replicas are rebuilt
from the log, not restored from a backup (an attack found the single broker's advice)."""

from __future__ import annotations

from broker.cluster.node_main import _replica_advice


def test_a_damaged_replica_is_to_be_deleted_and_rebuilt_not_restored() -> None:
    problem = (
        "cannot open the data dir /d/p0: Corruption: CURRENT file does not end with "
        "newline; restore it from a backup"
    )
    advice = _replica_advice(problem, "/d")
    assert advice.startswith("cannot open the data dir /d/p0: Corruption: CURRENT file")
    assert "backup" not in advice
    assert advice.endswith(
        "a cluster node's data dir holds only replicas of the partitions' logs: stop this "
        "node, delete /d and start it again to rebuild it from the log"
    )


def test_other_refusals_keep_their_own_words() -> None:
    problem = "the data dir /d is in use by another broker (its RocksDB lock is held)"
    assert _replica_advice(problem, "/d") == problem
