"""The web console in a real browser: Debian's headless Chromium driven by Selenium
(`make browser` installs both), against a real broker and the demo services.

Screenshots of each page go to `.data/console-screenshots/`.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from durable.v1 import admin_pb2
from playground import playground_pb2 as pb
from selenium import webdriver
from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select
from trips import trips_pb2

from tests.support import (
    PLAYGROUND,
    PYTHON,
    ROOT,
    SERVICES,
    Cluster,
    Process,
    free_port,
    invocation_id_of,
    running_cluster,
    wait_for,
)

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SHOTS = ROOT / ".data" / "console-screenshots"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,800",
)
TOKEN = "console-test-token"

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="needs Debian's chromium and chromium-driver: run `make browser`",
)


def _browser(profile: Path) -> WebDriver:
    # Selenium must neither download a browser nor phone home: both are given here.
    os.environ.setdefault("SE_OFFLINE", "true")
    os.environ.setdefault("SE_AVOID_STATS", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, str]]:
    port = free_port()
    tmp = tmp_path_factory.mktemp("console")
    with running_cluster(
        tmp,
        services=(*SERVICES, PLAYGROUND),
        broker_args=["--console", f"127.0.0.1:{port}"],
    ) as cluster:
        yield cluster, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    driver = _browser(tmp_path_factory.mktemp("chromium-profile"))
    driver.implicitly_wait(0)
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()


def _shot(driver: WebDriver, name: str) -> None:
    driver.save_screenshot(str(SHOTS / f"{name}.png"))


def _text(driver: WebDriver) -> str:
    return str(driver.find_element(By.TAG_NAME, "body").text)


def _until(driver: WebDriver, predicate: Callable[[], Any], what: str, timeout: float = 20) -> Any:
    def attempt() -> Any:
        try:
            return predicate()
        except (StaleElementReferenceException, NoSuchElementException):
            # The page refreshed a part under us, or is between two pages (a form just
            # submitted): not there yet.
            return None
        except WebDriverException as e:
            # The same, caught by chromedriver mid-navigation (about 1 run in 10).
            if "does not belong to the document" not in str(e):
                raise
            return None

    return wait_for(
        attempt, timeout=timeout, interval=0.1, message=lambda: f"{what}:\n{_text(driver)}"
    )


def _http(
    url: str, data: dict[str, str] | None = None, headers: dict[str, str] | None = None
) -> tuple[int, str]:
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    request = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_find_a_failed_saga_and_read_its_timeline(
    console: tuple[Cluster, str], browser: WebDriver
) -> None:
    cluster, base = console
    cluster.trips.Reserve(trips_pb2.ReserveTripRequest(), timeout=60)
    with pytest.raises(grpc.RpcError) as failed:
        cluster.trips.Reserve(trips_pb2.ReserveTripRequest(run_type="failPayment"), timeout=60)
    message = str(failed.value.details())

    browser.get(base + "/")
    _until(browser, lambda: "trips.Trips" in _text(browser), "the overview")
    assert "succeeded" in _text(browser) and "virtual object" in _text(browser)
    _shot(browser, "overview")

    browser.get(base + "/invocations")
    Select(browser.find_element(By.NAME, "service")).select_by_value("trips.Trips")
    Select(browser.find_element(By.NAME, "status")).select_by_value("failed")
    browser.find_element(By.CSS_SELECTOR, "form.filters button[type=submit]").click()
    # Until the filtered page is the one loaded, the rows found are the unfiltered page's
    # (CI once counted 13 of them).
    rows = _until(
        browser,
        lambda: (
            "status=failed" in browser.current_url
            and browser.find_elements(By.CSS_SELECTOR, "table.invocations tbody tr")
        ),
        "the failed trip listed",
    )
    assert len(rows) == 1 and "failed" in rows[0].text
    _shot(browser, "invocations")
    rows[0].find_element(By.CSS_SELECTOR, "a.mono").click()

    _until(
        browser, lambda: browser.find_elements(By.CSS_SELECTOR, "ol.timeline li"), "the timeline"
    )
    text = _text(browser)
    assert message in text, "the saga's error is shown"
    assert "successfully applied 3 compensations" in text
    calls = [
        e.find_element(By.CSS_SELECTOR, ".name").text
        for e in browser.find_elements(By.CSS_SELECTOR, "li.k-call")
    ]
    for step in ("flights.Flights/Reserve", "cars.Cars/Reserve", "payments.Payments/Process"):
        assert step in calls
    # The compensations, in reverse order, after the failed payment.
    compensations = [c for c in calls if c.endswith(("/Cancel", "/Refund"))]
    assert compensations == [
        "payments.Payments/Refund",
        "cars.Cars/Cancel",
        "flights.Flights/Cancel",
    ]
    failed_steps = browser.find_elements(By.CSS_SELECTOR, "li.step.failed")
    assert any("payments.Payments/Process" in s.text for s in failed_steps)
    assert browser.find_elements(By.CSS_SELECTOR, "li.k-input pre"), "the request, decoded"
    assert '"run_type": "failPayment"' in text
    _shot(browser, "invocation")
    browser.execute_script("document.getElementById('entry-3').scrollIntoView()")
    _shot(browser, "invocation-timeline")

    browser.set_window_size(390, 844)  # a phone
    _shot(browser, "invocation-phone")
    browser.get(base + "/invocations?service=trips.Trips")
    _shot(browser, "invocations-phone")
    browser.set_window_size(1280, 800)


def _suspended_await(cluster: Cluster) -> tuple[grpc.Future, str]:  # type: ignore[type-arg]
    future = cluster.waiter.Await.future(pb.AwaitRequest(), timeout=120)
    inv = wait_for(
        lambda: next(
            iter(cluster.invocations(status="SUSPENDED", service="playground.Waiter")), None
        ),
        message="a suspended Await",
    )
    return future, inv.id


def test_cancel_a_suspended_invocation_from_its_page(
    console: tuple[Cluster, str], browser: WebDriver
) -> None:
    cluster, base = console
    future, invocation_id = _suspended_await(cluster)
    browser.get(f"{base}/invocations/{invocation_id}")
    _until(browser, lambda: "suspended" in _text(browser), "the suspended status")
    assert "suspended here: waiting" in _text(browser)
    browser.find_element(By.CSS_SELECTOR, "a.button.cancel").click()
    _until(browser, lambda: "Yes, cancel it" in _text(browser), "the confirmation")
    assert cluster.invocation(invocation_id).status == 3, "nothing happens before confirming"
    browser.find_element(By.CSS_SELECTOR, "button.danger").click()
    _until(browser, lambda: "cancel: done" in _text(browser), "the action's result")
    # The page refreshes itself while the invocation runs: no reload needed.
    _until(
        browser,
        lambda: browser.find_element(By.CSS_SELECTOR, ".facts .badge").text == "failed",
        "the failed status",
    )
    assert "Failed with CANCELLED" in _text(browser)
    with pytest.raises(grpc.RpcError) as e:
        future.result(timeout=30)
    assert e.value.code() == grpc.StatusCode.CANCELLED


def test_resolve_an_awakeable_with_a_json_editor(
    console: tuple[Cluster, str], browser: WebDriver
) -> None:
    cluster, base = console
    future, invocation_id = _suspended_await(cluster)
    awakeable_id = wait_for(lambda: cluster.awakeable_id(invocation_id), message="the awakeable")
    browser.get(base + "/awaiting")
    row = _until(
        browser,
        lambda: [
            r
            for r in browser.find_elements(By.CSS_SELECTOR, "table.awaiting tbody tr")
            if awakeable_id in r.text
        ],
        "the awakeable listed",
    )[0]
    editor = row.find_element(By.CSS_SELECTOR, "textarea[data-json]")
    editor.send_keys('{"approved": true, "by": "console"}')
    _shot(browser, "awaiting")
    editor.clear()
    editor.send_keys("{not json")
    assert "Not valid JSON" in row.find_element(By.CSS_SELECTOR, ".json-error").text
    row.find_element(By.XPATH, ".//button[text()='Resolve']").click()
    assert not future.done(), "an invalid value is not sent"
    editor.clear()
    editor.send_keys('{"approved": true, "by": "console"}')
    row.find_element(By.XPATH, ".//button[text()='Resolve']").click()
    assert json.loads(future.result(timeout=60).text) == {"approved": True, "by": "console"}
    _until(browser, lambda: "resolved" in _text(browser), "the confirmation")


def test_edit_a_key_state_and_refuse_malformed_json(
    console: tuple[Cluster, str], browser: WebDriver
) -> None:
    cluster, base = console
    cluster.counter.Add(pb.AddRequest(name="console-key", amount=3), timeout=30)

    def state() -> dict[str, bytes]:
        response = cluster.admin.GetState(
            admin_pb2.GetStateRequest(service="playground.Counter", key="console-key"), timeout=10
        )
        return dict(response.state)

    browser.get(base + "/key?service=playground.Counter&key=console-key")
    _until(browser, lambda: "State (2 values)" in _text(browser), "the state")
    _shot(browser, "key")
    before = state()
    # Malformed JSON is refused by the server too (here without the page's script).
    status, body = _http(
        base + "/state",
        {
            "service": "playground.Counter",
            "key": "console-key",
            "name": "total",
            "value": "{nope",
            "op": "set",
        },
    )
    assert status == 400 and "not valid JSON" in body
    assert state() == before
    form = browser.find_element(By.XPATH, "//form[.//input[@name='name' and @value='total']]")
    editor = form.find_element(By.TAG_NAME, "textarea")
    editor.clear()
    editor.send_keys("42")
    form.find_element(By.XPATH, ".//button[@value='set']").click()
    _until(browser, lambda: state()["total"] == b"42", "the new value stored")
    assert cluster.counter.Get(pb.CounterRef(name="console-key"), timeout=30).number == 42


def test_a_key_with_a_line_break_is_edited_where_it_is(
    console: tuple[Cluster, str], browser: WebDriver
) -> None:
    # Browsers post a hidden field's line break as CR LF: an attack's Set on key "a\nb"
    # wrote a new key "a\r\nb" and left the shown one as it was.
    cluster, base = console
    key = "line\nbreak"
    cluster.counter.Add(pb.AddRequest(name=key, amount=3), timeout=30)

    def state(of: str) -> dict[str, bytes]:
        response = cluster.admin.GetState(
            admin_pb2.GetStateRequest(service="playground.Counter", key=of), timeout=10
        )
        return dict(response.state)

    query = urllib.parse.urlencode({"service": "playground.Counter", "key": key})
    browser.get(f"{base}/key?{query}")
    _until(browser, lambda: "State (2 values)" in _text(browser), "the state")
    form = browser.find_element(By.XPATH, "//form[.//input[@name='name' and @value='total']]")
    editor = form.find_element(By.TAG_NAME, "textarea")
    editor.clear()
    editor.send_keys("77")
    form.find_element(By.XPATH, ".//button[@value='set']").click()
    _until(browser, lambda: state(key).get("total") == b"77", "the new value on the key shown")
    assert state("line\r\nbreak") == {}


def test_a_completed_invocation_is_purged_from_its_page(console: tuple[Cluster, str]) -> None:
    cluster, base = console
    _, call = cluster.trips.Reserve.with_call(trips_pb2.ReserveTripRequest(), timeout=60)
    invocation_id = invocation_id_of(call)
    status, body = _http(f"{base}/invocations/{invocation_id}")
    assert status == 200 and f'href="/invocations/{invocation_id}/purge"' in body
    assert f'href="/invocations/{invocation_id}/kill"' not in body  # it completed
    status, body = _http(f"{base}/invocations/{invocation_id}/purge", {"confirm": "yes"})
    # Its page went with it: the answer is the list, saying what was done.
    assert status == 200 and f"purged {invocation_id}" in body and "<h1>Invocations" in body
    status, _ = _http(f"{base}/invocations/{invocation_id}")
    assert status == 404
    with pytest.raises(grpc.RpcError) as gone:
        cluster.describe(invocation_id)
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND


def test_malformed_input_gets_a_clear_message_and_changes_nothing(
    console: tuple[Cluster, str],
) -> None:
    cluster, base = console
    for query, words in (
        ("status=bogus", "unknown status"),
        ("since=yesterday-ish", "is not a time"),
        ("code=NOPE", "unknown failure code"),
        ("page=-1", "not a page number"),
    ):
        status, body = _http(f"{base}/invocations?{query}")
        assert status == 400 and words in body, query
    future, invocation_id = _suspended_await(cluster)
    status, body = _http(f"{base}/invocations/{invocation_id}/kill", {})
    assert status == 400 and "Yes, kill it" in body, "an unconfirmed action asks again"
    status, _ = _http(f"{base}/invocations/{invocation_id}/explode", {"confirm": "yes"})
    assert status == 404
    status, body = _http(
        f"{base}/invocations/{invocation_id}/kill",
        {"confirm": "yes"},
        {"Origin": "http://evil.example"},
    )
    assert status == 403, "a cross-site form cannot act"
    assert cluster.invocation(invocation_id).status == 3
    awakeable_id = wait_for(lambda: cluster.awakeable_id(invocation_id), message="the awakeable")
    status, body = _http(
        base + "/awakeables/resolve", {"awakeable_id": awakeable_id, "value": "NaN"}
    )
    assert status == 400 and "not valid JSON" in body
    status, body = _http(base + "/awakeables/reject", {"awakeable_id": awakeable_id, "reason": " "})
    assert status == 400 and "Give a reason" in body
    status, body = _http(base + "/awakeables/resolve", {"awakeable_id": "awk_nope", "value": "1"})
    assert status == 400 and "is not an awakeable id" in body
    status, body = _http(
        base + "/promises/resolve",
        {"service": "trips.Trips", "key": "k", "name": "p", "value": "1"},
    )
    assert status == 404 and "not a registered workflow" in body
    status, body = _http(base + "/invocations/inv_missing")
    assert status == 404 and "no invocation" in body
    assert cluster.invocation(invocation_id).status == 3, "still suspended"
    cluster.resolve_awakeable(awakeable_id, 1)
    assert future.result(timeout=60).text == "1"


def test_with_an_admin_token_the_console_asks_for_it(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    port = free_port()
    make_cluster(
        services=(), broker_args=["--admin-token", TOKEN, "--console", f"127.0.0.1:{port}"]
    )
    base = f"http://127.0.0.1:{port}"
    for path in ("/", "/invocations", "/awaiting", "/invocations/rows"):
        status, body = _http(base + path)
        assert status == 401 and "Admin token needed" in body and "Overview</h1>" not in body
    status, _ = _http(base + "/", headers={"Authorization": "Bearer wrong"})
    assert status == 401
    status, body = _http(base + "/", headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and "Overview</h1>" in body
    # A stale cookie does not hide a right header (it answered 401).
    stale = {"Cookie": "broker_console_token=old", "Authorization": f"Bearer {TOKEN}"}
    status, body = _http(base + "/", headers=stale)
    assert status == 200 and "Overview</h1>" in body
    driver = _browser(tmp_path / "profile")
    try:
        driver.get(base + "/invocations")
        assert "Admin token needed" in _text(driver)
        _shot(driver, "login")
        driver.find_element(By.NAME, "token").send_keys("not it")
        driver.find_element(By.CSS_SELECTOR, "main button[type=submit]").click()
        _until(driver, lambda: "That is not the admin token" in _text(driver), "the refusal")
        driver.find_element(By.NAME, "token").send_keys(TOKEN)
        driver.find_element(By.CSS_SELECTOR, "main button[type=submit]").click()
        _until(driver, lambda: "Filter" in _text(driver), "the invocations page")
        cookie = driver.get_cookie("broker_console_token")
        assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    finally:
        driver.quit()


def test_more_malformed_forms(console: tuple[Cluster, str]) -> None:
    cluster, base = console
    status, body = _http(
        base + "/promises/resolve",
        {"service": "playground.Signup", "key": "bob", "name": "verified", "value": "{x"},
    )
    assert status == 400 and "not valid JSON" in body
    status, body = _http(
        base + "/promises/reject",
        {"service": "playground.Signup", "key": "bob", "name": "verified"},
    )
    assert status == 400 and "Give a reason" in body
    status, body = _http(
        base + "/state", {"service": "playground.Counter", "key": "k", "name": " ", "op": "set"}
    )
    assert status == 400 and "Give the state value&#x27;s name" in body
    status, body = _http(
        base + "/state",
        {"service": "playground.Counter", "key": "k", "name": "n", "value": "1", "op": "drop"},
    )
    assert status == 400 and "Unknown operation" in body
    status, body = _http(base + "/find?id=hello")
    assert status == 400 and "neither an invocation id" in body
    status, body = _http(base + "/key?service=playground.Counter")
    assert status == 400 and "Give a service and a key" in body
    response = cluster.admin.DescribeKey(
        admin_pb2.DescribeKeyRequest(service="playground.Counter", key="k"), timeout=10
    )
    assert dict(response.state) == {}, "nothing was written"
    status, _ = _http(
        base + "/promises/resolve",
        {"service": "playground.Signup", "key": "bob", "name": "verified", "value": "1"},
        {"Sec-Fetch-Site": "cross-site"},
    )
    assert status == 403


def test_keyboard_reaches_the_content_first(
    console: tuple[Cluster, str], browser: WebDriver
) -> None:
    _, base = console
    browser.get(base + "/invocations")
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
    assert browser.switch_to.active_element.text == "Skip to content"
    browser.switch_to.active_element.send_keys(Keys.ENTER)
    assert browser.current_url.endswith("#main")
    # Every control of the filters is a labelled, focusable form element.
    for element in browser.find_elements(
        By.CSS_SELECTOR, "form.filters input, form.filters select"
    ):
        assert element.find_element(By.XPATH, "./ancestor::label").text.strip()


def test_console_over_tls(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    port = free_port()
    args = [PYTHON, "-m", "broker", "--data-dir", str(tmp_path / "data")]
    args += ["--ingress", f"127.0.0.1:{free_port()}", "--admin", f"127.0.0.1:{free_port()}"]
    args += ["--tls-cert", str(cert), "--tls-key", str(key), "--console", f"127.0.0.1:{port}"]
    args += ["--admin-token", TOKEN]
    broker = Process("broker", args, tmp_path / "broker.log").start()
    try:
        context = ssl.create_default_context(cafile=str(cert))

        def get(headers: dict[str, str]) -> tuple[int, str]:
            broker.check_alive()
            request = urllib.request.Request(f"https://127.0.0.1:{port}/", headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=5, context=context) as response:
                    return response.status, response.read().decode()
            except urllib.error.HTTPError as e:
                return e.code, e.read().decode()
            except urllib.error.URLError:
                return 0, ""  # not listening yet

        status, body = wait_for(lambda: get({}) if get({})[0] else None, message="the console")
        assert status == 401 and "Admin token needed" in body
        status, body = get({"Authorization": f"Bearer {TOKEN}"})
        assert status == 200 and "Overview</h1>" in body
        # No plain HTTP on the TLS port.
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)
    finally:
        assert broker.terminate() == 0


def test_a_retried_step_shows_its_attempts_and_error(
    console: tuple[Cluster, str], browser: WebDriver
) -> None:
    cluster, base = console
    _, call = cluster.trips.Reserve.with_call(
        trips_pb2.ReserveTripRequest(run_type="flakyPayment"), timeout=60
    )
    invocation_id = invocation_id_of(call)
    browser.get(f"{base}/invocations/{invocation_id}")
    step = _until(
        browser,
        lambda: [
            s
            for s in browser.find_elements(By.CSS_SELECTOR, "li.k-call")
            if "payments.Payments/Process" in s.text
        ],
        "the payment step",
    )[0]
    payment = cluster.invocation(step.find_element(By.CSS_SELECTOR, "a.mono").text)
    assert payment.attempts == 3
    assert "after 3 attempts; an attempt failed:" in step.text
    assert payment.last_error[:50] in step.text


def test_the_list_updates_itself(console: tuple[Cluster, str], browser: WebDriver) -> None:
    cluster, base = console
    future, invocation_id = _suspended_await(cluster)
    browser.get(f"{base}/invocations?service=playground.Waiter&status=suspended")
    _until(browser, lambda: invocation_id in _text(browser), "the suspended invocation listed")
    cluster.resolve_awakeable(cluster.awakeable_id(invocation_id), "done")
    assert future.result(timeout=60).text == '"done"'
    # No reload: the page fetches its rows again every few seconds.
    _until(browser, lambda: invocation_id not in _text(browser), "the row gone", timeout=15)
    assert "No invocation matches these filters" in _text(browser)
