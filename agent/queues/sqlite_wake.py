"""How the embedded queue notices another process's commit (an enqueue): SQLite has no
notifications, but ``PRAGMA data_version`` changes when another connection commits, and reading
it is a cheap in-memory check. When to read it:

- **pushed** (Linux): in WAL mode every commit appends to ``<file>-wal``, and inotify reports the
  write. Once no job came for BUSY_WINDOW, a wait parks on that report. A write is only a
  hint: the commit shows once the writer has flushed it, and the queue's own commits write the
  file too. So after each write the version is read every WAKE_POLL_MIN or so for HINT_FAST,
  then less and less often up to HINT_WINDOW, and then not at all until the next write: an
  idle daemon costs nothing and still notices an enqueue within a millisecond, however long it
  was idle. While jobs keep coming the version is read every WAKE_POLL_MIN, as when polled.
- **polled** where inotify is missing (not Linux) or its limits are reached
  (``fs.inotify.max_user_watches``, ``max_user_instances``): every WAKE_POLL_MIN while jobs came
  in the last BUSY_WINDOW (work tends to keep coming), then less and less often, up to
  WAKE_POLL_MAX, so an idle agent costs little; the first job after a quiet spell waits up to
  WAKE_POLL_MAX.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

log = logging.getLogger("agent.queues.sqlite")

try:
    from inotify_simple import INotify
    from inotify_simple import flags as _flags
except ImportError:  # not Linux: the queue polls
    INotify = None

WAKE_POLL_MIN = 0.001  # seconds between looks for another process's commit, just after work
WAKE_POLL_MAX = 0.05  # ... and after a quiet while
BUSY_WINDOW = 1.0  # seconds after the last claimed job during which the look stays frequent
HINT_WINDOW = 1.0  # seconds to look for the commit after a write to the WAL ...
HINT_LOOK_FIRST = 0.0005  # ... first after this, then 1.5 times longer each time ...
HINT_FAST = 0.05  # ... up to WAKE_POLL_MIN for this long (a flush), then up to WAKE_POLL_MAX

# the directory is watched, not the file: the WAL is made anew when the last connection closes
_MASK = 0 if INotify is None else _flags.MODIFY | _flags.CREATE | _flags.MOVED_TO


class CommitWatch:
    """Writes to one SQLite file's WAL, as an awaitable signal on the event loop."""

    def __init__(self, notify: INotify, wal_name: str) -> None:
        self._notify = notify
        self._wal = wal_name
        self._signal = asyncio.Event()
        self.waiting = asyncio.Event()  # set while ``wait`` is parked (tests await it)
        self.hints = 0  # writes to the WAL seen so far
        self._blind = True  # until the first ``clear``: writes before the watch went unseen

    @classmethod
    def open(cls, db_path: Path) -> CommitWatch | None:
        """A watch on ``db_path``'s WAL, or None (with the reason logged) where there is none."""
        if INotify is None:
            return None
        notify: INotify | None = None
        try:
            notify = INotify(nonblocking=True)
            notify.add_watch(os.fspath(db_path.parent), _MASK)
            return cls(notify, db_path.name + "-wal")
        except OSError as exc:
            if notify is not None:
                notify.close()
            log.warning(
                "queue %s: cannot watch for other processes' commits (%s); looking for new "
                "jobs every 1 to 50 ms instead (raise fs.inotify.max_user_watches or "
                "max_user_instances if that is the limit)",
                db_path,
                exc.strerror or exc,
            )
            return None

    def _readable(self) -> bool:
        try:
            events = self._notify.read(timeout=0)
        except BlockingIOError:
            return False
        # an overflowed kernel queue may have dropped the WAL's event: count it as one
        if any(e.name == self._wal or e.mask & _flags.Q_OVERFLOW for e in events):
            self.hints += 1
            self._signal.set()
            return True
        return False

    def clear(self) -> bool:
        """Take the writes seen so far (the caller is about to look at the file itself): True
        if there were any (or may have been: the first time). Between waits the kernel keeps the
        events (coalesced); they are read here, not on the loop at every commit while busy."""
        written = self._readable() or self._blind
        self._blind = False
        self._signal.clear()
        return written

    async def wait(self, timeout: float) -> bool:
        """True once the WAL was written since the last ``clear``; False after ``timeout``."""
        loop = asyncio.get_running_loop()
        fd = self._notify.fileno()
        loop.add_reader(fd, self._readable)
        self.waiting.set()
        try:
            async with asyncio.timeout(timeout):
                await self._signal.wait()
        except TimeoutError:
            return False
        finally:
            self.waiting.clear()
            loop.remove_reader(fd)
        self._signal.clear()
        return True

    def close(self) -> None:
        self._notify.close()


async def wait_for_commit(
    watch: CommitWatch | None,
    version: Callable[[], Awaitable[int]],
    seen: int | None,
    timeout: float,
    last_work: Callable[[], float],
) -> None:
    """Return once ``version()`` (the file's ``data_version``) differs from ``seen`` (read
    now when None), or after ``timeout`` seconds. ``last_work``: the monotonic time jobs
    last came (it keeps polling frequent)."""
    deadline = time.monotonic() + timeout
    if seen is None:
        seen = await version()
    if watch is None:

        def cap() -> float:
            busy = time.monotonic() - last_work() <= BUSY_WINDOW
            return WAKE_POLL_MIN if busy else WAKE_POLL_MAX

        await _look(version, seen, deadline, WAKE_POLL_MIN, cap)
        return
    # While jobs keep coming, a look every WAKE_POLL_MIN, as without a watch: under load the
    # waits are short and the enqueuer's writes constant, and alternating pairs of paced runs
    # at 2,500 jobs/s favoured the look. Once quiet, the wait parks on the watch.
    busy_until = last_work() + BUSY_WINDOW
    if time.monotonic() < busy_until:
        busy = min(deadline, busy_until)
        if await _look(version, seen, busy, WAKE_POLL_MIN, lambda: WAKE_POLL_MIN):
            return
    # A write seen (here or by the wait below) is a commit on its way: the writer's frames are
    # in the WAL, but the commit shows only once they are flushed (fsync) and the shared index
    # updated, which the kernel does not report. So look until the version moves, for at
    # most HINT_WINDOW (the write may also have been this process's own). Any commit since
    # ``seen`` was read wrote the WAL, so its event is still to be taken here.
    written = watch.clear()
    while written or await watch.wait(deadline - time.monotonic()):
        hinted = time.monotonic()
        cap = functools.partial(_after_hint, hinted)
        if await _look(version, seen, min(deadline, hinted + HINT_WINDOW), HINT_LOOK_FIRST, cap):
            return
        written = False


def _after_hint(hinted: float) -> float:
    """The longest pause between looks, ``hinted`` (monotonic) being when the write was seen."""
    return WAKE_POLL_MIN if time.monotonic() - hinted < HINT_FAST else WAKE_POLL_MAX


async def _look(
    version: Callable[[], Awaitable[int]],
    seen: int,
    deadline: float,
    delay: float,
    cap: Callable[[], float],
) -> bool:
    """Read ``version()`` after ``delay``, then 1.5 times later each time up to ``cap()``,
    until it differs from ``seen`` (True) or ``deadline`` (False)."""
    while (left := deadline - time.monotonic()) > 0:
        await asyncio.sleep(min(delay, left))
        if await version() != seen:
            return True
        delay = min(cap(), delay * 1.5)
    return False
