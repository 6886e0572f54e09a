"""Offline hygiene: switch off every telemetry / update check the stack would otherwise try.

Called from entry points only (CLI, flows, tests' conftest) — never on import.
"""

from __future__ import annotations

import os

OFFLINE_ENV = {
    "DVC_NO_ANALYTICS": "1",
    "DO_NOT_TRACK": "true",  # "true", not "1": MLflow ignores "1"
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_UI_ENABLED_ANALYTICS": "false",
    "HF_HUB_OFFLINE": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


def apply_offline_env() -> None:
    """Set the switches unless the user set them explicitly."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
