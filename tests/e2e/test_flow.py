"""The Prefect flow ``training-pipeline`` end to end: a real Prefect server (temporary SQLite
database), real DVC in a git-initialised scratch project, real MLflow, generated images.

One server and one project are shared by the module (the server start and the one full
pipeline run are the expensive parts); tests run in file order and build on each other's state.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from uuid import UUID

import pytest
import yaml

from tests.project_factory import make_project, run, write_class_images

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
FLOW_FILE = REPO_ROOT / "flows" / "pipeline.py"
STAGES = ["validate", "split", "train", "evaluate", "export", "register"]
FAST = {"train.finetune_epochs": 0, "base.workers": 1}


def _load_flow_module():
    spec = importlib.util.spec_from_file_location("visionops_flow_pipeline", FLOW_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("prefect-home")


@pytest.fixture(scope="module")
def prefect_api(prefect_home: Path):
    """A real Prefect API server in a subprocess with a throw-away database; yields its URL."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with (
        temporary_settings({PREFECT_HOME: prefect_home}),
        prefect_test_harness(server_startup_timeout=240),
    ):
        yield PREFECT_API_URL.value()


@pytest.fixture(scope="module")
def flow_module(prefect_api: str):
    return _load_flow_module()


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git + DVC project with 3 classes x 14 JPEGs and tiny training params, whose data was
    already validated and split once (``dvc repro split``): the "old" test split."""
    root = make_project(tmp_path_factory.mktemp("flowproj") / "proj", overrides=FAST)
    run(["dvc", "repro", "split"], root)
    return root


def _client():
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def _artifacts(flow_run_id: UUID) -> dict[str, object]:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with _client() as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.key: a for a in found}


def _flow_run_in_subprocess(project: Path, api: str, home: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_HOME": str(home)}
    return subprocess.Popen(
        [sys.executable, str(FLOW_FILE), "--project", str(project), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _dvc_lock_is_valid(project: Path) -> None:
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(STAGES)
    status = run(["dvc", "status"], project)
    assert "up to date" in status.stdout, status.stdout


def _data_md5(project: Path) -> str:
    return yaml.safe_load((project / "data.dvc").read_text())["outs"][0]["md5"]


def _test_rows(project: Path) -> set[str]:
    return set((project / "artifacts" / "split" / "test.csv").read_text().splitlines()[1:])


def _upstream_by_task(flow_run_id: UUID) -> dict[str, set[str]]:
    """Task run name -> names of the task runs it depends on (``task_inputs``: the edges of the
    flow-run graph in the Prefect UI). Names must be unique within the run."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with _client() as client:
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    names = {t.id: t.name for t in tasks}
    assert len(set(names.values())) == len(names), sorted(names.values())
    return {
        t.name: {
            names[i.id]
            for inputs in t.task_inputs.values()
            for i in inputs
            if getattr(i, "input_type", None) == "task_run"
        }
        for t in tasks
    }


def _assert_graph_is_the_chain(flow_run_id: UUID, chain: list[str], **extra: set[str]) -> None:
    """Every task waits for the one before it and nothing else (the report feeds no task)."""
    expected = {name: {before} for before, name in zip(chain, chain[1:], strict=False)}
    expected[chain[0]] = set()
    expected.update(extra)
    assert _upstream_by_task(flow_run_id) == expected


