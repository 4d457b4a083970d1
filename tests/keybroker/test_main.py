"""`python -m keybroker` in process: the config refused before serving, and what `serve` hands uvicorn (one worker:
the sessions and the proof-of-possession replay cache live in that process's memory)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from keybroker import BrokerConfig
from keybroker.__main__ import configure_logging, main, serve
from keybroker.tls import ensure_local_tls
from tests.keybroker.conftest import BrokerProcess


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """uvicorn.run's calls, and `configure_logging`'s as {"logging": config} (it would replace caplog's handler)."""
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append({"app": app, **kwargs}))
    monkeypatch.setattr("keybroker.__main__.configure_logging", lambda config: calls.append({"logging": config}))
    return calls


def test_serve_runs_one_uvicorn_worker_with_the_configured_limits(tmp_path: Path, runs: list[dict[str, Any]],
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    config = BrokerConfig.from_dict({**BrokerProcess(tmp_path).config, "max_connections": 64,
                                     "shutdown_timeout_s": 7, "log_level": "warning"})
    with caplog.at_level(logging.INFO, logger="keybroker"):
        assert serve(config) == 0
    logged, call = runs
    assert logged == {"logging": config}
    assert [r.getMessage() for r in caplog.records if r.name == "keybroker"] == [
        f"broker 'owner' listening on http://127.0.0.1:{config.port}"]
    app = call.pop("app")
    assert app.title and call == {
        "host": "127.0.0.1", "port": config.port, "log_level": "warning", "workers": 1,
        "log_config": uvicorn.config.LOGGING_CONFIG, "server_header": False, "limit_concurrency": 64,
        "timeout_graceful_shutdown": 7, "ssl_certfile": None, "ssl_keyfile": None}


def test_serve_hands_uvicorn_the_tls_files_and_json_logs_no_config_of_its_own(tmp_path: Path,
                                                                           runs: list[dict[str, Any]]) -> None:
    files = ensure_local_tls(tmp_path / "ca", tmp_path / "b", "b")
    config = BrokerConfig.from_dict({**BrokerProcess(tmp_path).config, "host": "0.0.0.0", "log_format": "json",
                                     "tls_cert_path": str(files.cert), "tls_key_path": str(files.key)})
    assert serve(config) == 0
    _, call = runs
    assert (call["ssl_certfile"], call["ssl_keyfile"], call["log_config"], call["host"]) == (
        str(files.cert), str(files.key), None, "0.0.0.0")


def test_serve_refuses_a_store_url_file_it_cannot_read_before_serving(tmp_path: Path, runs: list[dict[str, Any]],
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    missing = tmp_path / "no-such-url-file"
    config = BrokerConfig.from_dict({**BrokerProcess(tmp_path).config, "db_url_path": str(missing)})
    with caplog.at_level(logging.ERROR, logger="keybroker"):
        assert serve(config) == 2
    assert [c for c in runs if "app" in c] == [] and str(missing) in caplog.text


def test_serve_refuses_plain_http_off_loopback_before_serving(tmp_path: Path, runs: list[dict[str, Any]],
                                                             caplog: pytest.LogCaptureFixture) -> None:
    config = BrokerConfig.from_dict({**BrokerProcess(tmp_path).config, "host": "192.0.2.7"})
    with caplog.at_level(logging.ERROR, logger="keybroker"):
        assert serve(config) == 2
    assert [c for c in runs if "app" in c] == []
    assert [r.getMessage() for r in caplog.records if r.name == "keybroker"] == [
        "broker config: refusing plain HTTP on host '192.0.2.7'; set tls_cert_path and tls_key_path, or bind a "
        "loopback address (127.0.0.1, ::1, localhost)"]


def test_main_refuses_a_config_it_cannot_read_naming_the_file(tmp_path: Path, runs: list[dict[str, Any]],
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "broker.json"
    assert main(["serve", "--config", str(path)]) == 2
    assert capsys.readouterr().err == (f"keybroker: config {path}: [Errno 2] No such file or directory: "
                                       f"'{path}'\n")
    path.write_text(json.dumps({"name": "o"}))
    assert main(["serve", "--config", str(path)]) == 2
    assert capsys.readouterr().err.startswith(f"keybroker: config {path}: ")
    path.write_text(json.dumps(BrokerProcess(tmp_path).config))
    assert main(["serve", "--config", str(path)]) == 0 and len(runs) == 2


def test_main_needs_a_command_and_serve_a_config(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in ([], ["serve"], ["tls", "--ca-dir", "c", "--out", "o"]):
        with pytest.raises(SystemExit) as stopped:
            main(argv)
        assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "usage: python -m keybroker" in err and "the following arguments are required: --config" in err
    assert "the following arguments are required: --name" in err


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_the_root_logger_writes_the_configured_format_at_the_configured_level(
        tmp_path: Path, log_format: str, capsys: pytest.CaptureFixture[str]) -> None:
    config = BrokerConfig.from_dict({**BrokerProcess(tmp_path).config, "log_level": "warning",
                                     "log_format": log_format})
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        root.setLevel(logging.DEBUG)  # the configured level must replace it
        configure_logging(config)
        logging.getLogger("keybroker.x").info("hidden")
        logging.getLogger("keybroker.x").warning("shown %s", 1)
        line = capsys.readouterr().err.strip()
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    assert "hidden" not in line and len(line.splitlines()) == 1
    if log_format == "json":
        record = json.loads(line)
        assert (record["message"], record["level"], record["logger"]) == ("shown 1", "warning", "keybroker.x")
        assert record["service"] == f"{config.name}-broker"
    else:
        assert line.endswith(f" {config.name}-broker WARNING keybroker.x: shown 1")


HELP = {
    (): """usage: python -m keybroker [-h] {serve,tls} ...

cscore key broker

positional arguments:
  {serve,tls}
    serve      run the broker over HTTPS (or HTTP on loopback)
    tls        create the local CA (once) and a loopback server certificate

options:
  -h, --help   show this help message and exit
""",
    ("serve",): """usage: python -m keybroker serve [-h] --config CONFIG

options:
  -h, --help       show this help message and exit
  --config CONFIG  broker config JSON (see docs/ARCHITECTURE.md)
""",
    ("tls",): """usage: python -m keybroker tls [-h] --ca-dir CA_DIR --out OUT --name NAME

options:
  -h, --help       show this help message and exit
  --ca-dir CA_DIR  folder of ca.pem / ca.key (kept)
  --out OUT        folder for <name>-tls.pem / <name>-tls.key
  --name NAME      broker name (owner, provider)
""",
}


@pytest.mark.parametrize("command", list(HELP))
def test_the_help_says_each_command_and_option_word_for_word(command: tuple[str, ...],
                                                             capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "120")
    with pytest.raises(SystemExit) as stopped:
        main([*command, "--help"])
    assert stopped.value.code == 0 and capsys.readouterr().out == HELP[command]


@pytest.mark.parametrize("missing", ["--ca-dir", "--out", "--name"])
def test_tls_needs_each_of_its_options(missing: str, capsys: pytest.CaptureFixture[str]) -> None:
    given = {"--ca-dir": "c", "--out": "o", "--name": "n"}
    with pytest.raises(SystemExit) as stopped:
        main(["tls", *[x for k, v in given.items() if k != missing for x in (k, v)]])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.endswith(f"error: the following arguments are required: {missing}\n")


def test_tls_names_the_server_files_after_the_broker(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tls", "--ca-dir", str(tmp_path / "ca"), "--out", str(tmp_path / "o"), "--name", "provider"]) == 0
    assert json.loads(capsys.readouterr().out) == {"ca_cert": str(tmp_path / "ca" / "ca.pem"),
                                                   "cert": str(tmp_path / "o" / "provider-tls.pem"),
                                                   "key": str(tmp_path / "o" / "provider-tls.key")}
