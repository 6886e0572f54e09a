"""register: a real MLflow SQLite store in tmp, real ONNX Runtime, hand-built ONNX models.

Champion/challenger both ways: a worse model never takes @champion, a better one does, and the
margin (register.min_improvement) is honoured. No torch needed: the models are toy colour
classifiers whose quality is set by how their classes map to colour channels.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow import MlflowClient

from tests.toy_onnx import CHANNEL, TOY_SPEC, colour_model
from tests.toy_project import make_project
from visionops.config import Config, load_config
from visionops.data import image_sets
from visionops.errors import VisionOpsError
from visionops.inference import Predictor
from visionops.io import write_json, write_with
from visionops.paths import stage_paths
from visionops.registry import champion
from visionops.registry import register as register
from visionops.registry.lineage import describe
from visionops.registry.version_record import read_record
from visionops.tracking import setup_tracking, tracking_uri

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
LABELS = ["blue", "green", "red"]
PERFECT = CHANNEL
MEDIOCRE = {"blue": 2, "green": 0, "red": 0}  # blue right; red images come out "green" (a tie)
WORSE = {"blue": 0, "green": 2, "red": 1}  # every colour lands on another class


def install_model(cfg: Config, channel_of: dict[str, int], scale: float = 4.0) -> None:
    """What export and evaluate would have left: model.onnx, report.json, metrics.json."""
    p = stage_paths(cfg)
    run = json.loads(p.train_run.read_text())["run_id"] if p.train_run.exists() else ""
    colour_model(
        p.onnx_model, LABELS, channel_of=channel_of, spec=TOY_SPEC, scale=scale, train_run_id=run
    )
    write_json(
        p.export_report,
        {
            "opset": 17,
            "sha256": hashlib.sha256(p.onnx_model.read_bytes()).hexdigest(),
            "parity": {
                "passed": True,
                "n_images": 9,
                "top1_agreement": 1.0,
                "max_abs_diff_prob": 1e-6,
                "limit": 1e-4,
            },
            "val_accuracy_onnx": 1.0,
            "git_commit": "0123abc",
            "data_version": "d41d8cd9",
            "params_hash": "feedbeef",
        },
    )
    write_json(p.evaluate_metrics, {"accuracy": 0.5, "macro_f1": 0.4, "per_class": {}})


@pytest.fixture
def project(tmp_path: Path) -> Config:
    cfg = make_project(
        tmp_path / "proj",
        per_split={"train": 2, "val": 1, "test": 4},
        params={"register": {"min_eval_images": 6}},
    )
    (cfg.root / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  train:\n    cmd: visionops train\n    outs:\n"
        "    - path: artifacts/train/best.pt\n      md5: 0123456789abcdef\n      size: 10\n"
    )
    return cfg


@pytest.fixture
def tracked(project: Config) -> Config:
    """The project plus the training's MLflow run (artifacts/train/run.json)."""
    cfg = project
    setup_tracking(cfg)
    with mlflow.start_run(run_name="train") as run:
        mlflow.log_params({"train.head_epochs": 2, "model.backbone": "toy"})
    write_json(
        stage_paths(cfg).train_run, {"run_id": run.info.run_id, "tracking_uri": tracking_uri(cfg)}
    )
    return cfg


def registered(cfg: Config, channel_of: dict[str, int], margin: float = 0.0, **params) -> dict:
    install_model(cfg, channel_of, **params)
    cfg = load_config(cfg.root / "params.yaml", overrides={"register.min_improvement": margin})
    decision = register.run(cfg).decision
    on_disk = json.loads(stage_paths(cfg).register_decision.read_text())
    assert on_disk == json.loads(json.dumps(decision))
    return decision


def client_of(cfg: Config) -> MlflowClient:
    uri = tracking_uri(cfg)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def alias_version(cfg: Config, alias: str) -> str:
    client = client_of(cfg)
    return str(client.get_model_version_by_alias(cfg.register.model_name, alias).version)