def test_new_images_two_concurrent_runs_end_to_end(
    project: Path, prefect_api: str, prefect_home: Path
):
    """10 new images, two runs at once: one makes a new data version and runs every stage, the
    other waits for the pipeline lock and then finds everything up to date."""
    old_md5, old_test = _data_md5(project), _test_rows(project)
    write_class_images(project / "data" / "red", "red", 10, start=100)
    procs = [_flow_run_in_subprocess(project, prefect_api, prefect_home, "--push")]
    time.sleep(2)
    procs.append(_flow_run_in_subprocess(project, prefect_api, prefect_home, "--push"))
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    for proc, out in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out[-4000:]
    results = [
        json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1]) for out in outputs
    ]
    kinds = [set(r["stages"].values()) for r in results]
    assert sorted(tuple(sorted(k)) for k in kinds) == [("ran",), ("skipped",)], results
    assert "waiting for it to finish" in outputs[kinds.index({"skipped"})]
    _dvc_lock_is_valid(project)
    assert any((project / "dvc-storage").rglob("*")), "push=True left the DVC remote empty"
    assert _data_md5(project) != old_md5
    assert old_test <= _test_rows(project), "an old test image moved to another split"

    with _client() as client:
        for r in results:
            assert client.read_flow_run(UUID(r["flow_run_id"])).state.type.value == "COMPLETED"
    worker = UUID(results[kinds.index({"ran"})]["flow_run_id"])
    chain = ["apply-params", "version-data", *STAGES, "dvc-push"]
    _assert_graph_is_the_chain(worker, chain, **{"record-in-mlflow": {"apply-params", "register"}})
    artifacts = _artifacts(worker)
    for artifact in artifacts.values():  # attached to the flow run, not to a task run
        assert artifact.flow_run_id == worker and artifact.task_run_id is None, artifact
    report = artifacts["visionops-pipeline-report"].data
    for needle in (
        f"was `{old_md5}`",
        "**new version**",
        "Images per class and split",
        "Validation",
        "Test metrics",
        "Champion decision",
        "models:/visionops-classifier/1",
        "| train | ran |",
    ):
        assert needle in report, needle
    table = artifacts["visionops-per-class-metrics"].data
    rows = json.loads(table) if isinstance(table, str) else table
    assert {row["class"] for row in rows} == {"red", "green", "blue"}
    assert {"precision", "recall", "f1", "support"} <= set(rows[0])


def test_unchanged_data_skips_every_stage_fast(project: Path, flow_module):
    started = time.perf_counter()
    state = flow_module.training_pipeline(project=str(project), return_state=True)
    elapsed = time.perf_counter() - started
    assert state.is_completed(), state.message
    assert state.result() == dict.fromkeys(STAGES, "skipped")
    assert elapsed < 60, f"no-op run took {elapsed:.1f} s"
    report = _artifacts(state.state_details.flow_run_id)["visionops-pipeline-report"].data
    assert "all skipped" in report and "unchanged" in report


def test_make_deploy_hint_triggers_a_run_as_printed(
    project: Path, prefect_api: str, prefect_home: Path, tmp_path: Path
):
    """`make deploy` prints how to trigger a run; that line, typed as printed in another terminal
    (another folder, no venv on PATH, no PREFECT_API_URL), starts a run the served flow executes."""
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "PREFECT_HOME": str(prefect_home)}
    env["PREFECT_RUNNER_POLL_FREQUENCY"] = "2"  # the runner looks for new runs every 2 s, not 10
    serve_file = REPO_ROOT / "flows" / "serve_deployment.py"
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, str(serve_file), "--project", str(project), "--name", "hint"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        hint, deadline = None, time.monotonic() + 120
        with _client() as client:  # the hint is printed as serve() starts registering
            while hint is None or not _deployment_exists(client, "training-pipeline/hint"):
                assert server.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(1)
                lines = [ln for ln in log.read_text().splitlines() if "deployment run" in ln]
                hint = lines[0].strip() if lines else None
        assert "deployment run training-pipeline/hint" in hint
        terminal = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8"}
        terminal["PREFECT_HOME"] = str(prefect_home)
        typed = subprocess.run(
            ["bash", "-c", hint], cwd=tmp_path, env=terminal, capture_output=True, text=True
        )
        assert typed.returncode == 0, typed.stdout + typed.stderr
        run_id = UUID(re.search(r"UUID: *([0-9a-f-]{36})", typed.stdout).group(1))
        deadline = time.monotonic() + 300
        with _client() as client:
            while not (state := client.read_flow_run(run_id).state).is_final():
                assert time.monotonic() < deadline, f"triggered run still {state.type}"
                time.sleep(2)
        assert state.is_completed(), state.message
    finally:
        server.terminate()
        server.wait(timeout=60)


def _deployment_exists(client, name: str) -> bool:
    from prefect.exceptions import ObjectNotFound

    try:
        client.read_deployment_by_name(name)
    except ObjectNotFound:
        return False
    return True


