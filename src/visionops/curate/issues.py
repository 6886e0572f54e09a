"""Rank suspected label errors and outliers among every image of the split, after training.

**Out-of-sample probabilities.** A model scored on the images it was trained on has memorised
their labels, wrong ones included, so its own probabilities hide label errors. Instead, the
trained model's pooled embeddings (:mod:`visionops.curate.embed`) feed a K-fold logistic
regression (:data:`FOLDS` stratified folds, features standardised): every image's probabilities
come from a head fitted on the *other* folds, so its own label never took part. That is the input
cleanlab's confident learning asks for. What remains in-sample: the backbone's fine-tuned units
saw the training labels; with the frozen-feature phase first and a few fine-tuning epochs this
moves the embedding of one mislabeled image little (the test in
``tests/e2e/test_curate_pages.py`` ranks an injected one first).

**Label issues**: :func:`cleanlab.filter.find_label_issues` (prune by noise rate) flags images,
:func:`cleanlab.rank.get_label_quality_scores` (self-confidence = out-of-sample p(given label))
ranks them; candidates are flagged images and images predicted as another class, worst first.
**Outliers**: :class:`cleanlab.outlier.OutOfDistribution` on the embeddings (mean cosine distance
to the K nearest neighbours): an image far from all others is far from every class — blank
frames, placeholders, screenshots, photos of something else.

Writes ``artifacts/curate/{label_issues.csv, outliers.csv, label_issues.png, outliers.png,
summary.json}`` and logs them (and the counts) to the training's MLflow run under ``curate/``.
Not a DVC stage: it runs on demand from ``visionops review`` and changes nothing the pipeline
reads; people's decisions do, through ``curation.csv``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from visionops.config import Config
from visionops.curate.embed import embed_images
from visionops.data.image_sets import read_split
from visionops.errors import DataError, VisionOpsError
from visionops.io import write_json, write_with
from visionops.paths import SPLITS, display_path, stage_paths

log = logging.getLogger(__name__)

FOLDS = 5
QUEUE_ISSUES = 50  # label-issue candidates offered for review at most
QUEUE_OUTLIERS = 20  # outliers offered for review
GALLERY = 16  # thumbnails per PNG


@dataclass
class IssuesResult:
    label_issues: pd.DataFrame  # every candidate, worst first (column rank)
    outliers: pd.DataFrame  # every image, most outlying first (column rank)
    folder: Path
    summary: dict = field(default_factory=dict)


def curate_dir(config: Config) -> Path:
    return config.artifacts_dir / "curate"


def _images(config: Config) -> pd.DataFrame:
    p = stage_paths(config)
    frames = []
    for split in SPLITS:
        rows = read_split(p.split_file(split), config.data_dir)
        frames.append(
            pd.DataFrame(
                {
                    "file": [r.path for r in rows],
                    "path": [display_path(r.path, config.data_dir) for r in rows],
                    "sha256": [r.sha256 for r in rows],
                    "label": [r.label for r in rows],
                    "split": split,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def out_of_sample_probs(features: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, int]:
    """(N, C) probabilities, each from a logistic head fitted on the other folds; the folds used.

    Classes with a single image cannot be stratified: they get K = 2 (the minimum)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    smallest = int(np.bincount(y).min())
    folds = max(2, min(FOLDS, smallest))
    head = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.5))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    probs = cross_val_predict(head, features, y, cv=cv, method="predict_proba")
    return probs.astype(np.float64), folds