def test_champion_moves_only_for_a_real_improvement(tracked: Config) -> None:
    project = tracked
    name, uri = project.register.model_name, tracking_uri(project)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)

    first = registered(project, MEDIOCRE)
    assert (first["version"], first["alias"], first["champion_score"]) == ("1", "champion", None)
    assert 0.2 < first["new_score"] < 0.7  # macro-F1

    worse = registered(project, WORSE)
    assert (worse["version"], worse["alias"], worse["promoted"]) == ("2", "challenger", False)
    assert worse["champion_version"] == "1"
    assert worse["champion_score"] == pytest.approx(first["new_score"])
    assert worse["new_score"] == 0.0

    # Better, but not by more than the margin.
    held = registered(project, PERFECT, margin=1.0 - first["new_score"] + 1e-9)
    assert (held["alias"], held["new_score"]) == ("challenger", 1.0)

    better = registered(project, PERFECT, scale=5.0)  # other bytes: not the same version
    assert (better["version"], better["alias"], better["champion_version"]) == (
        "4",
        "champion",
        "1",
    )
    assert str(client.get_model_version_by_alias(name, "champion").version) == "4"
    assert str(client.get_model_version_by_alias(name, "challenger").version) == "3"

    mv = client.get_model_version(name, "4")
    assert len(mv.tags) <= 12, sorted(mv.tags)  # a Models-page row stays a few lines tall
    assert mv.tags["test.macro_f1"] == "0.4"  # evaluate's metrics.json (install_model)
    assert "**@champion**" in mv.description and "champion v1" in mv.description
    tags = read_record(client, mv, uri)  # the tags over visionops_record.json
    assert tags["decision.state"] == "done" and tags["seen_images.count"] == "9"
    assert tags["champion.register_reason"] == better["reason"]
    assert tags["git_commit"] == "0123abc" and tags["data_version"] == "d41d8cd9"
    assert tags["params_hash"] == "feedbeef"
    assert tags["dvc.train"] == "best.pt:0123456789abcdef"
    assert tags["test.accuracy"] == "0.5" and tags["parity.passed"] == "True"
    assert tags["decision"] == "champion" and tags["decision.champion_version"] == "1"
    assert client.get_model_version(name, "2").tags["decision"] == "challenger"

    predictor = Predictor(f"models:/{name}@champion", tracking_uri=uri)
    assert (predictor.model_name, predictor.model_version) == (name, "4")
    assert predictor.labels == LABELS

    lineage = describe(f"models:/{name}@champion", uri)
    train_run = json.loads(stage_paths(project).train_run.read_text())["run_id"]
    assert lineage["version"] == "4" and lineage["aliases"] == ["champion"]
    assert lineage["run_id"] == train_run
    assert lineage["git_commit"] == "0123abc"
    assert lineage["params"]["train.head_epochs"] == "2"
    assert lineage["metrics"]["register_test_macro_f1"] == 1.0

    with pytest.raises(VisionOpsError, match="not found in the MLflow registry"):
        Predictor(f"models:/{name}@nobody", tracking_uri=uri)


def test_register_needs_the_export(project: Config) -> None:
    with pytest.raises(VisionOpsError, match="run `visionops export` first"):
        register.run(project)


def _rows(cfg: Config, split: str) -> list[dict]:
    with stage_paths(cfg).split_file(split).open(newline="") as fh:
        return list(csv.DictReader(fh))


def _write_rows(cfg: Config, split: str, rows: list[dict]) -> None:
    with stage_paths(cfg).split_file(split).open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "label", "sha256"])
        writer.writeheader()
        writer.writerows(rows)


