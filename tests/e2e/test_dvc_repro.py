"""A real `dvc repro` of the whole DAG in a scratch git+DVC project, then a no-op second run;
DVC's metrics and plots (offline, in headless Chromium) and experiments on the same project."""

from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path

import pytest
import yaml

from tests.e2e.chromium import headless_chromium
from tests.project_factory import REPO_ROOT, make_project, run

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_project(tmp_path_factory.mktemp("dvcproj") / "proj")
    run(["dvc", "repro"], root, timeout=900)
    return root


def test_every_stage_leaves_its_outputs(reproduced: Path) -> None:
    art = reproduced / "artifacts"
    for rel in (
        "validate/report.json",
        "validate/manifest.csv",
        "split/train.csv",
        "split/test.csv",
        "split/counts.json",
        "train/best.pt",
        "train/history.csv",
        "evaluate/metrics.json",
        "evaluate/scores.json",
        "evaluate/predictions.csv",
        "export/model.onnx",
        "register/decision.json",
    ):
        assert (art / rel).is_file(), rel
    metrics = json.loads((art / "evaluate" / "metrics.json").read_text())
    assert 0.0 <= metrics["accuracy"] <= 1.0 and "macro_f1" in metrics
    lock = yaml.safe_load((reproduced / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"validate", "split", "train", "evaluate", "export", "register"}


def test_second_repro_is_a_noop(reproduced: Path) -> None:
    proc = run(["dvc", "repro"], reproduced)
    assert "Data and pipelines are up to date" in proc.stdout + proc.stderr, proc.stdout
    status = run(["dvc", "status"], reproduced)
    assert "up to date" in status.stdout


METRIC_FILES = {"artifacts/train/metrics.json", "artifacts/evaluate/scores.json"}


def _numbers(metrics: dict) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in metrics.values())


def test_metrics_show_fits_a_terminal(reproduced: Path) -> None:
    """Only the flat metric files: numbers, at most 12 columns (issue 11)."""
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], reproduced).stdout)
    files = shown[""]["data"]
    assert set(files) == METRIC_FILES, files
    for path, entry in files.items():
        assert _numbers(entry["data"]), (path, entry)
    scores = files["artifacts/evaluate/scores.json"]["data"]
    assert {"accuracy", "macro_f1", "log_loss", "ece", "seconds"} <= set(scores), scores
    table = run(["dvc", "metrics", "show"], reproduced).stdout
    header = table.splitlines()[0].split()
    width = max(map(len, table.splitlines()))
    print(f"\ndvc metrics show: {len(header)} columns, {width} characters wide\n{table}")
    assert header[0] == "Path" and len(header) <= 12, header
    assert len(table.splitlines()) == 1 + len(METRIC_FILES)
    predictions = list(csv.DictReader((reproduced / "artifacts/evaluate/predictions.csv").open()))
    test_rows = (reproduced / "artifacts/split/test.csv").read_text().splitlines()[1:]
    assert len(predictions) == len(test_rows) and {"actual", "predicted"} <= set(predictions[0])


