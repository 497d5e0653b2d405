"""`python -m durable.codegen` in a folder of the user's own, outside this repository.

Runs the real command (protoc from grpcio-tools, the real plugin) with no virtualenv on
`PATH` and no `-I` into this checkout: `durable/v1/options.proto` must come from the SDK.
The installed-wheel variant of the same path is `tests/e2e/test_new_user.py`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import support

SHOP_PROTO = """\
syntax = "proto3";
package shop;
import "durable/v1/options.proto";
import "google/protobuf/empty.proto";
import "shop/money.proto";

service Cart {
  option (durable.v1.service_kind) = VIRTUAL_OBJECT;
  rpc Add(AddRequest) returns (money.Cents);
  rpc Clear(CartRef) returns (google.protobuf.Empty);
}
message AddRequest { string cart_id = 1 [(durable.v1.key) = true]; int64 cents = 2; }
message CartRef { string cart_id = 1 [(durable.v1.key) = true]; }
"""
MONEY_PROTO = """\
syntax = "proto3";
package money;
message Cents { int64 cents = 1; }
"""


def codegen(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Runs the command as a user would, with a `PATH` that has no virtualenv on it."""
    entries = os.environ.get("PATH", "").split(os.pathsep)
    path = os.pathsep.join(p for p in entries if not p.startswith(str(support.ROOT)))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(
        [sys.executable, "-m", "durable.codegen", *args],
        cwd=cwd,
        env={**env, "PATH": path},
        capture_output=True,
        text=True,
        timeout=120,
    )


def generated_python(project: Path, gen: Path, code: str) -> subprocess.CompletedProcess[str]:
    """Runs `code` in a fresh interpreter with `gen` on the path, as the user's app would."""
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=project,
        env={**os.environ, "PYTHONPATH": str(gen)},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A user's repository: `proto/shop/shop.proto` and `proto/shop/money.proto`."""
    (tmp_path / "proto" / "shop").mkdir(parents=True)
    (tmp_path / "proto" / "shop" / "shop.proto").write_text(SHOP_PROTO)
    (tmp_path / "proto" / "shop" / "money.proto").write_text(MONEY_PROTO)
    return tmp_path


def test_lays_out_modules_by_path_under_the_include(project: Path) -> None:
    result = codegen(
        project, "-I", "proto", "--out", "gen/py", "proto/shop/shop.proto", "proto/shop/money.proto"
    )
    assert result.returncode == 0, result.stderr
    out = project / "gen" / "py"
    for name in ("shop_pb2.py", "shop_pb2.pyi", "shop_pb2_grpc.py", "shop_durable.py"):
        assert (out / "shop" / name).is_file(), name
    assert (out / "shop" / "money_pb2.py").is_file()
    # No service in money.proto: no durable stubs for it.
    assert not (out / "shop" / "money_durable.py").exists()
    assert (out / "shop" / "__init__.py").is_file()
    assert not (out / "__init__.py").exists(), "the out dir is an import root, not a package"
    durable_module = (out / "shop" / "shop_durable.py").read_text()
    assert "class CartServicer(durable.Servicer)" in durable_module
    assert "durable.ObjectContext" in durable_module


def test_generated_modules_import_with_out_dir_on_the_path(project: Path) -> None:
    assert codegen(project, "-I", "proto", "--out", "gen", "proto/shop/shop.proto").returncode == 0
    assert codegen(project, "-I", "proto", "--out", "gen", "proto/shop/money.proto").returncode == 0
    check = (
        "from shop import shop_durable, shop_pb2; "
        "assert shop_durable.CartServicer.SERVICE_DESCRIPTOR.full_name == 'shop.Cart'; "
        "print(shop_pb2.AddRequest(cart_id='c').cart_id)"
    )
    result = generated_python(project, project / "gen", check)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "c"


