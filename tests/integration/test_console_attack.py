"""The console's HTTP server against hostile requests, on a real broker: bad input is a
short 4xx, nothing escapes the static directory, what is shown is escaped, the broker
logs no traceback for a client's mistake, and the console keeps serving."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests.support import PYTHON, Process, free_port, listening, wait_for


class Console:
    """A broker serving the console, and raw HTTP/1.1 to it."""

    def __init__(self, process: Process, port: int) -> None:
        self.process = process
        self.port = port
        self.offset = 0

    def send(self, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        """Sends `raw` as is; returns the status, headers and body of the answer."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.sendall(raw)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines if ": " in line)
        return int(status_line.split()[1]), headers, body

    def get(self, target: bytes, extra: bytes = b"") -> tuple[int, dict[str, str], bytes]:
        head = b"GET " + target + b" HTTP/1.1\r\n" + self.host()
        return self.send(head + b"Connection: close\r\n" + extra + b"\r\n")

    def host(self, name: bytes = b"127.0.0.1") -> bytes:
        return b"Host: %s:%d\r\n" % (name, self.port)

    def post(
        self, target: bytes, body: bytes, content_type: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        head = b"POST %s HTTP/1.1\r\n%sConnection: close\r\nContent-Type: %s\r\n" % (
            target,
            self.host(),
            content_type,
        )
        return self.send(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)

    def assert_healthy(self) -> None:
        """Still serving, and no traceback logged since the test began."""
        self.process.check_alive()
        status, _, body = self.get(b"/")
        assert status == 200 and b"Overview" in body
        with self.process.log_path.open("rb") as f:
            f.seek(self.offset)
            logged = f.read().decode("utf-8", errors="replace")
        assert "Traceback" not in logged, logged


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    tmp = tmp_path_factory.mktemp("console-attack")
    port = free_port()
    args = [PYTHON, "-m", "broker", "--data-dir", str(tmp / "data")]
    args += ["--ingress", f"127.0.0.1:{free_port()}", "--admin", f"127.0.0.1:{free_port()}"]
    args += ["--console", f"127.0.0.1:{port}"]
    process = Process("broker", args, tmp / "broker.log").start()
    try:

        def up() -> bool:
            process.check_alive()
            return listening(f"127.0.0.1:{port}")

        wait_for(up, message="the console to listen")
        yield Console(process, port)
    finally:
        assert process.terminate() == 0, process.log_tail()


@pytest.fixture
def console(running: Console) -> Console:
    running.offset = running.process.log_path.stat().st_size
    return running


FORM = b"application/x-www-form-urlencoded"


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"\xff\xfe=\xff", FORM),
        (b"--zz\r\ngarbage", b"multipart/form-data; boundary=zz"),
        # Cut short: aiohttp raised ValueError "Reading after EOF", a 500 and a traceback.
        (
            b'--zz\r\nContent-Disposition: form-data; name="token"\r\n\r\nabc',
            b"multipart/form-data; boundary=zz",
        ),
        (b"a=b", FORM + b"; charset=bogus-cs"),  # a LookupError: 500 and a traceback
    ],
    ids=["not utf-8", "broken multipart", "truncated multipart", "unknown charset"],
)
def test_a_form_that_cannot_be_read_is_400(
    console: Console, body: bytes, content_type: bytes
) -> None:
    status, _, answer = console.post(b"/state", body, content_type)
    assert status == 400, answer
    assert b"the form could not be read" in answer
    console.assert_healthy()


@pytest.mark.parametrize("next_url", [b"/%5Cevil.example", b"//evil.example", b"/%09/evil.example"])
def test_sign_in_never_redirects_to_another_site(console: Console, next_url: bytes) -> None:
    status, headers, _ = console.post(b"/login", b"token=x&next=" + next_url, FORM)
    assert status == 303
    assert headers["Location"] == "/"


@pytest.mark.parametrize(
    ("target", "extra"),
    [
        (b"/invocations?q=" + b"a" * (1024 * 1024), b""),
        (b"/invocations/inv_" + b"a" * 100_000, b""),
        (b"/invocations?status=\xff\xfe", b""),
        (b"/", b"".join(b"X-H%d: v\r\n" % i for i in range(2000))),
        (b"/", b"X-Big: " + b"v" * 100_000 + b"\r\n"),
    ],
    ids=["1 MB query", "huge id", "non-UTF-8 query", "header flood", "huge header"],
)
def test_a_request_the_server_cannot_read_is_400_without_a_traceback(
    console: Console, target: bytes, extra: bytes
) -> None:
    status, _, body = console.get(target, extra)
    assert status == 400, body[:200]
    assert len(body) < 1000
    console.assert_healthy()