def test_a_reshuffled_split_is_compared_only_on_images_neither_model_saw(tracked: Config) -> None:
    cfg = tracked
    registered(cfg, MEDIOCRE)  # version 1 = champion, trained on the first split
    first_seen = {r["sha256"] for s in ("train", "val") for r in _rows(cfg, s)}
    # "base.seed changed": the champion's train/val images now sit in the test split and the
    # new model trains on former test images (plus, per class, one image only it has seen).
    train, val, test = _rows(cfg, "train"), _rows(cfg, "val"), _rows(cfg, "test")
    by_label = {lab: [r for r in test if r["label"] == lab] for lab in LABELS}
    new_train = [by_label[lab][0] for lab in LABELS]
    new_test = train + val + [r for lab in LABELS for r in by_label[lab][1:]]
    _write_rows(cfg, "train", new_train)
    _write_rows(cfg, "val", [])
    _write_rows(cfg, "test", new_test)

    fair = {r["sha256"] for r in new_test} - first_seen - {r["sha256"] for r in new_train}
    assert len(fair) == 9 and len(new_test) == 18  # half the new test split is the champion's
    d = registered(cfg, PERFECT)
    assert d["eval_images"] == 9 and d["test_images"] == 18
    assert d["eval_set_sha"] == image_sets.digest(fair)  # not one of the champion's images
    assert (d["alias"], d["champion_version"], d["new_score"]) == ("champion", "1", 1.0)
    client = client_of(cfg)
    mv = client.get_model_version(cfg.register.model_name, d["version"])
    tags = read_record(client, mv, tracking_uri(cfg))
    assert (
        tags["decision.eval_images"] == "9" and tags["decision.eval_set_sha"] == d["eval_set_sha"]
    )

    # Too few shared unseen images: no promotion, and the message says what to do.
    _write_rows(cfg, "test", new_train + [by_label["red"][1]])  # the champion trained on 3
    strict = registered(cfg, PERFECT, scale=6.0)
    assert strict["eval_images"] == 1 and strict["alias"] == "challenger"
    assert "register.min_eval_images=6" in strict["reason"] and "base.seed" in strict["reason"]
    assert "only 1 of 4 current test images" in strict["reason"]
    assert alias_version(cfg, "champion") == d["version"]


def _model_dir(cfg: Config, version: str) -> Path:
    client = client_of(cfg)
    location = client.get_model_version_download_uri(cfg.register.model_name, version)
    return Path(mlflow.artifacts.download_artifacts(location, tracking_uri=tracking_uri(cfg)))


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_a_broken_champion_is_never_replaced_blind(tracked: Config, damage: str) -> None:
    cfg, name = tracked, tracked.register.model_name
    registered(cfg, MEDIOCRE)
    onnx_file = _model_dir(cfg, "1") / "model.onnx"
    if damage == "deleted":
        shutil.rmtree(onnx_file.parent)
    else:
        onnx_file.write_bytes(onnx_file.read_bytes()[:200])
    d = registered(cfg, PERFECT)
    assert (d["version"], d["alias"], d["champion_score"]) == ("2", "challenger", None)
    assert "could not be loaded" in d["reason"] and "visionops promote" in d["reason"]
    assert alias_version(cfg, "champion") == "1"

    # A person decides, with a reason that the MLflow UI shows on the version and the model.
    uri = tracking_uri(cfg)
    record = champion.promote(name, "2", "v1 artifact lost in the disk failure", uri)
    assert (record["version"], record["previous_champion"]) == ("2", "1")
    assert alias_version(cfg, "champion") == "2"
    tags = client_of(cfg).get_model_version(name, "2").tags
    assert tags["champion.promote_reason"] == "v1 artifact lost in the disk failure"
    assert tags["champion.promote_by"] and tags["champion.promote_at"]
    model_tags = client_of(cfg).get_registered_model(name).tags
    assert "v1 -> v2 (promote)" in model_tags["champion.last_change"]

    registered(cfg, WORSE)  # version 3: worse -> challenger
    champion.promote(name, "3", "try it in production", uri)
    assert champion.rollback(name, "worse in production", uri)["version"] == "2"
    assert alias_version(cfg, "champion") == "2"
    with pytest.raises(VisionOpsError, match="not promoted"):  # v1 is broken: refused
        champion.rollback(name, "again", uri)
    assert alias_version(cfg, "champion") == "2"
    with pytest.raises(VisionOpsError, match="already holds @champion"):
        champion.promote(name, "2", "twice", uri)


