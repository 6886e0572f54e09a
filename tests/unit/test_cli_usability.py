"""The ``visionops`` command for people: help everywhere, a version, readable output by default
(``--json`` for machines), and one-line errors for a YAML typo in ``--set`` and for bad ports."""

from __future__ import annotations

import argparse
import json
import logging
import socket
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from tests.toy_onnx import colour_folder, colour_model
from visionops.cli import build_parser, main
from visionops.cli.predict import format_lineage

pytestmark = pytest.mark.unit


def walk(parser: argparse.ArgumentParser, path: str = "visionops"):
    """(command path, action) for every argument of every (sub)command."""
    for action in parser._actions:
        yield path, action
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk(sub, f"{path} {name}")


def test_every_argument_and_command_has_help() -> None:
    missing = [
        f"{path}: {'/'.join(a.option_strings) or a.dest}"
        for path, a in walk(build_parser())
        if not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()
    ]
    assert not missing, "arguments without help:\n" + "\n".join(missing)
    subs = next(a for _, a in walk(build_parser()) if isinstance(a, argparse._SubParsersAction))
    assert all(choice.help for choice in subs._choices_actions)  # the list in `visionops -h`
    assert len(subs.choices) >= 14


@pytest.mark.parametrize("argv", [[], ["-v"]])
def test_bare_visionops_prints_help_and_exits_0(argv: list[str], capsys) -> None:
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: visionops")
    assert "evaluate-folder" in out and "--version" in out


def test_bare_visionops_as_a_process() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "visionops.cli"], capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert "COMMAND" in done.stdout


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"visionops {version('visionops')}\n"


@pytest.mark.parametrize(
    ("override", "problem"),
    [
        ("train.lr=[unclosed", "expected ',' or ']', but got '<stream end>'"),
        ("train.lr={a: 1", "expected ',' or '}', but got '<stream end>'"),
        ("base.seed=a: b: c", "mapping values are not allowed here"),
        ("base.data_dir='x", "found unexpected end of stream"),
    ],
)
def test_set_with_a_yaml_typo_is_one_line(override: str, problem: str, tmp_path, capsys) -> None:
    key = override.partition("=")[0]
    code = main(["validate", "--params", str(tmp_path / "params.yaml"), "--set", override])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"error: --set {key}: ") and problem in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_set_without_equals_is_one_line(capsys) -> None:
    assert main(["validate", "--set", "train.lr"]) == 2
    assert capsys.readouterr().err.startswith("error: --set 'train.lr': expected KEY=VALUE")


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "params.yaml").write_text("serve:\n  poll_seconds: 5\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("port", ["70000", "0", "-1", "65536"])
def test_serve_refuses_a_bad_port_before_serving(port: str, project: Path, capsys, caplog) -> None:
    caplog.set_level(logging.INFO)
    assert main(["serve", "--model", "none.onnx", "--port", port]) == 2  # before loading a model
    captured = capsys.readouterr()
    assert (
        captured.err
        == f"error: port {port}: not a TCP port; pass --port (or serve.port) in 1-65535\n"
    )
    assert "serving" not in caplog.text


def test_serve_port_in_params_is_checked_too(project: Path, capsys) -> None:
    assert main(["serve", "--set", "serve.port=70000"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "serve.port" in err and err.count("\n") == 1


def test_serve_on_a_port_in_use_is_one_line(project: Path, capsys, caplog) -> None:
    model = colour_model(project / "m.onnx", ["blue", "green", "red"])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        caplog.set_level(logging.INFO)
        code = main(["serve", "--model", str(model), "--host", "127.0.0.1", "--port", str(port)])
    err = capsys.readouterr().err
    assert code == 1
    assert err == (
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use; "
        "pass another --port (or --host)\n"
    )
    assert "serving" not in caplog.text


def test_evaluate_folder_prints_tables_by_default(tmp_path: Path, capsys) -> None:
    model = colour_model(tmp_path / "m.onnx", ["red", "blue", "green"])
    folder = colour_folder(tmp_path / "ext", {"blue": 2, "red": 3, "purple": 2})
    (folder / "red" / "broken.jpg").write_bytes(b"\xff\xd8\xff")
    assert main(["evaluate-folder", str(model), str(folder)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["model", str(model)]
    assert "images" in out and "5 scored of 8 files" in out
    assert any(line.split() == ["accuracy", "1.0000"] for line in lines)
    header = next(i for i, line in enumerate(lines) if line.startswith("class"))
    assert lines[header].split() == ["class", "precision", "recall", "f1", "support"]
    assert lines[header + 1].split() == ["red", "1.0000", "1.0000", "1.0000", "3"]
    assert "classes with no images here: green" in out
    assert "labels the model does not know (left out): purple (2)" in out
    assert "unreadable (1):" in out and "broken.jpg" in out
    with pytest.raises(json.JSONDecodeError):
        json.loads(out)

    assert main(["evaluate-folder", str(model), str(folder), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == 1.0


def test_lineage_table_shows_every_group() -> None:
    info = {  # the shape of visionops.registry.lineage.describe()
        "model_uri": "models:/clf@champion",
        "name": "clf",
        "version": "3",
        "aliases": ["champion"],
        "created": "2025-01-02T03:04:05+00:00",
        "source": "models:/m-abc",
        "run_id": "r123",
        "git_commit": "0123abc",
        "data_version": "d41d8cd9",
        "params_hash": "feedbeef",
        "decision": {"alias": "champion", "new_score": "0.91"},
        "test_metrics": {"accuracy": "0.9"},
        "parity": {},
        "dvc_lock": {"train.md5": "0123"},
        "params": {"train.head_epochs": "2"},
        "metrics": {"val_accuracy": 0.875},
        "tracking_uri": "sqlite:///x.db",
        "experiment_id": "1",
        "run_name": "train",
    }
    text = format_lineage(info)
    lines = text.splitlines()
    assert lines[0] == "models:/clf@champion: clf version 3 (@champion)"
    assert "git commit    0123abc" in text
    assert "run           r123 (train, experiment 1)" in text
    assert "export parity: -" in lines
    assert "  train.head_epochs  2" in lines
    assert "  val_accuracy  0.8750" in lines
