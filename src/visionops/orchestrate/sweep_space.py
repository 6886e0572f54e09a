"""The search space of ``visionops sweep``: a small YAML file -> a list of param overrides.

```yaml
grid:                                   # every combination of these
  train.head_lr: [0.001, 0.003]
  train.head_epochs: [5, 10]
random:                                 # n draws; each draw is combined with every grid point
  train.finetune_lr: {low: 0.0001, high: 0.001, log: true}   # log-uniform float
  train.finetune_epochs: {low: 3, high: 6}                   # two ints: an int, both ends in
  model.dropout: [0.1, 0.2, 0.3]                             # a list: one of them
n: 4
seed: 0                                 # same seed, same draws
```

Every key must be a leaf of ``params.yaml`` that a ``dvc.yaml`` stage depends on (otherwise every
point would reproduce the same result), and every point must pass the typed config: all of it is
checked before anything is queued, each problem a one-line :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import difflib
import itertools
import math
import random as _random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from visionops.config import load_config
from visionops.errors import ConfigError

TOP_KEYS = ("grid", "random", "n", "seed")
SPEC_KEYS = ("low", "high", "log")
MAX_POINTS = 100  # a typo in a grid should not queue a week of training on a laptop


@dataclass(frozen=True)
class SearchSpace:
    grid: dict[str, list[Any]] = field(default_factory=dict)
    random: dict[str, list[Any] | dict[str, Any]] = field(default_factory=dict)
    n: int = 0
    seed: int = 0
    source: str = "sweep.yaml"

    @property
    def keys(self) -> list[str]:
        return [*self.grid, *self.random]


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_spec(where: str, spec: Any) -> None:
    if isinstance(spec, list):
        if not spec:
            raise ConfigError(f"{where}: an empty list; give the values to choose from")
        return
    if not isinstance(spec, dict):
        raise ConfigError(
            f"{where}: expected a list of choices or {{low, high, log}}, got {spec!r}"
        )
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key '{unknown[0]}'; expected {', '.join(SPEC_KEYS)}")
    low, high, log = spec.get("low"), spec.get("high"), spec.get("log", False)
    if not (_number(low) and _number(high)) or not low < high:
        raise ConfigError(f"{where}: needs numbers low < high (got low={low!r}, high={high!r})")
    if not isinstance(log, bool):
        raise ConfigError(f"{where}.log: expected true or false, got {log!r}")
    if log and low <= 0:
        raise ConfigError(f"{where}: log: true needs low > 0 (got {low!r})")


def load_space(
    path: Path | str, n: int | None = None, seed: int | None = None, source: str | None = None
) -> SearchSpace:
    """Read and check the file's shape (``n``/``seed`` given here replace the file's);
    ``source`` is how errors name the file (default: ``path``)."""
    path = Path(path)
    shown = source or str(path)
    if not path.is_file():
        raise ConfigError(
            f"{shown}: not found; write a search space (grid: / random:, see "
            "docs/ORCHESTRATION.md, 'Sweeps') or pass its path"
        )
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{shown}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{shown}: expected a mapping with grid: and/or random:")
    unknown = sorted(set(raw) - set(TOP_KEYS))
    if unknown:
        raise ConfigError(f"{shown}: unknown key '{unknown[0]}'; expected {', '.join(TOP_KEYS)}")
    grid, rand = raw.get("grid") or {}, raw.get("random") or {}
    for section, value in (("grid", grid), ("random", rand)):
        if not isinstance(value, dict):
            raise ConfigError(f"{shown}: {section}: expected a mapping of params, got {value!r}")
    if not grid and not rand:
        raise ConfigError(f"{shown}: nothing to sweep; give grid: and/or random:")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{shown}: grid.{key}: expected a non-empty list, got {values!r}")
    for key, spec in rand.items():
        if key in grid:
            raise ConfigError(f"{shown}: {key} is in both grid: and random:; keep one")
        _check_spec(f"{shown}: random.{key}", spec)
    n = raw.get("n", 0) if n is None else n
    seed = raw.get("seed", 0) if seed is None else seed
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"{shown}: seed: expected an integer, got {seed!r}")
    if rand and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise ConfigError(f"{shown}: n: random: needs n >= 1 points (got {n!r})")
    if not rand and n:
        raise ConfigError(f"{shown}: n: only applies to random: (the grid has a fixed size)")
    return SearchSpace(grid=grid, random=rand, n=n or 0, seed=seed, source=shown)


def _draw(spec: list[Any] | dict[str, Any], rng: _random.Random) -> Any:
    if isinstance(spec, list):
        return rng.choice(spec)
    low, high, log = spec["low"], spec["high"], spec.get("log", False)
    whole = isinstance(low, int) and isinstance(high, int)
    if whole and not log:
        return rng.randint(low, high)
    if whole:  # log-uniform over [low, high + 1), floored: every int in reach, small ones likelier
        return min(int(math.exp(rng.uniform(math.log(low), math.log(high + 1)))), high)
    lo, hi = (math.log(low), math.log(high)) if log else (low, high)
    value = math.exp(rng.uniform(lo, hi)) if log else rng.uniform(lo, hi)
    return float(f"{value:.3g}")  # 0.00316, not 0.0031622776601683794: names stay readable


def sweep_points(space: SearchSpace) -> list[dict[str, Any]]:
    """Grid points (every combination, in file order), each crossed with ``n`` random draws;
    repeated points are dropped."""
    grid = [
        dict(zip(space.grid, values, strict=True))
        for values in itertools.product(*space.grid.values())
    ] or [{}]
    rng = _random.Random(space.seed)
    draws = [{k: _draw(s, rng) for k, s in space.random.items()} for _ in range(space.n)] or [{}]
    points, seen = [], set()
    for g, d in itertools.product(grid, draws):
        point = {**g, **d}
        key = yaml.safe_dump(point, sort_keys=True)
        if key not in seen:
            seen.add(key)
            points.append(point)
    return points


def dvc_tracked_params(dvc_yaml: Path) -> list[str]:
    """The ``params.yaml`` keys and sections the stages of ``dvc_yaml`` depend on."""
    stages = (yaml.safe_load(dvc_yaml.read_text(encoding="utf-8")) or {}).get("stages") or {}
    tracked: list[str] = []
    for stage in stages.values():
        for entry in stage.get("params") or []:
            if isinstance(entry, str):
                tracked.append(entry)
            elif isinstance(entry, dict):
                tracked += [k for f, keys in entry.items() if f == "params.yaml" for k in keys]
    return tracked


def check_points(
    space: SearchSpace, points: list[dict[str, Any]], params: Path, dvc_yaml: Path
) -> None:
    """Every key a tracked leaf of ``params``, every point a valid config; else ConfigError."""
    if len(points) > MAX_POINTS:
        raise ConfigError(
            f"{space.source}: {len(points)} points (more than {MAX_POINTS}); shrink the grid or n"
        )
    leaves = load_config(params).as_flat_dict()
    tracked = dvc_tracked_params(dvc_yaml) if dvc_yaml.is_file() else []
    for key in space.keys:
        where = f"{space.source}: {'grid' if key in space.grid else 'random'}.{key}"
        if key not in leaves:
            close = difflib.get_close_matches(key, list(leaves), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ConfigError(f"{where}: not a key of {params.name}{hint}")
        if not any(key == t or key.startswith(t + ".") for t in tracked):
            raise ConfigError(
                f"{where}: no stage in {dvc_yaml.name} depends on it, so every point would "
                f"give the same result (stage params: {', '.join(dict.fromkeys(tracked))})"
            )
    for i, point in enumerate(points, start=1):
        try:
            load_config(params, overrides=point)
        except ConfigError as exc:
            shown = " ".join(f"{k}={v}" for k, v in point.items())
            raise ConfigError(f"{space.source}: point {i} ({shown}): {exc}") from None