def test_registering_the_same_export_twice_is_one_version(tracked: Config) -> None:
    first = registered(tracked, MEDIOCRE)
    p = stage_paths(tracked)
    again = register.run(tracked).decision
    assert again["version"] == first["version"] == "1" and again["already_registered"]
    assert (again["alias"], again["new_score"]) == ("champion", first["new_score"])
    assert json.loads(p.register_decision.read_text())["version"] == "1"
    versions = client_of(tracked).search_model_versions(f"name = '{tracked.register.model_name}'")
    assert len(versions) == 1


def test_a_stale_export_is_refused(tracked: Config) -> None:
    install_model(tracked, PERFECT)
    p = stage_paths(tracked)
    write_json(p.train_run, {"run_id": "0" * 32, "tracking_uri": tracking_uri(tracked)})
    with pytest.raises(VisionOpsError, match="the export is stale"):
        register.run(tracked)


def _register_cli(cfg: Config, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "visionops.cli", "register"],
        cwd=cfg.root,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_kill_9_between_version_and_alias_is_completed_by_the_next_run(tracked: Config) -> None:
    cfg, name = tracked, tracked.register.model_name
    registered(cfg, MEDIOCRE)
    install_model(cfg, PERFECT)
    killed = _register_cli(cfg, VISIONOPS_FAILPOINT="register.after_version")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    client = client_of(cfg)
    tags = client.get_model_version(name, "2").tags
    assert (tags["decision"], tags["decision.state"]) == ("champion", "pending")
    assert alias_version(cfg, "champion") == "1"  # the kill came before the alias moved

    rerun = _register_cli(cfg)
    assert rerun.returncode == 0, rerun.stderr
    assert "completed" in rerun.stderr and "already registered" in rerun.stdout
    versions = client.search_model_versions(f"name = '{name}'")
    assert sorted(str(v.version) for v in versions) == ["1", "2"]
    assert {v.tags["decision.state"] for v in versions} == {"done"}
    assert alias_version(cfg, "champion") == "2"


def test_a_version_left_without_a_decision_is_marked_abandoned(tracked: Config) -> None:
    cfg, name = tracked, tracked.register.model_name
    registered(cfg, MEDIOCRE)
    client = client_of(cfg)
    orphan = client.create_model_version(name, client.get_model_version(name, "1").source)
    registered(cfg, WORSE)
    tags = client.get_model_version(name, orphan.version).tags
    assert tags["decision"] == "abandoned" and tags["decision.state"] == "abandoned"
    assert "visionops promote" in tags["decision.abandoned_reason"]
    assert alias_version(cfg, "champion") == "1"


def test_an_experiment_never_moves_the_champion(
    tracked: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tracked
    registered(cfg, MEDIOCRE)
    monkeypatch.setenv("DVC_EXP_NAME", "bushy-lamb")
    d = registered(cfg, PERFECT)
    assert (d["alias"], d["experiment"], d["new_score"]) == (None, "bushy-lamb", 1.0)
    assert "would be @champion" in d["reason"]
    assert alias_version(cfg, "champion") == "1"
    tags = client_of(cfg).get_model_version(cfg.register.model_name, d["version"]).tags
    assert tags["experiment"] == "bushy-lamb" and tags["decision"] == "none"

    params = yaml.safe_load((cfg.root / "params.yaml").read_text())
    params["register"]["promote_experiments"] = True
    (cfg.root / "params.yaml").write_text(yaml.safe_dump(params))
    asked = registered(cfg, PERFECT, scale=5.0)
    assert asked["alias"] == "champion" and alias_version(cfg, "champion") == asked["version"]


def test_promote_and_rollback_from_the_command_line(tracked: Config) -> None:
    cfg, name = tracked, tracked.register.model_name
    registered(cfg, MEDIOCRE)
    registered(cfg, WORSE)  # version 2: challenger

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "visionops.cli", *args],
            cwd=cfg.root,
            env={**os.environ, "VISIONOPS_USER": "alice"},
            capture_output=True,
            text=True,
            timeout=120,
        )

    done = cli("promote", name, "2", "--reason", "A/B test won")
    assert done.returncode == 0, done.stderr
    assert "@champion v1 -> v2 (promote by alice" in done.stdout
    back = cli("rollback", name, "-m", "complaints")
    assert back.returncode == 0 and "v2 -> v1 (rollback by alice" in back.stdout, back.stderr
    assert alias_version(cfg, "champion") == "1"
    missing = cli("promote", name, "99", "--reason", "typo")
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1, missing.stderr
    assert "not found in the MLflow registry" in missing.stderr
    nothing = cli("rollback", name, "-m", "again")
    assert nothing.returncode == 1 and "only champion on record" in nothing.stderr