def test_vendored_google_and_grpc_protos_leave_the_installed_packages_visible(
    project: Path,
) -> None:
    # A team vendoring google/api/*.proto (or grpc's health.proto) got gen/google/ and
    # gen/grpc/ made regular packages, which hid google.protobuf and grpcio: every
    # generated module failed to import (an attack found it).
    (project / "proto" / "google" / "api").mkdir(parents=True)
    (project / "proto" / "google" / "api" / "note.proto").write_text(
        'syntax = "proto3";\npackage google.api;\nmessage Note { string text = 1; }\n'
    )
    (project / "proto" / "grpc" / "health" / "v1").mkdir(parents=True)
    (project / "proto" / "grpc" / "health" / "v1" / "probe.proto").write_text(
        'syntax = "proto3";\npackage grpc.health.v1;\nmessage Probe { string name = 1; }\n'
    )
    files = ("proto/google/api/note.proto", "proto/grpc/health/v1/probe.proto")
    shop = ("proto/shop/shop.proto", "proto/shop/money.proto")
    result = codegen(project, "-I", "proto", "--out", "gen", *shop, *files)
    assert result.returncode == 0, result.stderr
    gen = project / "gen"
    assert not list(gen.glob("google/**/__init__.py")) and not list(gen.glob("grpc/**/__init__.py"))
    assert (gen / "shop" / "__init__.py").is_file()
    # (grpcio's `grpc` is a regular package: modules under gen/grpc are not importable
    # as grpc.* whatever codegen does, as with protoc; grpcio must stay importable.)
    check = (
        "import grpc, google.protobuf; from google.api import note_pb2; "
        "from shop import shop_durable; "
        "print(grpc.StatusCode.OK.name, note_pb2.Note(text='t').text)"
    )
    imported = generated_python(project, gen, check)
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.split() == ["OK", "t"]


def test_names_the_generated_module_cannot_hold_are_refused_by_name(project: Path) -> None:
    # They generated code that did not compile, or whose client silently lost its
    # send() or SERVICE to a method of that name (calls then failed at run time only).
    (project / "proto" / "odd").mkdir()
    (project / "proto" / "odd" / "odd.proto").write_text(
        'syntax = "proto3";\npackage odd;\n'
        "service Kv { rpc send(R) returns (R); rpc async(R) returns (R);"
        " rpc Get(R) returns (R); }\n"
        "service Tally { rpc Do(R) returns (R); }\n"
        "service TallySend { rpc Do(R) returns (R); }\n"
        "message R { string a = 1; }\n"
    )
    result = codegen(project, "-I", "proto", "--out", "gen", "proto/odd/odd.proto")
    assert result.returncode == 1
    assert "method Kv.send: 'send' is a Python keyword or a member" in result.stderr
    assert "method Kv.async:" in result.stderr and "Kv.Get" not in result.stderr
    assert "services Tally and TallySend would both generate class TallySendClient" in (
        result.stderr
    )


def test_streaming_methods_and_keyword_directories_are_refused_by_name(project: Path) -> None:
    # Both exited 0: a streaming method got a unary client and servicer (serve then died
    # with a traceback, or the broker refused the service), and `acme/import/v1.proto`
    # made `from acme.import import v1_pb2`, a SyntaxError.
    (project / "proto" / "feed").mkdir()
    (project / "proto" / "feed" / "feed.proto").write_text(
        'syntax = "proto3";\npackage feed;\n'
        "service Feed { rpc Watch(Q) returns (stream Q); rpc Get(Q) returns (Q);"
        " rpc Push(stream Q) returns (Q); }\n"
        "message Q { string a = 1; }\n"
    )
    result = codegen(project, "-I", "proto", "--out", "gen", "proto/feed/feed.proto")
    assert result.returncode == 1
    assert "method Feed.Watch streams; durable handlers are unary" in result.stderr
    assert "method Feed.Push streams" in result.stderr and "Feed.Get" not in result.stderr
    assert not (project / "gen" / "feed" / "feed_durable.py").exists()

    (project / "proto" / "acme" / "import").mkdir(parents=True)
    (project / "proto" / "acme" / "import" / "v1.proto").write_text(
        'syntax = "proto3";\npackage acme.v1;\n'
        "service Orders { rpc Get(Q) returns (Q); }\nmessage Q { string a = 1; }\n"
    )
    result = codegen(project, "-I", "proto", "--out", "gen", "proto/acme/import/v1.proto")
    assert result.returncode == 1
    assert "its Python module would be acme.import.v1_pb2, and 'import' is a Python keyword" in (
        result.stderr
    )


def test_file_names_with_dashes_and_dots_put_every_module_where_protoc_puts_pb2(
    project: Path,
) -> None:
    for path, package in (("dash-dir/my-svc.proto", "dash"), ("dotted/orders.v1.proto", "dot")):
        (project / "proto" / path).parent.mkdir(parents=True, exist_ok=True)
        (project / "proto" / path).write_text(
            f'syntax = "proto3";\npackage {package};\n'
            "service S { rpc M(R) returns (R); }\nmessage R { string a = 1; }\n"
        )
    files = ("proto/dash-dir/my-svc.proto", "proto/dotted/orders.v1.proto")
    assert codegen(project, "-I", "proto", "--out", "gen", *files).returncode == 0
    gen = project / "gen"
    assert (gen / "dash_dir" / "my_svc_durable.py").is_file()
    assert (gen / "dotted" / "orders" / "v1_durable.py").is_file()
    assert not (gen / "dash-dir").exists()
    assert not (gen / "dotted" / "orders.v1_durable.py").exists()
    check = "from dash_dir import my_svc_durable; from dotted.orders import v1_durable"
    imported = generated_python(project, gen, check)
    assert imported.returncode == 0, imported.stderr