@pytest.fixture()
def chromium(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Headless Chromium keeping the browser's console log."""
    with headless_chromium(tmp_path, monkeypatch, console_log=True) as driver:
        yield driver


def test_plots_show_renders_offline_in_chromium(reproduced: Path, chromium, tmp_path: Path) -> None:
    """`dvc plots show` with the repository's template (Vega inlined): charts and images render
    from file://, with no network and no console error (issue 11)."""
    from configobj import ConfigObj
    from selenium.webdriver.support.ui import WebDriverWait

    # The repository's own setting and vendored page; config.local, so git sees no change.
    template = ConfigObj(str(REPO_ROOT / ".dvc" / "config"))["plots"]["html_template"]
    shutil.copytree(REPO_ROOT / "vendor", reproduced / "vendor", dirs_exist_ok=True)
    run(["dvc", "config", "--local", "plots.html_template", template], reproduced)
    out = tmp_path / "plots"  # outside the project: the page must not depend on where it is
    shown = run(["dvc", "plots", "show", "-o", str(out)], reproduced)
    page = out / "index.html"
    assert shown.stdout.strip().endswith(page.as_uri()), shown.stdout + shown.stderr
    html = page.read_text(encoding="utf-8")
    assert "cdn.jsdelivr.net" not in html and "<script src" not in html

    chromium.get(page.as_uri())
    charts = ["learning_curves", "accuracy", "confusion_matrix"]
    drawn = """return arguments[0].map(id => {
        const m = document.querySelector('#' + id + ' .marks');
        return m ? m.getBoundingClientRect().width : 0; })"""
    WebDriverWait(chromium, 30).until(lambda d: all(w > 0 for w in d.execute_script(drawn, charts)))
    versions = chromium.execute_script(
        "return [window.vega.version, window.vegaLite.version, window.vegaEmbed.version]"
    )
    images = chromium.execute_script(
        "return Array.from(document.images, i => [i.getAttribute('src'), i.naturalWidth])"
    )
    errors = [e for e in chromium.get_log("browser") if e["level"] == "SEVERE"]
    results = REPO_ROOT / "test-results"
    results.mkdir(exist_ok=True)
    chromium.save_screenshot(str(results / "dvc-plots.png"))

    pinned = json.loads((REPO_ROOT / "vendor/vega/versions.json").read_text())
    assert versions == [pinned[n]["version"] for n in ("vega", "vega-lite", "vega-embed")]
    names = {Path(src).name.split("_artifacts_", 1)[-1] for src, _ in images}
    expected = {"train_curves.png"} | {
        f"evaluate_plots_{n}.png"
        for n in ("confusion_matrix", "confusion_matrix_normalized", "reliability", "top_losses")
    }
    assert names == expected, images
    assert all(width > 0 for _, width in images), images
    assert not errors, errors


def test_dvc_exp_run_never_moves_the_champion(reproduced: Path) -> None:
    """`dvc exp run` registers a version tagged with the experiment; @champion stays put."""
    from mlflow import MlflowClient

    decision = json.loads((reproduced / "artifacts/register/decision.json").read_text())
    name, uri = decision["model_name"], decision["tracking_uri"]
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    champion = str(client.get_model_version_by_alias(name, "champion").version)
    baseline = {f: (reproduced / f).read_bytes() for f in ("params.yaml", "dvc.lock")}
    try:
        run(["dvc", "exp", "run", "-n", "two-head-epochs", "-S", "train.head_epochs=2"],
            reproduced, timeout=900)  # fmt: skip
        exp = json.loads((reproduced / "artifacts/register/decision.json").read_text())
        assert exp["experiment"] == "two-head-epochs" and exp["alias"] is None, exp
        assert exp["version"] != champion and "promote_experiments is false" in exp["reason"]
        assert str(client.get_model_version_by_alias(name, "champion").version) == champion
        tags = client.get_model_version(name, exp["version"]).tags
        assert tags["experiment"] == "two-head-epochs" and tags["decision.state"] == "done"
    finally:  # give later tests the workspace of the baseline commit back
        for file, content in baseline.items():
            (reproduced / file).write_bytes(content)
        run(["dvc", "checkout", "--force"], reproduced)


def _registry_state(store: str) -> dict:
    """Every version of every registered model with its aliases, and the number of runs."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=store, registry_uri=store)
    versions = {
        (v.name, str(v.version)): sorted(client.get_model_version(v.name, v.version).aliases)
        for v in client.search_model_versions()
    }
    experiments = [e.experiment_id for e in client.search_experiments()]
    return {"versions": versions, "runs": len(client.search_runs(experiments, max_results=1000))}


def test_commit_lineage_then_reproduce_the_champion(reproduced: Path) -> None:
    """Commit the run's lineage files, then `visionops reproduce models:/...@champion` rebuilds
    it in a temporary worktree: same split, same test metric, the user's registry, work tree and
    git worktrees untouched."""
    from mlflow import MlflowClient

    from visionops.config import load_config
    from visionops.orchestrate.commit_lineage import commit_lineage

    store = f"sqlite:///{reproduced / 'mlruns' / 'mlflow.db'}"
    base = run(["git", "rev-parse", "HEAD"], reproduced).stdout.strip()
    lineage = commit_lineage(load_config(reproduced / "params.yaml"), flow_run="test")
    assert lineage.status == "committed" and "dvc.lock" in lineage.files, lineage
    assert lineage.still_dirty == []
    head = run(["git", "rev-parse", "HEAD"], reproduced).stdout.strip()
    champion = MlflowClient(tracking_uri=store, registry_uri=store).get_model_version_by_alias(
        "visionops-classifier", "champion"
    )
    # Registered on the clean initial commit: the lineage commit completes it, when
    # decision.json names the champion (a later `dvc exp run` version leaves it on `base`).
    assert champion.tags["git_commit"] in (base, head) and not champion.tags.get("git_dirty")
    before = _registry_state(store)
    lock_before = (reproduced / "dvc.lock").read_bytes()

    started = time.perf_counter()
    proc = run(
        ["visionops", "reproduce", "models:/visionops-classifier@champion", "--json"],
        reproduced,
        check=False,
        timeout=900,
    )
    seconds = time.perf_counter() - started
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["reproduced"] and report["split_identical"], report
    assert set(report["split"]) == {"train.csv", "val.csv", "test.csv", "counts.json"}
    assert report["commit"] == champion.tags["git_commit"] and report["dirty"] == []
    metric = report["metrics"][report["metric"]]
    # Training is deterministic cold vs cold; the verdict's tolerance is the ceiling here.
    assert abs(metric["delta_pt"]) <= 0.5, report["metrics"]
    print(
        f"\nreproduce: {seconds:.0f} s, split identical, {report['metric']} "
        f"{metric['old']:.4f} -> {metric['new']:.4f}, weights {report['weights']}, "
        f"metrics {report['metrics']}"
    )

    assert _registry_state(store) == before, "reproduce changed the user's registry"
    assert (reproduced / "dvc.lock").read_bytes() == lock_before
    assert run(["git", "status", "--porcelain", "-uno"], reproduced).stdout == ""
    assert len(run(["git", "worktree", "list"], reproduced).stdout.splitlines()) == 1
    removed = [ln for ln in proc.stderr.splitlines() if ln.startswith("removed the temporary")]
    assert removed and not Path(removed[-1].split()[-1]).parent.exists()


def _exp_metrics(entry: dict) -> dict[str, dict]:
    return {path: m["data"] for path, m in (entry["data"].get("metrics") or {}).items()}


def test_metrics_diff_and_exp_show_compare_experiments(reproduced: Path) -> None:
    """Two `dvc exp run`s on the committed baseline: `dvc exp show` and `dvc metrics diff` list
    numbers for the baseline and both experiments; metrics live in the DVC cache, not in git."""
    if run(["git", "status", "--porcelain", "dvc.lock"], reproduced).stdout.strip():
        run(["git", "add", "dvc.lock"], reproduced)  # alone (-k): commit the baseline here
        run(["git", "commit", "-qm", "baseline", "--", "dvc.lock"], reproduced)
    head = run(["git", "rev-parse", "HEAD"], reproduced).stdout.strip()
    baseline = {f: (reproduced / f).read_bytes() for f in ("params.yaml", "dvc.lock")}
    try:
        for name, param in (("ft2", "train.finetune_epochs=2"), ("top4", "evaluate.top_losses=4")):
            run(["dvc", "exp", "run", "-n", name, "-S", param], reproduced, timeout=900)
        shown = json.loads(run(["dvc", "exp", "show", "--json"], reproduced).stdout)
        diff = json.loads(
            run(["dvc", "metrics", "diff", head, "--all", "--json"], reproduced).stdout
        )
        drop = "Created|src/.*|data$|artifacts/[^:]*$"  # dependency hashes: not for people
        table = run(["dvc", "exp", "show", "--md", "--only-changed", "--drop", drop], reproduced)
    finally:  # leave the baseline's workspace behind
        for file, content in baseline.items():
            (reproduced / file).write_bytes(content)
        run(["dvc", "checkout", "--force"], reproduced)
    print(f"\n{table.stdout}")

    base = next(e for e in shown if e["rev"] == head)
    exps = {x["name"]: x["revs"][0] for x in base["experiments"] or []}
    assert {"ft2", "top4"} <= set(exps), list(exps)
    rows = {"baseline": _exp_metrics(base)} | {n: _exp_metrics(exps[n]) for n in ("ft2", "top4")}
    for row, metrics in rows.items():
        assert set(metrics) == METRIC_FILES and all(map(_numbers, metrics.values())), (row, metrics)
    train = "artifacts/train/metrics.json"
    assert rows["ft2"][train]["epochs"] == rows["baseline"][train]["epochs"] + 1, rows

    # workspace = the last experiment (ft2's model, evaluated again by top4) vs the baseline
    assert set(diff) == METRIC_FILES, diff
    for path, metrics in diff.items():
        for key, change in metrics.items():
            assert _numbers({"old": change["old"], "new": change["new"]}), (path, key, change)
    assert diff[train]["epochs"]["new"] == diff[train]["epochs"]["old"] + 1
