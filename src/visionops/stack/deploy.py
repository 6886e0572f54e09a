"""Work pools and deployments on the stack's Prefect server, by running the project's own
``flows/serve_deployment.py`` (the same code ``make deploy`` uses), and waiting for workers."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from visionops.errors import VisionOpsError

PIPELINE_DEPLOYMENT = "stack"
# A flow run with no heartbeat for this long is marked Crashed (workers beat every 30 s).
ZOMBIE_AFTER_S = 90


def flows_dir(project: Path) -> Path:
    """``<project>/flows`` when the project carries them, else the ones beside this install
    (an editable install of the repository)."""
    for candidate in (project / "flows", Path(__file__).resolve().parents[3] / "flows"):
        if (candidate / "pipeline.py").exists() and (candidate / "serve_deployment.py").exists():
            return candidate
    raise VisionOpsError(
        f"no flows/pipeline.py in {project} or beside the visionops package: run `visionops "
        f"stack up` from the VisionOps repository or pass --project"
    )


def deploy(
    project: Path,
    env: dict[str, str],
    cpu_pool: str,
    gpu_pool: str,
    dvc_remote: str | None,
    timeout_s: float = 300,
) -> list[str]:
    """Create both pools (process type) and deploy ``training-pipeline/stack`` on the CPU pool
    (concurrency limit 1), ``train`` routed to ``visionops-stage/<gpu pool>`` on the GPU pool."""
    flows = flows_dir(project)
    cmd = [sys.executable, str(flows / "serve_deployment.py"), "--pool", cpu_pool,
           "--name", PIPELINE_DEPLOYMENT, "--project", str(project), "--source", str(flows.parent),
           "--train-pool", gpu_pool, "--concurrency-limit", "1", "--create-pools",
           "--crash-zombies-after", str(ZOMBIE_AFTER_S)]  # fmt: skip
    if dvc_remote:
        cmd += ["--dvc-remote", dvc_remote]
    proc = subprocess.run(
        cmd, cwd=flows.parent, env=env, capture_output=True, text=True, timeout=timeout_s
    )
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        raise VisionOpsError(f"deploying the pipeline failed: {lines[-1] if lines else '?'}")
    return [
        f"training-pipeline/{PIPELINE_DEPLOYMENT}",
        f"visionops-stage/{gpu_pool}",
    ]


def online_workers(api_url: str, pool: str) -> list[str]:
    req = urllib.request.Request(
        f"{api_url}/work_pools/{pool}/workers/filter",
        data=b"{}",
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            workers = json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError):
        return []
    return [w["name"] for w in workers if str(w.get("status", "")).upper() == "ONLINE"]


def wait_workers(api_url: str, pool: str, names: list[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if set(names) <= set(online_workers(api_url, pool)):
            return
        time.sleep(1)
    raise VisionOpsError(
        f"workers {', '.join(names)} did not come online in pool {pool} within {timeout_s:.0f} s"
    )
