"""`make bench`: what durability costs, measured against a plain gRPC floor.

`python -m bench` starts the broker, the holiday demo services and the benchmark's own
services on free ports in a fresh data directory, drives them with a closed-loop asyncio
gRPC load generator running in this process (separate from every server), and prints a
table of throughput, latency percentiles, errors and CPU per call for each scenario and
concurrency, followed by the reference figures from issue #6 (not measured here).

Modules:
    handlers: the trivial handler logic shared by the durable and the plain servers.
    service: the durable `benchsvc.Bench` service (`python -m bench.service`).
    direct: the same logic on a plain `grpc.aio` server, no broker (the floor).
    procs: starting, readying, measuring and stopping the processes.
    load: the closed-loop load generator.
    report: the tables, the reference figures and the JSON results.
    peer: `make bench-peer`, the same scenarios side by side with the real Restate.
"""
