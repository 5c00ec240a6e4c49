"""``python -m bench.run --profile DIR``: where the daemon's time goes in the warm scenario.

Three daemon runs over the same warm workload (kept-alive mTLS, embedded SQLite queue):

1. plain, for the reference jobs/s;
2. under cProfile in every thread (:mod:`bench.profiled`), stats in ``DIR/agent.prof``;
3. under ``py-spy record --gil`` (when installed) — a sampling profiler with little overhead
   that also sees time spent in C (OpenSSL, SQLite); ``--gil`` keeps only the samples of the
   thread holding the GIL, which is what bounds a Python process — raw stacks in
   ``DIR/pyspy.txt``.

It prints the top functions of each, by own time and by inclusive time.
"""

from __future__ import annotations

import pstats
import re
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from agent.config.config import load_config

from . import agentrun
from .peer import BenchNginx, BenchPKI

if TYPE_CHECKING:
    from .run import Settings

TOP = 25
_LINE = re.compile(r":\d+\)$")


async def _one(
    tag: str, work: Path, pki: BenchPKI, port: int, s: Settings, wrapper: list[str] | None
) -> float:
    directory = work / tag
    config_path = agentrun.write_config(directory, pki, port=port, threads=s.concurrency)
    await agentrun.enqueue(load_config(config_path), agentrun.make_jobs(s.warm, port, 1, tag))
    run = await agentrun.run_burst(config_path, f"{tag}-0", timeout=1200, wrapper=wrapper)
    rows = agentrun.sqlite_rows(directory / "queue.db", tag)
    agentrun.check_processed(rows, s.warm, tag)
    assert run.first_claim is not None
    return s.warm / (max(u for _, _, u in rows) - run.first_claim)


async def profile_warm(s: Settings, work: Path, out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    pki = BenchPKI.create(work / "pki")
    py = sys.executable
    with BenchNginx(work / "nginx", pki) as nginx:
        port = nginx.warm_port
        plain = await _one("plain", work, pki, port, s, None)
        print(f"plain run: {plain:,.0f} jobs/s ({s.warm:,} jobs, threads.max {s.concurrency})")
        prof = out / "agent.prof"
        rate = await _one("cprofile", work, pki, port, s, [py, "-m", "bench.profiled", str(prof)])
        print(f"under cProfile (all threads): {rate:,.0f} jobs/s; stats in {prof}\n")
        print_pstats(prof)
        spy = shutil.which("py-spy")
        if spy is None:
            print("py-spy is not installed (pip install py-spy): no sampling profile")
            return 0
        raw = out / "pyspy.txt"
        wrapper = [
            spy,
            "record",
            "--gil",
            "-r",
            "200",
            "-f",
            "raw",
            "-o",
            str(raw),
            "--",
            py,
            "-m",
            "agent",
        ]
        rate = await _one("pyspy", work, pki, port, s, wrapper)
        print(f"\nunder py-spy (200 Hz, GIL holder): {rate:,.0f} jobs/s; stacks in {raw}\n")
        print_pyspy(raw)
    return 0


def print_pstats(path: Path) -> None:
    stats = pstats.Stats(str(path))
    stats.sort_stats("tottime").print_stats(TOP)
    stats.sort_stats("cumulative").print_stats(TOP)


def _frame(frame: str) -> str:
    return _LINE.sub(")", frame.strip())


def print_pyspy(path: Path) -> None:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";")[1:]]  # the first is the process
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    print(f"py-spy: {total} samples of the thread holding the GIL")
    for title, counter in (("own time", own), ("inclusive time", inclusive)):
        print(f"\n  top by {title}:")
        for frame, count in counter.most_common(TOP):
            print(f"  {100 * count / total:5.1f}%  {frame}")
