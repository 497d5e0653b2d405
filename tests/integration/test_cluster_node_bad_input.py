"""Starts of a cluster node (`python -m broker --nats ...`) that cannot work, against real
nats-servers: exit code 2, a last stderr line `python -m broker: error: ...` naming what
to change, no traceback, and nothing written: the data dir is not created (or is left
byte for byte), and no stream or bucket is created in NATS (a stream already there keeps
its last sequence).

Three engines, each started once for the module: a plain nats-server (no JetStream), a
single JetStream server (cannot hold 3 replicas), and three clustered servers with one
node running that created the cluster with `FIRST_PARTITIONS` partitions.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import nats
import pytest
from durable.v1 import admin_pb2, admin_pb2_grpc

from broker.cluster import layout
from tests.support import (
    PYTHON,
    ROOT,
    STARTUP_TIMEOUT_S,
    Process,
    free_port,
    wait_for,
    wait_healthy,
)
from tools.natsd import NatsCluster

FIRST_PARTITIONS = 4
READY_TIMEOUT_S = 20.0
# What "refused within a few seconds" means for NATS being down, interpreter start included.
DOWN_REFUSAL_S = 10.0
# The data dir of the `cluster` fixture's node "first", by the cluster's first NATS URL.
FIRST_DATA: dict[str, Path] = {}


def _start(nats_urls: str, data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Runs a node start to its end (a refusal ends it; a start that works would not)."""
    ports = ["--ingress", f"127.0.0.1:{free_port()}", "--admin", f"127.0.0.1:{free_port()}"]
    return subprocess.run(
        [PYTHON, "-m", "broker", "--nats", nats_urls, "--data-dir", str(data), *ports, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def _refused(result: subprocess.CompletedProcess[str], *phrases: str) -> str:
    """The refusal's message, checked: exit 2, one error line last, no traceback."""
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("python -m broker: error: "), result.stderr
    for phrase in phrases:
        assert phrase in last, last
    return last


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under `root` with its size and modification time."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }


def _streams(urls: list[str]) -> dict[str, int]:
    """Every JetStream stream (KV buckets included) and its last sequence. The lease and
    heartbeat buckets are left out: a running node rewrites them all the time."""

    async def read() -> dict[str, int]:
        client = await nats.connect(servers=urls, connect_timeout=2)
        try:
            infos = await client.jetstream().streams_info()
        finally:
            await client.close()
        moving = {"KV_durable_leases", "KV_durable_nodes"}
        return {
            i.config.name or "": (0 if i.config.name in moving else i.state.last_seq) for i in infos
        }

    return asyncio.run(read())


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    """One nats-server without JetStream."""
    base = tmp_path_factory.mktemp("plain")
    with NatsCluster(base, size=1, port_source=free_port, jetstream=False) as server:
        server.wait_ready(READY_TIMEOUT_S)
        yield server


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    """One nats-server with JetStream, not clustered."""
    with NatsCluster(tmp_path_factory.mktemp("single"), size=1, port_source=free_port) as s:
        s.wait_ready(READY_TIMEOUT_S)
        yield s


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    """Three clustered servers, and a node that created a cluster of `FIRST_PARTITIONS`."""
    base = tmp_path_factory.mktemp("cluster")
    with NatsCluster(base / "nats", port_source=free_port) as servers:
        servers.wait_ready(READY_TIMEOUT_S)
        admin = f"127.0.0.1:{free_port()}"
        first = Process(
            "first",
            [
                *(PYTHON, "-m", "broker", "--nats", ",".join(servers.urls), "--node", "first"),
                *("--partitions", str(FIRST_PARTITIONS), "--data-dir", str(base / "first")),
                *("--ingress", f"127.0.0.1:{free_port()}", "--admin", admin),
            ],
            base / "first.log",
        )
        first.start()
        try:
            wait_healthy(admin, time.monotonic() + STARTUP_TIMEOUT_S, first)
            _wait_settled(admin)
            FIRST_DATA[servers.urls[0]] = base / "first"
            yield servers
            first.check_alive()
        finally:
            first.terminate()


def _wait_settled(admin: str) -> None:
    """Until the first node leads every partition and applied its log's end: it writes
    nothing more on its own, so the streams stand still for the tests' comparisons."""
    with grpc.insecure_channel(admin) as channel:
        stub = admin_pb2_grpc.AdminStub(channel)

        def settled() -> bool:
            status = stub.ClusterStatus(admin_pb2.ClusterStatusRequest(), timeout=5)
            return len(status.partitions) == FIRST_PARTITIONS and all(
                p.serving and p.applied == p.log_last for p in status.partitions
            )

        wait_for(settled, timeout=STARTUP_TIMEOUT_S, message="the first node to settle")


@pytest.mark.parametrize(
    ("flags", "phrases"),
    [
        (["--nats", "nats://127.0.0.1:4222"], ["--nats needs --node NAME"]),
        (["--nats", "nats://127.0.0.1:4222", "--node", "a b"], ["--nats needs --node NAME"]),
        (["--nats", "localhost:4222", "--node", "a"], ["'localhost:4222' is not a NATS URL"]),
        (["--nats", "nats://:4222", "--node", "a"], ["'nats://:4222' is not a NATS URL"]),
        (["--nats", "nats://h:x,nats://h:1", "--node", "a"], ["'nats://h:x' is not a NATS URL"]),
        (["--nats", ",", "--node", "a"], ["is not a NATS URL", "nats://HOST:PORT"]),
        (
            ["--nats", "nats://127.0.0.1:4222", "--node", "a", "--workers", "2"],
            ["--nats and --workers do not go together"],
        ),
        (
            ["--nats", "nats://127.0.0.1:4222", "--node", "a", "--partitions", "0"],
            ["--partitions must be between 1 and 256"],
        ),
        (
            ["--nats", "nats://127.0.0.1:4222", "--node", "a", "--data-dir", ""],
            ["--nats needs a --data-dir"],
        ),
    ],
    ids=[
        "no-node",
        "bad-node-name",
        "url-without-scheme",
        "url-without-host",
        "url-with-bad-port",
        "no-url",
        "with-workers",
        "partitions-0",
        "no-data-dir",
    ],
)
def test_flags_refused_before_connecting(
    tmp_path: Path, flags: list[str], phrases: list[str]
) -> None:
    # The flags are checked before NATS is contacted (the URLs lead nowhere anyway).
    data = tmp_path / "data"
    ports = ["--ingress", f"127.0.0.1:{free_port()}", "--admin", f"127.0.0.1:{free_port()}"]
    result = subprocess.run(
        [PYTHON, "-m", "broker", "--data-dir", str(data), *ports, *flags],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )

    _refused(result, *phrases)
    assert result.stderr.count("\n") == 1, result.stderr  # before logging is set up
    assert not data.exists()


def test_a_single_process_data_dir_is_refused(tmp_path: Path) -> None:
    # A node would add its marker and replicas next to that broker's RocksDB files.
    data = tmp_path / "data"
    admin = f"127.0.0.1:{free_port()}"
    args = [PYTHON, "-m", "broker", "--data-dir", str(data), "--admin", admin]
    single = Process("broker", [*args, "--ingress", f"127.0.0.1:{free_port()}"], tmp_path / "b.log")
    single.start()
    try:
        wait_healthy(admin, time.monotonic() + STARTUP_TIMEOUT_S, single)
    finally:
        assert single.terminate() == 0
    before = _tree(data)

    # Refused before NATS is contacted: this URL leads nowhere.
    result = _start(f"nats://127.0.0.1:{free_port()}", data, "--node", "a", "--partitions", "2")

    _refused(result, "is a single-process broker's data dir", "give --data-dir a new one")
    assert _tree(data) == before


def test_nats_down_is_refused_within_seconds(tmp_path: Path) -> None:
    data = tmp_path / "data"
    nobody = ",".join(f"nats://127.0.0.1:{free_port()}" for _ in range(3))

    since = time.monotonic()
    result = _start(nobody, data, "--node", "a", "--partitions", "2")
    took = time.monotonic() - since

    _refused(result, f"cannot reach NATS at {nobody}", "start the NATS servers first")
    assert took < DOWN_REFUSAL_S, f"refused after {took:.1f} s"
    assert not data.exists()


def test_nats_without_jetstream_is_refused(tmp_path: Path, plain: NatsCluster) -> None:
    data = tmp_path / "data"

    result = _start(",".join(plain.urls), data, "--node", "a", "--partitions", "2")

    _refused(result, "has no JetStream", "`-js`", "jetstream {}")
    assert not data.exists()


def test_a_single_jetstream_server_is_refused(tmp_path: Path, single: NatsCluster) -> None:
    data = tmp_path / "data"

    result = _start(",".join(single.urls), data, "--node", "a", "--partitions", "2")

    _refused(
        result,
        "is a single JetStream server, not a cluster",
        "3 nats-servers with JetStream, clustered",
        "give every server's URL to --nats",
    )
    assert not data.exists()
    assert _streams(single.urls) == {}


def test_a_first_node_needs_a_partition_count(tmp_path: Path, single: NatsCluster) -> None:
    # Refused before the cluster's first bucket is made, so this single server (which
    # would refuse the bucket's replicas) never gets asked.
    data = tmp_path / "data"

    result = _start(",".join(single.urls), data, "--node", "a")

    _refused(result, "holds no broker cluster yet", "start the first node with --partitions N")
    assert not data.exists()
    assert _streams(single.urls) == {}


def test_another_partition_count_is_refused(tmp_path: Path, cluster: NatsCluster) -> None:
    data = tmp_path / "data"
    before = _streams(cluster.urls)
    assert f"DURABLE_P{FIRST_PARTITIONS - 1}" in before

    result = _start(",".join(cluster.urls), data, "--node", "second", "--partitions", "3")

    _refused(
        result,
        f"the cluster was created with {FIRST_PARTITIONS} partitions",
        "started with --partitions 3",
        f"omit it, or give {FIRST_PARTITIONS}",
    )
    assert not data.exists()
    assert _streams(cluster.urls) == before


@pytest.mark.parametrize("value", [b"four", b"", b"0", b"\xff\xfe"])
def test_a_partition_count_no_broker_wrote_is_refused(
    tmp_path: Path, cluster: NatsCluster, value: bytes
) -> None:
    async def put(count: bytes) -> None:
        client = await nats.connect(servers=cluster.urls, connect_timeout=2)
        try:
            bucket = await client.jetstream().key_value("durable_meta")
            await bucket.put("partitions", count)
        finally:
            await client.close()

    asyncio.run(put(value))
    try:
        result = _start(",".join(cluster.urls), tmp_path / "data", "--node", "third")
    finally:
        asyncio.run(put(str(FIRST_PARTITIONS).encode()))
    _refused(
        result,
        "the cluster's partitions in NATS (bucket durable_meta, key partitions) is",
        "not a count: only brokers write it",
        "nats kv put durable_meta partitions N",
    )
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("flags", [[], ["--partitions", "3"], ["--partitions", "4"]])
def test_a_data_dir_of_another_cluster_is_refused(
    tmp_path: Path, cluster: NatsCluster, flags: list[str]
) -> None:
    # A node's data dir made for a 3-partition cluster, pointed at the 4-partition one:
    # whatever --partitions says, the data dir is what must change.
    data = tmp_path / "data"
    layout.create(str(data), 3)
    before_dir, before_streams = _tree(data), _streams(cluster.urls)

    result = _start(",".join(cluster.urls), data, "--node", "second", *flags)

    _refused(
        result,
        f"the data dir {data} holds 3 partitions but the cluster",
        f"has {FIRST_PARTITIONS}",
        "give this node a new data dir",
    )
    assert _tree(data) == before_dir
    assert _streams(cluster.urls) == before_streams


def test_a_node_on_a_running_nodes_data_dir_is_refused(
    tmp_path: Path, cluster: NatsCluster
) -> None:
    # It exited 1 with a CRITICAL log line where every other refused start exits 2 with
    # one line (an attack).
    data = FIRST_DATA[cluster.urls[0]]
    result = _start(",".join(cluster.urls), data, "--node", "intruder")
    _refused(result, f"the data dir {data}", "is in use by another broker")


def test_a_second_node_with_a_running_nodes_name_is_refused(
    tmp_path: Path, cluster: NatsCluster
) -> None:
    # "first" runs (the fixture's node): a second "first" would think it leads its
    # partitions too.
    data = tmp_path / "data"
    before = _streams(cluster.urls)

    result = _start(",".join(cluster.urls), data, "--node", "first")

    _refused(result, "a node named first is running", "another --node name")
    assert not data.exists()
    assert _streams(cluster.urls) == before
