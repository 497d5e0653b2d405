"""`make bench-peer`: this broker and the real Restate side by side, in one run.

Modules:
    main: the flags, the loopback-only network namespace, the alternating runs, the output.
    side: one side of one run in a process of its own (ours or Restate's).
    install: Restate's server (npm) and Python SDK (a venv of their own) under .data/peer.
    restate_run: starting, readying and registering Restate, and the scenarios' HTTP calls.
    restate_app: the scenarios' handlers as Restate services (runs in the peer's venv).
    compare: the medians, ratios, targets and tables (pure).
"""
