"""Detached processes the stack owns: start (own session, output to a log file), check they are
still ours, stop them with their children, find free loopback ports, wait for health URLs."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil

from visionops.errors import VisionOpsError
from visionops.stack.state import Service

HOST = "127.0.0.1"


def free_port() -> int:
    """A port the kernel says is free on 127.0.0.1 now (another process may take it before us;
    the service's own bind error then names it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def check_port_free(port: int, what: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            raise VisionOpsError(
                f"port {HOST}:{port} for {what} is busy; choose another or let the stack pick one"
            ) from None


def spawn(
    name: str,
    cmd: list[str],
    log: Path,
    env: dict[str, str],
    cwd: Path,
    user: str | None = None,
    port: int | None = None,
    url: str | None = None,
) -> Service:
    """Start ``cmd`` detached (new session: no terminal signal reaches it, ``down`` stops it and
    its children by pid). stdout+stderr append to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            user=user,
        )
    started = psutil.Process(proc.pid).create_time()
    return Service(name, proc.pid, started, cmd, port=port, url=url, log=str(log))


def is_ours(service: Service) -> bool:
    """The recorded pid runs, is not a zombie, and started when we started it."""
    try:
        proc = psutil.Process(service.pid)
        return (
            abs(proc.create_time() - service.started) < 1.0
            and proc.status() != psutil.STATUS_ZOMBIE
        )
    except psutil.Error:
        return False


def stop(services: list[Service], sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> list[bool]:
    """Signal every service and all its descendants (uvicorn workers, flow-run processes) at
    once, wait, then SIGKILL what is left. One bool per service: False when it was already gone
    (or its pid now belongs to someone else, which is then left alone)."""
    ours = [is_ours(s) for s in services]
    family: list[psutil.Process] = []
    for service, mine in zip(services, ours, strict=True):
        if not mine:
            continue
        root = psutil.Process(service.pid)
        with contextlib.suppress(psutil.Error):
            family += [root, *root.children(recursive=True)]
    for proc in family:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(sig)
    _, alive = psutil.wait_procs(family, timeout=timeout_s)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)
    for service, mine in zip(services, ours, strict=True):
        if mine:
            _reap(service.pid)
    return ours


def _reap(pid: int) -> None:
    """A child of this process (started in this same ``up``) would stay a zombie otherwise."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def wait_http(url: str, service: Service, timeout_s: float, what: str) -> None:
    """Poll ``url`` until it answers 200; fail with the log's last line if the process dies."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not is_ours(service):
            raise VisionOpsError(f"{what} exited while starting: {last_line(service.log)}")
        try:
            with urllib.request.urlopen(url, timeout=3) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise VisionOpsError(f"{what} did not answer {url} within {timeout_s:.0f} s; see {service.log}")


def last_line(log: str | None) -> str:
    if not log or not Path(log).exists():
        return "(no log)"
    lines = [ln for ln in Path(log).read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1].strip()[:300] if lines else "(empty log)"


def alive(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False