def test_a_split_changed_after_training_is_refused(tracked: Config) -> None:
    p = stage_paths(tracked)
    run = json.loads(p.train_run.read_text())
    seen = image_sets.seen_by_training(p.split_file("train"), p.split_file("val"), tracked.data_dir)
    write_json(p.train_run, {**run, "seen_images": {"count": 9, "sha": image_sets.digest(seen)}})
    install_model(tracked, PERFECT)
    _write_rows(tracked, "train", _rows(tracked, "train")[1:])  # `visionops split` ran again
    with pytest.raises(VisionOpsError, match="changed after training"):
        register.run(tracked)


def test_outputs_and_their_mlruns_copies_keep_the_umask_mode(tracked: Config) -> None:
    """Under umask 022 every file export/evaluate/register leave, and every artifact MLflow
    copied into mlruns/ (shutil.copy2 keeps the source's mode), is 0644: readable by a service
    running as another user. The atomic writers once made them all 0600 (mkstemp)."""
    before = os.umask(0o022)
    try:
        install_model(tracked, PERFECT)
        p = stage_paths(tracked)
        onnx_bytes = p.onnx_model.read_bytes()  # published atomically, as export does
        write_with(p.onnx_model, lambda tmp: tmp.write_bytes(onnx_bytes))
        assert register.run(tracked).decision["alias"] == "champion"
    finally:
        os.umask(before)
    outputs = [p.onnx_model, p.export_report, p.evaluate_metrics, p.register_decision]
    copies = [
        f
        for f in (tracked.root / "mlruns").rglob("*")
        if f.is_file() and not f.name.startswith("mlflow.db")  # the store, made by the fixture
    ]
    names = {f.name for f in copies}
    assert {"model.onnx", "MLmodel", "seen_images.txt", p.export_report.name} <= names
    modes = {
        str(f.relative_to(tracked.root)): oct(f.stat().st_mode & 0o777) for f in outputs + copies
    }
    assert modes == dict.fromkeys(modes, "0o644")


# --- int8 as a second artifact of the same version (issue 12) ---------------------------------

INT8 = "model.int8.onnx"


def install_int8(cfg: Config, passed: bool) -> Path:
    """What export's int8 gate leaves beside install_model's fp32 model: int8/gate.json, the
    report's int8 block and, when it passed, a really quantized int8/model.int8.onnx stamped
    with its verdict and the fp32 model's sha256."""
    import numpy as np

    from visionops.export.int8_files import GATE_KEY, onnx_metadata
    from visionops.export.onnx_meta import write_metadata
    from visionops.export.quantize import Recipe, quantize_int8

    p = stage_paths(cfg)
    folder = p.onnx_model.parent / "int8"
    folder.mkdir(parents=True, exist_ok=True)
    sha = hashlib.sha256(p.onnx_model.read_bytes()).hexdigest()
    block = {
        "enabled": True,
        "passed": passed,
        "reason": "top-1 agreement 99.80%" if passed else "top-1 agreement 97.00% < 99.50%",
        "path": "artifacts/export/int8/model.int8.onnx" if passed else None,
        "n_images": 500,
        "agreement": 0.998 if passed else 0.97,
        "accuracy_delta": 0.002 if passed else -0.012,
        "speedup": 1.93,
        "fp32_sha256": sha,
    }
    if passed:
        size = TOY_SPEC.image_size
        x = np.random.default_rng(0).uniform(-1, 1, (16, 3, size, size)).astype(np.float32)
        model = folder / "model.int8.onnx"
        quantize_int8(p.onnx_model, model, x, onnx_metadata(p.onnx_model), Recipe(images=16))
        stamp = {"passed": True, "agreement": 0.998, "fp32_sha256": sha}
        write_metadata(model, {**onnx_metadata(model), GATE_KEY: json.dumps(stamp)})
    write_json(folder / "gate.json", block)
    report = json.loads(p.export_report.read_text())
    write_json(p.export_report, {**report, "int8": block})
    return folder


