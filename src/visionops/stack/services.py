"""Commands and environments of the stack's servers and workers (all on 127.0.0.1).

Every process gets the offline switches (:data:`visionops.offline.OFFLINE_ENV`), this install's
``bin/`` first on PATH (``dvc`` stage commands find ``visionops``), and ``PREFECT_HOME`` in
``.stack/prefect``. Workers also get ``MLFLOW_TRACKING_URI`` and ``PREFECT_API_URL``: the flow
runs they start inherit them, which is all a stage needs to use the stack.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from visionops.offline import OFFLINE_ENV
from visionops.stack import postgres
from visionops.stack.procs import HOST
from visionops.stack.state import StackPaths

BIN = Path(sys.executable).parent
CPU_POOL = "visionops"
GPU_POOL = "visionops-gpu"
CPU_WORKERS = 2
GPU_WORKERS = 1


def base_env(paths: StackPaths) -> dict[str, str]:
    env = dict(os.environ)
    for key, value in OFFLINE_ENV.items():
        env.setdefault(key, value)
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "")])
    env["PREFECT_HOME"] = str(paths.prefect_home)
    env["PYTHONUNBUFFERED"] = "1"
    # Settings of an outer Prefect/MLflow (a test harness, a user's shell) must not leak in.
    for key in ("PREFECT_API_URL", "PREFECT_API_DATABASE_CONNECTION_URL", "PREFECT_PROFILE"):
        env.pop(key, None)
    return env


def exe(name: str) -> str:
    beside = BIN / name
    return str(beside) if beside.exists() else name


def mlflow_server(paths: StackPaths, pg_port: int, port: int) -> tuple[list[str], dict, str]:
    """``mlflow server`` on the ``mlflow`` database, artifacts proxied (``--serve-artifacts``):
    clients upload and download through HTTP, so they need no access to ``.stack/artifacts``."""
    cmd = [exe("mlflow"), "server",
           "--backend-store-uri", postgres.url(paths, pg_port, "mlflow"),
           "--serve-artifacts", "--artifacts-destination", str(paths.artifacts),
           "--host", HOST, "--port", str(port), "--workers", "1"]  # fmt: skip
    env = base_env(paths) | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    return cmd, env, f"http://{HOST}:{port}"


def prefect_server(paths: StackPaths, pg_port: int, port: int) -> tuple[list[str], dict, str]:
    """``prefect server start`` with its database in PostgreSQL (asyncpg driver)."""
    cmd = [exe("prefect"), "server", "start", "--host", HOST, "--port", str(port)]
    env = base_env(paths) | {
        "PREFECT_API_DATABASE_CONNECTION_URL": postgres.url(
            paths, pg_port, "prefect", driver="postgresql+asyncpg"
        ),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    return cmd, env, f"http://{HOST}:{port}/api"


def client_env(paths: StackPaths, urls: dict[str, str]) -> dict[str, str]:
    """What a process needs to use the stack: the two URLs (and the MLflow UI link)."""
    env = base_env(paths)
    env["PREFECT_API_URL"] = urls["PREFECT_API_URL"]
    env["MLFLOW_TRACKING_URI"] = urls["MLFLOW_TRACKING_URI"]
    env["VISIONOPS_MLFLOW_UI"] = urls["MLFLOW_TRACKING_URI"]
    # Flow runs beat every 30 s; the stack's automation crashes runs silent for 90 s.
    env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] = "30"
    return env


def worker(pool: str, name: str) -> list[str]:
    return [exe("prefect"), "worker", "start", "--pool", pool, "--name", name, "--type", "process"]
