"""``visionops stack``: the team topology on loopback, end to end, nothing mocked.

A scratch project (generated images, Lite0 from scratch at 64 px, one head epoch) gets a real
PostgreSQL (Debian's package, run as the ``postgres`` user when we are root), an MLflow tracking
server on it with proxied artifacts, a Prefect server on it, two process work pools
(``visionops``: two workers; ``visionops-gpu``: one) and a shared DVC remote (a folder outside the
project). One deployment run must complete every stage with ``train`` executed by the second
pool's worker; the champion must be readable over MLflow's REST API and its ONNX file
downloadable through the server's artifact proxy; ``stack down`` must leave no process behind.
Before that run, a first one has its training job SIGKILLed mid-run: Prefect marks it crashed,
the pipeline run fails, and the rerun completes with DVC skipping what had finished.

Everything talks HTTP to the stack (urllib), so this process's own Prefect/MLflow settings are
never touched. The project lives in a world-readable temp folder: the ``postgres`` user must be
able to enter it (pytest's ``/tmp/pytest-of-root`` is 0700).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
import yaml

from tests.project_factory import make_project, run

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

VENV_BIN = Path(sys.executable).parent
STAGES = ["validate", "split", "train", "evaluate", "export", "register"]
FAST = {"train.finetune_epochs": 0, "base.workers": 1}
RUN_TIMEOUT_S = 420


def _postgres_or_skip() -> None:
    """Debian's PostgreSQL, installed here like `make stack-deps` does when we are root with
    apt-get; skipped (with the command) only when it cannot be installed."""
    from visionops.errors import VisionOpsError
    from visionops.stack.postgres import find_binaries

    try:
        find_binaries()
        return
    except VisionOpsError as exc:
        missing = str(exc)
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "postgresql"],
            env=env,
            capture_output=True,
            timeout=900,
        )
    try:
        find_binaries()
    except VisionOpsError:
        pytest.skip(f"{missing} (could not install it here; .ci/run installs it on CI)")


def _visionops(*args: str, timeout: float = 400) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(
        [str(VENV_BIN / "visionops"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _http(url: str, body: dict | None = None, method: str | None = None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json"}, method=method
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        raw = resp.read()
    return raw if url.endswith(".onnx") else json.loads(raw or b"null")


@pytest.fixture(scope="module")
def stack():
    """A project with the stack up; yields (project, state dict, seconds `up` took)."""
    _postgres_or_skip()
    base = Path(tempfile.mkdtemp(prefix="visionops-stack-"))
    os.chmod(base, 0o755)
    project = make_project(base / "proj", overrides=FAST)
    remote = base / "shared-remote"
    run(["dvc", "remote", "add", "shared", str(remote)], project)
    started = time.perf_counter()
    up = _visionops("stack", "up", "--project", str(project), "--dvc-remote", "shared")
    up_s = time.perf_counter() - started
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        state = json.loads((project / ".stack" / "state.json").read_text())
        yield project, state, up_s
    finally:
        _visionops("stack", "down", "--project", str(project))
        shutil.rmtree(base, ignore_errors=True)


def _start_run(api: str, name: str) -> dict:
    deployment = _http(f"{api}/deployments/name/{name}")
    return _http(f"{api}/deployments/{deployment['id']}/create_flow_run", {"parameters": {}})


def _wait_run(api: str, flow_run: dict) -> dict:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        flow_run = _http(f"{api}/flow_runs/{flow_run['id']}")
        if flow_run["state"]["type"] in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}:
            return flow_run
        time.sleep(2)
    raise AssertionError(f"flow run {flow_run['name']} not finished after {RUN_TIMEOUT_S} s")


def _kill_training_under(worker_pid: int, timeout_s: float = 300) -> list[str]:
    """Wait until the worker's flow-run process has started ``visionops train``, then SIGKILL
    that whole process family (flow run, dvc, the training): the job dies, the worker lives."""
    worker = psutil.Process(worker_pid)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        family = worker.children(recursive=True)
        lines = []
        for proc in family:
            with contextlib.suppress(psutil.Error):
                lines.append(" ".join(proc.cmdline()))
        if any("visionops train" in line or "visionops.cli train" in line for line in lines):
            time.sleep(1.0)  # mid-training, not at its first instruction
            for proc in worker.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    proc.kill()
            return lines
        time.sleep(0.3)
    raise AssertionError("train never started under the GPU pool's worker")


def _child_runs(api: str, pool: str, parent_tasks: list[dict]) -> list[dict]:
    runs = _http(f"{api}/flow_runs/filter", {"work_pools": {"name": {"any_": [pool]}}}, "POST")
    ids = {t["id"] for t in parent_tasks}
    return [r for r in runs if r["parent_task_run_id"] in ids]


def _task_runs(api: str, flow_run_id: str) -> list[dict]:
    body = {"flow_runs": {"id": {"any_": [flow_run_id]}}}
    return _http(f"{api}/task_runs/filter", body, "POST")


def _log_lines(api: str, flow_run_id: str) -> list[str]:
    body = {"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200}
    return [entry["message"] for entry in _http(f"{api}/logs/filter", body, "POST")]


def test_stack_runs_the_pipeline_with_train_on_the_second_pool(stack) -> None:
    project, state, up_s = stack
    api = state["urls"]["PREFECT_API_URL"]
    mlflow = state["urls"]["MLFLOW_TRACKING_URI"]
    assert up_s < 120, f"stack up took {up_s:.0f} s"

    status = _visionops("stack", "status", "--project", str(project), "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    rows = {r["name"]: r for r in json.loads(status.stdout)}
    assert {"postgres", "mlflow", "prefect-server"} <= set(rows)
    assert [n for n in rows if n.startswith("visionops-worker-")] == [
        "visionops-worker-1",
        "visionops-worker-2",
    ]
    assert all(r["running"] for r in rows.values()), rows
    assert rows["mlflow"]["answering"] and rows["prefect-server"]["answering"]
    deployment = _http(f"{api}/deployments/name/training-pipeline/stack")
    assert deployment["work_pool_name"] == "visionops"
    assert deployment["concurrency_limit"] == 1 or (
        (deployment.get("global_concurrency_limit") or {}).get("limit") == 1
    ), deployment

    # 1. The training job dies mid-run (SIGKILL of the GPU worker's flow-run process family):
    # Prefect marks the train run Crashed and the pipeline run Failed with that reason.
    started = time.perf_counter()
    doomed = _start_run(api, "training-pipeline/stack")
    killed = _kill_training_under(rows["visionops-gpu-worker-1"]["pid"])
    doomed = _wait_run(api, doomed)
    killed_s = time.perf_counter() - started
    assert doomed["state"]["type"] == "FAILED", (doomed["state"], killed)
    assert "Crashed" in doomed["state"]["message"], doomed["state"]
    [crashed] = _child_runs(api, "visionops-gpu", _task_runs(api, doomed["id"]))
    assert crashed["state"]["type"] == "CRASHED", crashed["state"]

    # 2. The rerun completes; DVC skips what the killed run finished (validate, split).
    started = time.perf_counter()
    flow_run = _wait_run(api, _start_run(api, "training-pipeline/stack"))
    run_s = time.perf_counter() - started
    assert flow_run["state"]["type"] == "COMPLETED", flow_run["state"]
    assert flow_run["work_pool_name"] == "visionops"
    logs = "\n".join(_log_lines(api, flow_run["id"]))
    for stage in ("validate", "split"):
        assert f"stage '{stage}' skipped" in logs, logs[-2000:]
    for stage in ("evaluate", "export", "register"):
        assert f"stage '{stage}' ran" in logs, logs[-2000:]

    task_runs = _task_runs(api, flow_run["id"])
    by_name = {t["name"]: t for t in task_runs}
    for stage in [s for s in STAGES if s != "train"]:
        assert by_name[stage]["state"]["type"] == "COMPLETED", (stage, by_name[stage]["state"])

    # train: a subflow run of visionops-stage/visionops-gpu, executed by that pool's worker.
    [train_run] = _child_runs(api, "visionops-gpu", task_runs)
    assert train_run["state"]["type"] == "COMPLETED"
    assert "stage 'train' ran" in "\n".join(_log_lines(api, train_run["id"]))
    gpu_log = (project / ".stack" / "logs" / "visionops-gpu-worker-1.log").read_text()
    assert train_run["id"] in gpu_log
    for name in ("visionops-worker-1", "visionops-worker-2"):
        assert train_run["id"] not in (project / ".stack" / "logs" / f"{name}.log").read_text()
    train_tasks = _task_runs(api, train_run["id"])
    assert [t["name"] for t in train_tasks] == ["train"]
    assert train_tasks[0]["state"]["type"] == "COMPLETED"

    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(STAGES)

    # The champion over MLflow's REST API, and its ONNX file through the artifact proxy.
    champion = _http(
        f"{mlflow}/api/2.0/mlflow/registered-models/alias?name=visionops-classifier&alias=champion"
    )["model_version"]
    assert champion["version"] == "1"
    source = champion["source"]  # MLflow 3: models:/m-<id>, the logged model's URI
    artifact_uri = source
    if source.startswith("models:/"):
        model_id = source.removeprefix("models:/").split("/")[0]
        logged = _http(f"{mlflow}/api/2.0/mlflow/logged-models/{model_id}")["model"]
        artifact_uri = logged["info"]["artifact_uri"]
    assert artifact_uri.startswith("mlflow-artifacts:/"), artifact_uri
    rel = artifact_uri.removeprefix("mlflow-artifacts:/").lstrip("/")
    onnx = _http(f"{mlflow}/api/2.0/mlflow-artifacts/artifacts/{rel}/model.onnx")
    import onnx as onnx_lib

    model = onnx_lib.load_model_from_string(onnx)
    assert [i.name for i in model.graph.input], "downloaded bytes are not an ONNX model"
    on_disk = list((project / ".stack" / "artifacts").rglob("model.onnx"))
    assert on_disk and on_disk[0].read_bytes() == onnx
    assert not (project / "mlruns" / "mlflow.db").exists()  # no SQLite store: PostgreSQL only

    # Both servers keep their records in PostgreSQL.
    import psycopg2

    from visionops.stack.postgres import url
    from visionops.stack.state import stack_paths

    pg_port = next(s["port"] for s in state["services"] if s["name"] == "postgres")
    paths = stack_paths(project)
    with psycopg2.connect(url(paths, pg_port, "mlflow")) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM model_versions")
        assert cur.fetchone()[0] == 1
    with psycopg2.connect(url(paths, pg_port, "prefect")) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM flow_run WHERE id = %s", (flow_run["id"],))
        assert cur.fetchone()[0] == 1

    # The stages pushed their outputs to the shared DVC remote.
    remote = project.parent / "shared-remote"
    best_pt = next(o for o in lock["stages"]["train"]["outs"] if o["path"].endswith("best.pt"))
    md5 = best_pt["md5"]
    assert (remote / "files" / "md5" / md5[:2] / md5[2:]).exists()
    print(f"\nstack up {up_s:.1f} s; killed run {killed_s:.1f} s; rerun {run_s:.1f} s")

    # down: every recorded process and every descendant is gone.
    family = []
    for service in state["services"]:
        try:
            proc = psutil.Process(service["pid"])
            family += [proc, *proc.children(recursive=True)]
        except psutil.Error:
            pass
    assert len(family) >= 6
    started = time.perf_counter()
    down = _visionops("stack", "down", "--project", str(project))
    down_s = time.perf_counter() - started
    assert down.returncode == 0, down.stdout + down.stderr
    gone, alive = psutil.wait_procs(family, timeout=5)
    assert not alive, [p.pid for p in alive]
    leftovers = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if str(project) in cmdline and proc.pid != os.getpid():
            leftovers.append((proc.pid, cmdline))
    assert not leftovers, leftovers
    again = _visionops("stack", "down", "--project", str(project))
    assert again.returncode == 0 and "nothing to stop" in again.stdout
    print(f"stack down {down_s:.1f} s")


# --- A shared DVC remote over SSH: two working copies that share nothing but the remote ---

TWO_STAGES = {
    "stages": {
        "make": {
            "cmd": f"{sys.executable} -c \"open('a.txt', 'w').write('made on machine A')\"",
            "outs": ["a.txt"],
        },
        "use": {
            "cmd": f"{sys.executable} -c \"open('b.txt', 'w').write(open('a.txt').read() + '!')\"",
            "deps": ["a.txt"],
            "outs": ["b.txt"],
        },
    }
}


def _free_port() -> int:
    from visionops.stack.procs import free_port

    return free_port()


@pytest.fixture
def sshd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Debian's OpenSSH server on 127.0.0.1 (key auth only, keys in tmp_path); yields
    (port, client key, user). HOME points at a temp folder whose known_hosts trusts it."""
    sshd_bin = shutil.which("sshd") or "/usr/sbin/sshd"
    if not Path(sshd_bin).exists():
        pytest.skip("openssh-server absent: apt-get install -y openssh-server (.ci/run does)")
    keys = tmp_path / "keys"
    keys.mkdir()
    for name in ("host", "client"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / name)], check=True
        )
    (keys / "authorized_keys").write_text((keys / "client.pub").read_text())
    port = _free_port()
    config = keys / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {keys / 'host'}\n"
        f"AuthorizedKeysFile {keys / 'authorized_keys'}\nPidFile {keys / 'sshd.pid'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        "PermitRootLogin prohibit-password\nStrictModes no\nSubsystem sftp internal-sftp\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation folder sshd insists on
    proc = subprocess.Popen(
        [sshd_bin, "-D", "-e", "-f", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    host_key = (keys / "host.pub").read_text().split()
    (home / ".ssh" / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
    monkeypatch.setenv("HOME", str(home))
    import socket

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.2)
    try:
        yield port, keys / "client", psutil.Process().username()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _two_machines_share_a_remote(tmp_path: Path, url: str, options: dict[str, str]) -> str:
    """Machine A runs ``make`` and pushes; machine B, a git clone without ``a.txt``, runs
    ``use``: its input can only come from the remote. Returns the md5 B pushed."""
    from visionops.orchestrate.remote_sync import add_remote, run_synced_stage

    machine_a = tmp_path / "a"
    machine_a.mkdir()
    (machine_a / "dvc.yaml").write_text(yaml.safe_dump(TWO_STAGES, sort_keys=False))
    (machine_a / ".gitignore").write_text("/a.txt\n/b.txt\n")
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        run(cmd, machine_a)
    add_remote(machine_a, "shared", url, options)
    made = run_synced_stage(machine_a, "make", "shared")
    assert made.status == "ran"
    for cmd in (["git", "add", "-A"], ["git", "-c", "user.name=t", "-c", "user.email=t@e",
                "commit", "-qm", "make ran on A"]):  # fmt: skip
        run(cmd, machine_a)

    # Machine B: a clone (dvc.lock travels by git), no a.txt, the remote configured locally.
    machine_b = tmp_path / "b"
    run(["git", "clone", "-q", str(machine_a), str(machine_b)], tmp_path)
    assert not (machine_b / "a.txt").exists()
    add_remote(machine_b, "shared", url, options)
    used = run_synced_stage(machine_b, "use", "shared")
    assert used.status == "ran"
    assert (machine_b / "a.txt").read_text() == "made on machine A"  # pulled from the remote
    assert (machine_b / "b.txt").read_text() == "made on machine A!"
    assert "shared" not in (machine_b / ".dvc" / "config").read_text()  # config.local only
    lock = yaml.safe_load((machine_b / "dvc.lock").read_text())
    return lock["stages"]["use"]["outs"][0]["md5"]


def test_stages_exchange_data_through_an_ssh_remote(sshd, tmp_path: Path) -> None:
    port, key, user = sshd
    storage = tmp_path / "remote-storage"
    storage.mkdir()
    options = {"port": str(port), "keyfile": str(key), "allow_agent": "false"}
    md5 = _two_machines_share_a_remote(tmp_path, f"ssh://{user}@127.0.0.1{storage}", options)
    assert (storage / "files" / "md5" / md5[:2] / md5[2:]).exists()  # pushed over SSH


def _s3(endpoint: str):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )


@pytest.fixture
def s3_stand_in(tmp_path: Path):
    """moto's server mode: an S3-compatible HTTP server from PyPI, a **stand-in** for S3/MinIO
    (the code path — dvc-s3, endpointurl, keys — is the one a real bucket uses)."""
    server = VENV_BIN / "moto_server"
    if not server.exists():
        pytest.skip("moto[server] absent (the S3 stand-in): pip install -e '.[dev]'")
    port = _free_port()
    proc = subprocess.Popen(
        [str(server), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2)
            break
        except OSError:
            assert proc.poll() is None, "moto_server exited"
            time.sleep(0.3)
    _s3(endpoint).create_bucket(Bucket="visionops-dvc")
    try:
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_stages_exchange_data_through_an_s3_compatible_remote(s3_stand_in, tmp_path) -> None:
    options = {
        "endpointurl": s3_stand_in,
        "access_key_id": "testing",
        "secret_access_key": "testing",
        "region": "us-east-1",
    }
    md5 = _two_machines_share_a_remote(tmp_path, "s3://visionops-dvc/cache", options)
    key = f"cache/files/md5/{md5[:2]}/{md5[2:]}"
    body = _s3(s3_stand_in).get_object(Bucket="visionops-dvc", Key=key)["Body"].read()
    assert body == b"made on machine A!"


def test_missing_remote_is_a_one_line_error(tmp_path: Path) -> None:
    from visionops.errors import VisionOpsError
    from visionops.orchestrate.remote_sync import check_remote

    run(["git", "init", "-q"], tmp_path)
    run(["dvc", "init", "-q"], tmp_path)
    with pytest.raises(VisionOpsError, match="dvc remote add shared"):
        check_remote(tmp_path, "shared")
