"""Interpreter settings for the daemon's worker process; one-shot commands keep the defaults."""

from __future__ import annotations

import gc


def tune_for_daemon() -> None:
    """``gc.freeze()``: what start-up allocated (modules, config, key material) moves out of the
    collector's reach, so a full collection no longer walks it. In ``python -m bench.tricks``
    (a job loop after the daemon's imports and 100 profiles; shared 2-core VM, noisy) the
    longest full collection went from 83-115 ms to 47-89 ms (median 1.7 × shorter) and their
    total from 217-272 ms to 94-179 ms (2.1 ×); in the daemon, paced at 2,500 jobs/s, 20-30 ms
    pauses every few seconds became 1-2 ms (docs/PERFORMANCE.md).

    A 1 ms GIL switch interval used to be set here too; measured on and off in the same
    process (``bench.tricks``), the queue's round trips gained nothing beyond the noise.
    """
    gc.freeze()
