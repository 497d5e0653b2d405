"""`python -m tests.nats_node_standin --nats URLS --node NAME ...`: a stand-in for a
cluster node in tests of `make cluster` (`CLUSTER_BROKER_MODULE=tests.nats_node_standin`),
independent of the broker's own cluster mode.

It takes a node's flags, checks that every NATS URL given answers with JetStream on (so
the launcher passed the servers it started), then becomes (by exec, same pid) an ordinary
single-process broker on the node's ingress, admin and data dir.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import nats


async def _check_jetstream(urls: list[str]) -> None:
    for url in urls:
        client = await nats.connect(servers=[url], connect_timeout=5, allow_reconnect=False)
        try:
            await client.jetstream().account_info()
        finally:
            await client.close()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.nats_node_standin")
    for flag in ("--nats", "--node", "--partitions", "--ingress", "--admin", "--data-dir"):
        parser.add_argument(flag, required=True)
    args = parser.parse_args(argv)
    asyncio.run(_check_jetstream(args.nats.split(",")))
    print(f"{args.node}: JetStream answers on {args.nats}", flush=True)
    broker = [sys.executable, "-m", "broker", "--ingress", args.ingress, "--admin", args.admin]
    os.execv(sys.executable, [*broker, "--data-dir", args.data_dir])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
