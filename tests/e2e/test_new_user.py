"""The README's "Your own project", done by a new user in an empty folder.

Builds the SDK and broker wheels (`tools/dist.py`, what `make dist` runs) into a
temporary directory, installs them into a fresh venv in an empty project folder (the
dependencies come from the package index or pip's cache), and there, with no path into
this checkout other than the wheels and the grpcurl binary: writes a contract and its
handlers (a virtual object whose handler calls another service, a `ctx.run`, a
`ctx.sleep`), generates the stubs with `python -m durable.codegen`, starts the installed
broker, serves the handlers with `durable.serve`, registers them with the installed
`brokerctl`, calls them with grpcurl, and runs the project's own `durable.testing` test
with the venv's pytest.

The venv is built once per module (about a minute, most of it pip); each test then takes
seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import support

# Building and installing into a new venv is slow on a busy 2-core machine.
pytestmark = pytest.mark.timeout(600)

SHOP_PROTO = """\
syntax = "proto3";
package shop;
import "durable/v1/options.proto";

// Prices items; a side effect looks the price up.
service Pricing {
  rpc Quote(QuoteRequest) returns (Price);
}

// One cart per cart id, its total kept as durable state.
service Cart {
  option (durable.v1.service_kind) = VIRTUAL_OBJECT;
  rpc Add(AddRequest) returns (CartTotal);
  rpc Total(CartRef) returns (CartTotal) { option (durable.v1.handler_kind) = SHARED; }
}

message QuoteRequest { string sku = 1; int64 quantity = 2; }
message Price { int64 cents = 1; }
message AddRequest {
  string cart_id = 1 [(durable.v1.key) = true];
  string sku = 2;
  int64 quantity = 3;
}
message CartRef { string cart_id = 1 [(durable.v1.key) = true]; }
message CartTotal { int64 cents = 1; }
"""

APP_PY = '''\
"""The shop's handlers; `python app.py HOST:PORT` serves them."""

import sys

import durable
import grpc
from shop import shop_pb2 as pb
from shop.shop_durable import CartServicer, PricingClient, PricingServicer

PRICES = {"apple": 30, "pear": 45}


class Pricing(PricingServicer):
    async def Quote(self, ctx: durable.Context, request: pb.QuoteRequest) -> pb.Price:
        unit = await ctx.run("look up price", lambda: PRICES.get(request.sku, 0))
        if not unit:
            raise durable.TerminalError(f"no price for {request.sku!r}", grpc.StatusCode.NOT_FOUND)
        return pb.Price(cents=unit * request.quantity)


class Cart(CartServicer):
    async def Add(self, ctx: durable.ObjectContext, request: pb.AddRequest) -> pb.CartTotal:
        quote = await PricingClient(ctx).Quote(
            pb.QuoteRequest(sku=request.sku, quantity=request.quantity)
        )
        await ctx.sleep(0.05)  # a durable timer
        total = await ctx.get("cents", 0) + quote.cents
        ctx.set("cents", total)
        return pb.CartTotal(cents=total)

    async def Total(self, ctx: durable.ObjectSharedContext, request: pb.CartRef) -> pb.CartTotal:
        return pb.CartTotal(cents=await ctx.get("cents", 0))


if __name__ == "__main__":
    durable.serve([Pricing(), Cart()], sys.argv[1])
