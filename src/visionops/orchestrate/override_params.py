"""Write dotted-key overrides into ``params.yaml`` so a later ``dvc repro`` reproduces them.

An orchestrated run that trained with ``train.head_epochs=1`` must leave the workspace saying so:
DVC decides what to rerun from ``params.yaml`` and records it in ``dvc.lock``. Overrides are
validated by the typed config first (an unknown key or a bad value changes nothing), then written
with ruamel.yaml's round-trip mode, which keeps comments, key order, quoting and flow lists.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from visionops.config import load_config
from visionops.errors import ConfigError
from visionops.io import write_with

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ParamChange:
    key: str
    old: Any
    new: Any

    def __str__(self) -> str:
        return f"{self.key}: {self.old!r} -> {self.new!r}"


def _round_trip() -> YAML:
    yaml = YAML()  # round-trip (comment-preserving) mode
    yaml.preserve_quotes = True
    yaml.width = 4096  # never re-wrap long lines
    return yaml


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def override_params(params_path: Path | str, overrides: dict[str, Any] | None) -> list[ParamChange]:
    """Apply ``{"train.head_epochs": 1, ...}`` to ``params_path`` in place; return what changed.

    Values are stored as the typed config reads them (``"1"`` for an int key is written as ``1``).
    Keys that already hold the value are not rewritten; nothing is written when nothing changes.
    Raises :class:`ConfigError` naming the key for an unknown key or an invalid value.
    """
    if not overrides:
        return []
    params_path = Path(params_path)
    for key in overrides:
        if not isinstance(key, str) or not key or key.startswith(".") or key.endswith("."):
            raise ConfigError(f"override {key!r}: expected a dotted key like train.head_epochs")
    typed = load_config(params_path, overrides=overrides).as_flat_dict()

    yaml = _round_trip()
    doc = yaml.load(params_path.read_text(encoding="utf-8")) or CommentedMap()
    changes = []
    for key, given in overrides.items():
        value = typed.get(key, given)  # a whole section (dict) passes through as given
        *sections, leaf = key.split(".")
        node = doc
        for section in sections:
            if section not in node or node[section] is None:
                node[section] = CommentedMap()
            node = node[section]
        old = _plain(node.get(leaf))
        if old == _plain(value):
            continue
        if isinstance(value, list) and isinstance(node.get(leaf), CommentedSeq):
            seq = CommentedSeq(value)
            if node[leaf].fa.flow_style():
                seq.fa.set_flow_style()
            value = seq
        node[leaf] = value
        changes.append(ParamChange(key, old, _plain(value)))
    if changes:
        write_with(params_path, lambda tmp: yaml.dump(doc, tmp))
        load_config(params_path)  # what we wrote must read back (it was validated above)
        for change in changes:
            log.info("params.yaml: %s", change)
    return changes
