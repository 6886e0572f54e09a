"""The ``.stack/`` folder and ``.stack/state.json``: what ``stack up`` started, so ``status`` and
``down`` act on exactly those processes and nothing else."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from visionops.errors import VisionOpsError
from visionops.io import write_text

STACK_DIR = ".stack"


@dataclass(frozen=True)
class StackPaths:
    """Every file the stack writes, under ``<project>/.stack``."""

    root: Path

    @property
    def pg_data(self) -> Path:
        return self.root / "pg"

    @property
    def pg_socket(self) -> Path:  # unix socket folder: short path, the stack's own
        return self.root / "run"

    @property
    def artifacts(self) -> Path:  # MLflow's proxied artifact store
        return self.root / "artifacts"

    @property
    def prefect_home(self) -> Path:
        return self.root / "prefect"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def secret_file(self) -> Path:  # the database password, mode 0600
        return self.root / "pg-password"

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"


def stack_paths(project: Path | str) -> StackPaths:
    return StackPaths(Path(project).resolve() / STACK_DIR)


@dataclass
class Service:
    """One process ``stack up`` started. ``started`` is the kernel's start time (psutil
    ``create_time``): a recycled pid has another one, so ``down`` never stops a stranger."""

    name: str
    pid: int
    started: float
    cmd: list[str]
    port: int | None = None
    url: str | None = None
    log: str | None = None


@dataclass
class StackState:
    project: str
    services: list[Service] = field(default_factory=list)
    urls: dict[str, str] = field(default_factory=dict)  # MLFLOW_TRACKING_URI, PREFECT_API_URL...
    pools: list[str] = field(default_factory=list)
    deployments: list[str] = field(default_factory=list)

    def service(self, name: str) -> Service | None:
        return next((s for s in self.services if s.name == name), None)


def load_state(paths: StackPaths) -> StackState | None:
    if not paths.state_file.exists():
        return None
    try:
        raw = json.loads(paths.state_file.read_text(encoding="utf-8"))
        services = [Service(**s) for s in raw.pop("services", [])]
        return StackState(services=services, **raw)
    except (OSError, ValueError, TypeError) as exc:
        raise VisionOpsError(
            f"{paths.state_file}: unreadable ({exc}); stop leftover processes by hand "
            f"(see {paths.logs}) and delete the file"
        ) from None


def save_state(paths: StackPaths, state: StackState) -> None:
    """Written after every started process, so a failing ``up`` still leaves what to stop."""
    paths.root.mkdir(parents=True, exist_ok=True)
    write_text(paths.state_file, json.dumps(asdict(state), indent=2) + "\n")
    os.chmod(paths.state_file, 0o600)  # holds the database password inside the URLs
