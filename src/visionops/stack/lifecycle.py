"""``stack up`` / ``down`` / ``status``: start the stack in order, record every process in
``.stack/state.json`` as soon as it starts, stop exactly those processes.

Order up: PostgreSQL -> MLflow + Prefect servers (started together, ~20 s each here) ->
pools and deployments -> workers. Down runs it backwards; PostgreSQL gets a fast shutdown
(SIGINT) so no connection holds it open. A failing ``up`` stops what it started.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass
from pathlib import Path

from visionops.errors import VisionOpsError
from visionops.stack import deploy, postgres, services
from visionops.stack.procs import (
    HOST,
    alive,
    check_port_free,
    free_port,
    is_ours,
    spawn,
    stop,
    wait_http,
)
from visionops.stack.state import StackState, load_state, save_state, stack_paths

SERVER_TIMEOUT_S = 240  # Prefect's first start migrates its PostgreSQL schema: ~40 s here


@dataclass
class Ports:
    postgres: int | None = None
    mlflow: int | None = None
    prefect: int | None = None

    def pick_all(self) -> tuple[int, int, int]:
        """The requested ports (checked free: one-line error if busy), free ones for the rest,
        all distinct."""
        chosen: list[int] = []
        for name in ("postgres", "mlflow", "prefect"):
            port = getattr(self, name)
            if port is not None:
                check_port_free(port, name)
            else:
                port = free_port()
                while port in chosen or port in (self.postgres, self.mlflow, self.prefect):
                    port = free_port()
            chosen.append(port)
        if len(set(chosen)) != 3:
            raise VisionOpsError(f"ports must differ: postgres, mlflow, prefect = {chosen}")
        return chosen[0], chosen[1], chosen[2]


def up(
    project: Path | str,
    ports: Ports | None = None,
    dvc_remote: str | None = None,
    cpu_workers: int = services.CPU_WORKERS,
    on_line=print,
) -> StackState:
    project = Path(project).resolve()
    paths = stack_paths(project)
    ports = ports or Ports()
    previous = load_state(paths)
    if previous and any(is_ours(s) for s in previous.services):
        raise VisionOpsError(
            f"the stack of {project} is already running (visionops stack status); "
            f"stop it first: visionops stack down"
        )
    bins = postgres.find_binaries()
    user = postgres.server_user()
    pg_port, mlflow_port, prefect_port = ports.pick_all()
    started = time.perf_counter()
    state = StackState(project=str(project))
    save_state(paths, state)
    try:
        if postgres.initdb(paths, bins, user):
            on_line(f"initdb: {paths.pg_data} ({time.perf_counter() - started:.1f} s)")
        env = services.base_env(paths)
        state.services.append(postgres.start(paths, bins, pg_port, user, env))
        save_state(paths, state)
        postgres.create_databases(paths, pg_port)
        on_line(f"postgres: {HOST}:{pg_port} ({time.perf_counter() - started:.1f} s)")

        paths.artifacts.mkdir(parents=True, exist_ok=True)
        cmd, menv, mlflow_url = services.mlflow_server(paths, pg_port, mlflow_port)
        ml = spawn("mlflow", cmd, paths.log("mlflow"), menv, project, port=mlflow_port)
        ml.url = mlflow_url
        state.services.append(ml)
        cmd, penv, api_url = services.prefect_server(paths, pg_port, prefect_port)
        pf = spawn("prefect-server", cmd, paths.log("prefect-server"), penv, project)
        pf.port, pf.url = prefect_port, api_url
        state.services.append(pf)
        save_state(paths, state)
        wait_http(f"{mlflow_url}/health", ml, SERVER_TIMEOUT_S, "mlflow server")
        on_line(f"mlflow: {mlflow_url} ({time.perf_counter() - started:.1f} s)")
        wait_http(f"{api_url}/health", pf, SERVER_TIMEOUT_S, "prefect server")
        on_line(f"prefect: {api_url} ({time.perf_counter() - started:.1f} s)")
        state.urls = {"MLFLOW_TRACKING_URI": mlflow_url, "PREFECT_API_URL": api_url}
        save_state(paths, state)

        cenv = services.client_env(paths, state.urls)
        state.pools = [services.CPU_POOL, services.GPU_POOL]
        state.deployments = deploy.deploy(
            project, cenv, services.CPU_POOL, services.GPU_POOL, dvc_remote
        )
        save_state(paths, state)
        on_line(f"deployed: {', '.join(state.deployments)} ({time.perf_counter() - started:.1f} s)")

        names = {services.CPU_POOL: [], services.GPU_POOL: []}
        plan = [(services.CPU_POOL, cpu_workers), (services.GPU_POOL, services.GPU_WORKERS)]
        for pool, count in plan:
            for i in range(1, count + 1):
                name = f"{pool}-worker-{i}"
                w = spawn(name, services.worker(pool, name), paths.log(name), cenv, project)
                state.services.append(w)
                names[pool].append(name)
        save_state(paths, state)
        for pool, wanted in names.items():
            deploy.wait_workers(api_url, pool, wanted, SERVER_TIMEOUT_S)
        on_line(f"workers online: {sum(map(len, names.values()))} "
                f"({time.perf_counter() - started:.1f} s)")  # fmt: skip
    except BaseException:
        down(project, on_line=lambda _: None)
        raise
    return state


def down(project: Path | str, on_line=print) -> list[tuple[str, bool]]:
    """Stop every recorded process that is still ours (workers first, PostgreSQL last);
    idempotent: a second call finds nothing to stop."""
    paths = stack_paths(project)
    state = load_state(paths)
    if state is None:
        on_line(f"no stack recorded in {paths.root}: nothing to stop")
        return []
    stopped = []
    workers = [s for s in state.services if "worker" in s.name]
    servers = [s for s in state.services if s not in workers and s.name != "postgres"]
    database = [s for s in state.services if s.name == "postgres"]
    # Workers first (they cancel nothing: a running flow run dies with its worker and Prefect
    # marks it crashed), then the servers, then PostgreSQL with a fast shutdown (SIGINT).
    for group, sig in (
        (workers, signal.SIGTERM),
        (servers, signal.SIGTERM),
        (database, signal.SIGINT),
    ):
        for service, did in zip(group, stop(group, sig), strict=True):
            stopped.append((service.name, did))
            on_line(f"{service.name} (pid {service.pid}): {'stopped' if did else 'not running'}")
    paths.state_file.unlink(missing_ok=True)
    return stopped


def status(project: Path | str) -> list[dict]:
    """One row per recorded process: name, pid, URL, running (pid is ours), answering (URL)."""
    paths = stack_paths(project)
    state = load_state(paths)
    if state is None:
        return []
    rows = []
    for s in state.services:
        running = is_ours(s)
        health = None
        if s.name == "mlflow" and s.url or s.name == "prefect-server" and s.url:
            health = alive(f"{s.url}/health") if running else False
        rows.append(
            {
                "name": s.name,
                "pid": s.pid,
                "url": s.url or "",
                "running": running,
                "answering": health,
                "log": s.log,
            }  # fmt: skip
        )
    return rows


def env_lines(project: Path | str) -> list[str]:
    """``export`` lines that switch a shell to the stack."""
    state = load_state(stack_paths(project))
    return [f"export {k}={v}" for k, v in (state.urls if state else {}).items()]
