"""The great-expectations suite over the manifest of usable images (the split stage's input).

GX checks tables, not pixels: the scan has already decoded every image; this suite is the
contract between ``validate`` and ``split`` (types, ranges, uniqueness). A failure here means a
row that should have been skipped slipped through, so ``validate`` treats it as an error.

Runs in an ephemeral context (nothing written to disk), progress bars and analytics off;
about 0.1 s for a few thousand rows once ``great_expectations`` is imported (the import itself
takes 5-15 s here, so it happens lazily, ideally in the background while the scan runs:
:func:`preload_in_background`).
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field

import pandas as pd

from visionops.data.inspect_file import COLUMNS
from visionops.data.scan import SPLIT_FOLDERS

log = logging.getLogger(__name__)


@dataclass
class ExpectationsResult:
    """Compact outcome: ``failed`` holds one line per failed expectation with a few bad values."""

    success: bool
    evaluated: int
    failed: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"success": self.success, "evaluated": self.evaluated, "failed": self.failed}


def _suite(gx, gxe, min_side: int, max_pixels: int, formats: frozenset[str]):
    suite = gx.ExpectationSuite(name="visionops_manifest")
    for expectation in (
        gxe.ExpectTableColumnsToMatchSet(column_set=[*COLUMNS, "pixels"], exact_match=True),
        gxe.ExpectColumnValuesToNotBeNull(column="path"),
        gxe.ExpectColumnValuesToBeUnique(column="path"),
        gxe.ExpectColumnValuesToNotBeNull(column="label"),
        gxe.ExpectColumnValuesToMatchRegex(column="sha256", regex=r"^[0-9a-f]{64}$"),
        gxe.ExpectColumnValuesToBeUnique(column="sha256"),
        gxe.ExpectColumnValuesToMatchRegex(column="phash", regex=r"^[0-9a-f]{64}$"),
        gxe.ExpectColumnValuesToBeBetween(column="bytes", min_value=1),
        gxe.ExpectColumnValuesToBeBetween(column="width", min_value=min_side),
        gxe.ExpectColumnValuesToBeBetween(column="height", min_value=min_side),
        gxe.ExpectColumnValuesToBeBetween(column="pixels", min_value=1, max_value=max_pixels),
        gxe.ExpectColumnValuesToBeInSet(column="format", value_set=sorted(formats)),
        gxe.ExpectColumnValuesToBeInSet(
            column="split_hint", value_set=sorted(set(SPLIT_FOLDERS.values()))
        ),
        gxe.ExpectColumnValuesToBeInSet(column="usable", value_set=[True]),
        gxe.ExpectColumnUniqueValueCountToBeBetween(column="label", min_value=2),
    ):
        suite.add_expectation(expectation)
    return suite


def _describe(result) -> str:
    config = result.expectation_config
    kwargs = {k: v for k, v in config.kwargs.items() if k != "batch_id"}
    column = kwargs.pop("column", None)
    detail = result.result or {}
    if "partial_unexpected_list" in detail:
        shown = detail.get("partial_unexpected_list", [])[:5]
        found = f"{detail.get('unexpected_count', '?')} unexpected, e.g. {shown}"
    else:
        found = f"observed {detail.get('observed_value')!r}"
    target = f"{column}: " if column else ""
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items() if k != "column_set")
    return f"{config.type}({target}{args}): {found}".replace("(: ", "(").replace(": )", ")")


def import_gx():
    """Import great_expectations quietly (5-15 s here); safe to call early from a thread."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    # GX logs hundreds of INFO lines while importing (one of its modules even forces its own
    # logger to INFO); keep them out of the stage's output.
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    import great_expectations as gx
    import great_expectations.expectations  # noqa: F401  (registers gx.expectations)
    from great_expectations.data_context.types import base

    logging.getLogger(base.__name__).setLevel(logging.WARNING)
    return gx


def preload_in_background() -> threading.Thread:
    """Start importing GX in a daemon thread so the import overlaps the image scan."""
    thread = threading.Thread(target=import_gx, name="import-great-expectations", daemon=True)
    thread.start()
    return thread


def check_manifest(
    usable: pd.DataFrame, min_side: int, max_pixels: int, formats: frozenset[str]
) -> ExpectationsResult:
    """Validate the usable rows of a manifest (:data:`COLUMNS`); never raises on bad data."""
    gx = import_gx()
    gxe = gx.expectations
    from great_expectations.data_context.types.base import ProgressBarsConfig

    frame = usable[COLUMNS].copy()
    frame["pixels"] = frame["width"].astype("float64") * frame["height"].astype("float64")
    for col in ("bytes", "width", "height", "orientation", "flat", "contrast"):  # plain dtypes
        frame[col] = frame[col].astype("float64")
    frame["split_hint"] = (
        frame["split_hint"].astype(object).where(frame["split_hint"].notna(), None)
    )

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = (
        context.data_sources.add_pandas("manifest")
        .add_dataframe_asset("usable_images")
        .add_batch_definition_whole_dataframe("all_rows")
    )
    suite = context.suites.add(_suite(gx, gxe, min_side, max_pixels, formats))
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name="manifest_contract", data=batch, suite=suite)
    )
    outcome = definition.run(batch_parameters={"dataframe": frame})
    failed = [_describe(r) for r in outcome.results if not r.success]
    for line in failed:
        log.warning("great-expectations: %s", line)
    return ExpectationsResult(
        success=bool(outcome.success), evaluated=len(outcome.results), failed=failed
    )
