"""``python -m bench.profiled OUT.prof AGENT-ARGS...``: the agent CLI under cProfile, every thread.

``python -m cProfile`` sees only the main thread, but the embedded queue runs its SQLite work on
its own thread and key material loads on the default executor's. Each thread started here gets
its own profiler (``threading.setprofile`` runs in a new thread before its target); the stats
are merged into OUT.prof when the command ends.
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import threading
from types import FrameType
from typing import Any


def main() -> int:
    out, args = sys.argv[1], sys.argv[2:]
    profilers: list[cProfile.Profile] = []
    lock = threading.Lock()

    def start_thread(frame: FrameType, event: str, arg: Any) -> None:
        profiler = cProfile.Profile()
        with lock:
            profilers.append(profiler)
        profiler.enable()  # replaces this hook for the rest of the thread

    threading.setprofile(start_thread)
    from agent.commands.cli import main as agent_main

    main_profiler = cProfile.Profile()
    main_profiler.enable()
    try:
        code = agent_main(args)
    finally:
        main_profiler.disable()
        threading.setprofile(None)
        stats = pstats.Stats(main_profiler)
        with lock:
            for profiler in profilers:
                profiler.create_stats()
                stats.add(profiler)
        stats.dump_stats(out)
    return code


if __name__ == "__main__":
    sys.exit(main())
