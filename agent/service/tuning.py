"""Interpreter settings for the daemon's worker process; one-shot commands keep the defaults."""

from __future__ import annotations

import gc
import logging
import resource

from agent.config.config import AgentConfig

log = logging.getLogger("agent.service")


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


def open_files_needed(config: AgentConfig) -> int:
    """Descriptors the daemon may hold at once: every idle connection kept, a connection per
    slot, and a margin for the queue, the journal, logs and the health listener."""
    return config.max_idle_connections + 2 * config.threads_max + 64


def raise_open_files(needed: int) -> tuple[int, int]:
    """Raise the soft limit on open files to the hard one, as servers holding many connections
    do (the soft default is often 1,024, below ``agent.http.max_idle_connections``' default
    plus the slots); warn when even the hard limit is below ``needed``. Returns (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-files limit from %d to %d: %s", soft, target, exc)
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning(
            "the open-files limit is %d, below the %d this configuration may hold "
            "(agent.http.max_idle_connections + 2 x threads.max + 64): raise LimitNOFILE= "
            "(systemd) or ulimit -n, or lower agent.http.max_idle_connections",
            soft,
            needed,
        )
    return soft, hard
