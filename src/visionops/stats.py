"""Small statistics every layer may print: the Wilson interval of a proportion.

Core (not in ``evaluate``) because training prints its validation accuracy with an interval
too; ``visionops.evaluate.intervals`` builds the evaluation's intervals on it.
"""

from __future__ import annotations

import math

Z_95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of ``successes / n``; (0.0, 1.0) when ``n`` is 0 (nothing known).

    >>> tuple(round(v, 3) for v in wilson_interval(37, 37))
    (0.906, 1.0)
    """
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    center = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # Exact at the ends (0 or n successes), where rounding would leave 1e-17 of slack.
    low = 0.0 if successes == 0 else max(0.0, center - half)
    high = 1.0 if successes == n else min(1.0, center + half)
    return low, high
