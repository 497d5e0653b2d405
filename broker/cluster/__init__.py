"""Partitions over several processes (`python -m broker --workers N`).

`layout` fixes a data dir's partition count and where each partition's journal lives;
`placement` maps keys and invocation ids to partitions; `directory` says which worker
owns which partition and at which private addresses; `outbox` carries cross-partition
messages exactly once; `worker` runs partitions in one process; `supervisor` starts and
restarts the workers and serves the public admin API in front of them.
"""
