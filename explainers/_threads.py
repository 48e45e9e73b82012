"""Threads that wait without spinning, set before torch loads (the package imports this first).

torch's OpenMP threads spin for a while after each parallel region (libgomp's default). On a
2-core machine shared with anything else -- the other worker of a data-set run, the app's web
server, OpenVINO's own threads, another user's job -- the spinning threads take the cores the
working ones need: bench/threads.py measures the app, the CLI and evaluate with and without it
(docs/benchmarks.md, "Fast on a 2-core CPU"). OMP_WAIT_POLICY=PASSIVE makes idle threads sleep at once. It is read when
torch is imported, so it is set here, before anything imports torch, and only when the user has
chosen neither OMP_WAIT_POLICY nor GOMP_SPINCOUNT (set either to keep libgomp's own behaviour,
e.g. GOMP_SPINCOUNT=300000 is its default). Worker processes inherit the environment.
"""

from __future__ import annotations

import os
import sys

WAIT_POLICY = "PASSIVE"


def wait_quietly() -> bool:
    """Set OMP_WAIT_POLICY=PASSIVE if torch is not loaded yet and the user chose no policy.
    Returns whether it was set (False: too late, or the user's own setting stands)."""
    if "torch" in sys.modules or "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return False
    os.environ["OMP_WAIT_POLICY"] = WAIT_POLICY
    return True


wait_quietly()
