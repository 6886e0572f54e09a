"""One MLflow run per training (resumed runs continue it), plus the stage's files.

Rank 0 only: other ranks get a tracker that does nothing. The run carries every resolved param
(``Config.as_flat_dict()`` plus ``resolved.*``: device, imbalance mode, ...), the lineage tags
(git commit, data version, params hash), ``experiment=<name>`` inside a DVC experiment,
per-epoch metrics (step = epoch), the selected epoch's summary (:data:`SUMMARY_METRICS`) and its
fitted temperature (``calibration_temperature``, val NLL before/after), the
learning curves PNG, the history CSV and the best checkpoint. Its name says backbone, data
version and start time (:func:`run_name`). ``artifacts/train/run.json`` tells later stages
which run to log into.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from visionops.config import Config
from visionops.data.image_sets import digest, seen_by_training
from visionops.io import write_json
from visionops.paths import stage_paths
from visionops.tracking import current_experiment, lineage_tags, setup_tracking, tracking_uri
from visionops.train.report import curves_png, log_epoch, write_history
from visionops.train.result import TrainResult

log = logging.getLogger(__name__)

#: The run's summary metrics: the selected (best) epoch's validation numbers, then the run's
#: size. Per-epoch series keep the history CSV's names (``val_acc``, ``val_loss``, ... at
#: step = epoch), so the summary needs names of its own.
SUMMARY_METRICS = {
    "val_accuracy": "best_val_accuracy",
    "val_macro_f1": "best_val_macro_f1",
    "val_loss": "best_val_loss",
    "best_epoch": "best_epoch",
    "epochs": "epochs",
    "seconds": "train_seconds",
}


def run_name(config: Config, data_version: str, experiment: str | None, now: datetime) -> str:
    """``train lite1 b608f2 11-30 14:05``: what tells runs apart in the runs table (backbone,
    data version, local start time); a DVC experiment's name replaces ``train``."""
    backbone = config.model.backbone.removeprefix("efficientnet_")
    data = data_version[:6] if data_version != "untracked" else "untracked"
    return f"{experiment or 'train'} {backbone} {data} {now:%m-%d %H:%M}"


class TrainTracker:
    def __init__(self, config: Config, enabled: bool) -> None:
        self.config = config
        self.enabled = enabled
        self.experiment_id: str | None = None
        self.run_id: str | None = None

    def start(
        self, run_id: str | None, extra_params: dict[str, Any], resumed_from: int | None
    ) -> str | None:
        """Open (or reopen, when resuming) the run; returns its id."""
        if not self.enabled:
            return run_id
        import mlflow

        self.experiment_id = setup_tracking(self.config)
        experiment = current_experiment()
        if run_id is not None:
            run = mlflow.start_run(run_id=run_id)
            mlflow.set_tag("resumed_after_epoch", str(resumed_from))
        else:
            lineage = lineage_tags(self.config)
            name = run_name(self.config, lineage["data_version"], experiment, datetime.now())
            run = mlflow.start_run(run_name=name)
            mlflow.log_params({**self.config.as_flat_dict(), **extra_params})
            mlflow.set_tags({**lineage, "stage": "train"})
        if experiment:  # the same key register puts on the version: search runs and models alike
            mlflow.set_tag("experiment", experiment)
        self.run_id = run.info.run_id
        log.info("MLflow run %s (%s)", self.run_id, tracking_uri(self.config))
        return self.run_id

    def log_epoch(self, row: dict[str, Any]) -> None:
        if self.enabled:
            log_epoch(row)

    def finish(self, history: list[dict[str, Any]], result: TrainResult) -> None:
        """Write the stage's files (DVC outs) and close the run with them attached."""
        paths = stage_paths(self.config)
        write_history(paths.train_history, history)
        curves_png(paths.train_plots, history, result.best_epoch, result.selection_metric)
        write_json(paths.train_metrics, result.metrics())
        seen = seen_by_training(
            paths.split_file("train"), paths.split_file("val"), self.config.data_dir
        )
        write_json(
            paths.train_run,
            {
                "run_id": self.run_id,
                "tracking_uri": tracking_uri(self.config),
                "experiment_id": self.experiment_id,
                # register checks the split it compares on is still the one trained on
                "seen_images": {"count": len(seen), "sha": digest(seen)},
            },
        )
        if not self.enabled:
            return
        import mlflow

        summary = result.metrics()
        mlflow.log_metrics({SUMMARY_METRICS.get(k, k): float(v) for k, v in summary.items()})
        if result.calibration:
            c = result.calibration
            mlflow.log_metrics(
                {
                    "calibration_temperature": c["temperature"],
                    "val_nll_uncalibrated": c["val_nll_before"],
                    "val_nll_calibrated": c["val_nll_after"],
                }
            )
        for path in (paths.train_plots, paths.train_history, paths.train_metrics):
            mlflow.log_artifact(str(path), artifact_path="train")
        mlflow.log_artifact(str(paths.checkpoint_best), artifact_path="checkpoint")
        mlflow.end_run()

    def fail(self, exc: BaseException) -> None:
        """Close the run as FAILED (KILLED on Ctrl-C); a resume reopens it."""
        if not self.enabled:
            return
        import mlflow

        if mlflow.active_run() is not None:
            status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
            mlflow.end_run(status=status)
