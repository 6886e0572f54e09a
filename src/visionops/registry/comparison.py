"""Champion vs new model on images neither has seen, and the decision that follows.

Rules, in order (the first that applies decides):

1. no ``@champion`` yet -> the new model takes it (scored on the whole current test split);
2. the champion cannot be downloaded, loaded or scored, or it records no seen-image set
   (registered before sets were kept) -> ``@challenger``: never promote blind; a person decides
   with ``visionops promote`` / ``rollback``;
3. fewer than ``register.min_eval_images`` current test images are unseen by *both* models ->
   ``@challenger`` (the comparison would be noise, or a leak);
4. the new model beats the champion by more than ``register.min_improvement`` on
   ``register.metric`` -> ``@champion``, else ``@challenger``.

Experiments (``dvc exp run``, a Prefect run with param overrides) are compared the same way
but never move an alias unless ``register.promote_experiments`` is true.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from visionops.data.image_sets import SEEN_FILE, SplitRow, digest, read_hashes, unseen
from visionops.evaluate.metrics import label_scores
from visionops.export.onnx_model import OnnxClassifier
from visionops.registry.champion import CHALLENGER, CHAMPION
from visionops.registry.model_uri import resolve_registry_model

log = logging.getLogger(__name__)

EXPERIMENT_ENV = ("DVC_EXP_NAME", "VISIONOPS_EXPERIMENT")


@dataclass
class Comparison:
    """Scores on the shared unseen test images (``eval_images`` of them, set ``eval_set_sha``)."""

    champion_version: str | None = None
    champion_score: float | None = None
    champion_problem: str | None = None  # why the champion could not be compared
    eval_images: int = 0
    eval_set_sha: str = ""
    test_images: int = 0  # in the current test split (eval_images of them are unseen by both)
    new_scores: dict = field(default_factory=dict)


def experiment_name() -> str | None:
    """The experiment this process runs in: ``dvc exp run``/``dvc queue`` set ``DVC_EXP_NAME``
    for stage commands; the Prefect flow sets ``VISIONOPS_EXPERIMENT`` when it applies
    param overrides."""
    for var in EXPERIMENT_ENV:
        if os.environ.get(var):
            return os.environ[var]
    return None


def predict_labels(model: OnnxClassifier, rows: list[SplitRow]) -> list[str | None]:
    """Top-1 label per row (None for an unreadable image: it counts as wrong)."""
    return [p.label for p in model.iter_predict([r.path for r in rows], top_k=1)]


def score_rows(rows: list[SplitRow], predicted: list[str | None], classes: list[str]) -> dict:
    return label_scores([r.label for r in rows], predicted, classes)


def score_classes(new: OnnxClassifier, test_rows: list[SplitRow]) -> list[str]:
    """The new model's classes (+ any test label): a class with no test image counts as F1 = 0,
    exactly as in evaluate's metrics.json, so both stages report the same macro-F1."""
    return sorted({r.label for r in test_rows} | set(new.labels))


def compare(
    new_predicted: list[str | None],
    new_seen: frozenset[str],
    test_rows: list[SplitRow],
    classes: list[str],
    champion,
    tracking_uri: str,
    metric: str,
) -> Comparison:
    """Score the new model's test predictions (and the champion ModelVersion, if any) on the
    test images neither model has seen."""
    predicted = dict(zip((r.sha256 for r in test_rows), new_predicted, strict=True))
    if champion is None:
        rows = unseen(test_rows, new_seen)
        return Comparison(
            test_images=len(test_rows),
            eval_images=len(rows),
            eval_set_sha=digest(r.sha256 for r in rows),
            new_scores=score_rows(rows, [predicted[r.sha256] for r in rows], classes),
        )
    out = Comparison(champion_version=str(champion.version), test_images=len(test_rows))
    uri = f"models:/{champion.name}/{champion.version}"
    try:
        resolved = resolve_registry_model(uri, tracking_uri)
        old = OnnxClassifier(resolved.path, source=uri)
    except Exception as exc:  # noqa: BLE001 - any failure means "cannot compare"
        out.champion_problem = f"champion version {champion.version} could not be loaded ({exc})"
        return out
    champion_seen = read_hashes(resolved.path.parent / SEEN_FILE)
    if champion_seen is None:
        out.champion_problem = (
            f"champion version {champion.version} records no training-image hashes "
            "(registered before fair comparison existed), so no test image is known to be "
            "unseen by it"
        )
        return out
    rows = unseen(test_rows, new_seen, champion_seen)
    out.eval_images, out.eval_set_sha = len(rows), digest(r.sha256 for r in rows)
    if not rows:
        return out
    log.info(
        "champion version %s vs new model on %d test images neither has seen",
        champion.version,
        len(rows),
    )
    out.new_scores = score_rows(rows, [predicted[r.sha256] for r in rows], classes)
    try:
        out.champion_score = score_rows(rows, predict_labels(old, rows), classes)[metric]
    except Exception as exc:  # noqa: BLE001
        out.champion_problem = f"champion version {champion.version} could not be scored ({exc})"
    return out


def decide(
    comparison: Comparison,
    metric: str,
    margin: float,
    min_images: int,
    model_name: str,
    experiment: str | None = None,
    promote_experiments: bool = False,
) -> tuple[str | None, str]:
    """(alias or None, reason) by the rules in the module docstring."""
    alias, reason = _decide(comparison, metric, margin, min_images, model_name)
    if experiment and not promote_experiments:
        return None, (
            f"experiment {experiment!r}: no alias moved (register.promote_experiments is false; "
            f"on its own it would be @{alias}: {reason})"
        )
    return alias, reason


def _decide(c: Comparison, metric: str, margin: float, min_images: int, name: str):
    by_hand = f"a person decides: `visionops promote {name} <version> --reason ...`"
    if c.champion_version is None:
        return CHAMPION, "no champion yet"
    if c.champion_problem:
        return CHALLENGER, f"{c.champion_problem}; not promoted blind, {by_hand}"
    if c.eval_images < min_images:
        excluded = c.test_images - c.eval_images
        why = (
            f"; {excluded} were left out because a model trained or was selected on them (the "
            "split changed since the champion was trained: base.seed, split ratios or data)"
            if excluded
            else ""
        )
        return CHALLENGER, (
            f"only {c.eval_images} of {c.test_images} current test images were seen by neither "
            f"model, fewer than register.min_eval_images={min_images}{why}. Too few to compare: "
            f"add labeled images, lower register.min_eval_images, or {by_hand}"
        )
    new, old = c.new_scores[metric], c.champion_score
    if new > old + margin:
        return CHAMPION, f"beats the champion by {new - old:+.4f} (> {margin:g})"
    return CHALLENGER, f"does not beat the champion by more than {margin:g} ({new - old:+.4f})"
