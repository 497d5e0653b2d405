"""`broker.addresses.listener`: who listens on a port, for the error that says it is taken."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from durable.process import listen_problem, listener

from broker.addresses import in_use, listened

_HEADER = (
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
    "timeout inode\n"
)


def _row(port: int, state: str, inode: int) -> str:
    return (
        f"   0: 0100007F:{port:04X} 00000000:0000 {state} 00000000:00000000 00:00000000 "
        f"00000000     0        0 {inode} 1 0000000000000000 100 0 0 10 0\n"
    )


def _fake_proc(tmp_path: Path, rows: list[str], processes: dict[int, tuple[bytes, int]]) -> Path:
    proc = tmp_path / "proc"
    (proc / "net").mkdir(parents=True)
    (proc / "net" / "tcp").write_text(_HEADER + "".join(rows))
    (proc / "self").mkdir()  # not a pid: passed over
    for pid, (cmdline, inode) in processes.items():
        (proc / str(pid) / "fd").mkdir(parents=True)
        (proc / str(pid) / "cmdline").write_bytes(cmdline)
        os.symlink("/dev/null", proc / str(pid) / "fd" / "0")
        os.symlink(f"socket:[{inode}]", proc / str(pid) / "fd" / "7")
    return proc


def test_the_listener_is_named_by_pid_and_command_line(tmp_path: Path) -> None:
    proc = _fake_proc(
        tmp_path,
        [_row(4222, "0A", 555), _row(8080, "01", 666), _row(8080, "0A", 777)],
        {10: (b"nats-server\0-p\x004222\0", 555), 20: (b"python\0-m\0broker\0", 777)},
    )
    assert listener(8080, proc) == "pid 20 (python -m broker)"
    assert listener(4222, proc) == "pid 10 (nats-server -p 4222)"


def test_a_port_only_connected_from_or_to_has_no_listener(tmp_path: Path) -> None:
    proc = _fake_proc(tmp_path, [_row(8080, "01", 666)], {20: (b"python\0", 666)})
    assert listener(8080, proc) is None
    assert listener(9090, proc) is None


def test_without_proc_nobody_is_named(tmp_path: Path) -> None:
    assert listener(8080, tmp_path / "nowhere") is None


def test_this_process_is_found_listening_on_a_real_socket() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{held.getsockname()[1]}"
        assert listened(address)  # bound: nobody else can listen there
        assert in_use(address) == "already in use by another program"  # not listening
        held.listen()
        assert in_use(address).startswith(f"already in use by pid {os.getpid()} (")
    assert not listened(address)


def test_a_taken_ports_problem_names_its_listener() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        problem = listen_problem(f"127.0.0.1:{held.getsockname()[1]}")
    assert problem is not None and problem.kind == "taken"
    assert problem.reason.startswith(f"already in use by pid {os.getpid()} (")