@pytest.mark.parametrize(
    "target",
    [
        b"/static/../../../../etc/passwd",
        b"/static/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        b"/static/%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        b"/static/%2e%2e/_app.py",
    ],
)
def test_nothing_outside_the_static_directory_is_served(console: Console, target: bytes) -> None:
    status, _, body = console.get(target)
    assert status == 404
    assert b"root:" not in body and b"import" not in body
    console.assert_healthy()


@pytest.mark.parametrize(
    "target",
    [
        b"/invocations/%3Cscript%3Ealert(1)%3C%2Fscript%3E",
        b"/invocations/%3Cscript%3Ealert(1)%3C%2Fscript%3E/kill",
        b"/find?id=%3Cscript%3Ealert(1)%3C%2Fscript%3E",
        b"/key?service=%3Cscript%3Ealert(1)%3C%2Fscript%3E&key=k",
    ],
)
def test_what_the_client_sent_is_shown_escaped(console: Console, target: bytes) -> None:
    status, _, body = console.get(target)
    assert status in (200, 400, 404)
    assert b"<script>alert(1)" not in body
    assert b"&lt;script&gt;alert(1)" in body
    console.assert_healthy()


@pytest.mark.parametrize(
    "query",
    [
        *(b"page=-1", b"page=abc", b"status=%zz", b"since=zz", b"page=201", b"page=999999"),
        *(b"page=%C2%B2", b"code=%E2%91%A0"),  # "²", "①": str.isdigit's, not int()'s
    ],
)
def test_bad_filters_are_400_with_a_message(console: Console, query: bytes) -> None:
    status, _, body = console.get(b"/invocations?" + query)
    assert status == 400
    assert b'role="alert"' in body
    console.assert_healthy()


@pytest.mark.parametrize(
    ("start", "expected"),
    [(b"-5", 400), (b"%C2%B2", 400), (b"4294967296", 404), (b"99999999999999999999", 404)],
)
def test_a_journal_start_that_is_no_entry_number_is_400_and_one_past_any_end_is_not_a_500(
    console: Console, start: bytes, expected: int
) -> None:
    # Past a uint32 it is past any journal's end: the lookup goes on (and finds no such
    # invocation here) instead of failing to fit the number into the request.
    status, _, body = console.get(b"/invocations/inv_doesnotexist?start=" + start)
    assert status == expected, body[:500]
    console.assert_healthy()


def test_an_action_on_an_invocation_that_does_not_exist_is_404_before_the_click(
    console: Console,
) -> None:
    # A confirmation page would only fail after the click (the POST is a 404).
    status, _, body = console.get(b"/invocations/inv_doesnotexist/kill")
    assert status == 404
    assert b"inv_doesnotexist" in body
    assert b'name="confirm"' not in body
    console.assert_healthy()


@pytest.mark.parametrize("name", [b"evil.example", b"127.0.0.1.evil.example", b"x"])
def test_a_request_naming_another_host_is_refused(console: Console, name: bytes) -> None:
    # DNS rebinding: a page of another site whose name comes to resolve to 127.0.0.1 is
    # same-origin to the browser, and without a token it paused an invocation.
    for request in (
        b"GET / HTTP/1.1\r\n" + console.host(name) + b"Connection: close\r\n\r\n",
        b"POST /invocations/inv_x/pause HTTP/1.1\r\n"
        + console.host(name)
        + b"Sec-Fetch-Site: same-origin\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
    ):
        status, _, body = console.send(request)
        assert status == 421, body
        assert b"This console answers requests to its own address." in body
    for own in (b"127.0.0.1", b"localhost", b"LOCALHOST", b"localhost.", b"[::1]"):
        status, _, _ = console.send(
            b"GET / HTTP/1.1\r\n" + console.host(own) + b"Connection: close\r\n\r\n"
        )
        assert status == 200, own
    console.assert_healthy()