def test_param_override_is_written_rerun_and_recorded(project: Path, flow_module):
    before = (project / "params.yaml").read_text()
    state = flow_module.training_pipeline(
        project=str(project), params={"register.min_improvement": 0.5}, return_state=True
    )
    assert state.is_completed(), state.message
    statuses = state.result()
    assert statuses["register"] == "ran"
    assert all(statuses[s] == "skipped" for s in STAGES[:-1]), statuses
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert params["register"]["min_improvement"] == 0.5
    assert before != (project / "params.yaml").read_text()
    assert "up to date" in run(["dvc", "status"], project).stdout  # dvc repro reproduces it
    decision = json.loads((project / "artifacts" / "register" / "decision.json").read_text())
    # The export did not change: the same ONNX content is the same version, not a second one.
    assert decision["already_registered"] and decision["version"] == "1"

    from mlflow.tracking import MlflowClient

    info = json.loads((project / "artifacts" / "train" / "run.json").read_text())
    tags = MlflowClient(tracking_uri=info["tracking_uri"]).get_run(info["run_id"]).data.tags
    assert json.loads(tags["visionops.param_overrides"]) == {"register.min_improvement": 0.5}
    assert tags["prefect.flow_run_id"] == str(state.state_details.flow_run_id)


def test_failing_stage_fails_the_flow_run_with_its_message(
    tmp_path: Path, flow_module, prefect_api: str
):
    bad = make_project(tmp_path / "bad", classes=("red", "green"), per_class=6, overrides=FAST)
    for extra in sorted((bad / "data" / "green").iterdir())[1:]:
        extra.unlink()  # one image left: below validate.min_images_per_class
    state = flow_module.training_pipeline(project=str(bad), return_state=True)
    assert state.is_failed()
    with _client() as client:
        stored = client.read_flow_run(state.state_details.flow_run_id)
    assert stored.state.type.value == "FAILED"
    assert "stage 'validate' failed" in stored.state.message
    assert "min_images_per_class" in stored.state.message and "green" in stored.state.message
    report = _artifacts(stored.id)["visionops-pipeline-report"].data
    assert "FAILED at stage `validate`" in report and "| split | not run |" in report

    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with _client() as client:
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[stored.id]))
        )
    validate = next(t for t in tasks if t.name == "validate")
    assert validate.run_count == 1, "a deterministic validation failure must not be retried"
    shutil.rmtree(bad, ignore_errors=True)


def test_commit_true_commits_the_lineage_and_moves_the_version_tag(project: Path, flow_module):
    """The runs above left data.dvc, params.yaml (and the new dvc.lock) uncommitted, so the
    version they registered says `<sha>-dirty`. A run with commit=True commits exactly those
    files and points the version's git_commit tag at the new commit."""
    from mlflow.tracking import MlflowClient

    git = ["git"]  # run() works in the project folder
    base = run([*git, "rev-parse", "HEAD"], project).stdout.strip()
    (project / "notes.txt").write_text("untracked: never committed\n")
    state = flow_module.training_pipeline(project=str(project), commit=True, return_state=True)
    assert state.is_completed(), state.message
    assert set(state.result().values()) == {"skipped"}
    head = run([*git, "rev-parse", "HEAD"], project).stdout.strip()
    assert run([*git, "rev-parse", "HEAD^"], project).stdout.strip() == base
    committed = run([*git, "show", "--name-only", "--format=", "HEAD"], project).stdout.split()
    assert sorted(committed) == ["data.dvc", "dvc.lock", "params.yaml"]
    assert "flow run" in run([*git, "log", "-1", "--format=%B"], project).stdout
    assert run([*git, "status", "--porcelain", "-uno"], project).stdout == ""

    decision = json.loads((project / "artifacts" / "register" / "decision.json").read_text())
    client = MlflowClient(decision["tracking_uri"], decision["tracking_uri"])
    tags = client.get_model_version(decision["model_name"], decision["version"]).tags
    assert tags["git_commit"] == head and tags["git_dirty"] == ""
    assert tags["git_commit.at_register"] == f"{base}-dirty"
    assert tags["git_dirty.at_register"] == "data.dvc"

    again = flow_module.training_pipeline(project=str(project), commit=True, return_state=True)
    assert again.is_completed() and run([*git, "rev-parse", "HEAD"], project).stdout.strip() == head