def test_an_int8_model_is_a_second_file_of_the_same_version(tracked: Config) -> None:
    cfg, name, uri = tracked, tracked.register.model_name, tracking_uri(tracked)
    install_model(cfg, PERFECT)
    install_int8(cfg, passed=True)
    decision = register.run(cfg).decision
    assert (decision["version"], decision["alias"]) == ("1", "champion")
    client = client_of(cfg)
    assert [str(v.version) for v in client.search_model_versions(f"name = '{name}'")] == ["1"]
    mv = client.get_model_version(name, "1")
    assert mv.tags["int8"] == "passed" and len(mv.tags) <= 12, sorted(mv.tags)
    record = read_record(client, mv, uri)
    assert record["int8.agreement"] == "0.998" and record["int8.speedup"] == "1.93"
    assert record["int8.accuracy_delta"] == "0.002" and record["int8.passed"] == "true"
    assert "int8 `model.int8.onnx`: top-1 agreement 0.998" in mv.description
    files = {f.name for f in _model_dir(cfg, "1").iterdir()}
    assert {"model.onnx", "model.int8.onnx", "seen_images.txt"} <= files

    champion = f"models:/{name}@champion"
    int8 = Predictor(champion, tracking_uri=uri, precision="int8")
    auto = Predictor(champion, tracking_uri=uri)
    fp32 = Predictor(champion, tracking_uri=uri, precision="fp32")
    assert (int8.precision, int8.model_path.name, int8.model_version) == ("int8", INT8, "1")
    assert (auto.precision, auto.model_path.name) == ("int8", INT8)
    assert (fp32.precision, fp32.model_path.name) == ("fp32", "model.onnx")
    red = [cfg.data_dir / r["path"] for r in _rows(cfg, "test") if r["label"] == "red"]
    assert {p.label for p in int8.predict(red)} == {"red"}
    # Register and the champion comparison score the fp32 file, never the int8 one.
    assert register.run(cfg).decision["already_registered"]


def test_a_failed_int8_gate_registers_fp32_only(tracked: Config) -> None:
    cfg, name, uri = tracked, tracked.register.model_name, tracking_uri(tracked)
    install_model(cfg, PERFECT)
    install_int8(cfg, passed=False)
    assert register.run(cfg).decision["version"] == "1"
    mv = client_of(cfg).get_model_version(name, "1")
    assert mv.tags["int8"] == "failed"
    assert "no int8 model: top-1 agreement 97.00% < 99.50%" in mv.description
    assert "model.int8.onnx" not in {f.name for f in _model_dir(cfg, "1").iterdir()}
    champion = f"models:/{name}@champion"
    assert Predictor(champion, tracking_uri=uri).precision == "fp32"
    with pytest.raises(VisionOpsError, match=r"version 1\) has no int8 model \(tag int8=failed"):
        Predictor(champion, tracking_uri=uri, precision="int8")


def test_a_stale_int8_model_is_not_registered(tracked: Config) -> None:
    """An int8 file made from another model.onnx (its stamp names another sha256)."""
    cfg, name = tracked, tracked.register.model_name
    install_model(cfg, PERFECT)
    install_int8(cfg, passed=True)
    install_model(cfg, PERFECT, scale=5.0)  # a new fp32 export; the int8 folder is the old one
    report = json.loads(stage_paths(cfg).export_report.read_text())
    write_json(stage_paths(cfg).export_report, {**report, "int8": {"passed": True, "agreement": 1}})
    register.run(cfg)
    mv = client_of(cfg).get_model_version(name, "1")
    assert mv.tags["int8"] == "failed"
    assert "was not made from this model.onnx" in mv.description
    assert "model.int8.onnx" not in {f.name for f in _model_dir(cfg, "1").iterdir()}
