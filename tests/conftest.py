"""Suite-wide setup: offline switches, and no test ever touches the user's ~/.prefect or mlruns/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from visionops.offline import apply_offline_env

REPO_ROOT = Path(__file__).resolve().parents[1]

apply_offline_env()


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Keep MLflow and Prefect state out of the repo and the home folder."""
    # mlflow.set_tracking_uri() also exports MLFLOW_TRACKING_URI; setenv first so monkeypatch
    # records the variable and removes whatever a test left behind at teardown.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "unset")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    home = tmp_path_factory.getbasetemp() / "prefect-home"
    monkeypatch.setenv("PREFECT_HOME", os.environ.get("VISIONOPS_TEST_PREFECT_HOME", str(home)))
    yield
    # A module-scoped fixture that called mlflow.set_tracking_uri() before this fixture ran would
    # otherwise be "restored" by monkeypatch and leak into the next module.
    os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT
