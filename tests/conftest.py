"""Shared fixtures: a running cluster (broker + the four demo services) per test module.

The repository root goes on `sys.path` so that tests import their helpers as
`tests.support` however pytest was started.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pluggy
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests import support  # noqa: E402


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pluggy.Result[pytest.TestReport], None]:
    """Attaches the log tail of every running process to a failing test's report."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for cluster in support.LIVE_CLUSTERS:
            for process in cluster.processes():
                report.sections.append((f"log tail: {process.name}", process.log_tail(60)))


@pytest.fixture(scope="module")
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[support.Cluster]:
    """A started cluster shared by the module's tests; stopped however they end.

    Parametrize it indirectly with the broker's `--suspend-after` (default "1s"):
    `@pytest.mark.parametrize("cluster", ["0", "1s"], indirect=True)`, or with a dict of
    `Cluster` keyword arguments.
    """
    param = getattr(request, "param", "1s")
    kwargs = param if isinstance(param, dict) else {"suspend_after": param}
    tmp = tmp_path_factory.mktemp("cluster")
    with support.running_cluster(tmp, **kwargs) as running:
        yield running


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Callable[..., support.Cluster]]:
    """A factory of started clusters private to the test: `make_cluster(suspend_after="0")`.

    Every cluster it made is stopped at teardown, whatever the test did to its processes.
    """
    clusters: list[support.Cluster] = []

    def make(**kwargs: Any) -> support.Cluster:
        made = support.Cluster(tmp_path / f"cluster{len(clusters)}", **kwargs)
        clusters.append(made)
        return made.start()

    yield make
    errors = []
    for made in clusters:
        try:
            made.close()
        except AssertionError as e:
            errors.append(str(e))
    assert not errors, "\n".join(errors)