def rank_label_issues(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(quality score per image, flagged mask) from cleanlab's confident learning."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    quality = get_label_quality_scores(labels, probs, method="self_confidence")
    try:
        flagged = find_label_issues(labels, probs, filter_by="prune_by_noise_rate", n_jobs=1)
    except ValueError as exc:  # e.g. too few images per class for its estimates
        log.warning("cleanlab could not flag label issues (%s); ranking only", exc)
        flagged = np.zeros(len(labels), dtype=bool)
    return quality, np.asarray(flagged, dtype=bool)


def outlier_scores(features: np.ndarray) -> np.ndarray:
    """cleanlab's kNN out-of-distribution score per image (0-1, lower = more outlying).

    Features are standardised first: embeddings of a backbone trained from scratch are ~1e-9 in
    scale, where cleanlab's distances underflow and every score came out equal (0.368)."""
    from cleanlab.outlier import OutOfDistribution
    from sklearn.preprocessing import StandardScaler

    z = StandardScaler().fit_transform(features.astype(np.float64))
    k = max(1, min(10, len(features) - 1))
    return OutOfDistribution(params={"k": k}).fit_score(features=z, verbose=False)


def _gallery(table: pd.DataFrame, names_prob: str, path: Path, title: str) -> None:
    from visionops.evaluate.plots import GalleryItem, gallery_png
    from visionops.images import open_image

    items = []
    for row in table.head(GALLERY).itertuples():
        try:
            image = open_image(row.file)
        except Exception:  # noqa: BLE001 - changed since the split; skip the thumbnail
            continue
        items.append(
            GalleryItem(
                image, row.label, row.predicted, row.p_predicted, getattr(row, names_prob), row.path
            )
        )
    write_with(path, lambda tmp: gallery_png(items, tmp, title))


def _log_to_mlflow(config: Config, folder: Path, summary: dict) -> str | None:
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from visionops.evaluate.stage import training_run

    try:
        run_id, uri = training_run(config)
    except VisionOpsError as exc:
        log.warning("curate: not logged to MLflow (%s)", exc)
        return None
    if not run_id:
        return None
    client = MlflowClient(tracking_uri=uri)
    now = int(time.time() * 1000)
    metrics = {
        "curate_label_issues": summary["label_issues_flagged"],
        "curate_candidates": summary["label_issue_candidates"],
        "curate_oos_accuracy": summary["out_of_sample_accuracy"],
    }
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
    client.log_artifacts(run_id, str(folder), "curate")
    return run_id


def find_issues(config: Config, log_mlflow: bool = True) -> IssuesResult:
    """Embed, score and rank every image of the split; write and log the tables."""
    started = time.perf_counter()
    p = stage_paths(config)
    if not p.checkpoint_best.exists():
        raise VisionOpsError(
            f"{p.checkpoint_best}: no trained model, so no label issues or outliers yet. "
            "Fix: run `dvc repro train` (the review page still shows near-duplicates)"
        )
    images = _images(config)
    folder = curate_dir(config)
    emb = embed_images(
        p.checkpoint_best,
        images["file"].tolist(),
        images["sha256"].tolist(),
        folder / "embeddings.npz",
        config.train.batch_size,
    )
    names = emb.class_names
    unknown = sorted(set(images["label"]) - set(names))
    if unknown:
        raise DataError(
            f"labels {', '.join(unknown)} are not among the trained model's classes "
            f"({', '.join(names)}): the split changed since training. Fix: `dvc repro train`"
        )
    y = images["label"].map({n: i for i, n in enumerate(names)}).to_numpy()
    present = np.unique(y)
    # One BLAS/OpenMP thread: with numpy's, scipy's and torch's pools all spinning on a busy
    # 2-core machine, the 5-fold fit on 303 images took 48 s; with one thread 0.8 s.
    with threadpool_limits(limits=1):
        probs_present, folds = out_of_sample_probs(emb.features, np.searchsorted(present, y), 0)
        quality, flagged = rank_label_issues(np.searchsorted(present, y), probs_present)
        scores = outlier_scores(emb.features)
    probs = np.zeros((len(y), len(names)))
    probs[:, present] = probs_present

    pred = probs.argmax(axis=1)
    table = images.assign(
        predicted=[names[i] for i in pred],
        p_label=probs[np.arange(len(y)), y].round(4),
        p_predicted=probs.max(axis=1).round(4),
        quality=np.round(quality, 4),
        flagged=flagged,
        outlier_score=np.round(scores, 4),
    )
    candidates = table[table["flagged"] | (pred != y)].sort_values(["quality", "path"])
    candidates = candidates.assign(rank=np.arange(1, len(candidates) + 1))
    outliers = table.sort_values(["outlier_score", "path"])
    outliers = outliers.assign(rank=np.arange(1, len(outliers) + 1))

    cols = ["rank", "path", "sha256", "split", "label", "predicted", "p_label", "p_predicted"]
    write_with(
        folder / "label_issues.csv",
        lambda tmp: candidates[[*cols, "quality", "flagged"]].to_csv(tmp, index=False),
    )
    write_with(
        folder / "outliers.csv",
        lambda tmp: outliers[[*cols, "outlier_score"]].to_csv(tmp, index=False),
    )
    _gallery(candidates, "p_label", folder / "label_issues.png", "Suspected label errors")
    _gallery(outliers, "p_label", folder / "outliers.png", "Outliers (far from every class)")
    summary = {
        "images": len(table),
        "label_issue_candidates": len(candidates),
        "label_issues_flagged": int(flagged.sum()),
        "out_of_sample_accuracy": round(float((pred == y).mean()), 4),
        "folds": folds,
        "embedding_dim": int(emb.features.shape[1]),
        "embeddings_cached": emb.cached,
        "embed_seconds": round(emb.seconds, 1),
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json(folder / "summary.json", summary)
    if log_mlflow:
        summary["mlflow_run"] = _log_to_mlflow(config, folder, summary)
    log.info(
        "curate: %d label-issue candidates (%d flagged by cleanlab), outliers ranked, over %d "
        "images in %.1f s -> %s",
        len(candidates),
        summary["label_issues_flagged"],
        len(table),
        summary["seconds"],
        folder,
    )
    return IssuesResult(candidates, outliers, folder, summary)