'''

TEST_SHOP_PY = """\
import grpc
import pytest
from durable.testing import DurableTestEnvironment
from shop import shop_pb2 as pb
from shop import shop_pb2_grpc

from app import Cart, Pricing


def test_cart_adds_priced_items() -> None:
    with DurableTestEnvironment([Pricing(), Cart()]) as env:
        cart = shop_pb2_grpc.CartStub(env.channel())
        cart.Add(pb.AddRequest(cart_id="c1", sku="apple", quantity=2), timeout=30)
        cart.Add(pb.AddRequest(cart_id="c1", sku="pear", quantity=1), timeout=30)
        assert cart.Total(pb.CartRef(cart_id="c1"), timeout=30).cents == 105


def test_unknown_item_is_terminal() -> None:
    with DurableTestEnvironment([Pricing(), Cart()]) as env:
        cart = shop_pb2_grpc.CartStub(env.channel())
        with pytest.raises(grpc.RpcError) as failure:
            cart.Add(pb.AddRequest(cart_id="c2", sku="plum", quantity=1), timeout=30)
        assert failure.value.code() == grpc.StatusCode.NOT_FOUND
"""

# The project's own settings: pytest finds the generated modules and `app` (see README).
PYPROJECT = """\
[tool.pytest.ini_options]
pythonpath = ["gen", "."]
"""


@dataclass
class Project:
    """The user's folder and the venv the wheels went into."""

    root: Path
    venv: Path
    env: dict[str, str]
    logs: Path

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Runs a command in the project folder, as the user's shell would."""
        return subprocess.run(
            list(args),
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def _clean_env() -> dict[str, str]:
    """This environment without anything that points into this checkout or its venv."""
    root = str(support.ROOT)
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if not p.startswith(root)]
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME") and root not in v
    }
    return {**env, "PATH": os.pathsep.join(path), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def _check(result: subprocess.CompletedProcess[str], what: str) -> None:
    assert result.returncode == 0, (
        f"{what} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    """Wheels built, a venv with them installed, and the shop's sources written."""
    started = time.monotonic()
    wheels = tmp_path_factory.mktemp("wheels")
    build = subprocess.run(
        [sys.executable, str(support.ROOT / "tools" / "dist.py"), "--outdir", str(wheels)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    _check(build, "tools/dist.py")
    root = tmp_path_factory.mktemp("shop")
    env = _clean_env()
    venv = root / ".venv"
    project = Project(root, venv, env, tmp_path_factory.mktemp("logs"))
    _check(project.run("python3", "-m", "venv", str(venv)), "python3 -m venv")
    wheel_files = sorted(str(w) for w in wheels.glob("*.whl"))
    assert len(wheel_files) == 2, wheel_files
    # This run's pytest release: already in pip's cache, and the same behaviour.
    pytest_pin = f"pytest=={pytest.__version__}"
    install = project.run(project.python, "-m", "pip", "install", "-q", *wheel_files, pytest_pin)
    _check(install, "pip install")
    (root / "proto" / "shop").mkdir(parents=True)
    (root / "proto" / "shop" / "shop.proto").write_text(SHOP_PROTO)
    (root / "app.py").write_text(APP_PY)
    (root / "test_shop.py").write_text(TEST_SHOP_PY)
    (root / "pyproject.toml").write_text(PYPROJECT)
    print(f"new-user venv ready in {time.monotonic() - started:.1f} s")
    yield project


def test_installed_packages_are_the_wheels_and_not_the_demo(project: Project) -> None:
    probe = textwrap.dedent("""\
        import importlib.util, json, broker, durable, durable.v1.options_pb2
        print(json.dumps({
            "durable": durable.__file__, "broker": broker.__file__,
            "services": importlib.util.find_spec("services") is not None,
        }))
    """)
    result = project.run(project.python, "-c", probe)
    _check(result, "importing the installed packages")
    found = json.loads(result.stdout)
    site = str(project.venv)
    assert found["durable"].startswith(site) and found["broker"].startswith(site), found
    assert not found["services"], "the demo services must not be installed"
    assert (project.venv / "bin" / "brokerctl").exists()
    # Building left nothing in the checkout.
    assert not (support.ROOT / "build").exists()
    assert not (support.ROOT / "sdk_python" / "build").exists()


def test_codegen_then_broker_serve_register_call_and_own_tests(project: Project) -> None:
    generated = project.run(
        project.python, "-m", "durable.codegen", "-I", "proto", "--out", "gen",
        "proto/shop/shop.proto",
    )  # fmt: skip
    _check(generated, "durable.codegen")
    for name in ("shop_pb2.py", "shop_pb2.pyi", "shop_pb2_grpc.py", "shop_durable.py"):
        assert (project.root / "gen" / "shop" / name).is_file(), name

    ingress, admin, endpoint = (f"127.0.0.1:{support.free_port()}" for _ in range(3))
    broker = support.Process(
        "broker",
        [project.python, "-m", "broker", "--ingress", ingress, "--admin", admin,
         "--data-dir", str(project.root / ".data" / "broker")],
        project.logs / "broker.log",
        cwd=project.root,
        env=project.env,
    )  # fmt: skip
    service = support.Process(
        "shop",
        [project.python, "app.py", endpoint],
        project.logs / "shop.log",
        cwd=project.root,
        env={**project.env, "PYTHONPATH": "gen"},
    )
    try:
        broker.start()
        service.start()
        deadline = time.monotonic() + support.STARTUP_TIMEOUT_S
        support.wait_healthy(ingress, deadline, broker)
        support.wait_healthy(admin, deadline, broker)
        support.wait_healthy(endpoint, deadline, service)

        brokerctl = str(project.venv / "bin" / "brokerctl")
        registered = project.run(
            brokerctl, "--admin", admin, "deployments", "register", f"http://{endpoint}"
        )
        _check(registered, "brokerctl deployments register")

        def grpcurl(method: str, body: dict[str, object]) -> subprocess.CompletedProcess[str]:
            return project.run(
                str(support.GRPCURL), "-plaintext", "-max-time", "60",
                "-d", json.dumps(body), ingress, method, timeout=90,
            )  # fmt: skip

        added = grpcurl("shop.Cart/Add", {"cart_id": "c1", "sku": "apple", "quantity": 3})
        _check(added, "grpcurl shop.Cart/Add")
        assert support.grpcurl_json(added.stdout) == {"cents": "90"}
        total = grpcurl("shop.Cart/Total", {"cart_id": "c1"})
        _check(total, "grpcurl shop.Cart/Total")
        assert support.grpcurl_json(total.stdout) == {"cents": "90"}
        unknown = grpcurl("shop.Cart/Add", {"cart_id": "c1", "sku": "plum", "quantity": 1})
        assert support.parse_grpcurl_error(unknown.stderr) == ("NotFound", "no price for 'plum'")
    except BaseException as e:
        e.add_note(broker.log_tail(60) + "\n" + service.log_tail(60))
        raise
    finally:
        service.terminate()
        broker.terminate()

    tested = project.run(project.python, "-m", "pytest", "-q", "-p", "no:cacheprovider")
    _check(tested, "the project's own pytest")
    assert "2 passed" in tested.stdout


def test_codegen_errors_are_clear(project: Project) -> None:
    missing = project.run(
        project.python, "-m", "durable.codegen", "-I", "proto", "--out", "gen",
        "proto/shop/missing.proto",
    )  # fmt: skip
    assert missing.returncode == 2
    assert "proto/shop/missing.proto: no such file" in missing.stderr
    bad = 'syntax = "proto3";\nmessage X { y z = 1; }\n'
    (project.root / "proto" / "bad.proto").write_text(bad)
    broken = project.run(
        project.python, "-m", "durable.codegen", "-I", "proto", "--out", "gen", "proto/bad.proto"
    )
    assert broken.returncode == 1
    assert 'bad.proto:2:13: "y" is not defined.' in broken.stderr
