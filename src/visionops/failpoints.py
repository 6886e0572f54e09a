"""Crash on purpose at a named point, so tests can prove what a real ``kill -9`` leaves behind.

``VISIONOPS_FAILPOINT=<name>`` makes :func:`failpoint` send SIGKILL to its own process when
``<name>`` is reached: no cleanup, no ``finally``, exactly like an OOM kill or a pulled plug.
Unset (always, outside tests) it costs one dict lookup.
"""

from __future__ import annotations

import os
import signal


def failpoint(name: str) -> None:
    if os.environ.get("VISIONOPS_FAILPOINT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