def test_a_file_whose_services_went_leaves_no_durable_module_behind(project: Path) -> None:
    args = ("-I", "proto", "--out", "gen", "proto/shop/shop.proto", "proto/shop/money.proto")
    assert codegen(project, *args).returncode == 0
    assert (project / "gen" / "shop" / "shop_durable.py").is_file()
    (project / "proto" / "shop" / "shop.proto").write_text(
        'syntax = "proto3";\npackage shop;\nmessage Empty {}\n'
    )
    assert codegen(project, *args).returncode == 0
    # It imported and then failed on the service it no longer had.
    assert not (project / "gen" / "shop" / "shop_durable.py").exists()


def test_an_out_that_is_a_file_is_a_usage_error(project: Path) -> None:
    (project / "gen").write_text("not a directory")
    result = codegen(project, "-I", "proto", "--out", "gen", "proto/shop/money.proto")
    assert result.returncode == 2
    assert "--out gen: a file is in the way, not a directory" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_file_is_a_usage_error(project: Path) -> None:
    result = codegen(project, "-I", "proto", "--out", "gen", "proto/shop/nope.proto")
    assert result.returncode == 2
    assert "proto/shop/nope.proto: no such file" in result.stderr
    assert not (project / "gen").exists(), "nothing is written when the input is wrong"


def test_file_outside_every_include_says_which_include_to_add(project: Path) -> None:
    (project / "elsewhere").mkdir()
    result = codegen(project, "-I", "elsewhere", "--out", "gen", "proto/shop/shop.proto")
    assert result.returncode == 2
    assert "is not inside any -I directory (elsewhere)" in result.stderr


def test_proto_that_does_not_compile_shows_protocs_message(project: Path) -> None:
    (project / "proto" / "shop" / "broken.proto").write_text(
        'syntax = "proto3";\npackage shop;\nmessage X { strin name = 1; }\n'
    )
    result = codegen(project, "-I", "proto", "--out", "gen", "proto/shop/broken.proto")
    assert result.returncode == 1
    assert 'shop/broken.proto:3:13: "strin" is not defined.' in result.stderr
    assert "protoc failed" in result.stderr


def test_export_protos_copies_the_shipped_durable_protos(tmp_path: Path) -> None:
    result = codegen(tmp_path, "--export-protos", "third_party")
    assert result.returncode == 0, result.stderr
    exported = tmp_path / "third_party" / "durable" / "v1"
    shipped = support.ROOT / "proto" / "durable" / "v1"
    assert sorted(p.name for p in exported.iterdir()) == sorted(p.name for p in shipped.iterdir())
    options = (exported / "options.proto").read_text()
    assert options == (shipped / "options.proto").read_text()


def test_without_out_or_files_it_says_what_to_give(tmp_path: Path) -> None:
    result = codegen(tmp_path, "-I", "proto")
    assert result.returncode == 2
    assert "give --out OUT_DIR and at least one FILE.proto" in result.stderr


def test_a_method_left_unimplemented_fails_at_once_with_unimplemented(project: Path) -> None:
    # The generated base raised NotImplementedError, which the SDK takes for a transient
    # failure: a call to a method the team had not written yet was retried until the
    # caller's deadline, where grpc's own servicers answer UNIMPLEMENTED.
    shop = ("proto/shop/shop.proto", "proto/shop/money.proto")
    assert codegen(project, "-I", "proto", "--out", "gen", *shop).returncode == 0
    check = """
import grpc
from durable.testing import DurableTestEnvironment
from shop import money_pb2, shop_durable, shop_pb2, shop_pb2_grpc

class Cart(shop_durable.CartServicer):
    async def Add(self, ctx, request):
        return money_pb2.Cents(cents=request.cents)

with DurableTestEnvironment([Cart()]) as env:
    cart = shop_pb2_grpc.CartStub(env.channel())
    print(cart.Add(shop_pb2.AddRequest(cart_id="c", cents=5), timeout=30).cents)
    try:
        cart.Clear(shop_pb2.CartRef(cart_id="c"), timeout=30)
    except grpc.RpcError as e:
        print(e.code().name, e.details())
"""
    result = generated_python(project, project / "gen", check)
    assert result.returncode == 0, result.stderr
    added, failed = result.stdout.strip().splitlines()
    assert added == "5"
    assert failed.startswith("UNIMPLEMENTED shop.Cart/Clear is not implemented: the endpoint at")
    assert failed.endswith("has no handler for it; implement it and register the deployment again")
