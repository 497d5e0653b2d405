"""Partitions on a replicated log (NATS JetStream): one stream per partition.

A leader's group committer appends each group of writes to its partition's stream and
applies it to its own RocksDB only once JetStream has stored it on a quorum; followers
tail the stream and apply the same entries to their RocksDB, so any of them can take
over. Leadership is a lease in a JetStream key-value bucket (compare-and-set, TTL);
appends carry the sequence they expect to follow, so a deposed leader can never write
after its successor.

  codec      the entry format (puts and deletes of one group)
  engine     the connection, and the streams and buckets the cluster keeps
  log        fenced appends to a partition's stream
  tail       applies a stream to a local store, remembering the position
  lease      who leads which partition
  ask        requests a failover waits on, asked again soon when unanswered
"""
