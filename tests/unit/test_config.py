"""Broker settings are declared once: each `Settings` field carries its flag, variable and
help, and the command line is built from that table."""

from __future__ import annotations

import dataclasses

import pytest

from broker import config
from broker.config import Settings, parse_args

# Settings only code can change (the SDK's testing helper); every other field has a flag.
_CODE_ONLY = {"non_determinism_terminal"}


def test_every_field_is_declared_exactly_once() -> None:
    table = config.options()
    assert [f.name for f, _ in table] == [f.name for f in dataclasses.fields(Settings)]
    flags = [o.flag for _, o in table if o.flag is not None]
    envs = [o.env for _, o in table if o.env is not None]
    assert len(flags) == len(set(flags)), "a flag is declared twice"
    assert len(envs) == len(set(envs)), "an environment variable is declared twice"
    assert {f.name for f, o in table if o.flag is None} == _CODE_ONLY
    for field, option in table:
        if option.flag is not None:
            assert (
                option.env == "BROKER_" + option.flag.removeprefix("--").replace("-", "_").upper()
            ), field.name


def test_the_parser_has_exactly_the_declared_flags() -> None:
    parser = config.build_parser()
    built = {s for a in parser._actions for s in a.option_strings} - {"-h", "--help"}
    assert built == {o.flag for _, o in config.options() if o.flag is not None}


def test_help_lists_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        parse_args(["--help"])
    assert stop.value.code == 0
    shown = capsys.readouterr().out
    for _, option in config.options():
        if option.flag is not None:
            assert option.flag in shown


def test_defaults_match_the_dataclass(monkeypatch: pytest.MonkeyPatch) -> None:
    for _, option in config.options():
        if option.env:
            monkeypatch.delenv(option.env, raising=False)
    assert parse_args([]) == Settings()


def test_variables_then_flags_override_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROKER_SUSPEND_AFTER", "250ms")
    monkeypatch.setenv("BROKER_NO_FSYNC", "1")
    monkeypatch.setenv("BROKER_DATA_DIR", "")
    monkeypatch.setenv("BROKER_LOG_LEVEL", "debug")
    monkeypatch.setenv("BROKER_MAX_CONCURRENCY", "4")
    settings = parse_args(["--retention", "1h", "--no-multiplex", "--max-concurrency", "2"])
    assert settings.suspend_after == 0.25
    assert settings.fsync is False
    assert settings.data_dir is None  # empty means in memory
    assert settings.log_level == "DEBUG"
    assert settings.retention == 3600.0
    assert settings.multiplex is False
    assert settings.unary_first is True
    assert settings.max_concurrency == 2  # the flag wins over the variable


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--admin-token", ""], {}, "--admin-token (BROKER_ADMIN_TOKEN) is empty"),
        ([], {"BROKER_ADMIN_TOKEN": " "}, "--admin-token (BROKER_ADMIN_TOKEN) is empty"),
        (["--tls-cert", "c.pem"], {}, "--tls-cert and --tls-key go together"),
        ([], {"BROKER_TLS_KEY": "k.pem"}, "--tls-cert and --tls-key go together"),
        (["--retry-max", "soon"], {}, "not a duration: 'soon'"),
        (["--ingress-servers", "0"], {}, "--ingress-servers (BROKER_INGRESS_SERVERS) is 0"),
        (["--stream-linger", "1s"], {}, "--stream-linger (BROKER_STREAM_LINGER) is 1000ms"),
        ([], {"BROKER_INGRESS_SERVERS": "17"}, "give 1 to 16"),
        (["--metrics", "foo"], {}, "argument --metrics: not HOST:PORT: 'foo'"),
        (["--console", "127.0.0.1:"], {}, "not HOST:PORT: '127.0.0.1:'"),
        (["--admin", ":9091"], {}, "not HOST:PORT: ':9091'"),
        (["--admin", "127.0.0.1:²"], {}, "not HOST:PORT: '127.0.0.1:²'"),
        (["--admin", "127.0.0.1:99999"], {}, "port 99999 is out of range (0 to 65535)"),
        (["--ingress", "::1:9090"], {}, "an IPv6 host goes in brackets, e.g. [::1]:9090"),
        ([], {"BROKER_INGRESS": "nowhere"}, "BROKER_INGRESS (for --ingress): not HOST:PORT"),
        ([], {"BROKER_RETRY_MAX": "soon"}, "BROKER_RETRY_MAX (for --retry-max): not a duration"),
        ([], {"BROKER_WORKERS": "two"}, "BROKER_WORKERS (for --workers): invalid literal"),
        (["--admin-index-rows", "0"], {}, "--admin-index-rows (BROKER_ADMIN_INDEX_ROWS) is 0"),
        ([], {"BROKER_ADMIN_INDEX_ROWS": "-5"}, "give at least 1"),
        # Journaled, a larger request could never reach an endpoint (64 MiB a message).
        (
            ["--max-payload-bytes", str(100 * 1024 * 1024)],
            {},
            "--max-payload-bytes (BROKER_MAX_PAYLOAD_BYTES) is 104857600: give 1 up to 66060288",
        ),
        (["--max-payload-bytes", "0"], {}, "give 1 up to 66060288"),
    ],
)
def test_bad_settings_are_refused(
    argv: list[str],
    env: dict[str, str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as stop:
        parse_args(argv)
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


def test_addresses_that_can_be_listened_on_pass_and_a_blank_one_is_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BROKER_CONSOLE", "")
    settings = parse_args(
        ["--ingress", "[::1]:0", "--admin", " localhost:9091 ", "--metrics", "0.0.0.0:65535"]
    )
    assert settings.ingress == "[::1]:0"
    assert settings.admin == "localhost:9091"
    assert settings.metrics == "0.0.0.0:65535"
    assert settings.console is None
    assert parse_args(["--metrics", ""]).metrics is None
