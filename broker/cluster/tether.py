"""`python -m broker.cluster.tether PARENT_PID COMMAND...`: runs COMMAND (by exec, in
this same process) so that it is killed when PARENT_PID dies.

The supervisor starts every worker through it: Linux's `PR_SET_PDEATHSIG` makes the
kernel SIGKILL the worker when the supervisor exits, even by SIGKILL, so workers never
outlive it (a new supervisor could not bind their ports, and two workers would run one
partition). It is set here, in a process of its own, rather than in a `preexec_fn`,
which is unsafe in a parent running threads (gRPC's). The setting survives `execv`.
SIGKILL, not SIGTERM: a worker must go even if it hangs, and its partitions are
durable: they resume as after any crash.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> int:
    """Sets the parent-death signal, then becomes `argv[1:]`."""
    if len(argv) < 2 or not argv[0].isdigit():
        print("usage: python -m broker.cluster.tether PARENT_PID COMMAND...", file=sys.stderr)
        return 2
    parent = int(argv[0])
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            print(f"prctl(PR_SET_PDEATHSIG) failed: errno {ctypes.get_errno()}", file=sys.stderr)
            return 1
    # The parent may have died before the signal was armed: then nothing would fire.
    if os.getppid() != parent:
        return 1
    os.execv(argv[1], argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
