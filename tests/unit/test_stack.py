"""``visionops stack`` pieces that need no servers: ports, state.json, process ownership,
stopping a process family, one-line errors (busy port, no PostgreSQL binaries, no stack)."""

from __future__ import annotations

import os
import socket
import stat
import sys
import time
from pathlib import Path

import psutil
import pytest

from visionops.errors import VisionOpsError
from visionops.stack import lifecycle, postgres
from visionops.stack.procs import free_port, is_ours, spawn, stop
from visionops.stack.state import Service, StackState, load_state, save_state, stack_paths

pytestmark = pytest.mark.unit

# A parent that starts a child and both sleep: stop() must end the whole family.
FAMILY = (
    "import subprocess, sys, time; "
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"
)


def test_state_round_trip_is_private(tmp_path: Path) -> None:
    paths = stack_paths(tmp_path)
    state = StackState(project=str(tmp_path), urls={"PREFECT_API_URL": "http://x/api"})
    state.services.append(Service("mlflow", 123, 1.5, ["mlflow", "server"], port=5, url="u"))
    save_state(paths, state)
    assert stat.S_IMODE(os.stat(paths.state_file).st_mode) == 0o600
    again = load_state(paths)
    assert again == state
    assert again.service("mlflow").port == 5


def test_unreadable_state_is_one_line_error(tmp_path: Path) -> None:
    paths = stack_paths(tmp_path)
    paths.root.mkdir()
    paths.state_file.write_text("{not json")
    with pytest.raises(VisionOpsError, match="state.json: unreadable"):
        load_state(paths)


def test_busy_port_is_one_line_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(VisionOpsError, match=f"port 127.0.0.1:{port} for mlflow is busy"):
            lifecycle.Ports(mlflow=port).pick_all()


def test_free_ports_are_distinct() -> None:
    ports = lifecycle.Ports().pick_all()
    assert len(set(ports)) == 3 and all(p > 0 for p in ports)
    assert free_port() > 0


def test_stop_ends_the_family_and_spares_a_recycled_pid(tmp_path: Path) -> None:
    service = spawn(
        "sleeper", [sys.executable, "-c", FAMILY], tmp_path / "s.log", dict(os.environ), tmp_path
    )
    assert is_ours(service)
    deadline = time.monotonic() + 10
    while not psutil.Process(service.pid).children() and time.monotonic() < deadline:
        time.sleep(0.05)
    [child] = psutil.Process(service.pid).children()
    # Same pid, another start time: not ours, left alone.
    stranger = Service("sleeper", service.pid, service.started - 100, service.cmd)
    assert not is_ours(stranger)
    assert stop([stranger]) == [False]
    assert psutil.pid_exists(service.pid)
    assert stop([service]) == [True]
    assert not is_ours(service)
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    assert stop([service]) == [False]  # idempotent


def test_down_without_a_stack_says_so(tmp_path: Path) -> None:
    said: list[str] = []
    assert lifecycle.down(tmp_path, on_line=said.append) == []
    assert "nothing to stop" in said[0]
    assert lifecycle.status(tmp_path) == []


def test_down_stops_recorded_processes_once(tmp_path: Path) -> None:
    paths = stack_paths(tmp_path)
    service = spawn(
        "visionops-worker-1",
        [sys.executable, "-c", "import time; time.sleep(60)"],
        paths.log("w"),
        dict(os.environ),
        tmp_path,
    )
    save_state(paths, StackState(project=str(tmp_path), services=[service]))
    [row] = lifecycle.status(tmp_path)
    assert row["running"] and row["pid"] == service.pid
    assert lifecycle.down(tmp_path, on_line=lambda _: None) == [("visionops-worker-1", True)]
    assert not paths.state_file.exists()
    assert lifecycle.down(tmp_path, on_line=lambda _: None) == []


def test_missing_postgres_binaries_name_the_install_command(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(postgres.shutil, "which", lambda name: None)
    with pytest.raises(VisionOpsError, match="apt-get install -y postgresql"):
        postgres.find_binaries(tmp_path / "nowhere")


def test_password_is_generated_once_and_private(tmp_path: Path) -> None:
    paths = stack_paths(tmp_path)
    first = postgres.password(paths)
    assert len(first) >= 20 and postgres.password(paths) == first
    assert stat.S_IMODE(os.stat(paths.secret_file).st_mode) == 0o600
    expected = f"postgresql://visionops:{first}@127.0.0.1:5432/mlflow"
    assert postgres.url(paths, 5432, "mlflow") == expected
